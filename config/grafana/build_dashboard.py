"""Writes billing-dashboard.json, the Grafana dashboard for plexo-billing (stdlib only).

    python config/grafana/build_dashboard.py          # rewrite the JSON beside this file
    python config/grafana/build_dashboard.py --check  # exit 1 if the JSON is not this output

The panels are written once here, as (title, queries); ids, grid positions and the datasource on
every panel and query are filled in by the code below, so they cannot drift apart by hand.
tests/unit/test_dashboard.py checks that the committed JSON equals this script's output.

Queries aggregate over nodes: counters and histograms with sum(), gauges read from the shared
database (due invoices, unknown outcomes, outbox, subscriptions) with max(), since every node
reports the same number. Scheduler jobs are in the `scheduler_job` label (`job` is the scrape
job's).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UID = "plexo-billing"
SCHEMA_VERSION = 42  # the last schema version of Grafana's classic (v1) dashboard model
OUTPUT = Path(__file__).with_name("billing-dashboard.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# Amounts are minor units; both supported currencies (UYU, USD) have 2 decimals.
MINOR_PER_MAJOR = 100


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    title: str
    description: str
    queries: list[Query]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def right_axis(name: str, unit: str) -> dict[str, Any]:
    """A field override: the series named `name` on the right axis, in `unit`."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "custom.axisPlacement", "value": "right"},
            {"id": "unit", "value": unit},
        ],
    }


def bars() -> dict[str, Any]:
    return {"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal", "group": "A"}}


def money() -> list[Panel]:
    approved = 'billing_charge_amount_minor_total{outcome="approved"}'
    charges = "billing_charges_total"
    return [
        Panel(
            "Money collected per currency (per hour)",
            "Approved charge amounts per hour, in currency units (minor units / 100: UYU and USD "
            "both have 2 decimals).",
            [
                Query(
                    f"sum by (currency) (rate({approved}[{RATE}])) * 3600 / {MINOR_PER_MAJOR}",
                    "{{currency}}",
                )
            ],
            width=8,
        ),
        Panel(
            "Approval rate",
            "Approved charge attempts over all attempts (declined, pending and unknown count "
            "against it).",
            [
                Query(
                    f'sum(rate({charges}{{outcome="approved"}}[{RATE}]))'
                    f" / sum(rate({charges}[{RATE}]))",
                    "approved",
                )
            ],
            unit="percentunit",
            width=8,
            custom={"min": 0, "max": 1},
        ),
        Panel(
            "Charge attempts by outcome",
            "Charge attempts per second by outcome.",
            [Query(f"sum by (outcome) (rate({charges}[{RATE}]))", "{{outcome}}")],
            unit="ops",
            width=8,
            custom=bars(),
        ),
        Panel(
            "Declines by class",
            "Declined attempts per second by decline class: soft and technical are retried, hard "
            "needs the customer, invalid_request is ours to fix.",
            [
                Query(
                    f'sum by (decline_class) (rate({charges}{{outcome="declined"}}[{RATE}]))',
                    "{{decline_class}}",
                )
            ],
            unit="ops",
            custom=bars(),
        ),
        Panel(
            "Retries scheduled by decline class",
            "Declined attempts for which another attempt was scheduled.",
            [
                Query(
                    f"sum by (decline_class) (increase(billing_retries_scheduled_total[{RATE}]))",
                    "{{decline_class}}",
                )
            ],
            custom=bars(),
        ),
    ]


def gateway() -> list[Panel]:
    metric = "billing_gateway_request_duration_seconds"
    quantiles = [
        Query(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{RATE}])))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]
    return [
        Panel(
            "Gateway latency p50 / p95 / p99",
            "Plexo request latency over all routes.",
            quantiles,
            unit="s",
            width=8,
        ),
        Panel(
            "Gateway p95 by route",
            "Plexo request latency (95th percentile) per route.",
            [
                Query(
                    f"histogram_quantile(0.95, sum by (route, le) (rate({metric}_bucket[{RATE}])))",
                    "{{route}}",
                )
            ],
            unit="s",
            width=8,
        ),
        Panel(
            "Gateway errors (5xx and no answer)",
            "Plexo requests per second that got a 5xx or no HTTP answer (status=error: timeout, "
            "connection refused or reset), by route.",
            [
                Query(
                    f'sum by (route, status) (rate({metric}_count{{status=~"5xx|error"}}[{RATE}]))',
                    "{{route}} {{status}}",
                ),
            ],
            unit="reqps",
            width=8,
            custom=bars(),
        ),
        Panel(
            "Gateway error share",
            "The share of Plexo requests that got a 5xx or no answer (the BillingGatewayErrors "
            "alert's measure).",
            [
                Query(
                    f'sum(rate({metric}_count{{status=~"5xx|error"}}[{RATE}]))'
                    f" / sum(rate({metric}_count[{RATE}]))",
                    "errors",
                )
            ],
            unit="percentunit",
        ),
        Panel(
            "Gateway requests by status",
            "Plexo requests per second by status class, and payment callbacks by what their "
            "confirming GET led to.",
            [
                Query(f"sum by (status) (rate({metric}_count[{RATE}]))", "{{status}}"),
                Query(
                    f"sum by (outcome) (rate(billing_callbacks_total[{RATE}]))",
                    "callback {{outcome}}",
                ),
            ],
            unit="reqps",
        ),
    ]


