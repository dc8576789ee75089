"""Charge one claimed invoice: write ahead, call Plexo, classify, record.

The flow reads top to bottom in `charge_invoice`. The rules that make a double charge
impossible:
- the attempt row (state `sending`, unique referenceId) is committed BEFORE the HTTP call;
- no transaction or row lock is held across the call;
- an ambiguous answer is recorded as `unknown` and only the reconciler resolves it, by asking
  Plexo; it never sends a new referenceId for the same attempt;
- every write after the call is guarded (attempt still unresolved, invoice still ours).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, insert, or_, update
from sqlmodel import Session, col, select

from billing.domain.declines import DeclineClass, classify_decline_codes
from billing.domain.lifecycle import (
    AttemptState,
    InvoiceStatus,
    SubscriptionStatus,
    can_transition,
    check_transition,
)
from billing.domain.retry import (
    CapRefusal,
    FinalAction,
    NextStep,
    build_schedule,
    final_action,
    next_step,
)
from billing.domain.text import gateway_text
from billing.engine.bounds import bound_breach, park_invoice
from billing.engine.context import BillingContext
from billing.engine.customers import sync_instruments
from billing.engine.events import record_event
from billing.engine.invoicing import void_open_invoices
from billing.engine.retries import cap_refusal, choose_card, invalid_in_a_row, other_card_left
from billing.engine.status import set_status
from billing.errors import BillingError
from billing.logs import log_event
from billing.plexo.errors import PlexoError
from billing.plexo.models import PaymentRequest
from billing.plexo.outcome import MAX_RETRY_AFTER_SECONDS, ChargeOutcome
from billing.store.aftercommit import count_after_commit
from billing.store.claims import release_lease, row_guard
from billing.store.db import session
from billing.store.models import ChargeAttempt, Customer, Invoice, Subscription
from billing.store.types import UTCDateTime

log = logging.getLogger(__name__)

UNRESOLVED = (AttemptState.sending, AttemptState.unknown, AttemptState.pending)
# First look at an unknown outcome; later checks back off (see reconcile.next_check_delay).
FIRST_CHECK_DELAY = timedelta(seconds=5)
MAX_CHECK_DELAY_SECONDS = 3600.0

# The hot path's writes, built once (building a statement per charge costs more CPU than
# running it) and run on the session's connection, without the ORM. Each names its row by
# key and keeps its compare-and-set guard in row_guard (store/claims.py): the plan is the
# key's whatever the statistics say (tests/integration/test_pk_plans.py).
_INVOICE = cast(Table, Invoice.__table__)  # type: ignore[attr-defined]
_ATTEMPT = cast(Table, ChargeAttempt.__table__)  # type: ignore[attr-defined]
_SUBSCRIPTION = cast(Table, Subscription.__table__)  # type: ignore[attr-defined]
_NOW = bindparam("now", type_=UTCDateTime())
_UNRESOLVED = _ATTEMPT.c.state.in_([str(x) for x in UNRESOLVED])

# Write-ahead, first statement: the invoice with its subscription and customer's ids.
_READ = (
    select(Invoice, Subscription, Customer.plexo_id, Customer.reference_id)
    .join(Subscription, col(Subscription.id) == col(Invoice.subscription_id))
    .join(Customer, col(Customer.id) == col(Invoice.customer_id))
    .where(col(Invoice.id) == bindparam("invoice_id"))
)
# Write-ahead: open -> charging, only while our lease lives (an expired one may be
# someone else's now).
_TAKE = (
    update(_INVOICE)
    .where(_INVOICE.c.id == bindparam("invoice_id"))
    .where(
        row_guard(
            _INVOICE.c.status == InvoiceStatus.open,
            _INVOICE.c.lease_owner == bindparam("owner"),
            _INVOICE.c.lease_until > _NOW,
        )
    )
    .values(status=InvoiceStatus.charging, attempt_count=bindparam("attempt_n"), updated_at=_NOW)
)
_INSERT_ATTEMPT = insert(_ATTEMPT)

# Record an approval (_record_approved), in the engine's lock order: the invoice (still
# charging, lease ours or free, its attempt unresolved), the attempt, the subscription.
_OF_ATTEMPT = (
    select(_ATTEMPT.c.invoice_id)
    .where(_ATTEMPT.c.reference_id == bindparam("ref"))
    .scalar_subquery()
)
_PAY = (
    update(_INVOICE)
    .where(_INVOICE.c.id == _OF_ATTEMPT)
    .where(
        row_guard(
            _INVOICE.c.status == InvoiceStatus.charging,
            or_(_INVOICE.c.lease_owner == bindparam("owner"), _INVOICE.c.lease_owner.is_(None)),
        )
    )
    .where(
        select(_ATTEMPT.c.id)
        .where(_ATTEMPT.c.reference_id == bindparam("ref"), row_guard(_UNRESOLVED))
        .exists()
    )
    .values(
        status=InvoiceStatus.paid,
        paid_at=_NOW,
        next_attempt_at=None,
        lease_owner=None,
        lease_until=None,
        attention=None,
        attention_at=None,
        updated_at=_NOW,
    )
    .returning(
        _INVOICE.c.id,
        _INVOICE.c.number,
        _INVOICE.c.subscription_id,
        _INVOICE.c.customer_id,
        _INVOICE.c.period_start,
        _INVOICE.c.period_end,
        _INVOICE.c.retry_schedule,
    )
)
_SETTLE = (
    update(_ATTEMPT)
    .where(_ATTEMPT.c.reference_id == bindparam("ref"), row_guard(_UNRESOLVED))
    .values(
        state=AttemptState.approved,
        resolved_at=_NOW,
        next_check_at=None,
        message=bindparam("text"),
        plexo_payment_id=func.coalesce(bindparam("payment_id"), _ATTEMPT.c.plexo_payment_id),
    )
    .returning(
        _ATTEMPT.c.attempt_number,
        _ATTEMPT.c.instrument_id,
        _ATTEMPT.c.amount_minor,
        _ATTEMPT.c.currency,
        _ATTEMPT.c.plexo_payment_id,
    )
)
_PERIOD_END = bindparam("period_end", type_=UTCDateTime())
_LATER = or_(
    _SUBSCRIPTION.c.current_period_end.is_(None), _SUBSCRIPTION.c.current_period_end < _PERIOD_END
)
# The paid period advances, never back.
_ADVANCE = (
    update(_SUBSCRIPTION)
    .where(_SUBSCRIPTION.c.id == bindparam("subscription_id"))
    .values(
        current_period_start=case(
            (_LATER, bindparam("period_start", type_=UTCDateTime())),
            else_=_SUBSCRIPTION.c.current_period_start,
        ),
        current_period_end=case((_LATER, _PERIOD_END), else_=_SUBSCRIPTION.c.current_period_end),
        updated_at=_NOW,
    )
    .returning(_SUBSCRIPTION.c.status)
)


@dataclass(frozen=True)
class AttemptResult:
    invoice_id: int
    outcome: str  # approved | declined | pending | unknown | parked | skipped
    amount_minor: int
    currency: str
    decline_class: str | None = None
    detail: str | None = None  # why it was skipped, when a caller needs to say so


@dataclass(frozen=True)
class Expected:
    """What an approved plan froze for an invoice (engine/approval.py): the write-ahead sends
    only this attempt, of this amount, on this card, and skips the invoice otherwise."""

    amount_minor: int
    currency: str
    instrument_id: int
    attempt_number: int

    def mismatch(self, invoice: Invoice, instrument_id: int, attempt_number: int) -> str | None:
        """Why the charge about to be written ahead is not the one approved; None if it is."""
        if (invoice.amount_minor, invoice.currency) != (self.amount_minor, self.currency):
            return "amount changed since the plan was frozen"
        if instrument_id != self.instrument_id:
            return "card changed since the plan was frozen"
        if attempt_number != self.attempt_number:
            return "attempted since the plan was frozen"
        return None


def reference_id(invoice_number: str, attempt_number: int) -> str:
    """The Plexo referenceId of an attempt: deterministic, unique, stable across resends."""
    return f"{invoice_number}-{attempt_number}"


def charge_invoice(
    ctx: BillingContext,
    invoice_id: int,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    run_id: int | None = None,
    expected: Expected | None = None,
) -> AttemptResult:
    """Charge an invoice this node has claimed, as part of billing run `run_id`. Safe to call
    on a lost lease (does nothing). With `expected` (an approved plan's item) only that
    charge may be sent; any other is skipped with its lease released."""
    if should_stop():
        _release(ctx, invoice_id)
        return AttemptResult(invoice_id, "skipped", 0, "")
    prepared = _write_ahead(ctx, invoice_id, run_id, expected)
    if isinstance(prepared, AttemptResult):
        return prepared
    outcome = ctx.plexo.create_payment(prepared)
    return record_outcome(ctx, prepared.reference_id, outcome, lease_owner=ctx.node)


def _write_ahead(
    ctx: BillingContext,
    invoice_id: int,
    run_id: int | None = None,
    expected: Expected | None = None,
    *,
    synced: bool = False,
) -> PaymentRequest | AttemptResult:
    """Commit the attempt row (state `sending`, linked to its run) and move the invoice to
    `charging`: one transaction of seven statements for a first attempt (the invoice with
    its subscription and customer; the cards, locked with the customer; the card's history;
    the customer's day; the compare-and-set; the attempt; its event).

    A retry of a past_due customer first mirrors their cards from Plexo, so a card added
    through the update link is used: seen in the same read, done outside any transaction
    (nothing written yet), then the write-ahead starts again. Best effort: a gateway failure
    leaves the cards we have."""
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        row = s.execute(_READ, {"invoice_id": invoice_id}).first()
        if row is None:
            return AttemptResult(invoice_id, "skipped", 0, "")
        invoice, sub, plexo_id, customer_ref = row
        if invoice.status != InvoiceStatus.open or invoice.lease_owner != ctx.node:
            return AttemptResult(invoice_id, "skipped", 0, "")
        needs_sync = invoice.attempt_count > 0 and sub.status == SubscriptionStatus.past_due
        if synced or not needs_sync:
            return _write_ahead_in(ctx, s, invoice, sub, plexo_id, now, run_id, expected)
    try:
        sync_instruments(ctx, customer_ref)
    except (PlexoError, BillingError) as exc:
        log_event(log, "instruments.sync_failed", logging.WARNING, error=type(exc).__name__)
    return _write_ahead(ctx, invoice_id, run_id, expected, synced=True)


def _write_ahead_in(
    ctx: BillingContext,
    s: Session,
    invoice: Invoice,
    sub: Subscription,
    customer_plexo_id: str | None,
    now: datetime,
    run_id: int | None,
    expected: Expected | None,
) -> PaymentRequest | AttemptResult:
    """The write-ahead's decisions and writes, in the caller's transaction (see _write_ahead)."""
    assert invoice.id is not None
    invoice_id = invoice.id
    instrument = choose_card(s, sub, invoice, fallback=fallback_allowed(ctx, invoice), lock=True)
    if instrument is None and invoice.retry_schedule is not None:
        # A retry with no card left that may be charged: the chain ends here.
        s.refresh(sub, with_for_update=True)
        _end_chain(ctx, s, invoice, sub, now, "no card left that may be charged")
        return AttemptResult(
            invoice_id, "skipped", invoice.amount_minor, invoice.currency, DeclineClass.hard
        )
    if instrument is None or customer_plexo_id is None:
        return _no_instrument(ctx, s, invoice, sub, now)
    assert instrument.id is not None
    # The card and the customer are locked (choose_card): the caps and the day's count below
    # see every attempt committed before this one.
    refused = cap_refusal(s, invoice, instrument.id, now, locked=True)
    if refused is not None:
        return _defer(ctx, s, invoice, refused, now)
    breach = bound_breach(ctx, s, invoice, now, lock=False)
    if breach is not None:
        # Over a safety bound: parked for a person, nothing sent (engine/bounds.py).
        if not park_invoice(ctx, s, invoice, breach, now, run_id):
            s.rollback()
            return AttemptResult(invoice_id, "skipped", 0, "")
        return AttemptResult(invoice_id, "parked", invoice.amount_minor, invoice.currency)
    number = invoice.attempt_count + 1
    if expected is not None:
        # In the write-ahead's own transaction: nothing can change between check and send.
        why = expected.mismatch(invoice, instrument.id, number)
        if why is not None:
            s.exec(
                update(Invoice)
                .where(col(Invoice.id) == invoice_id)
                .where(col(Invoice.lease_owner) == ctx.node)
                .values(lease_owner=None, lease_until=None)
            )
            return AttemptResult(invoice_id, "skipped", 0, "", detail=why)
    ref = reference_id(invoice.number, number)
    conn = s.connection()
    params = {"invoice_id": invoice_id, "owner": ctx.node, "now": now, "attempt_n": number}
    if conn.execute(_TAKE, params).rowcount != 1:
        s.rollback()
        return AttemptResult(invoice_id, "skipped", 0, "")
    conn.execute(
        _INSERT_ATTEMPT,
        {
            "invoice_id": invoice_id,
            "attempt_number": number,
            "reference_id": ref,
            "state": AttemptState.sending,
            "amount_minor": invoice.amount_minor,
            "currency": invoice.currency,
            "instrument_id": instrument.id,
            "node": ctx.node,
            "run_id": run_id,
            "send_count": 1,
            "check_count": 0,
            "created_at": now,
            "last_sent_at": now,
        },
    )
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice_id,
        event="attempt.sending",
        actor=ctx.actor,
        reference_id=ref,
        attempt_number=number,
        instrument_id=instrument.id,
    )
    return payment_request(ctx, invoice, sub, customer_plexo_id, instrument.token, ref)


def payment_request(
    ctx: BillingContext,
    invoice: Invoice,
    sub: Subscription,
    customer_plexo_id: str,
    token: str,
    ref: str,
) -> PaymentRequest:
    """The POST /v1/payments body of an attempt; the same for a resend of that attempt."""
    return PaymentRequest(
        reference_id=ref,
        invoice_number=invoice.number,
        customer_id=customer_plexo_id,
        amount_minor=invoice.amount_minor,
        currency=invoice.currency,
        token=token,
        metadata={
            "subscription": str(sub.id),
            "period": invoice.period_start.astimezone(ctx.tz).date().isoformat(),
        },
        callback_url=ctx.callback_url,
    )


def fallback_allowed(ctx: BillingContext, invoice: Invoice) -> bool:
    """Instrument fallback as snapshotted in the invoice's chain, else the current setting."""
    if invoice.retry_schedule is not None:
        return bool(invoice.retry_schedule.get("instrument_fallback", True))
    return ctx.retry.instrument_fallback


def _defer(
    ctx: BillingContext, s: Session, invoice: Invoice, refused: CapRefusal, now: datetime
) -> AttemptResult:
    """A card-network cap forbids the attempt now: nothing is sent; try when the cap frees."""
    invoice.next_attempt_at = refused.until
    invoice.lease_owner = None
    invoice.lease_until = None
    invoice.updated_at = now
    s.add(invoice)
    assert invoice.id is not None
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event="attempt.deferred",
        actor=ctx.actor,
        reason=f"card-network cap {refused.cap}: {refused.message}",
        cap=refused.cap,
        next_retry_at=refused.until.isoformat() if refused.until else None,
    )
    return AttemptResult(invoice.id, "skipped", 0, "")


def _no_instrument(
    ctx: BillingContext, s: Session, invoice: Invoice, sub: Subscription, now: datetime
) -> AttemptResult:
    """No card to charge: nothing is sent; the invoice waits for a card (dunning's job)."""
    s.refresh(sub, with_for_update=True)
    invoice.next_attempt_at = None
    invoice.last_decline_code = "no-payment-instrument"
    invoice.last_decline_class = DeclineClass.hard
    invoice.lease_owner = None
    invoice.lease_until = None
    invoice.updated_at = now
    s.add(invoice)
    _mark_past_due(ctx, s, sub, now, "no active payment instrument")
    assert invoice.id is not None
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event="invoice.no_instrument",
        actor=ctx.actor,
        reason="customer has no active payment instrument",
    )
    return AttemptResult(
        invoice.id, "declined", invoice.amount_minor, invoice.currency, DeclineClass.hard
    )


