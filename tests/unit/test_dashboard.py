"""The Grafana dashboard (config/grafana/billing-dashboard.json) is importable and only asks for
metrics the daemon declares: every panel query parses as PromQL, names only metrics of
billing.metrics.REGISTRY, uses the `datasource` variable and `$__rate_interval` (issue 7 item 2).

The helpers here are also used by tests/e2e/test_prometheus.py, against a live daemon.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client.core import Metric

from billing import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "billing-dashboard.json"
BUILDER = ROOT / "config" / "grafana" / "build_dashboard.py"
# What Grafana puts in place of its variables before the query reaches Prometheus.
RATE_INTERVAL = "5m"
RANGE_FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "resets", "changes"}
# The sample names each kind of family exposes (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are not panels."""
    for panel in dashboard["panels"]:
        yield from panel.get("panels", [])
        if panel.get("type") != "row":
            yield panel


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL as written in the dashboard) for every query target."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def substitute(expr: str) -> str:
    """The query as Grafana sends it to Prometheus."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("${datasource}", "")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (walks the AST)."""
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names = {m.value for m in node.matchers.matchers if m.name == "__name__"}
            assert node.name or names, f"a selector without a metric name in {expr!r}"
            found.update(names | ({node.name} if node.name else set()))

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return found


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    return {name for _, expr in expressions(dashboard) for name in metric_names(expr)}


def sample_names(families: Iterable[Metric]) -> set[str]:
    """Every sample name the families can expose (billing_charges -> billing_charges_total)."""
    names: set[str] = set()
    for family in families:
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def declared_sample_names() -> set[str]:
    """What the daemon's registry exposes, billing_subscriptions included."""
    families = list(metrics.REGISTRY.collect())
    if not any(family.name == "billing_subscriptions" for family in families):
        # Where the daemon registers the subscriptions collector itself, at start.
        families.extend(metrics.SubscriptionStateCollector(dict).collect())
    return sample_names(families)


def test_every_query_parses_and_names_only_declared_metrics() -> None:
    declared = declared_sample_names()
    dashboard = load_dashboard()
    queries = list(expressions(dashboard))
    assert len(queries) >= 20
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: {expr} names no metric"
        assert names <= declared, f"{title}: {sorted(names - declared)} not in billing.metrics"


def test_the_dashboard_covers_the_metrics_operators_need() -> None:
    named = dashboard_metric_names(load_dashboard())
    for needed in (
        "billing_charge_amount_minor_total",
        "billing_charges_total",
        "billing_gateway_request_duration_seconds_bucket",
        "billing_gateway_request_duration_seconds_count",
        "billing_run_duration_seconds_sum",
        "billing_run_invoices_processed_sum",
        "billing_due_invoices",
        "billing_due_invoice_oldest_age_seconds",
        "billing_unknown_outcomes",
        "billing_unknown_outcome_oldest_age_seconds",
        "billing_dunning_transitions_total",
        "billing_dunning_final_actions_total",
        "billing_subscriptions",
        "billing_outbox_deliveries",
        "billing_notification_delivery_failures_total",
        "billing_job_errors_total",
        "billing_job_missed_total",
        "billing_ready",
        "billing_build_info",
    ):
        assert needed in named, needed


def test_rate_and_increase_use_rate_interval() -> None:
    for title, expr in expressions(load_dashboard()):
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        assert all(r == "$__rate_interval" for r in ranges), f"{title}: {expr}"

        def visit(node: promql_parser.Expr, title: str = title, expr: str = expr) -> None:
            if isinstance(node, promql_parser.Call) and node.func.name in RANGE_FUNCTIONS:
                (arg,) = [a for a in node.args if isinstance(a, promql_parser.MatrixSelector)]
                wanted = promql_parser.parse_duration(RATE_INTERVAL)
                assert arg.range == wanted, f"{title}: {expr}"

        promql_parser.walk(promql_parser.parse(substitute(expr)), visit)


def test_uid_schema_and_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "plexo-billing"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(load_dashboard()):
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]


def test_panel_ids_unique_and_every_panel_placed() -> None:
    dashboard = load_dashboard()
    every = [*dashboard["panels"], *(p for r in dashboard["panels"] for p in r.get("panels", []))]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    for panel in every:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for panel in panels(dashboard):
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_committed_json_is_the_builders_output() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboard", BUILDER)
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(builder)
    finally:
        del sys.modules[spec.name]
    assert DASHBOARD.read_text(encoding="utf-8") == builder.render(), (
        "billing-dashboard.json is stale: run python config/grafana/build_dashboard.py"
    )


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum(rate(a_total[5m])) / sum(rate(b_total[5m]))", {"a_total", "b_total"}),
        ('histogram_quantile(0.9, sum by (le) (rate(h_bucket{x="1"}[5m])))', {"h_bucket"}),
        ('{__name__="c"} + time()', {"c"}),
    ],
)
def test_metric_names_walks_the_whole_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