def runs() -> list[Panel]:
    def mean(metric: str, selector: str = "") -> str:
        return (
            f"sum(rate({metric}_sum{selector}[{RATE}]))"
            f" / sum(rate({metric}_count{selector}[{RATE}]))"
        )

    return [
        Panel(
            "Billing pass duration against invoices processed",
            "Mean duration of a billing pass (left) and the invoices and charge attempts a pass "
            "handles (right).",
            [
                Query(mean("billing_run_duration_seconds", '{kind="pass"}'), "pass duration"),
                Query(mean("billing_run_invoices_processed"), "invoices per pass"),
                Query(mean("billing_run_charge_attempts"), "attempts per pass"),
            ],
            unit="s",
            overrides=[
                right_axis("invoices per pass", "short"),
                right_axis("attempts per pass", "short"),
            ],
        ),
        Panel(
            "Runs by kind and state",
            "Billing passes and reconciler sweeps that ended; interrupted ones were stopped or "
            "crashed mid-run.",
            [
                Query(
                    f"sum by (kind, state) (increase(billing_runs_total[{RATE}]))",
                    "{{kind}} {{state}}",
                ),
                Query(
                    mean("billing_run_duration_seconds", '{kind="reconcile"}'),
                    "reconcile duration",
                ),
            ],
            custom=bars(),
            overrides=[right_axis("reconcile duration", "s")],
        ),
        Panel(
            "Scheduler job runs",
            "Scheduler job runs per second by job, with or without error.",
            [
                Query(
                    f"sum by (scheduler_job) (rate(billing_job_runs_total[{RATE}]))",
                    "{{scheduler_job}}",
                )
            ],
            unit="ops",
            width=8,
        ),
        Panel(
            "Job errors and missed runs",
            "Scheduler job runs that raised, and runs skipped because the previous one overran.",
            [
                Query(
                    f"sum by (scheduler_job) (increase(billing_job_errors_total[{RATE}]))",
                    "{{scheduler_job}} errors",
                ),
                Query(
                    f"sum by (scheduler_job) (increase(billing_job_missed_total[{RATE}]))",
                    "{{scheduler_job}} missed",
                ),
            ],
            width=8,
            custom=bars(),
        ),
        Panel(
            "Time since last successful run",
            "Seconds since each job last finished without error, per node; BillingPassStale "
            "fires at 3 billing_pass intervals.",
            [
                Query(
                    "time() - billing_last_successful_tick_timestamp_seconds",
                    "{{instance}} {{scheduler_job}}",
                ),
                Query(
                    "billing_job_interval_seconds",
                    "{{instance}} {{scheduler_job}} interval",
                ),
            ],
            unit="s",
            width=8,
        ),
    ]


def backlog() -> list[Panel]:
    return [
        Panel(
            "Due backlog and oldest due age",
            "Open invoices due for an attempt now (left) and how long the oldest has waited "
            "(right).",
            [
                Query("max(billing_due_invoices)", "due invoices"),
                Query("max(billing_due_invoice_oldest_age_seconds)", "oldest due age"),
            ],
            width=8,
            overrides=[right_axis("oldest due age", "s")],
        ),
        Panel(
            "Unknown outcomes and their age",
            "Charge attempts whose outcome is not yet known (sending, unknown, pending; left) and "
            "the age of the oldest (right). BillingUnknownOutcomesOld fires past an hour.",
            [
                Query("max(billing_unknown_outcomes)", "unresolved attempts"),
                Query("max(billing_unknown_outcome_oldest_age_seconds)", "oldest unresolved age"),
            ],
            width=8,
            overrides=[right_axis("oldest unresolved age", "s")],
        ),
        Panel(
            "Subscriptions held",
            "Subscriptions held for review: more periods due at once than the catch-up cap.",
            [Query("max(billing_subscriptions_held)", "held")],
            kind="stat",
            width=8,
            extra={
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}],
                }
            },
        ),
        Panel(
            "Invoices parked",
            "Invoices the safety bounds parked instead of charging (ceiling, increase factor, "
            "charges per customer a day): `billing invoices list --status parked`, then release "
            "or void. BillingInvoicesParked fires while any waits.",
            [Query("max(billing_invoices_parked)", "parked")],
            kind="stat",
            width=8,
            extra={
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}],
                }
            },
        ),
    ]