def lock_attempt(s: Session, ref: str) -> tuple[Invoice, ChargeAttempt]:
    """Lock an attempt's invoice, then the attempt: the one lock order of the engine (then the
    subscription, where needed). PostgreSQL row locks; SQLite already holds the database lock.
    Two statements: the invoice by its key (the attempt's invoice_id in a sub-select)."""
    owner = select(ChargeAttempt.invoice_id).where(ChargeAttempt.reference_id == ref)
    invoice = s.exec(
        select(Invoice)
        .where(col(Invoice.id) == owner.scalar_subquery())
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    attempt = s.exec(
        select(ChargeAttempt)
        .where(ChargeAttempt.reference_id == ref)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    return invoice, attempt


def record_outcome(
    ctx: BillingContext,
    ref: str,
    outcome: ChargeOutcome,
    *,
    lease_owner: str,
    check_delay: timedelta = FIRST_CHECK_DELAY,
) -> AttemptResult:
    """Apply Plexo's answer to the attempt, its invoice and subscription, in one transaction.

    Guarded: does nothing if the attempt is already resolved or the invoice lease passed to
    another owner (the reconciler will then ask Plexo itself). An approval, the common case,
    is a few set-based statements (_record_approved); the rest go through the ORM.
    """
    now = ctx.clock.now()
    if outcome.kind == "approved":
        return _record_approved(ctx, ref, outcome, lease_owner, now)
    with session(ctx.engine) as s:
        invoice, attempt = lock_attempt(s, ref)
        assert invoice.id is not None and attempt.id is not None
        result = AttemptResult(invoice.id, "skipped", attempt.amount_minor, attempt.currency)
        if attempt.state not in UNRESOLVED or invoice.status != InvoiceStatus.charging:
            return result
        if invoice.lease_owner not in (lease_owner, None):
            return result
        # Locked too: concurrent outcomes of one subscription's invoices must not lose each
        # other's period or status changes (PostgreSQL read committed).
        sub = s.get(Subscription, invoice.subscription_id, with_for_update=True)
        assert sub is not None
        attempt.plexo_payment_id = outcome.payment_id or attempt.plexo_payment_id
        text = outcome.decline_message or outcome.detail
        attempt.message = gateway_text(text, 500)  # masked and escaped: it is Plexo's text
        if outcome.kind == "declined" and outcome.not_charged and attempt.send_count > 1:
            # A refusal of a RESEND says nothing about the first send, which may have been
            # charged: not proof of "no money moved", so it stays with the reconciler.
            outcome = replace(outcome, kind="unknown", detail=f"resend refused: {outcome.detail}")
        kind = outcome.kind
        decline_class: str | None = None
        if kind == "declined":
            decline_class = classify_decline_codes(outcome.decline_code, outcome.result_code)
            _decline(ctx, s, attempt, invoice, sub, outcome, decline_class, now)
        else:
            _leave_unresolved(ctx, s, attempt, invoice, outcome, now, check_delay)
        s.add(attempt)
        s.add(invoice)
        s.add(sub)
        return AttemptResult(
            invoice.id, kind, attempt.amount_minor, attempt.currency, decline_class
        )


def _record_approved(
    ctx: BillingContext, ref: str, outcome: ChargeOutcome, lease_owner: str, now: datetime
) -> AttemptResult:
    """An approval in one transaction, rows locked in the engine's order by the statements
    that change them: UPDATE invoice (guarded: `charging`, lease ours or free, the attempt
    unresolved) RETURNING what the rest needs; UPDATE attempt (guarded: unresolved)
    RETURNING; UPDATE subscription (the paid period advances, never back) RETURNING its
    status; then the events. A guard that fails writes nothing. The same outcome as _approve
    (which `invoices resolve --paid` uses on rows it has locked): keep the two together."""
    with session(ctx.engine) as s:
        conn = s.connection()
        params = {"ref": ref, "owner": lease_owner, "now": now}
        inv = conn.execute(_PAY, params).first()
        if inv is None:
            s.rollback()
            return _not_recorded(ctx, ref)
        # masked and escaped: it is Plexo's text
        message = gateway_text(outcome.decline_message or outcome.detail, 500)
        params.update(text=message, payment_id=outcome.payment_id or None)
        att = conn.execute(_SETTLE, params).first()
        if att is None:  # resolved meanwhile by a writer that skipped the invoice lock
            s.rollback()
            return _not_recorded(ctx, ref)
        advance = {
            "subscription_id": inv.subscription_id,
            "period_start": inv.period_start,
            "period_end": inv.period_end,
            "now": now,
        }
        status = conn.execute(_ADVANCE, advance).scalar_one()
        ids: dict[str, Any] = {
            "invoice_id": inv.id,
            "invoice_number": inv.number,
            "subscription_id": inv.subscription_id,
            "customer_id": inv.customer_id,
            "attempt_number": att.attempt_number,
            "instrument_id": att.instrument_id,
        }
        if status in REACTIVATED:
            sub = s.get(Subscription, inv.subscription_id)  # locked by the UPDATE above
            assert sub is not None
            recovering = inv.retry_schedule is not None  # it had failed: dunning was running
            _reactivate(ctx, s, sub, inv.id, ids, recovering, now)
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=inv.id,
            event="invoice.paid",
            actor=ctx.actor,
            **ids,
            reference_id=ref,
            payment_id=att.plexo_payment_id,
            amount_minor=att.amount_minor,
            currency=att.currency,
        )
        return AttemptResult(inv.id, "approved", att.amount_minor, att.currency)


def _not_recorded(ctx: BillingContext, ref: str) -> AttemptResult:
    """What record_outcome answers when its guards refused (already resolved, lease gone)."""
    with session(ctx.engine) as s:
        invoice_id, amount, currency = s.exec(
            select(
                ChargeAttempt.invoice_id, ChargeAttempt.amount_minor, ChargeAttempt.currency
            ).where(ChargeAttempt.reference_id == ref)
        ).one()
    return AttemptResult(invoice_id, "skipped", amount, currency)


# An approval makes these active again (unless another invoice of theirs is still unpaid).
REACTIVATED = (
    SubscriptionStatus.past_due,
    SubscriptionStatus.trialing,
    SubscriptionStatus.incomplete,
)


def _reactivate(
    ctx: BillingContext,
    s: Session,
    sub: Subscription,
    invoice_id: int,
    ids: dict[str, Any],
    recovering: bool,
    now: datetime,
) -> None:
    """An approval returns a past_due, trialing or incomplete subscription to active, unless
    another of its invoices is still unpaid after a decline; `subscription.recovered` when a
    retry chain was running."""
    if sub.status not in REACTIVATED or _has_other_unpaid(s, sub.id, invoice_id):
        return
    if sub.status == SubscriptionStatus.past_due:
        count_after_commit(s, "DUNNING", stage="recovered")
    if recovering and sub.status == SubscriptionStatus.past_due:
        set_status(
            ctx,
            s,
            sub,
            SubscriptionStatus.active,
            now,
            f"retry approved (attempt {ids['attempt_number']})",
            "subscription.recovered",
            **ids,
        )
    else:
        set_status(ctx, s, sub, SubscriptionStatus.active, now, "payment approved")


def _approve(
    ctx: BillingContext,
    s: Session,
    attempt: ChargeAttempt,
    invoice: Invoice,
    sub: Subscription,
    now: datetime,
) -> None:
    """An approval on rows the caller has locked (`invoices resolve --paid`); record_outcome
    does the same with set-based statements (_record_approved)."""
    attempt.state = AttemptState.approved
    attempt.resolved_at = now
    attempt.next_check_at = None
    invoice.status = InvoiceStatus.paid
    invoice.paid_at = now
    invoice.next_attempt_at = None
    invoice.lease_owner = None
    invoice.lease_until = None
    invoice.updated_at = now
    if sub.current_period_end is None or invoice.period_end > sub.current_period_end:
        sub.current_period_start = invoice.period_start
        sub.current_period_end = invoice.period_end
    recovering = invoice.retry_schedule is not None  # it had failed: dunning was running
    invoice.attention = None
    invoice.attention_at = None
    assert invoice.id is not None
    _reactivate(ctx, s, sub, invoice.id, _ids(invoice, attempt), recovering, now)
    sub.updated_at = now
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event="invoice.paid",
        actor=ctx.actor,
        **_ids(invoice, attempt),
        reference_id=attempt.reference_id,
        payment_id=attempt.plexo_payment_id,
        amount_minor=attempt.amount_minor,
        currency=attempt.currency,
    )


