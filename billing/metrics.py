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
CHARGED_AMOUNT = Counter(
    "billing_charged_amount_minor_total",
    "Approved amounts in minor units, by currency.",
    ["currency"],
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