def dunning() -> list[Panel]:
    return [
        Panel(
            "Dunning funnel",
            "Subscriptions entering past_due, recovered by a later charge, invoices ending "
            "uncollectible, and the final actions applied when a retry chain was exhausted.",
            [
                Query(
                    f"sum by (stage) (increase(billing_dunning_transitions_total[{RATE}]))",
                    "{{stage}}",
                ),
                Query(
                    f"sum by (action) (increase(billing_dunning_final_actions_total[{RATE}]))",
                    "final action {{action}}",
                ),
            ],
            custom=bars(),
        ),
        Panel(
            "Subscriptions by state",
            "Subscriptions by status, read from the database (cached by the daemon).",
            [Query("max by (status) (billing_subscriptions)", "{{status}}")],
            custom={"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30},
        ),
    ]


def notifications() -> list[Panel]:
    return [
        Panel(
            "Notification outbox",
            "Deliveries waiting (pending) or dead-lettered by channel (left), and how long the "
            "oldest pending one has waited (right).",
            [
                Query(
                    "max by (channel, state) (billing_outbox_deliveries)",
                    "{{channel}} {{state}}",
                ),
                Query(
                    "max by (channel) (billing_outbox_oldest_pending_age_seconds)",
                    "{{channel}} oldest pending age",
                ),
            ],
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".*oldest pending age"},
                    "properties": [
                        {"id": "custom.axisPlacement", "value": "right"},
                        {"id": "unit", "value": "s"},
                    ],
                }
            ],
        ),
        Panel(
            "Delivery failures and deliveries",
            "Failed delivery tries per second by channel and reason, and accepted deliveries.",
            [
                Query(
                    "sum by (channel, reason) "
                    f"(rate(billing_notification_delivery_failures_total[{RATE}]))",
                    "{{channel}} failed {{reason}}",
                ),
                Query(
                    f"sum by (channel) (rate(billing_notifications_delivered_total[{RATE}]))",
                    "{{channel}} delivered",
                ),
            ],
            unit="ops",
        ),
    ]


def process() -> list[Panel]:
    return [
        Panel(
            "Readiness",
            "1 when a node's /readyz answers ready (database reachable, schema at head, "
            "scheduler running, last pass not stale).",
            [Query("billing_ready", "{{instance}}")],
            kind="stat",
            extra={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "not ready", "color": "red", "index": 0},
                            "1": {"text": "ready", "color": "green", "index": 1},
                        },
                    }
                ],
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
                },
            },
        ),
        Panel(
            "Build info",
            "The version each node runs and its database's schema revision.",
            [Query("billing_build_info", instant=True)],
            kind="table",
            extra={},
            options={"showHeader": True},
        ),
    ]


ROWS: list[tuple[str, list[Panel]]] = [
    ("Money", money()),
    ("Gateway", gateway()),
    ("Runs and jobs", runs()),
    ("Backlog", backlog()),
    ("Dunning and subscriptions", dunning()),
    ("Notifications", notifications()),
    ("Process", process()),
]


def _target(query: Query, ref: str) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "range": not query.instant,
        "instant": query.instant,
        "refId": ref,
    }
    if query.instant:
        target["format"] = "table"
    return target


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.kind == "timeseries":
        custom = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
        custom.update({k: v for k, v in panel.custom.items() if k not in ("min", "max")})
        defaults["custom"] = custom
        defaults.update({k: v for k, v in panel.custom.items() if k in ("min", "max")})
    defaults.update(panel.extra)
    options: dict[str, Any]
    if panel.kind == "timeseries":
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        options = {
            "colorMode": "background",
            "graphMode": "none",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        }
    else:
        options = {}
    options.update(panel.options)
    built: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": panel.overrides},
        "options": options,
        "targets": [_target(q, chr(ord("A") + n)) for n, q in enumerate(panel.queries)],
    }
    if panel.kind == "table":
        built["transformations"] = [
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
            }
        ]
    return built


def build() -> dict[str, Any]:
    """The dashboard as Grafana's classic JSON model: rows of panels laid out 24 columns wide."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for title, row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": UID,
        "title": "Plexo billing",
        "description": "Is money flowing? Charges, gateway, runs, backlog, dunning, outbox and "
        "the daemon's health (plexo-billing, config/grafana/build_dashboard.py).",
        "tags": ["billing", "plexo"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "timezone": "browser",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                }
            ]
        },
        "links": [],
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.name} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print("usage: build_dashboard.py [--check]", file=sys.stderr)
        return 2
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
