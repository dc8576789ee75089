"""Dry run of a billing pass: what a pass at `until` would invoice, hold and charge.

Read-only: no row, lease, row lock or store_meta write, and no call to Plexo. It replays the
decisions of engine/billing_pass.py with the same functions (periods, catch-up cap, card
choice, card-network caps, retry schedule) on the store as it stands.

The rule for outcomes not yet known: every listed charge is the NEXT attempt of an invoice as
scheduled now (renewals whose period starts by `until`, and open invoices whose next attempt
is due by `until`). A retry that would only follow a decline not yet known is not listed as a
charge; each charge says instead what a (soft) decline would lead to (`if_declined`). An
invoice over a safety bound is listed `parked`, not as a charge; the daily count counts the
customer's charges listed before it as if approved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from billing.clock import ensure_utc
from billing.domain.declines import DeclineClass
from billing.domain.lifecycle import InvoiceStatus, SubscriptionStatus
from billing.domain.retry import FinalAction, build_schedule, check_caps, final_action, next_step
from billing.engine.bounds import bound_breach
from billing.engine.charge import fallback_allowed
from billing.engine.context import BillingContext
from billing.engine.invoicing import (
    INVOICING_STATUSES,
    MAX_PERIODS_PER_STEP,
    over_cap,
    period_invoices,
    started_periods,
)
from billing.engine.retries import card_history, choose_card
from billing.store.db import session
from billing.store.models import ChargeAttempt, Customer, Invoice, Plan, Subscription


@dataclass
class PreviewLine:
    """One thing the pass would do for one invoice or subscription."""

    # renewal | retry | deferred | parked | no_instrument | final_action | held | canceled
    kind: str
    customer: str
    subscription_id: int
    invoice: str | None  # the invoice number; None for an invoice the pass would create
    period_index: int | None
    period_start: datetime | None
    amount_minor: int
    currency: str
    due_at: datetime | None
    instrument_id: int | None = None
    instrument: str | None = None
    attempt_number: int | None = None
    detail: str | None = None
    if_declined: str | None = None
    final_action: FinalAction | None = None  # for kind final_action: which one applies

    @property
    def charged(self) -> bool:
        return self.kind in ("renewal", "retry")


@dataclass
class Preview:
    until: datetime
    lines: list[PreviewLine] = field(default_factory=list)

    @property
    def charges(self) -> list[PreviewLine]:
        return [line for line in self.lines if line.charged]

    def totals(self) -> dict[str, dict[str, int]]:
        """Charges per currency: {"UYU": {"count": n, "amount_minor": m}}."""
        out: dict[str, dict[str, int]] = {}
        for line in self.charges:
            entry = out.setdefault(line.currency, {"count": 0, "amount_minor": 0})
            entry["count"] += 1
            entry["amount_minor"] += line.amount_minor
        return out

    def per_customer(self) -> dict[str, dict[str, dict[str, int]]]:
        out: dict[str, dict[str, dict[str, int]]] = {}
        for line in self.charges:
            entry = out.setdefault(line.customer, {}).setdefault(
                line.currency, {"count": 0, "amount_minor": 0}
            )
            entry["count"] += 1
            entry["amount_minor"] += line.amount_minor
        return out


@dataclass
class _Pending:
    """An invoice the pass would claim: a stored one, or one it would create."""

    invoice: Invoice
    sub: Subscription
    customer: Customer
    new: bool
    order: tuple[datetime, int]


def preview(ctx: BillingContext, until: datetime) -> Preview:
    """What `run_billing_pass` at `until` would do, if nothing else ran before it."""
    until = ensure_utc(until, "--until")
    result = Preview(until)
    with session(ctx.engine) as s:
        customers = {c.id: c for c in s.exec(select(Customer)).all()}
        created = _renewals(ctx, s, until, customers, result)
        stored = s.exec(
            select(Invoice)
            .where(Invoice.status == InvoiceStatus.open)
            .where(col(Invoice.next_attempt_at) <= until)
            .where(col(Invoice.lease_until).is_(None) | (col(Invoice.lease_until) < until))
            .order_by(col(Invoice.next_attempt_at), col(Invoice.id))
        ).all()
        pending: list[_Pending] = []
        for inv in stored:
            sub = s.get(Subscription, inv.subscription_id)
            assert sub is not None and inv.next_attempt_at is not None and inv.id is not None
            s.expunge(sub)
            pending.append(
                _Pending(inv, sub, customers[inv.customer_id], False, (inv.next_attempt_at, inv.id))
            )
        pending += created
        pending.sort(key=lambda p: p.order)
        voided: set[int] = set()
        planned: dict[int, int] = {}  # charges listed per customer (the daily-count bound)
        for p in pending:
            if p.sub.id in voided:
                continue
            line = _attempt(ctx, s, p, until, planned.get(p.invoice.customer_id, 0))
            result.lines.append(line)
            if line.charged:
                planned[p.invoice.customer_id] = planned.get(p.invoice.customer_id, 0) + 1
            if line.final_action == FinalAction.cancel_now:
                assert p.sub.id is not None
                voided.add(p.sub.id)  # canceling voids the subscription's open invoices
        s.rollback()  # nothing of this session is ever written
    return result


def _renewals(
    ctx: BillingContext,
    s: Session,
    until: datetime,
    customers: dict[int | None, Customer],
    result: Preview,
) -> list[_Pending]:
    """The invoices create_due_invoices would create, step by step like it (cap, period end)."""
    subs = s.exec(
        select(Subscription)
        .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
        .where(col(Subscription.next_billing_at) <= until)
        .order_by(col(Subscription.next_billing_at), col(Subscription.id))
    ).all()
    created: list[_Pending] = []
    serial = 0
    for sub in subs:
        s.expunge(sub)  # simulated changes below must never reach the store
        plan = s.get(Plan, sub.plan_id)
        assert plan is not None and sub.id is not None
        customer = customers[sub.customer_id]
        if sub.held_at is not None:
            due = len(started_periods(ctx, sub, plan, until))
            result.lines.append(_sub_line("held", sub, customer, plan, due, sub.held_reason))
            continue
        while True:
            indices = started_periods(ctx, sub, plan, until)
            if not indices:
                break
            if over_cap(ctx, sub, indices):
                reason = (
                    f"{len(indices)} periods due at once, more than the catch-up cap of "
                    f"{ctx.catchup_max_periods}"
                )
                result.lines.append(_sub_line("held", sub, customer, plan, len(indices), reason))
                break
            invoices, canceled_at = period_invoices(
                ctx, sub, plan, indices[:MAX_PERIODS_PER_STEP], until, str
            )
            for invoice in invoices:
                serial += 1
                # Created after every stored invoice: ids beyond theirs, in creation order.
                order = (invoice.period_start, 2**40 + serial)
                created.append(_Pending(invoice, sub, customer, True, order))
            count = len(invoices)
            next_index = sub.next_period_index + count
            allowed = sub.catchup_through_index
            sub.next_period_index = next_index
            if allowed is not None and next_index > allowed:
                sub.catchup_through_index = None
            if canceled_at is not None:
                line = _sub_line("canceled", sub, customer, plan, 0, "canceled at period end")
                line.due_at = canceled_at
                result.lines.append(line)
                sub.status = SubscriptionStatus.canceled
                break
            if count == 0:
                break
    return created


def _sub_line(
    kind: str, sub: Subscription, customer: Customer, plan: Plan, due: int, detail: str | None
) -> PreviewLine:
    assert sub.id is not None
    return PreviewLine(
        kind=kind,
        customer=customer.reference_id,
        subscription_id=sub.id,
        invoice=None,
        period_index=None,
        period_start=None,
        amount_minor=plan.amount_minor * due,
        currency=plan.currency,
        due_at=None,
        detail=f"{detail} ({due} periods not invoiced)" if kind == "held" else detail,
    )


def _attempt(
    ctx: BillingContext, s: Session, p: _Pending, until: datetime, planned: int
) -> PreviewLine:
    """The decision _write_ahead makes for one claimed invoice, at `until` (`planned`: the
    customer's charges listed before it, counted as if approved by the daily bound)."""
    inv, sub = p.invoice, p.sub
    assert sub.id is not None
    line = PreviewLine(
        kind="retry" if inv.attempt_count > 0 else "renewal",
        customer=p.customer.reference_id,
        subscription_id=sub.id,
        invoice=None if p.new else inv.number,
        period_index=inv.period_index,
        period_start=inv.period_start,
        amount_minor=inv.amount_minor,
        currency=inv.currency,
        due_at=inv.next_attempt_at,
        attempt_number=inv.attempt_count + 1,
    )
    card = choose_card(s, sub, inv, fallback=fallback_allowed(ctx, inv))
    if card is None and inv.retry_schedule is not None:
        action = final_action(inv.retry_schedule)
        line.kind, line.attempt_number, line.final_action = "final_action", None, action
        line.detail = f"no card left that may be charged: {action}; invoice uncollectible"
        return line
    if card is None or p.customer.plexo_id is None:
        line.kind, line.attempt_number = "no_instrument", None
        line.detail = "no card that may be charged: not sent, subscription past_due"
        return line
    assert card.id is not None
    refused = check_caps(card_history(s, card.id, until), until, inv.retry_not_before)
    if refused is not None:
        line.kind, line.attempt_number = "deferred", None
        when = refused.until.isoformat() if refused.until else "never on this card"
        line.detail = f"card-network cap {refused.cap}: {refused.message}; next try {when}"
        line.instrument_id = card.id
        return line
    line.instrument_id = card.id
    breach = bound_breach(ctx, s, inv, until, lock=False, planned=planned)
    if breach is not None:
        line.kind, line.attempt_number = "parked", None
        line.detail = f"{breach.reason}: {breach.detail}; not sent until released"
        return line
    line.instrument = f"{card.brand or 'card'} *{card.last4 or '????'}"
    line.if_declined = _if_declined(ctx, s, inv, until)
    return line


def _if_declined(ctx: BillingContext, s: Session, inv: Invoice, until: datetime) -> str:
    """What a soft decline of this attempt at `until` would lead to (the retry chain)."""
    schedule = inv.retry_schedule
    if schedule is None:
        first: datetime | None = None
        if inv.id is not None:
            first = s.exec(
                select(ChargeAttempt.created_at)
                .where(ChargeAttempt.invoice_id == inv.id)
                .order_by(col(ChargeAttempt.attempt_number))
            ).first()
        schedule = build_schedule(ctx.retry, until, first or until, ctx.tz)
    decision = next_step(schedule, DeclineClass.soft, until, other_card=False)
    if decision.at is not None:
        return f"retry at {decision.at.isoformat()}"
    return f"final action {final_action(schedule)}"


def preview_view(result: Preview) -> dict[str, Any]:
    """The JSON document of `billing preview --json` (money in minor units + currency)."""
    return {
        "until": result.until,
        "charges": [_line_view(line) for line in result.lines if line.charged],
        "not_charged": [_line_view(line) for line in result.lines if not line.charged],
        "per_customer": result.per_customer(),
        "totals": result.totals(),
    }


def _line_view(line: PreviewLine) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "customer": line.customer,
        "subscription_id": line.subscription_id,
        "invoice": line.invoice,
        "period_index": line.period_index,
        "period_start": line.period_start,
        "amount_minor": line.amount_minor,
        "currency": line.currency,
        "due_at": line.due_at,
        "attempt_number": line.attempt_number,
        "instrument_id": line.instrument_id,
        "instrument": line.instrument,
        "detail": line.detail,
        "if_declined": line.if_declined,
    }
