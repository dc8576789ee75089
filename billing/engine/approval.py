"""The approval gate: with `approval_required`, a billing pass charges only what a person
approved.

A pass (run_gated_pass) still invoices due periods (that moves no money); it then charges the
frozen items of an approved plan, if one waits, and finally freezes a new plan: a
`billing_run` in state `planned` whose `run_plan_item` rows are exactly the charges the pass
would make now (engine/preview.py's prediction: invoice, amount, card, attempt number).

Plan states: planned -> approved -> running -> completed | interrupted (the plan is the run
that records its attempts); planned | approved -> rejected (a person); planned -> expired (a
pass, once `expires_at` passed). At most one plan waits (planned or approved) at a time: a
partial UNIQUE index, and on PostgreSQL an advisory lock around the freeze.

Why it cannot charge what was not approved: each frozen item goes through the normal claim and
write-ahead (engine/charge.py), and the write-ahead itself, in its own transaction, refuses any
attempt whose amount, currency, card or attempt number differ from the frozen ones
(`Expected`). Why it cannot lose one: an item not charged stays with its invoice, which is still
open and due, so the next plan freezes it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from billing import metrics
from billing.domain.lifecycle import InvoiceStatus
from billing.engine.charge import AttemptResult, Expected, charge_invoice
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.invoicing import create_due_invoices
from billing.engine.preview import preview
from billing.engine.runs import (
    COMPLETED,
    INTERRUPTED,
    RUNNING,
    RunTracker,
    clock_source,
    close_stale_runs,
    is_plan,
)
from billing.engine.store_rules import clock_refusal
from billing.engine.subscriptions import checked_reason
from billing.errors import ConfigError, Conflict, InvalidInput, NotFound
from billing.logs import log_event
from billing.store.claims import claim_listed_invoices, try_singleton
from billing.store.db import session
from billing.store.meta import advance_clock
from billing.store.models import BillingRun, ChargeAttempt, Invoice, RunPlanItem, is_row_id

if TYPE_CHECKING:
    from billing.engine.billing_pass import RunSummary

log = logging.getLogger(__name__)

PLANNED, APPROVED, REJECTED, EXPIRED = "planned", "approved", "rejected", "expired"
WAITING = (PLANNED, APPROVED)
# Plans whose frozen items no new plan may take: waiting, or being charged right now.
LIVE = (PLANNED, APPROVED, RUNNING)
FROZEN, SENT, SKIPPED = "frozen", "sent", "skipped"
SYSTEM = "system"
PLAN_LOCK = "billing.plan"


def run_gated_pass(ctx: BillingContext, should_stop: Callable[[], bool]) -> RunSummary:
    """A billing pass with the gate on: expire, invoice, charge an approved plan, freeze the
    next plan. Nothing is charged that is not an approved plan's frozen item."""
    from billing.engine.billing_pass import RunSummary, observe_run

    started_wall = time.monotonic()
    now = ctx.clock.now()
    summary = RunSummary(kind="pass", as_of=now)
    close_stale_runs(ctx)
    _advance_clock(ctx, now)
    try:
        summary.plans_expired = expire_plans(ctx, now)
        invoiced = create_due_invoices(ctx, now)
        summary.invoices_created, summary.subscriptions_held = invoiced.created, invoiced.held
        with session(ctx.engine) as s:
            approved = s.exec(
                select(BillingRun.id)
                .where(BillingRun.state == APPROVED)
                .order_by(col(BillingRun.id))
            ).all()
        for plan_id in approved:
            assert plan_id is not None
            if should_stop():
                break
            if execute_plan(ctx, plan_id, should_stop, summary):
                observe_run(summary)
        if not should_stop():
            frozen = freeze_plan(ctx, ctx.clock.now(), invoiced.created, invoiced.held)
            if frozen is not None:
                summary.plan_id, summary.plan_totals = frozen
    finally:
        metrics.RUN_DURATION.labels(kind="pass").observe(time.monotonic() - started_wall)
    return summary


def _advance_clock(ctx: BillingContext, now: datetime) -> None:
    """What RunTracker.open does for a pass: the store's clock only moves forward."""
    source = clock_source(ctx)
    with session(ctx.engine) as s:
        reading = advance_clock(s, now, source)
        refusal = clock_refusal(reading, now, test_clock=source == "test")
        if refusal is not None:
            raise ConfigError(refusal)


# --- freezing ---------------------------------------------------------------------------


