"""Turn due subscription periods into invoices, one per (subscription, period_start).

Each subscription advances in its own short transaction guarded by a compare-and-set on
`next_period_index`, so two daemons never both invoice a period; the UNIQUE constraint on
(subscription_id, period_start) is the last line of defence.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from billing.domain.lifecycle import InvoiceStatus, SubscriptionStatus
from billing.domain.periods import Interval, period_bounds, period_start, periods_started_by
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.logs import log_event
from billing.store.db import session
from billing.store.models import Invoice, Plan, Subscription

log = logging.getLogger(__name__)

# Subscriptions whose periods keep being invoiced.
INVOICING_STATUSES = (
    SubscriptionStatus.active,
    SubscriptionStatus.trialing,
    SubscriptionStatus.past_due,
    SubscriptionStatus.incomplete,
)
# Upper bound of periods invoiced for one subscription in one step (a long outage catches up
# over several steps rather than in one huge transaction).
MAX_PERIODS_PER_STEP = 64


def new_invoice_number() -> str:
    """Random and never reused, even after the database is rebuilt (see Invoice.number)."""
    return "INV-" + secrets.token_hex(6).upper()


@dataclass(frozen=True)
class Step:
    """What one step did for one subscription: invoices created, or held for review."""

    created: int = 0
    held: bool = False


@dataclass
class Invoiced:
    """What one pass's invoicing did: invoices created, subscriptions held for review."""

    created: int = 0
    held: int = 0


def due_subscription_ids(ctx: BillingContext, now: datetime, limit: int = 1000) -> list[int]:
    """Subscriptions with at least one period started and not yet invoiced (held ones wait)."""
    with session(ctx.engine) as s:
        rows = s.exec(
            select(Subscription.id)
            .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
            .where(col(Subscription.next_billing_at) <= now)
            .where(col(Subscription.held_at).is_(None))
            .order_by(col(Subscription.next_billing_at), col(Subscription.id))
            .limit(limit)
        ).all()
    return [r for r in rows if r is not None]


def started_periods(ctx: BillingContext, sub: Subscription, plan: Plan, now: datetime) -> list[int]:
    """Indices of the periods of `sub` that started by `now` and are not invoiced yet."""
    interval, count = Interval(plan.interval), plan.interval_count
    return periods_started_by(sub.anchor_at, interval, count, sub.next_period_index, now, ctx.tz)


def over_cap(ctx: BillingContext, sub: Subscription, indices: list[int]) -> int:
    """How many of `indices` exceed the catch-up cap (0 = none): periods a release allowed
    (up to `catchup_through_index`) do not count."""
    allowed = sub.catchup_through_index
    uncovered = len(indices) if allowed is None else sum(1 for i in indices if i > allowed)
    return uncovered if uncovered > ctx.catchup_max_periods else 0


def invoice_due_periods(ctx: BillingContext, subscription_id: int, now: datetime) -> Step:
    """Create the invoices of the started periods of one subscription (at most
    MAX_PERIODS_PER_STEP), or hold it for review when more are due than the catch-up cap."""
    with session(ctx.engine) as s:
        sub = s.get(Subscription, subscription_id)
        if sub is None or sub.status not in INVOICING_STATUSES or sub.held_at is not None:
            return Step()
        plan = s.get(Plan, sub.plan_id)
        assert plan is not None
        indices = started_periods(ctx, sub, plan, now)
        if not indices:
            return Step()
        if over_cap(ctx, sub, indices):
            return Step(held=_hold(ctx, s, sub, len(indices), now))
        created = invoice_periods(ctx, s, sub, plan, indices[:MAX_PERIODS_PER_STEP], now)
        return Step(created=max(created, 0))


def _hold(ctx: BillingContext, s: Session, sub: Subscription, due: int, now: datetime) -> bool:
    """Hold `sub` for review (guarded like invoicing: only if nobody moved it meanwhile)."""
    assert sub.id is not None
    reason = f"{due} periods due at once, more than the catch-up cap of {ctx.catchup_max_periods}"
    held = s.exec(
        update(Subscription)
        .where(col(Subscription.id) == sub.id)
        .where(col(Subscription.next_period_index) == sub.next_period_index)
        .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
        .where(col(Subscription.held_at).is_(None))
        .values(held_at=now, held_reason=reason, held_periods=due, updated_at=now)
    )
    if held.rowcount != 1:
        s.rollback()
        return False
    log_event(log, "subscription.held", logging.WARNING, subscription_id=sub.id, periods=due)
    record_event(
        s,
        at=now,
        entity_type="subscription",
        entity_id=sub.id,
        event="subscription.held",
        actor=ctx.actor,
        reason=reason,
        periods=due,
        cap=ctx.catchup_max_periods,
        first_period_index=sub.next_period_index,
    )
    return True