def _decline(
    ctx: BillingContext,
    s: Session,
    attempt: ChargeAttempt,
    invoice: Invoice,
    sub: Subscription,
    outcome: ChargeOutcome,
    decline_class: str,
    now: datetime,
) -> None:
    """A definite decline: the retry policy (domain/retry.py) decides what comes next."""
    attempt.state = AttemptState.declined
    attempt.resolved_at = now
    attempt.next_check_at = None
    attempt.decline_code = (outcome.decline_code or "")[:32] or None
    attempt.result_code = (outcome.result_code or "")[:16] or None
    attempt.decline_class = decline_class
    s.add(attempt)
    invoice.status = InvoiceStatus.open
    invoice.last_decline_code = attempt.decline_code
    invoice.last_decline_class = decline_class
    invoice.lease_owner = None
    invoice.lease_until = None
    invoice.updated_at = now
    assert invoice.id is not None
    cls = DeclineClass(decline_class)
    if outcome.retry_after:
        advised = now + timedelta(seconds=min(outcome.retry_after, MAX_RETRY_AFTER_SECONDS))
        if invoice.retry_not_before is None or advised > invoice.retry_not_before:
            invoice.retry_not_before = advised
    if invoice.retry_schedule is None:
        first = _first_attempt_at(s, invoice)
        invoice.retry_schedule = build_schedule(ctx.retry, now, first, ctx.tz)
    schedule = invoice.retry_schedule
    decision = next_step(
        schedule,
        cls,
        now,
        other_card=other_card_left(s, sub, attempt.instrument_id),
        invalid_in_a_row=invalid_in_a_row(s, invoice.id),
        retry_after=invoice.retry_not_before,
    )
    next_at = decision.at if decision.step in (NextStep.retry, NextStep.fallback) else None
    invoice.next_attempt_at = next_at
    if next_at is not None:
        count_after_commit(s, "RETRIES_SCHEDULED", decline_class=decline_class)
    ids = _ids(invoice, attempt)
    if cls == DeclineClass.invalid_request:
        # Refused before any money moved (our request or credentials): not the customer's
        # fault, so no past_due; tried again shortly, a bounded number of times.
        event, reason = "attempt.rejected", f"gateway refused the request: {attempt.decline_code}"
    else:
        _mark_past_due(ctx, s, sub, now, f"charge declined ({attempt.decline_code})", ids)
        event, reason = "invoice.payment_failed", f"declined {attempt.decline_code} ({cls})"
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event=event,
        actor=ctx.actor,
        reason=reason,
        **ids,
        reference_id=attempt.reference_id,
        decline_code=attempt.decline_code,
        result_code=attempt.result_code,
        decline_class=decline_class,
        next_step=str(decision.step),
        next_retry_at=next_at.isoformat() if next_at else None,
    )
    if decision.step == NextStep.exhausted:
        _end_chain(ctx, s, invoice, sub, now, decision.why)
    elif decision.step == NextStep.flag:
        _flag(ctx, s, invoice, now, "refused_repeatedly", decision.why)