def freeze_plan(
    ctx: BillingContext, now: datetime, invoices_created: int = 0, subscriptions_held: int = 0
) -> tuple[int, dict[str, dict[str, int]]] | None:
    """Freeze the charges a pass would make now into a new `planned` run; None when a plan
    already waits (here or on another node) or nothing would be charged."""
    lines = [line for line in preview(ctx, now).charges if line.invoice is not None]
    if not lines:
        return None
    try:
        with session(ctx.engine) as s:
            if not try_singleton(s.connection(), PLAN_LOCK):
                return None  # another daemon is freezing one right now
            waiting = s.exec(select(BillingRun.id).where(col(BillingRun.state).in_(WAITING)))
            if waiting.first() is not None:
                return None
            numbers = [line.invoice for line in lines if line.invoice is not None]
            ids: dict[str | None, int] = {
                number: invoice_id
                for number, invoice_id in s.exec(
                    select(Invoice.number, Invoice.id).where(col(Invoice.number).in_(numbers))
                )
                if invoice_id is not None
            }
            busy = set(
                s.exec(
                    select(RunPlanItem.invoice_id)
                    .join(BillingRun, col(BillingRun.id) == col(RunPlanItem.run_id))
                    .where(col(BillingRun.state).in_(LIVE))
                    .where(RunPlanItem.status == FROZEN)
                )
            )
            items = [
                RunPlanItem(
                    run_id=0,
                    invoice_id=ids[line.invoice],
                    kind=line.kind,
                    amount_minor=line.amount_minor,
                    currency=line.currency,
                    instrument_id=line.instrument_id,
                    attempt_number=line.attempt_number,
                )
                for line in lines
                if line.invoice in ids
                and ids[line.invoice] not in busy
                and line.instrument_id is not None
                and line.attempt_number is not None
            ]
            if not items:
                return None
            totals = plan_totals(items)
            plan = BillingRun(
                kind="pass",
                node=ctx.node,
                state=PLANNED,
                as_of=now,
                started_at=now,
                invoices_created=invoices_created,
                subscriptions_held=subscriptions_held,
                totals={"planned": _as_outcome(totals)},
                expires_at=now + ctx.approval_expires_after,
            )
            s.add(plan)
            s.flush()
            assert plan.id is not None
            for item in items:
                item.run_id = plan.id
                s.add(item)
            record_event(
                s,
                at=now,
                entity_type="billing_run",
                entity_id=plan.id,
                event="run.planned",
                actor=ctx.actor,
                charges=len(items),
                totals=totals,
                expires_at=plan.expires_at.isoformat() if plan.expires_at else None,
            )
            plan_id = plan.id
    except IntegrityError:
        return None  # the partial UNIQUE index: another node's plan won
    log_event(log, "run.planned", run=plan_id, charges=len(items))
    return plan_id, totals


def plan_totals(items: list[RunPlanItem]) -> dict[str, dict[str, int]]:
    """Frozen charges per currency: {"UYU": {"count": n, "amount_minor": m}}."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        entry = out.setdefault(item.currency, {"count": 0, "amount_minor": 0})
        entry["count"] += 1
        entry["amount_minor"] += item.amount_minor
    return out


def _as_outcome(totals: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The plan's totals in billing_run.totals' shape (so `runs list` shows them)."""
    return {
        "count": sum(entry["count"] for entry in totals.values()),
        "amounts": {cur: entry["amount_minor"] for cur, entry in totals.items()},
    }


# --- expiring, approving, rejecting -------------------------------------------------------


def expire_plans(ctx: BillingContext, now: datetime) -> list[int]:
    """Plans still `planned` at their expiry become `expired` (actor "system"); their ids."""
    with session(ctx.engine) as s:
        due = list(
            s.exec(
                select(BillingRun.id)
                .where(BillingRun.state == PLANNED)
                .where(col(BillingRun.expires_at) <= now)
            )
        )
    expired: list[int] = []
    for plan_id in due:
        assert plan_id is not None
        with session(ctx.engine) as s:
            done = s.exec(
                update(BillingRun)
                .where(col(BillingRun.id) == plan_id)
                .where(col(BillingRun.state) == PLANNED)
                .values(
                    state=EXPIRED,
                    decided_by=SYSTEM,
                    decided_at=now,
                    finished_at=now,
                    decision_reason="not approved in time",
                )
            )
            if done.rowcount != 1:
                continue
            record_event(
                s,
                at=now,
                entity_type="billing_run",
                entity_id=plan_id,
                event="run.expired",
                actor=SYSTEM,
                reason="not approved in time",
            )
            expired.append(plan_id)
    if expired:
        log_event(log, "run.expired", runs=",".join(map(str, expired)))
    return expired


@dataclass(frozen=True)
class Decision:
    run: BillingRun
    changed: bool  # False: it was already in that state (a no-op)