def period_invoices(
    ctx: BillingContext,
    sub: Subscription,
    plan: Plan,
    indices: list[int],
    now: datetime,
    number: Callable[[], str],
) -> tuple[list[Invoice], datetime | None]:
    """The invoices for `indices` (nothing written), stopping at a cancel at period end: then
    also the moment the subscription ends. Shared by invoicing and the preview."""
    assert sub.id is not None
    interval = Interval(plan.interval)
    created: list[Invoice] = []
    for index in indices:
        start, end = period_bounds(sub.anchor_at, interval, plan.interval_count, index, ctx.tz)
        ends = sub.current_period_end
        if sub.cancel_at_period_end and ends is not None and start >= ends:
            return created, start
        created.append(
            Invoice(
                number=number(),
                subscription_id=sub.id,
                customer_id=sub.customer_id,
                period_index=index,
                period_start=start,
                period_end=end,
                amount_minor=plan.amount_minor,
                currency=plan.currency,
                status=InvoiceStatus.open,
                next_attempt_at=start,
                created_at=now,
                updated_at=now,
            )
        )
    return created, None


def invoice_periods(
    ctx: BillingContext,
    s: Session,
    sub: Subscription,
    plan: Plan,
    indices: list[int],
    now: datetime,
) -> int:
    """Invoice `indices` (consecutive, from sub.next_period_index) in the caller's transaction;
    returns how many, or -1 when the compare-and-set lost (someone moved the subscription)."""
    subscription_id = sub.id
    assert subscription_id is not None
    interval = Interval(plan.interval)
    first = sub.next_period_index
    created, cancel_at = period_invoices(ctx, sub, plan, indices, now, new_invoice_number)
    next_index = first + len(created)
    values: dict[str, object] = {
        "next_period_index": next_index,
        "next_billing_at": period_start(
            sub.anchor_at, interval, plan.interval_count, next_index, ctx.tz
        ),
        "updated_at": now,
    }
    allowed = sub.catchup_through_index
    if allowed is not None and next_index > allowed:
        values["catchup_through_index"] = None  # a release's allowance is used once
    if cancel_at is not None:
        values.update(
            status=SubscriptionStatus.canceled, canceled_at=cancel_at, next_billing_at=None
        )
    # Compare-and-set: only the node that moves next_period_index from `first` invoices...
    moved = s.exec(
        update(Subscription)
        .where(col(Subscription.id) == subscription_id)
        .where(col(Subscription.next_period_index) == first)
        # ...and only if nobody paused, canceled or held it since we read it.
        .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
        .where(col(Subscription.cancel_at_period_end) == sub.cancel_at_period_end)
        .where(col(Subscription.held_at).is_(None))
        .values(**values)
    )
    if moved.rowcount != 1:
        s.rollback()
        return -1
    for invoice in created:
        s.add(invoice)
    s.flush()
    for invoice in created:
        assert invoice.id is not None
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice.id,
            event="invoice.created",
            actor=ctx.actor,
            reason="period started",
            number=invoice.number,
            period_start=invoice.period_start.isoformat(),
            amount_minor=invoice.amount_minor,
            currency=invoice.currency,
        )
    if cancel_at is not None:
        record_event(
            s,
            at=now,
            entity_type="subscription",
            entity_id=subscription_id,
            event="subscription.canceled",
            actor=ctx.actor,
            reason="canceled at period end",
        )
    return len(created)


def create_due_invoices(ctx: BillingContext, now: datetime) -> Invoiced:
    """Invoice every started period of every due subscription; hold those over the cap."""
    total = Invoiced()
    while True:
        steps = [invoice_due_periods(ctx, sid, now) for sid in due_subscription_ids(ctx, now)]
        created = sum(step.created for step in steps)
        held = sum(1 for step in steps if step.held)
        total.created += created
        total.held += held
        if created == 0 and held == 0:
            return total


def void_open_invoices(
    ctx: BillingContext,
    s: Session,
    now: datetime,
    reason: str,
    *,
    subscription_id: int | None = None,
    customer_id: int | None = None,
) -> int:
    """Void the open (and parked) invoices of a subscription or customer, atomically
    `WHERE status IN ('open', 'parked')`: an invoice a node moved to `charging` meanwhile is
    left alone (its charge may take money)."""
    query = update(Invoice).where(
        col(Invoice.status).in_([InvoiceStatus.open, InvoiceStatus.parked])
    )
    if subscription_id is not None:
        query = query.where(col(Invoice.subscription_id) == subscription_id)
    if customer_id is not None:
        query = query.where(col(Invoice.customer_id) == customer_id)
    voided = s.exec(
        query.values(status=InvoiceStatus.void, next_attempt_at=None, updated_at=now).returning(
            col(Invoice.id)
        )
    ).all()
    for (invoice_id,) in voided:
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice_id,
            event="invoice.voided",
            actor=ctx.actor,
            reason=reason,
        )
    return len(voided)