def _ids(invoice: Invoice, attempt: ChargeAttempt | None = None) -> dict[str, Any]:
    """The objects an event is about (never card data): for webhooks and emails."""
    ids: dict[str, Any] = {
        "invoice_id": invoice.id,
        "invoice_number": invoice.number,
        "subscription_id": invoice.subscription_id,
        "customer_id": invoice.customer_id,
    }
    if attempt is not None:
        ids["attempt_number"] = attempt.attempt_number
        ids["instrument_id"] = attempt.instrument_id
    return ids


def _first_attempt_at(s: Session, invoice: Invoice) -> datetime:
    first = s.exec(
        select(ChargeAttempt.created_at)
        .where(ChargeAttempt.invoice_id == invoice.id)
        .order_by(col(ChargeAttempt.attempt_number))
    ).first()
    return first if first is not None else invoice.next_attempt_at or invoice.created_at


def _end_chain(
    ctx: BillingContext,
    s: Session,
    invoice: Invoice,
    sub: Subscription,
    now: datetime,
    why: str,
) -> None:
    """The retry chain is exhausted: the invoice becomes uncollectible and the final action
    (snapshotted in the chain) applies once, in this transaction."""
    check_transition("invoice", InvoiceStatus(invoice.status), InvoiceStatus.uncollectible)
    invoice.status = InvoiceStatus.uncollectible
    invoice.next_attempt_at = None
    invoice.lease_owner = None
    invoice.lease_until = None
    invoice.updated_at = now
    s.add(invoice)
    schedule = invoice.retry_schedule or {"final_action": str(ctx.retry.final_action)}
    action = final_action(schedule)
    ids = _ids(invoice)
    applied = apply_final_action(ctx, s, sub, action, now, f"retries exhausted: {why}", ids)
    count_after_commit(s, "DUNNING", stage="uncollectible")
    assert invoice.id is not None
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event="invoice.uncollectible",
        actor=ctx.actor,
        reason=f"retries exhausted: {why}",
        **ids,
        attempts=invoice.attempt_count,
        final_action=str(action),
        final_action_applied=applied,
    )


