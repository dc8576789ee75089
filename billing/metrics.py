"""Every Prometheus metric in one place. Labels are bounded: never a customer or invoice id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CHARGES = Counter(
    "billing_charges_total",
    "Charge attempts by outcome and decline class.",
    ["outcome", "decline_class"],
    registry=REGISTRY,
)
CHARGED_AMOUNT = Counter(
    "billing_charged_amount_minor_total",
    "Approved amounts in minor units, by currency.",
    ["currency"],
    registry=REGISTRY,
)
GATEWAY_LATENCY = Histogram(
    "billing_gateway_request_duration_seconds",
    "Plexo request latency by route and status class.",
    ["route", "status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "billing_run_duration_seconds",
    "Duration of billing passes and reconciler sweeps.",
    ["kind"],
    registry=REGISTRY,
)
LAST_TICK = Gauge(
    "billing_last_successful_tick_timestamp_seconds",
    "Unix time of the last job run that finished without error.",
    ["job"],
    registry=REGISTRY,
)
UNKNOWN_OUTCOMES = Gauge(
    "billing_unknown_outcomes",
    "Charge attempts whose outcome is not yet known (sending, unknown, pending).",
    registry=REGISTRY,
)
UNKNOWN_OLDEST_AGE = Gauge(
    "billing_unknown_outcome_oldest_age_seconds",
    "Age of the oldest unresolved charge attempt.",
    registry=REGISTRY,
)
DUE_BACKLOG = Gauge(
    "billing_due_invoices",
    "Open invoices due for an attempt now.",
    registry=REGISTRY,
)
DUE_OLDEST_AGE = Gauge(
    "billing_due_invoice_oldest_age_seconds",
    "How long the oldest due invoice has waited.",
    registry=REGISTRY,
)


def gateway_observer(route: str, status: int | None, seconds: float) -> None:
    """Hook for PlexoClient(on_response=...)."""
    label = "error" if status is None else f"{status // 100}xx"
    GATEWAY_LATENCY.labels(route=route, status=label).observe(seconds)
