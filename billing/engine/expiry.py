"""Pre-dunning (issue 6 item 6): warn a customer before the card their next renewal will be
charged on expires, at each configured number of days ahead (30 and 7 by default), once each
per card.

The event `instrument.expiring` (delivered as a webhook / email by the notification outbox)
and the `instrument_warning` row that says it was sent are written in one transaction; the
row's UNIQUE (card, expiry, days ahead) makes a second daemon or a rerun a no-op. When
several thresholds are due at once (a card first seen 5 days before it expires) one event is
sent, for the nearest, and all of them are recorded, so the 30-day one never follows the 7-day.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from billing.domain.expiry import card_expires_at, due_warnings, renews_after_expiry
from billing.domain.lifecycle import SubscriptionStatus
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.retries import renewal_card
from billing.logs import log_event
from billing.store.db import session
from billing.store.models import InstrumentWarning, PaymentInstrument, Subscription

log = logging.getLogger(__name__)

EXPIRING_EVENT = "instrument.expiring"
# Subscriptions that will renew (and so charge a card) again.
RENEWING = (
    SubscriptionStatus.active,
    SubscriptionStatus.trialing,
    SubscriptionStatus.past_due,
    SubscriptionStatus.incomplete,
)


def send_expiry_warnings(ctx: BillingContext, limit: int = 1000) -> int:
    """Record the expiry warnings due at the clock's now; returns how many events were sent."""
    if not ctx.expiry_warn_days:
        return 0
    now = ctx.clock.now()
    horizon = (now + timedelta(days=max(ctx.expiry_warn_days) + 1)).astimezone(ctx.tz)
    local = now.astimezone(ctx.tz)
    months = (local.year * 12 + local.month, horizon.year * 12 + horizon.month)
    sent = 0
    for instrument_id, subscription_id in _candidates(ctx, *months):
        if sent >= limit:
            break
        try:
            sent += _warn(ctx, instrument_id, subscription_id)
        except IntegrityError:  # another node recorded it first: sent once, by them
            continue
    if sent:
        log_event(log, "instrument.expiring", count=sent)
    return sent


def _candidates(ctx: BillingContext, this_month: int, horizon_month: int) -> list[tuple[int, int]]:
    """(card, subscription) pairs: the card the subscription's next charge would use, which
    expires between this month and the horizon month (year * 12 + month; cards expired
    before are past warning). One subscription per card (the first to renew)."""
    with session(ctx.engine) as s:
        subs = s.exec(
            select(Subscription)
            .join(
                PaymentInstrument,
                col(PaymentInstrument.customer_id) == col(Subscription.customer_id),
            )
            .where(col(Subscription.status).in_([str(x) for x in RENEWING]))
            .where(col(Subscription.next_billing_at).is_not(None))
            .where(PaymentInstrument.status == "active")
            .where(col(PaymentInstrument.exp_year).is_not(None))
            .where(col(PaymentInstrument.exp_month).is_not(None))
            .where(
                (col(PaymentInstrument.exp_year) * 12 + col(PaymentInstrument.exp_month)).between(
                    this_month, horizon_month
                )
            )
            .order_by(col(Subscription.next_billing_at), col(Subscription.id))
            .distinct()
        ).all()
        pairs: dict[int, int] = {}
        for sub in subs:
            card = renewal_card(s, sub)
            if card is not None and card.id is not None and sub.id is not None:
                pairs.setdefault(card.id, sub.id)
    return list(pairs.items())


def _warn(ctx: BillingContext, instrument_id: int, subscription_id: int) -> int:
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        card = s.get(PaymentInstrument, instrument_id)
        sub = s.get(Subscription, subscription_id)
        if card is None or sub is None or card.exp_month is None or card.exp_year is None:
            return 0
        expires_at = card_expires_at(card.exp_month, card.exp_year, ctx.tz)
        if expires_at is None or not renews_after_expiry(sub.next_billing_at, expires_at):
            return 0
        sent = set(
            s.exec(
                select(InstrumentWarning.days_before)
                .where(InstrumentWarning.instrument_id == instrument_id)
                .where(InstrumentWarning.expires_at == expires_at)
            ).all()
        )
        due = due_warnings(expires_at, now, ctx.expiry_warn_days, sent, ctx.tz)
        if not due:
            return 0
        for days in due:
            s.add(
                InstrumentWarning(
                    instrument_id=instrument_id,
                    expires_at=expires_at,
                    days_before=days,
                    subscription_id=subscription_id,
                    sent_at=now,
                )
            )
        s.flush()  # the UNIQUE check happens here, before the event is written
        assert sub.next_billing_at is not None
        record_event(
            s,
            at=now,
            entity_type="instrument",
            entity_id=instrument_id,
            event=EXPIRING_EVENT,
            actor=ctx.actor,
            reason=f"card expires before the next renewal ({due[-1]} days ahead)",
            customer_id=card.customer_id,
            subscription_id=subscription_id,
            days_before=due[-1],
            expires_at=expires_at.isoformat(),
            next_billing_at=sub.next_billing_at.isoformat(),
        )
        return 1
