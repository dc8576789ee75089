"""The delivery job: fan new outbox events out to their receivers, then deliver due ones.

At least once: a delivery is leased (store/outbox.py, the claims.py pattern) so two daemons
never send it at the same time, and it is marked delivered only after the receiver said 2xx.
A crash between the send and that mark sends it again after the lease: receivers dedupe on
the event id, which never changes. Failures back off exponentially; after
`notify_max_attempts` the delivery is dead until `billing notifications redeliver`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, func, text
from sqlmodel import Session, col, select

from billing import metrics
from billing.domain.money import to_major
from billing.domain.notifications import EMAIL_TYPES, backoff
from billing.engine.context import BillingContext
from billing.logs import log_event
from billing.notify.config import NotifyConfig
from billing.notify.email import LANGUAGES, SMTP_TIMEOUT_SECONDS, build_message, send_message
from billing.notify.webhook import DeliveryFailed, post_webhook
from billing.store.db import indexed_plans_only, session
from billing.store.models import (
    DELIVERY_BACKLOG,
    Customer,
    Invoice,
    OutboxDelivery,
    OutboxEvent,
    PaymentInstrument,
    Plan,
    Subscription,
)
from billing.store.outbox import claim_deliveries, fan_out, finish_delivery

log = logging.getLogger("billing.notify")
BATCH = 100
LINK_TYPES = frozenset({"invoice.payment_failed", "instrument.expiring"})
"""Emails that carry a fresh Plexo tokenization link to add a card."""


@dataclass
class DeliverySummary:
    fanned_out: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0


class Final(DeliveryFailed):
    """A failure no retry can fix (no recipient, endpoint removed): dead at once."""


class Notifier:
    def __init__(self, ctx: BillingContext, cfg: NotifyConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    @property
    def lease_seconds(self) -> int:
        """Long enough for one try (its timeouts, twice), so that no other node sends the same
        delivery while this one may still be sending it."""
        longest = self.cfg.webhook_timeout_seconds
        if self.cfg.email_enabled:
            longest = max(longest, SMTP_TIMEOUT_SECONDS)
        return max(self.ctx.lease_seconds, math.ceil(longest) * 2 + 5)

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> DeliverySummary:
        """One job run: fan out, then deliver up to BATCH due deliveries, `concurrency` at a
        time (each small batch leased just before it is sent)."""
        ctx = self.ctx
        summary = DeliverySummary()
        summary.fanned_out = fan_out(ctx.engine, ctx.clock.now(), self.cfg.targets(), EMAIL_TYPES)
        size = max(1, ctx.concurrency)
        handled = 0
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix="notify") as pool:
            while handled < BATCH and not should_stop():
                now = ctx.clock.now()
                claimed = claim_deliveries(ctx.engine, ctx.node, now, self.lease_seconds, size)
                if not claimed:
                    break
                handled += len(claimed)
                for outcome in pool.map(self.deliver_one, claimed):
                    if outcome == "delivered":
                        summary.delivered += 1
                    elif outcome == "dead":
                        summary.dead += 1
                    elif outcome == "pending":
                        summary.failed += 1
        return summary

    def deliver_one(self, delivery_id: int) -> str:
        """Try one leased delivery; returns its new state ('' if the lease was lost)."""
        ctx = self.ctx
        with session(ctx.engine) as s:
            delivery = s.get(OutboxDelivery, delivery_id)
            assert delivery is not None
            event = s.get(OutboxEvent, delivery.outbox_id)
            assert event is not None
        error: DeliveryFailed | None = None
        try:
            if delivery.channel == "webhook":
                self._webhook(delivery, event)
            else:
                self._email(event)
        except DeliveryFailed as exc:
            error = exc
        except Exception as exc:  # a bug or a dependency: keep the job alive, retry later
            error = DeliveryFailed("error", f"failed ({type(exc).__name__})")
        now = ctx.clock.now()
        attempts = delivery.attempts + 1
        if error is None:
            state, next_at, message = "delivered", None, None
        elif isinstance(error, Final) or attempts >= self.cfg.max_attempts:
            state, next_at, message = "dead", None, str(error)[:200]
        else:
            state = "pending"
            next_at = now + backoff(attempts, self.cfg.backoff_seconds)
            message = str(error)[:200]
        assert delivery.id is not None
        if not finish_delivery(
            ctx.engine, delivery.id, ctx.node, now, state=state, error=message, next_at=next_at
        ):
            return ""
        fields: dict[str, Any] = {
            "event_id": event.event_id,
            "type": event.type,
            "channel": delivery.channel,
            "attempts": attempts,
        }
        if delivery.channel == "webhook":
            fields["host"] = urlsplit(delivery.target).hostname or ""
        if error is None:
            metrics.NOTIFICATIONS_DELIVERED.labels(channel=delivery.channel).inc()
            log_event(log, "notify.delivered", **fields)
        else:
            metrics.NOTIFICATION_FAILURES.labels(
                channel=delivery.channel, reason=error.reason
            ).inc()
            level = logging.ERROR if state == "dead" else logging.WARNING
            log_event(
                log,
                f"notify.{'dead' if state == 'dead' else 'failed'}",
                level=level,
                error=message,
                next_attempt_at=next_at,
                **fields,
            )
        return state

    def _webhook(self, delivery: OutboxDelivery, event: OutboxEvent) -> None:
        if delivery.target not in self.cfg.webhook_urls:
            raise Final("removed", "endpoint no longer configured")
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=self.cfg.webhook_timeout_seconds, follow_redirects=False
                )
        secret = self.cfg.webhook_secret.get_secret_value()
        post_webhook(self._http, delivery.target, event, secret, self.ctx.clock.now())

    def _email(self, event: OutboxEvent) -> None:
        if not self.cfg.email_enabled:
            raise Final("removed", "email is no longer configured")
        with session(self.ctx.engine) as s:
            customer = s.get(Customer, event.customer_id) if event.customer_id else None
            if customer is None or customer.status == "deleted" or not customer.email:
                raise Final("no_recipient", "the customer has no email address")
            values = _values(s, event, customer)
        if event.type in LINK_TYPES:
            values["update_url"] = self._update_link(customer)
        language = str(customer.attributes.get("language", "")).lower()
        message = build_message(
            self.cfg,
            customer.email,
            event.type,
            language if language in LANGUAGES else self.cfg.email_language,
            values,
            event.event_id,
        )
        send_message(self.cfg, message)

    def _update_link(self, customer: Customer) -> str:
        """A fresh Plexo tokenization session, so the customer can add a card."""
        from billing.engine.customers import link_instrument

        if customer.plexo_id is None:
            raise Final("no_recipient", "the customer is not registered at Plexo")
        try:
            return link_instrument(self.ctx, customer.reference_id)
        except Exception as exc:
            raise DeliveryFailed(
                "gateway", f"tokenization link failed ({type(exc).__name__})"
            ) from None

    def gauge_samples(self) -> metrics.Samples:
        """The outbox gauges (metrics.OUTBOX): backlog by channel and state, oldest pending."""
        return outbox_samples(self.ctx.engine, self.ctx.clock.now())


def outbox_samples(engine: Engine, now: datetime) -> metrics.Samples:
    """Pending and dead deliveries by channel, and how long the oldest pending one has waited
    (every channel and state present, 0 when none)."""
    with session(engine) as s:
        indexed_plans_only(s)
        rows = s.exec(
            select(
                OutboxDelivery.channel,
                OutboxDelivery.state,
                func.count(),
                func.min(OutboxDelivery.created_at),
            )
            .where(text(DELIVERY_BACKLOG))  # ix_outbox_delivery_backlog (partial)
            .group_by(col(OutboxDelivery.channel), col(OutboxDelivery.state))
        ).all()
    backlog: dict[metrics.Labels, float] = {
        (c, st): 0.0 for c in metrics.CHANNELS for st in ("pending", "dead")
    }
    oldest: dict[metrics.Labels, float] = {(c,): 0.0 for c in metrics.CHANNELS}
    for channel, state, count, first in rows:
        backlog[(channel, state)] = float(count)
        if state == "pending" and first is not None:
            oldest[(channel,)] = max(0.0, (now - first).total_seconds())
    return {metrics.OUTBOX_BACKLOG.name: backlog, metrics.OUTBOX_OLDEST_AGE.name: oldest}


def _values(s: Session, event: OutboxEvent, customer: Customer) -> dict[str, str]:
    """Template values from the ids in the payload (read now: the payload has ids only)."""
    data = event.payload
    values = {
        "name": customer.first_name or customer.email,
        "customer_reference": customer.reference_id,
        "event_id": event.event_id,
        "update_url": "",
    }
    invoice = (
        s.get(Invoice, data["invoice_id"]) if isinstance(data.get("invoice_id"), int) else None
    )
    if invoice is not None:
        values["invoice_number"] = invoice.number
        values["amount"] = f"{invoice.currency} {to_major(invoice.amount_minor, invoice.currency)}"
    sub_id = data.get("subscription_id") or (invoice.subscription_id if invoice else None)
    sub = s.get(Subscription, sub_id) if isinstance(sub_id, int) else None
    if sub is not None:
        plan = s.get(Plan, sub.plan_id)
        values["plan"] = plan.name if plan is not None else ""
    instrument_id = data.get("instrument_id")
    card = s.get(PaymentInstrument, instrument_id) if isinstance(instrument_id, int) else None
    if card is not None:
        values["card"] = f"{card.brand or ''} **** {card.last4 or ''}".strip()
        if card.exp_month and card.exp_year:
            values["expires"] = f"{card.exp_month:02d}/{card.exp_year}"
    return values
