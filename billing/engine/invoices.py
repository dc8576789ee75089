"""What an operator does to one invoice by hand: look at its timeline, void it, write it off,
and settle an attempt the reconciler cannot.

Every change is checked against the lifecycle table and applied with a compare-and-set on the
status that was read (`UPDATE ... WHERE status = <seen>`), so an invoice a node moved to
`charging` meanwhile is never voided or written off: its charge may take money. Each change is
in the event log with the operator (ctx.actor) and the reason, in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from billing.domain.declines import DeclineClass
from billing.domain.lifecycle import AttemptState, InvoiceStatus, check_transition
from billing.engine.charge import UNRESOLVED, _approve, lock_attempt
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.subscriptions import checked_reason
from billing.errors import Conflict, InvalidInput, NotFound
from billing.store.aftercommit import count_after_commit
from billing.store.db import session
from billing.store.models import ChargeAttempt, Invoice, PaymentInstrument, Subscription, is_row_id

NOT_CHARGED_CODE = "operator-not-charged"


@dataclass(frozen=True)
class AttemptLine:
    """One charge attempt as the timeline shows it, with the card it used."""

    attempt: ChargeAttempt
    brand: str | None
    last4: str | None


@dataclass(frozen=True)
class Timeline:
    invoice: Invoice
    attempts: list[AttemptLine]
    next_attempt_at: datetime | None  # when the engine may charge it next (open invoices)
    next_check_at: datetime | None  # when the reconciler asks Plexo next (unresolved attempt)


def find_invoice(s: Session, key: str, *, lock: bool = False) -> Invoice:
    """An invoice by row id (digits) or number (INV-...); NotFound otherwise."""
    key = key.strip()
    invoice: Invoice | None
    if key.isascii() and key.isdigit():
        number = int(key)
        invoice = s.get(Invoice, number, with_for_update=lock) if is_row_id(number) else None
    else:
        if not key.isprintable() or len(key) > 32:
            raise NotFound("no such invoice (give its id or its number, e.g. INV-0123456789ab)")
        query = select(Invoice).where(Invoice.number == key)
        invoice = s.exec(query.with_for_update() if lock else query).first()
    if invoice is None:
        raise NotFound(f"no invoice {key}")
    return invoice


def invoice_timeline(ctx: BillingContext, key: str) -> Timeline:
    with session(ctx.engine) as s:
        invoice = find_invoice(s, key)
        rows = s.exec(
            select(ChargeAttempt, PaymentInstrument.brand, PaymentInstrument.last4)
            .outerjoin(
                PaymentInstrument,
                col(PaymentInstrument.id) == col(ChargeAttempt.instrument_id),
            )
            .where(ChargeAttempt.invoice_id == invoice.id)
            .order_by(col(ChargeAttempt.attempt_number))
        ).all()
        attempts = [AttemptLine(a, brand, last4) for a, brand, last4 in rows]
    unresolved = [a.attempt for a in attempts if a.attempt.state in UNRESOLVED]
    return Timeline(
        invoice=invoice,
        attempts=attempts,
        next_attempt_at=invoice.next_attempt_at if invoice.status == InvoiceStatus.open else None,
        next_check_at=unresolved[-1].next_check_at if unresolved else None,
    )


def _required_reason(reason: str | None, what: str) -> str:
    checked = checked_reason(reason)
    if checked is None:
        raise InvalidInput(f"--reason is required: say why the invoice is {what}")
    return checked


def _set_invoice_status(
    ctx: BillingContext,
    key: str,
    new: InvoiceStatus,
    reason: str,
    event: str,
) -> Invoice:
    """Move an invoice to `new` (void, uncollectible) if the table allows it from the status
    it has now, compare-and-set on that status."""
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        invoice = find_invoice(s, key)
        old = InvoiceStatus(invoice.status)
        if old == InvoiceStatus.charging:
            raise Conflict(
                f"invoice {invoice.number} is charging: a charge is in flight or its outcome is "
                "not known yet; wait for it (or `billing invoices resolve`) first"
            )
        check_transition("invoice", old, new)
        changed = s.exec(
            update(Invoice)
            .where(col(Invoice.id) == invoice.id)
            .where(col(Invoice.status) == old)
            .values(status=new, next_attempt_at=None, updated_at=now)
        )
        if changed.rowcount != 1:
            s.rollback()
            raise Conflict(f"invoice {invoice.number} changed meanwhile; look at it again")
        assert invoice.id is not None
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice.id,
            event=event,
            actor=ctx.actor,
            reason=reason,
            previous=old,
        )
        if new == InvoiceStatus.uncollectible:  # written off by a person: the funnel's end too
            count_after_commit(s, "DUNNING", stage="uncollectible")
        s.refresh(invoice)
        return invoice


def void_invoice(ctx: BillingContext, key: str, *, reason: str | None) -> Invoice:
    """Void: the period is not owed. Only from open (or uncollectible), never while charging."""
    checked = _required_reason(reason, "voided")
    return _set_invoice_status(ctx, key, InvoiceStatus.void, checked, "invoice.voided")


def mark_uncollectible(ctx: BillingContext, key: str, *, reason: str | None) -> Invoice:
    """Write the debt off: no further attempt; a late payment still pays it."""
    checked = _required_reason(reason, "uncollectible")
    return _set_invoice_status(
        ctx, key, InvoiceStatus.uncollectible, checked, "invoice.uncollectible"
    )


def resolve_invoice(
    ctx: BillingContext, key: str, *, paid: bool, reason: str | None
) -> tuple[Invoice, ChargeAttempt]:
    """Settle the latest attempt of a `charging` invoice by a person's word, when Plexo cannot
    say (it answers 409 to the resend and its query finds nothing).

    paid: the attempt is approved, the invoice paid and the period advanced exactly as a
    charge approval does (charge._approve). not charged: the attempt is declined and the
    invoice reopens, due at once (the next pass charges it with a new attempt).
    Refused while a node holds the invoice's lease (a charge or a check is in flight).
    """
    checked = _required_reason(reason, "resolved")
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        found = find_invoice(s, key)
        latest = s.exec(
            select(ChargeAttempt.reference_id, ChargeAttempt.state)
            .where(ChargeAttempt.invoice_id == found.id)
            .order_by(col(ChargeAttempt.attempt_number).desc())
        ).first()
        if latest is None:
            raise Conflict(f"invoice {found.number} has no charge attempt to resolve")
        invoice, attempt = lock_attempt(s, latest[0])  # the engine's lock order
        if attempt.state not in UNRESOLVED:
            raise Conflict(
                f"attempt {attempt.reference_id} is {attempt.state}, not unresolved: "
                "nothing to resolve"
            )
        if invoice.status != InvoiceStatus.charging:
            raise Conflict(f"invoice {invoice.number} is {invoice.status}, not charging")
        if invoice.lease_owner is not None and (
            invoice.lease_until is None or invoice.lease_until > now
        ):
            raise Conflict(
                f"invoice {invoice.number} is being worked on by {invoice.lease_owner} (a charge "
                "or a check with Plexo is in flight); try again in a minute"
            )
        sub = s.get(Subscription, invoice.subscription_id, with_for_update=True)
        assert sub is not None and invoice.id is not None
        new_state = AttemptState.approved if paid else AttemptState.declined
        check_transition("attempt", AttemptState(attempt.state), new_state)
        check_transition(
            "invoice",
            InvoiceStatus.charging,
            InvoiceStatus.paid if paid else InvoiceStatus.open,
        )
        previous = attempt.state
        if paid:
            _approve(ctx, s, attempt, invoice, sub, now)
        else:
            _not_charged(attempt, invoice, now)
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice.id,
            event="attempt.resolved",
            actor=ctx.actor,
            reason=checked,
            reference_id=attempt.reference_id,
            outcome="paid" if paid else "not_charged",
            previous=previous,
        )
        s.add(attempt)
        s.add(invoice)
        s.add(sub)
        s.flush()
        s.refresh(invoice)
        s.refresh(attempt)
        return invoice, attempt


def _not_charged(attempt: ChargeAttempt, invoice: Invoice, now: datetime) -> None:
    """A person says no money moved: the attempt is declined (not the customer's fault, so no
    past_due) and the invoice is due again now."""
    attempt.state = AttemptState.declined
    attempt.resolved_at = now
    attempt.next_check_at = None
    attempt.decline_code = NOT_CHARGED_CODE
    attempt.decline_class = DeclineClass.invalid_request
    invoice.status = InvoiceStatus.open
    invoice.next_attempt_at = now
    invoice.last_decline_code = NOT_CHARGED_CODE
    invoice.last_decline_class = DeclineClass.invalid_request
    invoice.lease_owner = None
    invoice.lease_until = None
    invoice.updated_at = now


def release_invoice(ctx: BillingContext, key: str, *, reason: str | None) -> Invoice:
    """Let a parked invoice go: it reopens, due now, and the next pass charges it although it
    is over a bound. The permission covers this invoice at this amount only (another amount
    is checked again); compare-and-set on `parked`, in the event log with actor and reason."""
    checked = _required_reason(reason, "released")
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        invoice = find_invoice(s, key)
        if invoice.status != InvoiceStatus.parked:
            raise Conflict(
                f"invoice {invoice.number} is {invoice.status}, not parked: nothing to release"
            )
        check_transition("invoice", InvoiceStatus.parked, InvoiceStatus.open)
        changed = s.exec(
            update(Invoice)
            .where(col(Invoice.id) == invoice.id)
            .where(col(Invoice.status) == InvoiceStatus.parked)
            .values(
                status=InvoiceStatus.open,
                next_attempt_at=now,
                released_at=now,
                released_by=ctx.actor,
                released_amount_minor=invoice.amount_minor,
                updated_at=now,
            )
        )
        if changed.rowcount != 1:
            s.rollback()
            raise Conflict(f"invoice {invoice.number} changed meanwhile; look at it again")
        assert invoice.id is not None
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice.id,
            event="invoice.released",
            actor=ctx.actor,
            reason=checked,
            parked_reason=invoice.parked_reason,
            amount_minor=invoice.amount_minor,
            currency=invoice.currency,
        )
        s.refresh(invoice)
        return invoice
