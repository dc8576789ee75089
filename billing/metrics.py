"""Every Prometheus metric in one place. Labels are bounded: never a customer or invoice id.

Most metrics are counted where things happen. The ones read from the database (backlogs,
ages, subscriptions by status) are `StoreGauge`s served by two `CachedCollector`s registered
below: the daemon binds them to its queries; nothing is queried at import or registration.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from billing.logs import log_event

log = logging.getLogger("billing.metrics")

# No `*_created` series beside every counter and histogram: nothing reads them, and the text
# format exposes each as one more gauge per label set.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes...

# How long a DB-derived value is served before the next scrape reads the database again,
# and how long a scrape waits for that read before serving the values it has.
CACHE_TTL_SECONDS = 15.0
READ_WAIT_SECONDS = 2.0

Labels = tuple[str, ...]
Samples = Mapping[str, Mapping[Labels, float]]
"""What a store query returns: {family name: {label values: value}}."""


@dataclass(frozen=True)
class StoreGauge:
    """A gauge whose value is read from the database by a cached collector, not set."""

    name: str
    documentation: str
    labels: Labels = ()

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))


class CachedCollector(Collector):
    """Serves `gauges` from `query()` (see `bind`), read at most once per `ttl` seconds.

    Never queries at registration (describe() names the families). The read runs in its own
    thread, one at a time: concurrent scrapes wait for the same read, each at most `wait`
    seconds, then serve the values they have (a database that hangs cannot hold a scrape).
    A failed read keeps the last values (logged, never raised) and is tried again after `ttl`.
    """

    def __init__(
        self,
        name: str,
        gauges: Sequence[StoreGauge],
        ttl: float = CACHE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wait: float = READ_WAIT_SECONDS,
    ) -> None:
        self.name = name
        self.gauges = tuple(gauges)
        self.ttl = ttl
        self.wait = wait
        self._clock = clock
        self._lock = threading.Lock()
        self._query: Callable[[], Samples] | None = None
        self._values: Samples = {}
        self._read_at = -math.inf
        self._reading: threading.Event | None = None  # set when the read in flight ends
        self._generation = 0  # bumped by bind(): a read of a previous query is discarded

    def bind(self, query: Callable[[], Samples] | None) -> None:
        """Read from `query` from now on (None: serve nothing); forgets the cached values."""
        with self._lock:
            self._query = query
            self._values = {}
            self._read_at = -math.inf
            self._reading = None
            self._generation += 1

    def describe(self) -> Iterator[Metric]:
        for gauge in self.gauges:
            yield gauge.family()

    def collect(self) -> Iterator[Metric]:
        self._refresh()
        values = self._values  # replaced whole, never mutated: a consistent snapshot
        for gauge in self.gauges:
            family = gauge.family()
            for labels, value in sorted(values.get(gauge.name, {}).items()):
                family.add_metric(list(labels), value)
            yield family

    def _refresh(self) -> None:
        with self._lock:
            if self._query is None:
                return
            if self._reading is None:
                if self._clock() - self._read_at < self.ttl:
                    return
                self._reading = threading.Event()
                threading.Thread(
                    target=self._read,
                    args=(self._query, self._generation, self._reading),
                    name=f"metrics-{self.name}",
                    daemon=True,
                ).start()
            reading = self._reading
        reading.wait(self.wait)

    def _read(self, query: Callable[[], Samples], generation: int, done: threading.Event) -> None:
        values: Samples | None = None
        try:
            values = dict(query())
        except Exception as exc:  # the database hiccuped: a scrape must not fail for it
            log_event(
                log,
                "metrics.read_failed",
                logging.WARNING,
                collector=self.name,
                error=type(exc).__name__,  # not its text: it could name the database URL
            )
        with self._lock:
            if generation == self._generation:
                if values is not None:
                    self._values = values
                self._read_at = self._clock()
                self._reading = None
        done.set()


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
    ["scheduler_job"],
    registry=REGISTRY,
)
PASS_PROGRESS = Gauge(
    "billing_pass_progress_timestamp_seconds",
    "Unix time billing passes last moved: a pass finished without error or a running pass "
    "moved on to another invoice (set to the start time when the daemon starts). A long pass "
    "on billing day is progress, not staleness.",
    registry=REGISTRY,
)
# --- read from the database: served by the cached collectors at the end of this module ---
SUBSCRIPTIONS = StoreGauge("billing_subscriptions", "Subscriptions by status.", ("status",))
UNKNOWN_OUTCOMES = StoreGauge(
    "billing_unknown_outcomes",
    "Charge attempts whose outcome is not yet known (sending, unknown, pending).",
)
UNKNOWN_OLDEST_AGE = StoreGauge(
    "billing_unknown_outcome_oldest_age_seconds",
    "Age of the oldest unresolved charge attempt.",
)
DUE_BACKLOG = StoreGauge("billing_due_invoices", "Open invoices due for an attempt now.")
DUE_OLDEST_AGE = StoreGauge(
    "billing_due_invoice_oldest_age_seconds",
    "How long the oldest due invoice has waited.",
)
SUBSCRIPTIONS_HELD = StoreGauge(
    "billing_subscriptions_held",
    "Subscriptions held for review: more periods due at once than the catch-up cap.",
)
INVOICES_PARKED = StoreGauge(
    "billing_invoices_parked",
    "Invoices parked over a safety bound (ceiling, factor, daily count): not charged until "
    "`billing invoices release`.",
)
RECONCILIATION_OPEN = StoreGauge(
    "billing_reconciliation_open_findings",
    "Open findings of ledger checks against Plexo (billing reconcile), by kind "
    "(missing_here, missing_at_plexo, status_mismatch, amount_mismatch).",
    ("kind",),
)
OUTBOX_BACKLOG = StoreGauge(
    "billing_outbox_deliveries",
    "Notification deliveries waiting (pending) or dead-lettered, by channel (webhook, email).",
    ("channel", "state"),
)
OUTBOX_OLDEST_AGE = StoreGauge(
    "billing_outbox_oldest_pending_age_seconds",
    "How long the oldest pending notification delivery has waited, by channel.",
    ("channel",),
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
    ["scheduler_job"],
    registry=REGISTRY,
)
JOB_ERRORS = Counter(
    "billing_job_errors_total",
    "Scheduler job runs that raised, by job.",
    ["scheduler_job"],
    registry=REGISTRY,
)
JOB_MISSED = Counter(
    "billing_job_missed_total",
    "Scheduler job runs skipped because the previous one overran its slot, by job.",
    ["scheduler_job"],
    registry=REGISTRY,
)
JOB_INTERVAL = Gauge(
    "billing_job_interval_seconds",
    "The configured interval of each scheduler job (alerts measure staleness against it).",
    ["scheduler_job"],
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

# watchdog runs only under systemd's WatchdogSec; its missed runs are pings that waited.
JOBS = ("billing_pass", "reconcile", "lease_reaper", "expiry_warnings", "notify", "watchdog")
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
        JOB_RUNS.labels(scheduler_job=job)
        JOB_ERRORS.labels(scheduler_job=job)
        JOB_MISSED.labels(scheduler_job=job)
    for stage in DUNNING_STAGES:
        DUNNING.labels(stage=stage)
    for action in FinalAction:
        FINAL_ACTIONS.labels(action=str(action))
    for channel in CHANNELS:
        NOTIFICATIONS_DELIVERED.labels(channel=channel)


def gateway_observer(route: str, status: int | None, seconds: float) -> None:
    """Hook for PlexoClient(on_response=...)."""
    label = "error" if status is None else f"{status // 100}xx"
    GATEWAY_LATENCY.labels(route=route, status=label).observe(seconds)


STORE = CachedCollector(
    "store",
    (
        SUBSCRIPTIONS,
        SUBSCRIPTIONS_HELD,
        INVOICES_PARKED,
        DUE_BACKLOG,
        DUE_OLDEST_AGE,
        UNKNOWN_OUTCOMES,
        UNKNOWN_OLDEST_AGE,
        RECONCILIATION_OPEN,
    ),
)
OUTBOX = CachedCollector("outbox", (OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE))
REGISTRY.register(STORE)
REGISTRY.register(OUTBOX)


def set_build_info(version: str, schema_revision: str) -> None:
    """billing_build_info{version, schema_revision} = 1, the only label set."""
    BUILD_INFO.clear()
    BUILD_INFO.labels(version=version, schema_revision=schema_revision).set(1)


def declared_names(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """Every metric family the registry serves (as named in the exposition's TYPE lines);
    a bound cached collector is read for it, an unbound one just names its families."""
    return {metric.name for metric in registry.collect()}