def approve_plan(ctx: BillingContext, run_id: int, *, actor: str, reason: str | None) -> Decision:
    """planned -> approved; the next pass charges its frozen items. Approving an approved
    plan changes nothing; a rejected, expired (or past its expiry) plan is refused."""
    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        run = _lock_plan(s, run_id)
        if run.state == PLANNED and run.expires_at is not None and now >= run.expires_at:
            raise Conflict(
                f"run {run_id} expired at {run.expires_at.isoformat()} unapproved; the next "
                "pass freezes a new plan"
            )
        if run.state in (REJECTED, EXPIRED):
            raise Conflict(f"run {run_id} is {run.state}: it cannot be approved")
        if run.state != PLANNED:
            return Decision(run, False)  # approved, or already charging/charged
        _decide(s, run, APPROVED, actor, reason, now)
        return Decision(run, True)


def reject_plan(ctx: BillingContext, run_id: int, *, actor: str, reason: str) -> Decision:
    """planned (or approved, not yet started) -> rejected: it charges nothing; its invoices
    are still due and go into the next plan."""
    checked = checked_reason(reason)
    if not checked:
        raise InvalidInput("--reason must say why the plan is rejected")
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        run = _lock_plan(s, run_id)
        if run.state == REJECTED:
            return Decision(run, False)
        if run.state not in WAITING:
            raise Conflict(f"run {run_id} is {run.state}: it cannot be rejected")
        _decide(s, run, REJECTED, actor, checked, now)
        return Decision(run, True)


def _lock_plan(s: Session, run_id: int) -> BillingRun:
    run = s.get(BillingRun, run_id, with_for_update=True) if is_row_id(run_id) else None
    if run is None:
        raise NotFound(f"no billing run {run_id}")
    if not is_plan(run):
        raise Conflict(f"run {run_id} is not a plan of the approval gate")
    return run


def _decide(
    s: Session, run: BillingRun, state: str, actor: str, reason: str | None, now: datetime
) -> None:
    assert run.id is not None
    run.state = state
    run.decided_by, run.decided_at, run.decision_reason = actor, now, reason
    if state == REJECTED:
        run.finished_at = now
    s.add(run)
    record_event(
        s,
        at=now,
        entity_type="billing_run",
        entity_id=run.id,
        event=f"run.{state}",
        actor=actor,
        reason=reason,
    )


# --- charging an approved plan ------------------------------------------------------------


def execute_plan(
    ctx: BillingContext, plan_id: int, should_stop: Callable[[], bool], summary: RunSummary
) -> bool:
    """Charge the frozen items of approved plan `plan_id` as its run (approved -> running ->
    completed | interrupted); False if another node took it first."""
    from billing.engine.billing_pass import RunSummary

    now = ctx.clock.now()
    with session(ctx.engine) as s:
        taken = s.exec(
            update(BillingRun)
            .where(col(BillingRun.id) == plan_id)
            .where(col(BillingRun.state) == APPROVED)
            .values(state=RUNNING, node=ctx.node, started_at=now, heartbeat_at=now)
        )
        if taken.rowcount != 1:
            return False
        plan = s.get(BillingRun, plan_id)
        assert plan is not None
        items = {
            item.invoice_id: item
            for item in s.exec(
                select(RunPlanItem)
                .where(RunPlanItem.run_id == plan_id)
                .where(RunPlanItem.status == FROZEN)
            )
        }
    # The run's own counts: what the freezing pass invoiced, and the attempts made now (the
    # invoicing of this pass belongs to the plan it freezes next).
    run = RunSummary(
        kind="pass",
        as_of=plan.as_of,
        invoices_created=plan.invoices_created,
        subscriptions_held=plan.subscriptions_held,
        run_id=plan_id,
    )
    try:
        _charge_plan(ctx, plan_id, items, should_stop, run)
    finally:
        summary.run_id, summary.state = plan_id, run.state
        summary.attempts, summary.totals = run.attempts, run.totals
        summary.invoices_processed = run.invoices_processed
    return True


