"""Every Prometheus metric in one place. Labels are bounded: never a customer or invoice id."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

CHARGES = Counter(
    "billing_charges_total",
    "Charge attempts by outcome and decline class.",
    ["outcome", "decline_class"],
    registry=REGISTRY,
)
CHARGE_AMOUNT = Counter(
    "billing_charge_amount_minor_total",
    "Amounts of charge attempts in minor units, by currency and outcome (approved is money "
    "collected).",
    ["currency", "outcome"],
    registry=REGISTRY,
)
CALLBACKS = Counter(
    "billing_callbacks_total",
    "Plexo payment callbacks received, by what the confirming GET led to.",
    ["outcome"],
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
SUBSCRIPTIONS_HELD = Gauge(
    "billing_subscriptions_held",
    "Subscriptions held for review: more periods due at once than the catch-up cap.",
    registry=REGISTRY,
)

OUTBOX_BACKLOG = Gauge(
    "billing_outbox_deliveries",
    "Notification deliveries waiting (pending) or dead-lettered, by channel (webhook, email).",
    ["channel", "state"],
    registry=REGISTRY,
)
NOTIFICATION_FAILURES = Counter(
    "billing_notification_delivery_failures_total",
    "Failed notification delivery tries by channel and reason (timeout, connect, http_4xx, "
    "http_5xx, smtp, gateway, removed, no_recipient, error).",
    ["channel", "reason"],
    registry=REGISTRY,
)
NOTIFICATIONS_DELIVERED = Counter(
    "billing_notifications_delivered_total",
    "Notification deliveries the receiver accepted, by channel.",
    ["channel"],
    registry=REGISTRY,
)

# --- runs and jobs -------------------------------------------------------------------------
RUNS = Counter(
    "billing_runs_total",
    "Billing passes and reconciler sweeps that ended, by kind (pass, reconcile) and state "
    "(completed, interrupted).",
    ["kind", "state"],
    registry=REGISTRY,
)
RUN_INVOICES = Histogram(
    "billing_run_invoices_processed",
    "Invoices a billing pass tried to charge, per pass.",
    buckets=(0, 1, 10, 100, 1000, 10000, 100000),
    registry=REGISTRY,
)
RUN_ATTEMPTS = Histogram(
    "billing_run_charge_attempts",
    "Charge attempts a billing pass made, per pass.",
    buckets=(0, 1, 10, 100, 1000, 10000, 100000),
    registry=REGISTRY,
)
JOB_RUNS = Counter(
    "billing_job_runs_total",
    "Scheduler job runs that finished, with or without error, by job.",
    ["job"],
    registry=REGISTRY,
)
JOB_ERRORS = Counter(
    "billing_job_errors_total",
    "Scheduler job runs that raised, by job.",
    ["job"],
    registry=REGISTRY,
)
JOB_MISSED = Counter(
    "billing_job_missed_total",
    "Scheduler job runs skipped because the previous one overran its slot, by job.",
    ["job"],
    registry=REGISTRY,
)
JOB_INTERVAL = Gauge(
    "billing_job_interval_seconds",
    "The configured interval of each scheduler job (alerts measure staleness against it).",
    ["job"],
    registry=REGISTRY,
)

# --- retries and dunning -------------------------------------------------------------------
RETRIES_SCHEDULED = Counter(
    "billing_retries_scheduled_total",
    "Declined attempts for which another attempt was scheduled, by decline class.",
    ["decline_class"],
    registry=REGISTRY,
)
DUNNING = Counter(
    "billing_dunning_transitions_total",
    "Dunning funnel: subscriptions entering past_due, recovered by a later charge, invoices "
    "ending uncollectible.",
    ["stage"],
    registry=REGISTRY,
)
FINAL_ACTIONS = Counter(
    "billing_dunning_final_actions_total",
    "Final actions applied when a retry chain was exhausted, by kind.",
    ["action"],
    registry=REGISTRY,
)
OUTBOX_OLDEST_AGE = Gauge(
    "billing_outbox_oldest_pending_age_seconds",
    "How long the oldest pending notification delivery has waited, by channel.",
    ["channel"],
    registry=REGISTRY,
)

# --- the process ---------------------------------------------------------------------------
BUILD_INFO = Gauge(
    "billing_build_info",
    "Always 1: the running version and the database's schema revision.",
    ["version", "schema_revision"],
    registry=REGISTRY,
)
READY = Gauge(
    "billing_ready",
    "1 when /readyz answers ready (DB reachable, schema at head, scheduler running, last pass "
    "not stale), else 0.",
    registry=REGISTRY,
)

JOBS = ("billing_pass", "reconcile", "lease_reaper", "expiry_warnings", "notify")
CHARGE_OUTCOMES = ("approved", "declined", "pending", "unknown")
DUNNING_STAGES = ("past_due", "recovered", "uncollectible")
CHANNELS = ("webhook", "email")


def precreate_labels() -> None:
    """Every bounded label set exists at 0 from the start, so rate() and absent() work before
    the first event (imports stay local: this module is imported by light CLI paths)."""
    from billing.domain.declines import DeclineClass
    from billing.domain.money import CURRENCY_DIGITS
    from billing.domain.retry import FinalAction

    for currency in CURRENCY_DIGITS:
        for outcome in CHARGE_OUTCOMES:
            CHARGE_AMOUNT.labels(currency=currency, outcome=outcome)
    for outcome in CHARGE_OUTCOMES:
        CHARGES.labels(outcome=outcome, decline_class="")
    for cls in DeclineClass:
        CHARGES.labels(outcome="declined", decline_class=str(cls))
        RETRIES_SCHEDULED.labels(decline_class=str(cls))
    for kind in ("pass", "reconcile"):
        for state in ("completed", "interrupted"):
            RUNS.labels(kind=kind, state=state)
    for job in JOBS:
        JOB_RUNS.labels(job=job)
        JOB_ERRORS.labels(job=job)
        JOB_MISSED.labels(job=job)
    for stage in DUNNING_STAGES:
        DUNNING.labels(stage=stage)
    for action in FinalAction:
        FINAL_ACTIONS.labels(action=str(action))
    for channel in CHANNELS:
        OUTBOX_OLDEST_AGE.labels(channel=channel)
        NOTIFICATIONS_DELIVERED.labels(channel=channel)
        for state in ("pending", "dead"):
            OUTBOX_BACKLOG.labels(channel=channel, state=state)


def gateway_observer(route: str, status: int | None, seconds: float) -> None:
    """Hook for PlexoClient(on_response=...)."""
    label = "error" if status is None else f"{status // 100}xx"
    GATEWAY_LATENCY.labels(route=route, status=label).observe(seconds)


class SubscriptionStateCollector(Collector):
    """billing_subscriptions{status}: read from the database at most every `ttl` seconds, so a
    scrape never queues behind billing work."""

    def __init__(self, count_by_status: Callable[[], dict[str, int]], ttl: float = 30.0) -> None:
        self._count = count_by_status
        self._ttl = ttl
        self._cached: dict[str, int] = {}
        self._at = -math.inf
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at > self._ttl:
                try:
                    self._cached = self._count()
                    self._at = time.monotonic()
                except Exception:  # a scrape must not fail because the DB hiccuped
                    pass
            counts = dict(self._cached)
        family = GaugeMetricFamily(
            "billing_subscriptions", "Subscriptions by status.", labels=["status"]
        )
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family
