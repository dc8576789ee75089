"""The reconciler: resolve attempts whose outcome we do not know, by asking Plexo.

It never charges blindly. For an attempt in `unknown`, `pending`, or `sending` with an
expired lease (its node died mid-call) it:
1. takes the invoice's lease (compare-and-set), so one node works on it;
2. asks Plexo: GET /v1/payments/{id} when the payment id is known, else query by referenceId;
3. found: records what Plexo says (approved / declined / still pending);
4. absent: waits out a grace period (the query index may lag), then sends the SAME
   referenceId again — Plexo refuses a duplicate reference, so this can never charge twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import col, select

from billing import metrics
from billing.domain.lifecycle import AttemptState, InvoiceStatus
from billing.domain.text import gateway_text
from billing.engine.billing_pass import RunSummary, observe, observe_run
from billing.engine.charge import (
    UNRESOLVED,
    AttemptResult,
    lock_attempt,
    payment_request,
    record_outcome,
)
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.runs import COMPLETED, INTERRUPTED, RunTracker
from billing.logs import log_event
from billing.plexo.errors import PlexoError
from billing.plexo.outcome import ChargeOutcome
from billing.store.db import session
from billing.store.models import ChargeAttempt, Customer, Invoice, PaymentInstrument, Subscription

log = logging.getLogger(__name__)

CHECK_DELAYS = (
    timedelta(seconds=5),
    timedelta(seconds=15),
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
)


def next_check_delay(check_count: int) -> timedelta:
    return CHECK_DELAYS[min(check_count, len(CHECK_DELAYS) - 1)]


@dataclass
class ReconcileSummary:
    examined: int = 0
    resent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    results: list[AttemptResult] = field(default_factory=list)


def unresolved_attempts(ctx: BillingContext, now: datetime, limit: int) -> list[str]:
    """referenceIds of attempts the reconciler should look at now."""
    with session(ctx.engine) as s:
        rows = s.exec(
            select(ChargeAttempt.reference_id)
            .join(Invoice, col(Invoice.id) == col(ChargeAttempt.invoice_id))
            .where(Invoice.status == InvoiceStatus.charging)
            .where(
                or_(
                    and_(
                        col(ChargeAttempt.state).in_([AttemptState.unknown, AttemptState.pending]),
                        col(ChargeAttempt.next_check_at) <= now,
                    ),
                    and_(
                        col(ChargeAttempt.state) == AttemptState.sending,
                        or_(col(Invoice.lease_until).is_(None), col(Invoice.lease_until) < now),
                    ),
                )
            )
            .order_by(col(ChargeAttempt.next_check_at), col(ChargeAttempt.id))
            .limit(limit)
        ).all()
    return list(rows)


def reconcile(
    ctx: BillingContext,
    limit: int = 500,
    *,
    run: RunTracker | None = None,
    on_step: Callable[[list[AttemptResult]], None] = lambda _: None,
) -> ReconcileSummary:
    """One sweep over unresolved attempts; with `run`, its row is opened once there is
    something to examine. `on_step` is called after each attempt with the outcomes it
    recorded (often none: still waiting, gateway unavailable)."""
    summary = ReconcileSummary()
    now = ctx.clock.now()
    refs = unresolved_attempts(ctx, now, limit)
    run_id = run.open() if refs and run is not None else None
    for ref in refs:
        summary.examined += 1
        recorded = len(summary.results)
        try:
            outcome = resolve_attempt(ctx, ref, summary, run_id)
        except Exception as exc:  # one bad attempt must not stop the sweep; its lease expires
            log_event(log, "reconcile.failed", logging.ERROR, error=type(exc).__name__)
            outcome = "error"
        summary.outcomes[outcome] += 1
        on_step(summary.results[recorded:])
    return summary


def run_reconcile(ctx: BillingContext) -> tuple[RunSummary, ReconcileSummary]:
    """One reconciler sweep recorded as a billing run of kind `reconcile` (kept when it
    recorded an outcome); counts and heartbeat are written as it goes, at most once a second."""
    started = ctx.clock.now()
    started_wall = time.monotonic()
    run = RunTracker(ctx, "reconcile", started)
    summary = RunSummary(kind="reconcile", as_of=started)

    def on_step(results: list[AttemptResult]) -> None:
        for result in results:
            summary.add(result)
            observe(result)
        run.beat(summary)

    try:
        swept = reconcile(ctx, run=run, on_step=on_step)
    except BaseException:
        run.close_after_error(summary)
        summary.state = INTERRUPTED
        observe_run(summary)
        raise
    finally:
        metrics.RUN_DURATION.labels(kind="reconcile").observe(time.monotonic() - started_wall)
    summary.run_id = run.close(summary, COMPLETED)
    summary.state = COMPLETED
    observe_run(summary)
    return summary, swept


def _take_lease(ctx: BillingContext, ref: str, now: datetime) -> int | None:
    """Compare-and-set the invoice lease to this node; returns the invoice id if taken."""
    with session(ctx.engine) as s:
        invoice_id = s.exec(
            select(ChargeAttempt.invoice_id).where(ChargeAttempt.reference_id == ref)
        ).one()
        taken = s.exec(
            update(Invoice)
            .where(col(Invoice.id) == invoice_id)
            .where(col(Invoice.status) == InvoiceStatus.charging)
            .where(
                or_(
                    col(Invoice.lease_owner).is_(None),
                    col(Invoice.lease_until) < now,
                    col(Invoice.lease_owner) == ctx.node,
                )
            )
            .values(
                lease_owner=ctx.node,
                lease_until=now + timedelta(seconds=ctx.lease_seconds),
            )
        )
        return invoice_id if taken.rowcount == 1 else None


def resolve_attempt(
    ctx: BillingContext, ref: str, summary: ReconcileSummary, run_id: int | None = None
) -> str:
    """Resolve one attempt; returns what happened (approved, declined, pending, unknown, ...)."""
    now = ctx.clock.now()
    invoice_id = _take_lease(ctx, ref, now)
    if invoice_id is None:
        return "busy"
    with session(ctx.engine) as s:
        attempt = s.exec(select(ChargeAttempt).where(ChargeAttempt.reference_id == ref)).one()
        payment_id, last_sent, checks = (
            attempt.plexo_payment_id,
            attempt.last_sent_at or attempt.created_at,
            attempt.check_count,
        )
        if attempt.state not in UNRESOLVED:
            return "resolved"
    delay = next_check_delay(checks + 1)
    try:
        outcome: ChargeOutcome | None
        if payment_id:
            outcome = ctx.plexo.get_payment(payment_id, reference_id=ref)
        else:
            outcome = ctx.plexo.find_payment(ref)
            if outcome is not None and outcome.kind == "pending" and outcome.payment_id:
                outcome = ctx.plexo.get_payment(outcome.payment_id, reference_id=ref)
        if outcome is None:
            if now - last_sent < ctx.resend_grace:
                _check_later(ctx, ref, now, delay, "no payment at Plexo yet; waiting out grace")
                return "waiting"
            resent = _resend(ctx, ref, now, run_id)
            if resent is None:
                return "busy"
            outcome = resent
            summary.resent += 1
    except PlexoError as exc:
        _check_later(ctx, ref, now, delay, f"gateway unavailable: {exc.code or exc}")
        return "unavailable"
    result = record_outcome(ctx, ref, outcome, lease_owner=ctx.node, check_delay=delay)
    _bump_checks(ctx, ref)
    summary.results.append(result)
    return result.outcome


def _resend(
    ctx: BillingContext, ref: str, now: datetime, run_id: int | None = None
) -> ChargeOutcome | None:
    """Plexo proved it has no payment with this referenceId: send the same one again.

    An attempt written before runs were linked joins the sweep's run (`run_id`) here, so every
    charge sent belongs to a run.

    Re-checked under locks (invoice, then attempt) and committed before the call: the invoice
    is still charging and leased to us, the attempt still unresolved. None when it no longer is.
    """
    with session(ctx.engine) as s:
        invoice, attempt = lock_attempt(s, ref)
        assert invoice.id is not None
        if (
            invoice.status != InvoiceStatus.charging
            or invoice.lease_owner != ctx.node
            or invoice.lease_until is None
            or invoice.lease_until <= now
            or attempt.state not in UNRESOLVED
        ):
            return None
        sub = s.get(Subscription, invoice.subscription_id)
        customer = s.get(Customer, invoice.customer_id)
        instrument = (
            s.get(PaymentInstrument, attempt.instrument_id) if attempt.instrument_id else None
        )
        assert sub is not None and customer is not None and customer.plexo_id is not None
        assert instrument is not None
        attempt.state = AttemptState.sending
        attempt.run_id = attempt.run_id or run_id
        attempt.send_count += 1
        attempt.last_sent_at = now
        s.add(attempt)
        record_event(
            s,
            at=now,
            entity_type="invoice",
            entity_id=invoice.id,
            event="attempt.resent",
            actor=ctx.actor,
            reason="Plexo has no payment with this referenceId; resending the same reference",
            reference_id=ref,
            send_count=attempt.send_count,
        )
        request = payment_request(ctx, invoice, sub, customer.plexo_id, instrument.token, ref)
    return ctx.plexo.create_payment(request)


def _check_later(ctx: BillingContext, ref: str, now: datetime, delay: timedelta, why: str) -> None:
    with session(ctx.engine) as s:
        _, attempt = lock_attempt(s, ref)
        if attempt.state not in UNRESOLVED:
            return  # resolved meanwhile: nothing to schedule
        if attempt.state == AttemptState.sending:
            attempt.state = AttemptState.unknown
        attempt.check_count += 1
        attempt.next_check_at = now + delay
        attempt.message = gateway_text(why, 500)  # may quote the gateway's own words
        s.add(attempt)
        s.exec(
            update(Invoice)
            .where(col(Invoice.id) == attempt.invoice_id)
            .where(col(Invoice.lease_owner) == ctx.node)
            .values(lease_owner=None, lease_until=None)
        )


def _bump_checks(ctx: BillingContext, ref: str) -> None:
    with session(ctx.engine) as s:
        s.exec(
            update(ChargeAttempt)
            .where(col(ChargeAttempt.reference_id) == ref)
            .values(check_count=ChargeAttempt.check_count + 1)
        )
