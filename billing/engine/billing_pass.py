"""One billing pass: invoice due periods, claim due invoices, charge them with bounded
concurrency, all recorded as one billing run (see engine/runs.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from billing import metrics
from billing.engine.charge import AttemptResult, charge_invoice
from billing.engine.context import BillingContext
from billing.engine.invoicing import create_due_invoices
from billing.engine.runs import COMPLETED, INTERRUPTED, RunTracker, close_stale_runs
from billing.logs import log_event
from billing.store.claims import claim_invoices
from billing.store.db import session
from billing.store.models import Invoice

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counts and amounts per outcome and currency: {"approved": {"count": 2, "amounts": {...}}}."""

    kind: str
    as_of: datetime
    invoices_created: int = 0
    subscriptions_held: int = 0  # over the catch-up cap: held for review, not invoiced
    attempts: int = 0
    invoices_processed: int = 0  # claimed and handed to a charge (skipped ones included)
    totals: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_id: int | None = None
    state: str = "completed"  # completed | interrupted (stopped before it ran out of work)
    # Approval gate (engine/approval.py): the plan this pass froze, its charges per currency
    # ({"UYU": {"count": n, "amount_minor": m}}), and the plans it expired.
    plan_id: int | None = None
    plan_totals: dict[str, dict[str, int]] = field(default_factory=dict)
    plans_expired: list[int] = field(default_factory=list)

    def add(self, result: AttemptResult) -> None:
        if result.outcome == "skipped":
            return
        if result.outcome != "parked":  # parked: over a safety bound, nothing was sent
            self.attempts += 1
        entry = self.totals.setdefault(result.outcome, {"count": 0, "amounts": {}})
        entry["count"] += 1
        amounts: dict[str, int] = entry["amounts"]
        amounts[result.currency] = amounts.get(result.currency, 0) + result.amount_minor
        if result.decline_class:
            classes: dict[str, int] = entry.setdefault("decline_classes", {})
            classes[result.decline_class] = classes.get(result.decline_class, 0) + 1

    def count(self, outcome: str) -> int:
        return int(self.totals.get(outcome, {}).get("count", 0))

    @property
    def did_work(self) -> bool:
        return (
            self.invoices_created > 0
            or self.subscriptions_held > 0
            or self.attempts > 0
            or self.plan_id is not None
            or bool(self.plans_expired)
            or self.count("parked") > 0
        )


def observe(result: AttemptResult) -> None:
    if result.outcome in ("skipped", "parked"):  # parked ones: the billing_invoices_parked gauge
        return
    metrics.CHARGES.labels(outcome=result.outcome, decline_class=result.decline_class or "").inc()
    metrics.CHARGE_AMOUNT.labels(currency=result.currency, outcome=result.outcome).inc(
        result.amount_minor
    )


def observe_run(summary: RunSummary) -> None:
    """A pass or sweep ended (completed or interrupted); per-pass sizes for passes only."""
    metrics.RUNS.labels(kind=summary.kind, state=summary.state).inc()
    if summary.kind == "pass":
        metrics.RUN_INVOICES.observe(summary.invoices_processed)
        metrics.RUN_ATTEMPTS.observe(summary.attempts)


def run_billing_pass(
    ctx: BillingContext, should_stop: Callable[[], bool] = lambda: False
) -> RunSummary:
    """Invoice, claim and charge everything due at the clock's now, as one billing run: its
    row exists before the first charge is written ahead and every attempt links to it."""
    if ctx.approval_required:  # only an approved plan's frozen charges (engine/approval.py)
        from billing.engine.approval import run_gated_pass

        return run_gated_pass(ctx, should_stop)
    started_wall = time.monotonic()
    started_at = ctx.clock.now()
    summary = RunSummary(kind="pass", as_of=started_at)
    close_stale_runs(ctx)
    run = RunTracker(ctx, "pass", started_at)
    run_id = run.open()
    state = INTERRUPTED
    try:
        invoiced = create_due_invoices(ctx, started_at)
        summary.invoices_created, summary.subscriptions_held = invoiced.created, invoiced.held
        run.beat(summary)
        batch = max(ctx.concurrency * 4, 8)
        with ThreadPoolExecutor(max_workers=ctx.concurrency, thread_name_prefix="charge") as pool:
            while not should_stop():
                now = ctx.clock.now()
                claimed = claim_invoices(ctx.engine, ctx.node, now, ctx.lease_seconds, batch)
                if not claimed:
                    state = COMPLETED
                    break
                summary.invoices_processed += len(claimed)
                # One customer's invoices one after another: a card is never charged twice at
                # once, so each charge sees the answer to the one before (a hard decline
                # blocks the card for the next; the caps count every decline).
                for results in pool.map(
                    lambda group: [_charge_safely(ctx, i, should_stop, run_id) for i in group],
                    by_customer(ctx, claimed),
                ):
                    for result in results:
                        summary.add(result)
                        observe(result)
                run.beat(summary)  # after each batch, at most once a second
    except BaseException:
        run.close_after_error(summary)
        summary.state = INTERRUPTED
        observe_run(summary)
        raise
    finally:
        metrics.RUN_DURATION.labels(kind="pass").observe(time.monotonic() - started_wall)
    summary.run_id = run.close(summary, state)
    summary.state = state
    observe_run(summary)
    return summary


def by_customer(ctx: BillingContext, invoice_ids: list[int]) -> list[list[int]]:
    """Claimed invoices grouped by customer, each group in claim order."""
    with session(ctx.engine) as s:
        owners = dict(
            s.exec(
                select(Invoice.id, Invoice.customer_id).where(col(Invoice.id).in_(invoice_ids))
            ).all()
        )
    groups: dict[int, list[int]] = {}
    for invoice_id in invoice_ids:
        groups.setdefault(owners.get(invoice_id, -invoice_id), []).append(invoice_id)
    return list(groups.values())


def _charge_safely(
    ctx: BillingContext, invoice_id: int, should_stop: Callable[[], bool], run_id: int
) -> AttemptResult:
    """One failing invoice must not end the pass: its lease expires and the write-ahead
    attempt (if any) goes to the reconciler. Only the error's type is logged (no data)."""
    try:
        return charge_invoice(ctx, invoice_id, should_stop, run_id=run_id)
    except Exception as exc:
        log_event(log, "charge.failed", logging.ERROR, error=type(exc).__name__)
        return AttemptResult(invoice_id, "skipped", 0, "")