def apply_final_action(
    ctx: BillingContext,
    s: Session,
    sub: Subscription,
    action: FinalAction,
    now: datetime,
    reason: str,
    ids: dict[str, Any],
) -> bool:
    """Cancel now, cancel at period end, mark unpaid or pause; False when the subscription is
    already past it (another invoice's chain ended first, or a person acted)."""
    status = SubscriptionStatus(sub.status)
    if action == FinalAction.cancel_at_period_end and sub.current_period_end is None:
        action = FinalAction.cancel_now  # nothing was ever paid: no period to run out
    if action == FinalAction.cancel_at_period_end:
        if status == SubscriptionStatus.canceled or sub.cancel_at_period_end:
            return False
        sub.cancel_at_period_end = True
        sub.updated_at = now
        s.add(sub)
        assert sub.id is not None and sub.current_period_end is not None
        record_event(
            s,
            at=now,
            entity_type="subscription",
            entity_id=sub.id,
            event="subscription.cancel_scheduled",
            actor=ctx.actor,
            reason=reason,
            **ids,
            effective_at=sub.current_period_end.isoformat(),
        )
        count_after_commit(s, "FINAL_ACTIONS", action=str(action))
        return True
    target = {
        FinalAction.cancel_now: SubscriptionStatus.canceled,
        FinalAction.mark_unpaid: SubscriptionStatus.unpaid,
        FinalAction.pause: SubscriptionStatus.paused,
    }[action]
    if not can_transition("subscription", status, target):
        return False
    if target == SubscriptionStatus.canceled:
        assert sub.id is not None
        void_open_invoices(ctx, s, now, reason, subscription_id=sub.id)
    set_status(ctx, s, sub, target, now, reason, **ids)
    if target == SubscriptionStatus.paused:
        sub.paused_at = now
    count_after_commit(s, "FINAL_ACTIONS", action=str(action))
    return True


