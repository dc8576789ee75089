"""The store side of the safety bounds (domain/bounds.py): checked at the write-ahead.

`bound_breach` runs inside the write-ahead transaction of engine/charge.py, after the card
and its caps, just before the invoice goes `charging`; `park_invoice` then parks it in that
same transaction instead. The daily count is taken after locking the customer's row
(PostgreSQL; SQLite holds the database lock from BEGIN IMMEDIATE), so two daemons writing
ahead two invoices of one customer see each other's attempt: the count cannot pass N.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, update
from sqlmodel import Session, col, select

from billing.domain.bounds import Breach, SafetyBounds, amount_breach, count_breach, local_day
from billing.domain.lifecycle import AttemptState, InvoiceStatus, check_transition
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.store.claims import row_guard
from billing.store.models import ChargeAttempt, Customer, Invoice
from billing.store.types import UTCDateTime

# Attempts that took, or may still take, the customer's money.
COUNTED = (AttemptState.approved, AttemptState.sending, AttemptState.unknown, AttemptState.pending)


def released_for(invoice: Invoice) -> bool:
    """A person released this invoice at this amount: the bounds do not apply to it."""
    return invoice.released_at is not None and invoice.released_amount_minor == invoice.amount_minor


def previous_approved(s: Session, subscription_id: int) -> tuple[int, str] | None:
    """The subscription's latest approved charge (minor units, currency), if any."""
    row = s.exec(
        select(ChargeAttempt.amount_minor, ChargeAttempt.currency)
        .join(Invoice, col(Invoice.id) == col(ChargeAttempt.invoice_id))
        .where(Invoice.subscription_id == subscription_id)
        .where(ChargeAttempt.state == AttemptState.approved)
        .order_by(col(ChargeAttempt.created_at).desc(), col(ChargeAttempt.id).desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), str(row[1]))


# Built once: bound per call by customer and the merchant-zone day.
_CHARGES_TODAY = (
    select(func.count(col(ChargeAttempt.id)))
    .join(Invoice, col(Invoice.id) == col(ChargeAttempt.invoice_id))
    .where(col(Invoice.customer_id) == bindparam("customer_id"))
    .where(col(ChargeAttempt.state).in_([str(x) for x in COUNTED]))
    .where(col(ChargeAttempt.created_at) >= bindparam("day_start", type_=UTCDateTime()))
    .where(col(ChargeAttempt.created_at) < bindparam("day_end", type_=UTCDateTime()))
)


def charges_today(s: Session, ctx: BillingContext, customer_id: int, now: datetime) -> int:
    """The customer's attempts written ahead on `now`'s merchant-zone day that are approved or
    still in flight (declined ones took no money)."""
    start, end = local_day(now, ctx.tz)
    params = {"customer_id": customer_id, "day_start": start, "day_end": end}
    return int(s.connection().execute(_CHARGES_TODAY, params).scalar_one())


def bound_breach(
    ctx: BillingContext,
    s: Session,
    invoice: Invoice,
    now: datetime,
    *,
    lock: bool = True,
    planned: int = 0,
) -> Breach | None:
    """The bound one more attempt of `invoice` would break, if any (None once released).

    `lock`: take the customer's row lock before counting; False when the caller holds it
    already (the write-ahead: choose_card(lock=True) locked it in this transaction) or reads
    only (the preview, which passes `planned`: the customer's charges it lists before this)."""
    if released_for(invoice):
        return None
    bounds: SafetyBounds = ctx.bounds
    previous = None
    if bounds.max_increase_factor:
        previous = previous_approved(s, invoice.subscription_id)
    breach = amount_breach(bounds, invoice.amount_minor, invoice.currency, previous)
    if breach is not None or not bounds.max_charges_per_day:
        return breach
    if lock:
        s.get(Customer, invoice.customer_id, with_for_update=True)
    today = charges_today(s, ctx, invoice.customer_id, now) + planned
    return count_breach(bounds, today)


def park_invoice(
    ctx: BillingContext,
    s: Session,
    invoice: Invoice,
    breach: Breach,
    now: datetime,
    run_id: int | None,
) -> bool:
    """Park the claimed invoice (compare-and-set on open + our live lease): nothing is sent,
    no next attempt, lease released; the `invoice.parked` event says why. False when the
    lease was lost meanwhile (nothing written)."""
    check_transition("invoice", InvoiceStatus(invoice.status), InvoiceStatus.parked)
    parked = s.exec(
        update(Invoice)
        .where(col(Invoice.id) == invoice.id)
        .where(
            row_guard(
                col(Invoice.status) == InvoiceStatus.open,
                col(Invoice.lease_owner) == ctx.node,
                col(Invoice.lease_until) > now,
            )
        )
        .values(
            status=InvoiceStatus.parked,
            parked_reason=str(breach.reason),
            parked_detail=breach.detail[:200],
            parked_at=now,
            next_attempt_at=None,
            lease_owner=None,
            lease_until=None,
            updated_at=now,
        )
    )
    if parked.rowcount != 1:
        return False
    assert invoice.id is not None
    # data shape is a contract (`runs show` reads it): run_id, reason, detail, amount, currency.
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event="invoice.parked",
        actor=ctx.actor,
        reason=breach.detail,
        extra_data={"reason": str(breach.reason)},
        run_id=run_id,
        detail=breach.detail,
        amount_minor=invoice.amount_minor,
        currency=invoice.currency,
    )
    return True
