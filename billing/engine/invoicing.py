"""Turn due subscription periods into invoices, one per (subscription, period_start).

Each subscription advances in its own short transaction guarded by a compare-and-set on
`next_period_index`, so two daemons never both invoice a period; the UNIQUE constraint on
(subscription_id, period_start) is the last line of defence.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from billing.domain.lifecycle import InvoiceStatus, SubscriptionStatus
from billing.domain.periods import Interval, period_bounds, period_start, periods_started_by
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.store.db import session
from billing.store.models import Invoice, Plan, Subscription

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


def due_subscription_ids(ctx: BillingContext, now: datetime, limit: int = 1000) -> list[int]:
    """Subscriptions with at least one period started and not yet invoiced."""
    with session(ctx.engine) as s:
        rows = s.exec(
            select(Subscription.id)
            .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
            .where(col(Subscription.next_billing_at) <= now)
            .order_by(col(Subscription.next_billing_at), col(Subscription.id))
            .limit(limit)
        ).all()
    return [r for r in rows if r is not None]


def invoice_due_periods(ctx: BillingContext, subscription_id: int, now: datetime) -> int:
    """Create the invoices of every started period of one subscription; returns how many."""
    with session(ctx.engine) as s:
        sub = s.get(Subscription, subscription_id)
        if sub is None or sub.status not in INVOICING_STATUSES:
            return 0
        plan = s.get(Plan, sub.plan_id)
        assert plan is not None
        interval = Interval(plan.interval)
        first = sub.next_period_index
        indices = periods_started_by(
            sub.anchor_at, interval, plan.interval_count, first, now, ctx.tz
        )[:MAX_PERIODS_PER_STEP]
        if not indices:
            return 0
        cancel_at: datetime | None = None
        created: list[Invoice] = []
        for index in indices:
            start, end = period_bounds(sub.anchor_at, interval, plan.interval_count, index, ctx.tz)
            ends = sub.current_period_end
            if sub.cancel_at_period_end and ends is not None and start >= ends:
                cancel_at = start
                break
            created.append(
                Invoice(
                    number=new_invoice_number(),
                    subscription_id=subscription_id,
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
        next_index = first + len(created)
        values: dict[str, object] = {
            "next_period_index": next_index,
            "next_billing_at": period_start(
                sub.anchor_at, interval, plan.interval_count, next_index, ctx.tz
            ),
            "updated_at": now,
        }
        if cancel_at is not None:
            values.update(
                status=SubscriptionStatus.canceled, canceled_at=cancel_at, next_billing_at=None
            )
        # Compare-and-set: only the node that moves next_period_index from `first` invoices...
        moved = s.exec(
            update(Subscription)
            .where(col(Subscription.id) == subscription_id)
            .where(col(Subscription.next_period_index) == first)
            # ...and only if nobody paused or canceled it since we read it.
            .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
            .where(col(Subscription.cancel_at_period_end) == sub.cancel_at_period_end)
            .values(**values)
        )
        if moved.rowcount != 1:
            s.rollback()
            return 0
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


def create_due_invoices(ctx: BillingContext, now: datetime) -> int:
    """Invoice every started period of every due subscription."""
    total = 0
    while True:
        ids = due_subscription_ids(ctx, now)
        step = sum(invoice_due_periods(ctx, sid, now) for sid in ids)
        total += step
        if step == 0:
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
    """Void the open invoices of a subscription or customer, atomically `WHERE status='open'`:
    an invoice a node moved to `charging` meanwhile is left alone (its charge may take money)."""
    query = update(Invoice).where(col(Invoice.status) == InvoiceStatus.open)
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