def _flag(
    ctx: BillingContext, s: Session, invoice: Invoice, now: datetime, what: str, why: str
) -> None:
    """Stop working on the invoice and ask a person to look (`invoice.attention`)."""
    invoice.attention = what
    invoice.attention_at = now
    invoice.next_attempt_at = None
    s.add(invoice)
    assert invoice.id is not None
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event="invoice.needs_attention",
        actor=ctx.actor,
        reason=why,
        **_ids(invoice),
        attention=what,
    )


def _leave_unresolved(
    ctx: BillingContext,
    s: Session,
    attempt: ChargeAttempt,
    invoice: Invoice,
    outcome: ChargeOutcome,
    now: datetime,
    delay: timedelta,
) -> None:
    """Pending or unknown: hand the invoice to the reconciler (lease released at once)."""
    attempt.state = AttemptState.pending if outcome.kind == "pending" else AttemptState.unknown
    if outcome.retry_after:
        delay = max(delay, timedelta(seconds=min(outcome.retry_after, MAX_CHECK_DELAY_SECONDS)))
    attempt.next_check_at = now + delay
    invoice.lease_owner = None
    invoice.lease_until = None
    invoice.updated_at = now
    assert invoice.id is not None
    first_pending = attempt.state == AttemptState.pending and attempt.action_required_at is None
    record_event(
        s,
        at=now,
        entity_type="invoice",
        entity_id=invoice.id,
        event=f"attempt.{attempt.state}",
        actor=ctx.actor,
        reason=outcome.detail or outcome.status or None,
        reference_id=attempt.reference_id,
        http_status=outcome.http_status,
        duplicate=outcome.duplicate,
    )
    if outcome.kind == "pending" and outcome.action_required and first_pending:
        # 3-D Secure or another customer action on a server-initiated charge: nobody can act
        # on it here, so tell the customer once and wait (never retried blindly).
        attempt.action_required_at = now
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice.id,
            event="invoice.payment_action_required",
            actor=ctx.actor,
            reason="the payment waits for the customer (3-D Secure or another action)",
            **_ids(invoice, attempt),
            reference_id=attempt.reference_id,
            payment_id=attempt.plexo_payment_id,
        )
    if attempt.state == AttemptState.pending and now - attempt.created_at >= ctx.pending_max:
        # Polling forever proves nothing more: stop and ask a person.
        attempt.next_check_at = None
        _flag(
            ctx,
            s,
            invoice,
            now,
            "pending_too_long",
            f"payment pending since {attempt.created_at.isoformat()}",
        )


def _has_other_unpaid(s: Session, subscription_id: int | None, invoice_id: int) -> bool:
    other = s.exec(
        select(Invoice.id)
        .where(Invoice.subscription_id == subscription_id)
        .where(col(Invoice.id) != invoice_id)
        .where(col(Invoice.status).in_([InvoiceStatus.open, InvoiceStatus.charging]))
        .where(col(Invoice.last_decline_code).is_not(None))
    ).first()
    return other is not None


def _mark_past_due(
    ctx: BillingContext,
    s: Session,
    sub: Subscription,
    now: datetime,
    reason: str,
    ids: dict[str, Any] | None = None,
) -> None:
    """The first failure moves the subscription to past_due at once (and says so)."""
    if sub.status in (
        SubscriptionStatus.active,
        SubscriptionStatus.trialing,
        SubscriptionStatus.incomplete,
    ):
        set_status(ctx, s, sub, SubscriptionStatus.past_due, now, reason, **(ids or {}))
        count_after_commit(s, "DUNNING", stage="past_due")


def _release(ctx: BillingContext, invoice_id: int) -> None:
    release_lease(ctx.engine, invoice_id, ctx.node)