def _charge_plan(
    ctx: BillingContext,
    plan_id: int,
    items: dict[int, RunPlanItem],
    should_stop: Callable[[], bool],
    summary: RunSummary,
) -> None:
    from billing.engine.billing_pass import by_customer, observe

    tracker = RunTracker(ctx, "pass", summary.as_of)
    tracker.run_id = plan_id
    log_event(log, "run.executing", run=plan_id, charges=len(items))
    try:
        claimed = claim_listed_invoices(
            ctx.engine, ctx.node, ctx.clock.now(), ctx.lease_seconds, list(items)
        )
        for invoice_id in set(items) - set(claimed):
            _skip(ctx, items[invoice_id], plan_id, None)
        summary.invoices_processed += len(claimed)

        def charge_group(group: list[int]) -> list[AttemptResult]:
            return [_charge_item(ctx, items[i], plan_id, should_stop) for i in group]

        with ThreadPoolExecutor(max_workers=ctx.concurrency, thread_name_prefix="charge") as pool:
            for results in pool.map(charge_group, by_customer(ctx, claimed)):
                for result in results:
                    summary.add(result)
                    observe(result)
                tracker.beat(summary)
        state = INTERRUPTED if should_stop() and _frozen_left(ctx, plan_id) else COMPLETED
    except BaseException:
        tracker.close_after_error(summary)
        summary.state = INTERRUPTED
        raise
    tracker.flush(summary, state)
    summary.state = state


def _frozen_left(ctx: BillingContext, plan_id: int) -> bool:
    """Items neither sent nor skipped: the plan stopped before them (they are still due, so
    the next plan freezes them again)."""
    with session(ctx.engine) as s:
        left = s.exec(
            select(RunPlanItem.id)
            .where(RunPlanItem.run_id == plan_id)
            .where(RunPlanItem.status == FROZEN)
        ).first()
    return left is not None


def _charge_item(
    ctx: BillingContext, item: RunPlanItem, plan_id: int, should_stop: Callable[[], bool]
) -> AttemptResult:
    """Charge one frozen item through the normal path, allowed only the frozen attempt."""
    expected = Expected(item.amount_minor, item.currency, item.instrument_id, item.attempt_number)
    try:
        result = charge_invoice(
            ctx, item.invoice_id, should_stop, run_id=plan_id, expected=expected
        )
    except Exception as exc:  # like billing_pass._charge_safely: one invoice never ends a pass
        log_event(log, "charge.failed", logging.ERROR, error=type(exc).__name__)
        return AttemptResult(item.invoice_id, "skipped", 0, "")
    with session(ctx.engine) as s:
        sent = s.exec(
            select(ChargeAttempt.id)
            .where(ChargeAttempt.invoice_id == item.invoice_id)
            .where(ChargeAttempt.attempt_number == item.attempt_number)
            .where(ChargeAttempt.run_id == plan_id)
        ).first()
        if sent is not None:
            s.exec(
                update(RunPlanItem)
                .where(col(RunPlanItem.id) == item.id)
                .values(status=SENT, outcome=result.outcome)
            )
            return result
    if should_stop() and result.detail is None:
        return result  # stopped before it: the item stays frozen, the run is interrupted
    _skip(ctx, item, plan_id, result.detail)
    return result


def _skip(ctx: BillingContext, item: RunPlanItem, plan_id: int, why: str | None) -> None:
    """An item not charged is reported on the plan (and in the event log); its invoice stays
    as it is, so if it is still due the next plan freezes it again."""
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        invoice = s.get(Invoice, item.invoice_id)
        assert invoice is not None
        note = why or _why_not_charged(invoice, now)
        s.exec(
            update(RunPlanItem)
            .where(col(RunPlanItem.id) == item.id)
            .values(status=SKIPPED, note=note[:200])
        )
        record_event(
            s,
            at=now,
            entity_type="billing_run",
            entity_id=plan_id,
            event="run.item_skipped",
            actor=ctx.actor,
            reason=note,
            invoice_id=invoice.id,
            invoice_number=invoice.number,
        )
    log_event(log, "run.item_skipped", run=plan_id, invoice=invoice.number, why=note)


def _why_not_charged(invoice: Invoice, now: datetime) -> str:
    if invoice.status != InvoiceStatus.open:
        return f"invoice {invoice.status} since the plan was frozen"
    if invoice.next_attempt_at is None or invoice.next_attempt_at > now:
        return "not due now (deferred or rescheduled since the plan was frozen)"
    if invoice.lease_until is not None and invoice.lease_until >= now:
        return "being worked on by another node"
    return "not sent"


# --- reading ------------------------------------------------------------------------------


def plan_items(s: Session, run_id: int) -> list[tuple[RunPlanItem, str]]:
    """A plan's frozen items with their invoice numbers, in freezing order."""
    rows = s.exec(
        select(RunPlanItem, Invoice.number)
        .join(Invoice, col(Invoice.id) == col(RunPlanItem.invoice_id))
        .where(RunPlanItem.run_id == run_id)
        .order_by(col(RunPlanItem.id))
    ).all()
    return [(item, number) for item, number in rows]
