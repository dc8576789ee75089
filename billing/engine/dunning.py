"""Operator views and acts on dunning: retry an invoice now, and a subscription's stage.

A manual retry goes through the same claim -> write-ahead -> call -> record path as a
scheduled one, so the same caps decide (engine/retries.py); refusing early here only gives the
operator a clear line before anything is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from billing.domain.lifecycle import InvoiceStatus
from billing.domain.retry import final_action, slots
from billing.engine.charge import AttemptResult, charge_invoice, fallback_allowed
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.retries import cap_refusal, choose_card
from billing.engine.subscriptions import checked_reason
from billing.errors import Conflict, InvalidInput, NotFound
from billing.store.db import session
from billing.store.models import ChargeAttempt, Invoice, Subscription, is_row_id


@dataclass(frozen=True)
class RetryResult:
    invoice_number: str
    attempt_number: int
    outcome: str  # approved | declined | pending | unknown
    reference_id: str | None
    decline_code: str | None
    decline_class: str | None
    invoice_status: str
    next_attempt_at: datetime | None


def find_invoice(s: Session, which: str) -> Invoice:
    """An invoice by its number (INV-...) or its row id."""
    text = which.strip()
    invoice: Invoice | None = None
    if text.isascii() and text.isdigit() and len(text) < 12:
        if is_row_id(int(text)):
            invoice = s.get(Invoice, int(text))
    elif text.isascii() and text.isprintable() and len(text) <= 32:
        invoice = s.exec(select(Invoice).where(Invoice.number == text.upper())).first()
    if invoice is None:
        raise NotFound(f"no invoice {which!r}")
    return invoice


def retry_invoice(ctx: BillingContext, which: str, reason: str) -> RetryResult:
    """Charge an open invoice now, within the card-network caps; refuse in one line otherwise."""
    why = checked_reason(reason)
    if not why:
        raise InvalidInput("--reason must not be empty")
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        invoice = find_invoice(s, which)
        assert invoice.id is not None
        invoice_id, number = invoice.id, invoice.number
        if invoice.status != InvoiceStatus.open:
            raise Conflict(f"invoice {number} is {invoice.status}: only an open one can be retried")
        sub = s.get(Subscription, invoice.subscription_id)
        assert sub is not None
        card = choose_card(s, sub, invoice, fallback=fallback_allowed(ctx, invoice))
        if card is None or card.id is None:
            raise Conflict(f"invoice {number}: the customer has no card that may be charged")
        refused = cap_refusal(s, invoice, card.id, now)
        if refused is not None:
            when = f"; possible from {refused.until.isoformat()}" if refused.until else ""
            raise Conflict(
                f"invoice {number} not retried: card-network cap {refused.cap} "
                f"({refused.message}){when}"
            )
        taken = s.exec(
            update(Invoice)
            .where(col(Invoice.id) == invoice_id)
            .where(col(Invoice.status) == InvoiceStatus.open)
            .where(or_(col(Invoice.lease_until).is_(None), col(Invoice.lease_until) < now))
            .values(
                lease_owner=ctx.node,
                lease_until=now + timedelta(seconds=ctx.lease_seconds),
                next_attempt_at=now,
                updated_at=now,
            )
        )
        if taken.rowcount != 1:
            s.rollback()
            raise Conflict(f"invoice {number} is being charged by another node; try later")
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice_id,
            event="invoice.retry_requested",
            actor=ctx.actor,
            reason=why,
            invoice_id=invoice_id,
            invoice_number=number,
            subscription_id=invoice.subscription_id,
            customer_id=invoice.customer_id,
        )
    result = charge_invoice(ctx, invoice_id)
    return _result(ctx, invoice_id, result)


def _result(ctx: BillingContext, invoice_id: int, result: AttemptResult) -> RetryResult:
    with session(ctx.engine) as s:
        invoice = s.get(Invoice, invoice_id)
        assert invoice is not None
        if result.outcome == "skipped":
            raise Conflict(f"invoice {invoice.number} was not retried (a cap or another node)")
        attempt = s.exec(
            select(ChargeAttempt)
            .where(ChargeAttempt.invoice_id == invoice_id)
            .order_by(col(ChargeAttempt.attempt_number).desc())
        ).first()
        return RetryResult(
            invoice.number,
            invoice.attempt_count,
            result.outcome,
            attempt.reference_id if attempt else None,
            attempt.decline_code if attempt else None,
            result.decline_class,
            invoice.status,
            invoice.next_attempt_at,
        )


def dunning_stage(s: Session, sub: Subscription) -> dict[str, Any] | None:
    """Where the subscription's oldest unpaid invoice stands in its retry chain (None when no
    chain is running): attempt n of m, the next retry, the final action."""
    invoice = s.exec(
        select(Invoice)
        .where(Invoice.subscription_id == sub.id)
        .where(col(Invoice.retry_schedule).is_not(None))
        .where(col(Invoice.status).in_([InvoiceStatus.open, InvoiceStatus.charging]))
        .order_by(col(Invoice.period_start))
    ).first()
    if invoice is None or invoice.retry_schedule is None:
        return None
    schedule = invoice.retry_schedule
    return {
        "invoice": invoice.number,
        "attempt": invoice.attempt_count,
        "of": 1 + len(slots(schedule)),
        "next_retry_at": invoice.next_attempt_at,
        "last_decline": invoice.last_decline_code,
        "final_action": str(final_action(schedule)),
        "attention": invoice.attention,
    }
