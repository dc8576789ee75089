"""A real Prometheus scrapes a live daemon billing against the sandbox: the dashboard's key
queries return data, our alert rules are loaded and healthy, and every metric a dashboard panel
names is on the daemon's /metrics (issue 7 items 2 and 3).

Prometheus (Debian package `prometheus`) runs on a free loopback port with a temporary config
(scrape and rule evaluation every second) and its TSDB in the test's tmp dir; the daemon bills
subscriptions seeded only after Prometheus has scraped it, so every counter rises between
scrapes. The queries are the dashboard's own, with $__rate_interval replaced by a window that
covers the whole test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing.store.migrate import upgrade
from billing.testing import ensure_plan, seed_subscriptions
from tests.e2e.conftest import (
    Proc,
    Processes,
    Sandbox,
    StartDaemon,
    billing_context,
    clean_environ,
    wait_until,
)
from tests.integration.test_alert_rules import ALERTS
from tests.receivers import free_port
from tests.unit.test_dashboard import (
    dashboard_metric_names,
    load_dashboard,
    panels,
    sample_names,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "billing-alerts.yml"
DECLINING_CARD = "4000000000000010"  # declined "51" insufficient funds (soft)
APPROVED_UYU, APPROVED_USD, DECLINED = 16, 4, 4
# Label sets made by their first event (a callback's outcome, a failed delivery's reason).
EVENT_LABELLED = {"billing_callbacks_total", "billing_notification_delivery_failures_total"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if _in_ci():
            pytest.fail("prometheus is missing (.ci/run installs the prometheus package)")
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    return found


def start_prometheus(
    processes: Processes, binary: str, tmp_path: Path, target: str
) -> tuple[Proc, httpx.Client]:
    """Prometheus on a free loopback port scraping `target` as job "billing" with our rules.

    JSON is YAML, so the config is written with json.dumps (no YAML writer needed)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "billing", "static_configs": [{"targets": [target]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    port = free_port()
    proc = processes.start(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        clean_environ(),
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def ready() -> bool:
        try:
            return http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 60, "prometheus /-/ready", interval=0.2, alive=proc.died)
    return proc, http


def query(http: httpx.Client, expr: str) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; the result vector (empty: no data)."""
    response = http.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    assert body["data"]["resultType"] == "vector", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def values(result: list[dict[str, Any]], label: str = "") -> dict[str, float]:
    """{value of `label` (or ""): sample value} for a query result."""
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def dashboard_queries(title: str, window: str) -> list[str]:
    """The queries of the panel titled `title`, as Grafana would send them."""
    (panel,) = [p for p in panels(load_dashboard()) if p["title"] == title]
    return [t["expr"].replace("$__rate_interval", window) for t in panel["targets"]]


def test_prometheus_scrapes_a_billing_daemon_and_the_dashboard_queries_return_data(
    sqlite_url: str,
    sandbox: Sandbox,
    start_daemon: StartDaemon,
    processes: Processes,
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    upgrade(sqlite_url)
    metrics_port = free_port()
    target = f"127.0.0.1:{metrics_port}"
    _prom, http = start_prometheus(processes, prometheus_binary, tmp_path, target)
    began = time.time()
    daemon = start_daemon(
        sqlite_url,
        sandbox.url,
        "prom-node",
        BILLING_METRICS_ADDRESS="127.0.0.1",
        BILLING_METRICS_PORT=str(metrics_port),
        BILLING_CONCURRENCY="2",
    )
    with closing(http):
        # Scraped once before there is anything to bill: every rise below is between scrapes.
        wait_until(
            lambda: values(query(http, 'up{job="billing"}')).get("") == 1,
            60,
            'up{job="billing"} == 1',
            interval=0.5,
            alive=daemon.died,
        )
        # Each charge takes 0.4 s, two at a time: the charges span several scrapes.
        sandbox.add_fault("latency", probability=1.0, route="POST /v1/payments", seconds=0.4)
        with billing_context(sqlite_url, sandbox.url) as ctx:
            start = ctx.clock.now() - timedelta(days=1)
            ensure_plan(ctx)
            ensure_plan(ctx, code="monthly-usd", amount="19.00", currency="USD")
            seed_subscriptions(ctx, sandbox.url, APPROVED_UYU, start=start, prefix="uyu")
            seed_subscriptions(
                ctx, sandbox.url, APPROVED_USD, plan_code="monthly-usd", start=start, prefix="usd"
            )
            seed_subscriptions(
                ctx, sandbox.url, DECLINED, card=DECLINING_CARD, start=start, prefix="dec"
            )
        charges = APPROVED_UYU + APPROVED_USD + DECLINED
        wait_until(
            lambda: len(sandbox.payments()) >= charges,
            90,
            f"{charges} payments at the sandbox",
            interval=0.25,
            alive=daemon.died,
        )

        def window() -> str:
            return f"{math.ceil(time.time() - began) + 10}s"

        def scraped() -> bool:
            seen = values(query(http, "sum by (outcome) (billing_charges_total)"), "outcome")
            return seen.get("approved") == APPROVED_UYU + APPROVED_USD and bool(
                seen.get("declined")
            )

        wait_until(scraped, 60, "Prometheus to scrape every charge", interval=0.5)

        def key_queries() -> dict[str, tuple[bool, object]]:
            """Each of the dashboard's key queries: (has the data it should, what it returned)."""
            w = window()
            (money,) = dashboard_queries("Money collected per currency (per hour)", w)
            (approval,) = dashboard_queries("Approval rate", w)
            (declines,) = dashboard_queries("Declines by class", w)
            quantiles = dashboard_queries("Gateway latency p50 / p95 / p99", w)
            (by_state,) = dashboard_queries("Subscriptions by state", w)
            due_count, due_age = dashboard_queries("Due backlog and oldest due age", w)
            (job_runs,) = dashboard_queries("Scheduler job runs", w)
            collected = values(query(http, money), "currency")
            rate = values(query(http, approval)).get("", math.nan)
            by_class = values(query(http, declines), "decline_class")
            latencies = [values(query(http, q)).get("", math.nan) for q in quantiles]
            states = values(query(http, by_state), "status")
            due = [values(query(http, q)) for q in (due_count, due_age)]
            runs = values(query(http, job_runs), "scheduler_job")
            # The scheduler job is its own label, beside Prometheus's `job`: what rules select on.
            ticks = query(http, 'billing_last_successful_tick_timestamp_seconds{job="billing"}')
            exported = {r["metric"].get("scheduler_job") for r in ticks}
            interval = values(
                query(http, 'billing_job_interval_seconds{scheduler_job="billing_pass"}')
            )
            return {
                "money per currency": (
                    min(collected.get(c, 0) for c in ("UYU", "USD")) > 0,
                    collected,
                ),
                "approval rate": (0.5 < rate < 1, rate),
                "declines by class": (by_class.get("soft", 0) > 0, by_class),
                "gateway latency quantiles": (all(0 < v < 30 for v in latencies), latencies),
                "subscriptions by state": (sum(states.values()) == charges, states),
                "due backlog and age": (all(d.get("") is not None for d in due), due),
                "scheduler job runs": (runs.get("billing_pass", 0) > 0, runs),
                "scheduler_job label": ("billing_pass" in exported, ticks),
                "billing_pass interval": (interval.get("", 0) > 0, interval),
            }

        # The daemon reads subscription counts from the database once per cache TTL.
        deadline = time.monotonic() + 60
        results = key_queries()
        while not all(ok for ok, _ in results.values()):
            if time.monotonic() > deadline or daemon.died():
                break
            time.sleep(1)
            results = key_queries()
        problems = [f"{name}: {what}" for name, (ok, what) in results.items() if not ok]

        def check(title: str, ok: bool, what: object) -> None:
            if not ok:
                problems.append(f"{title}: {what}")

        # Every metric the dashboard names is a family on the live /metrics, and Prometheus
        # holds series of each (label sets exist at 0 from the start), but for the families
        # whose label sets appear with their first event.
        named = dashboard_metric_names(load_dashboard())
        exposition = httpx.get(f"http://{target}/metrics", timeout=10).text
        live = sample_names(text_string_to_metric_families(exposition))
        check("dashboard metrics on /metrics", named <= live, sorted(named - live))
        stored = set(http.get("/api/v1/label/__name__/values").json()["data"])
        unseen = named - stored - EVENT_LABELLED
        check("dashboard metrics with series in Prometheus", not unseen, sorted(unseen))

        def rules_evaluated() -> list[dict[str, Any]] | None:
            body = http.get("/api/v1/rules").json()
            rules = [r for g in body["data"]["groups"] for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None

        rules = wait_until(rules_evaluated, 30, "the alert rules to be evaluated", interval=0.5)
        health = {r["name"]: (r["health"], r.get("lastError", "")) for r in rules}
        check("rules loaded", set(health) == ALERTS, sorted(health))
        check("rules healthy", all(h == "ok" for h, _ in health.values()), health)
        # Its inputs are there (checked above) and the daemon is billing: it must be quiet.
        stale = next(r for r in rules if r["name"] == "BillingPassStale")
        check("BillingPassStale quiet on a billing daemon", stale["state"] == "inactive", stale)

        assert not problems, "\n".join(problems) + f"\n--- daemon\n{daemon.tail()}"
