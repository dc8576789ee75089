"""What finance reviews of billing runs: per-run counts (`runs list`) and one run in full
(`runs show`).

A pass's outcomes are counted from its attempts as they stand now (an unknown the reconciler
settled later counts as what it became), so they agree with `runs export`; a reconciler
sweep has no attempts of its own and shows what it resolved (its `totals`). `due` and
`parked` come from the run's `totals` (written by the pass); parked invoices are listed from
their `invoice.parked` events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from billing.domain.lifecycle import AttemptState
from billing.engine.context import BillingContext
from billing.engine.run_export import ChargeRow, iter_charges, outcome_of
from billing.engine.runs import EXTRA_TOTALS, effective_state, is_plan, stale_after
from billing.errors import NotFound
from billing.store.db import session
from billing.store.models import BillingRun, ChargeAttempt, Customer, Event, Invoice, is_row_id

OUTCOMES = ("approved", "declined", "pending", "unknown")
UNRESOLVED = (AttemptState.sending, AttemptState.pending, AttemptState.unknown)
PARKED_EVENT = "invoice.parked"


@dataclass
class Tally:
    """A count and its amounts per currency, in minor units."""

    count: int = 0
    amounts: dict[str, int] = field(default_factory=dict)

    def add(self, count: int, currency: str, minor: int) -> None:
        self.count += count
        self.amounts[currency] = self.amounts.get(currency, 0) + minor


@dataclass
class RunCounts:
    """One run as listed: its effective state, invoices due, outcomes and parked."""

    run: BillingRun
    state: str
    due: int | None  # None: a run recorded before `due` was counted
    outcomes: dict[str, Tally]
    parked: Tally


@dataclass(frozen=True)
class DeclineLine:
    decline_class: str | None
    decline_code: str | None
    result_code: str | None
    count: int
    amounts: dict[str, int]


@dataclass(frozen=True)
class ParkedLine:
    """An invoice the safety bounds parked in this run, with its status now."""

    invoice_id: int
    invoice_number: str | None
    subscription_id: int | None
    customer_reference_id: str | None
    amount_minor: int | None
    currency: str | None
    reason: str | None
    parked_at: datetime
    status: str | None


@dataclass
class RunReview:
    counts: RunCounts
    declines: list[DeclineLine]
    charges: list[ChargeRow]  # at most the limit asked for, in attempt order
    charge_count: int
    unresolved: list[ChargeRow]  # every attempt still sending, pending or unknown
    parked: list[ParkedLine]


def tally_of(entry: Any) -> Tally:
    """A `totals` entry ({"count", "amounts"}) as a Tally; anything else is empty."""
    if not isinstance(entry, dict):
        return Tally()
    amounts = entry.get("amounts") or {}
    return Tally(int(entry.get("count", 0)), {str(k): int(v) for k, v in amounts.items()})


def _outcome_tallies(s: Session, run_ids: list[int]) -> dict[int, dict[str, Tally]]:
    """Per run, outcome -> count and amounts, from the attempts as they stand."""
    rows = (
        s.connection()
        .execute(
            sa_select(
                col(ChargeAttempt.run_id),
                col(ChargeAttempt.state),
                col(ChargeAttempt.currency),
                func.count(col(ChargeAttempt.id)),
                func.sum(ChargeAttempt.amount_minor),
            )
            .where(col(ChargeAttempt.run_id).in_(run_ids))
            .group_by(
                col(ChargeAttempt.run_id), col(ChargeAttempt.state), col(ChargeAttempt.currency)
            )
        )
        .all()
    )
    tallies: dict[int, dict[str, Tally]] = {}
    for run_id, state, currency, count, minor in rows:
        assert run_id is not None
        per_run = tallies.setdefault(run_id, {})
        per_run.setdefault(outcome_of(state), Tally()).add(int(count), currency, int(minor or 0))
    return tallies


def _counts(run: BillingRun, state: str, live: dict[str, Tally] | None) -> RunCounts:
    totals = run.totals or {}
    if run.kind == "pass" and (live or not is_plan(run)):
        outcomes = live or {}
    else:  # a sweep resolves attempts of other runs, a plan not charged yet holds its frozen
        # totals ("planned"): what it recorded is its story
        outcomes = {k: tally_of(v) for k, v in totals.items() if k not in EXTRA_TOTALS}
    due = totals.get("due")
    return RunCounts(
        run=run,
        state=state,
        due=int(due["count"]) if isinstance(due, dict) and "count" in due else None,
        outcomes={o: outcomes[o] for o in sorted(outcomes, key=_outcome_order)},
        parked=tally_of(totals.get("parked")),
    )


def _outcome_order(outcome: str) -> tuple[int, str]:
    return (OUTCOMES.index(outcome) if outcome in OUTCOMES else len(OUTCOMES), outcome)


def list_run_counts(
    ctx: BillingContext,
    *,
    kind: str | None = None,
    started_from: datetime | None = None,
    started_before: datetime | None = None,
    limit: int = 50,
) -> list[RunCounts]:
    """Runs newest first, started in [started_from, started_before), with their counts."""
    with session(ctx.engine) as s:
        query = select(BillingRun)
        if kind is not None:
            query = query.where(BillingRun.kind == kind)
        if started_from is not None:
            query = query.where(col(BillingRun.started_at) >= started_from)
        if started_before is not None:
            query = query.where(col(BillingRun.started_at) < started_before)
        runs = list(s.exec(query.order_by(col(BillingRun.id).desc()).limit(limit)).all())
        ids = [r.id for r in runs if r.id is not None and r.kind == "pass"]
        live = _outcome_tallies(s, ids) if ids else {}
    now, silent = ctx.clock.now(), stale_after(ctx)
    return [_counts(r, effective_state(r, now, silent), live.get(r.id or 0, {})) for r in runs]


def get_run(s: Session, run_id: int) -> BillingRun:
    run = s.get(BillingRun, run_id) if is_row_id(run_id) else None
    if run is None:
        raise NotFound(f"no billing run {run_id}")
    return run


def _declines(s: Session, run_id: int) -> list[DeclineLine]:
    rows = (
        s.connection()
        .execute(
            sa_select(
                col(ChargeAttempt.decline_class),
                col(ChargeAttempt.decline_code),
                col(ChargeAttempt.result_code),
                col(ChargeAttempt.currency),
                func.count(col(ChargeAttempt.id)),
                func.sum(ChargeAttempt.amount_minor),
            )
            .where(col(ChargeAttempt.run_id) == run_id)
            .where(col(ChargeAttempt.state) == AttemptState.declined)
            .group_by(
                col(ChargeAttempt.decline_class),
                col(ChargeAttempt.decline_code),
                col(ChargeAttempt.result_code),
                col(ChargeAttempt.currency),
            )
        )
        .all()
    )
    merged: dict[tuple[str | None, str | None, str | None], Tally] = {}
    for d_class, d_code, r_code, currency, count, minor in rows:
        merged.setdefault((d_class, d_code, r_code), Tally()).add(count, currency, minor or 0)
    return [
        DeclineLine(k[0], k[1], k[2], t.count, t.amounts)
        for k, t in sorted(merged.items(), key=lambda kv: (-kv[1].count, str(kv[0])))
    ]


def parked_invoices(s: Session, run: BillingRun) -> list[ParkedLine]:
    """Invoices parked in this run, from their `invoice.parked` events (data.run_id)."""
    assert run.id is not None
    events = s.exec(
        select(Event)
        .where(col(Event.at) >= run.started_at)  # the `at` index bounds the scan
        .where(Event.entity_type == "invoice")
        .where(Event.event == PARKED_EVENT)
        .order_by(col(Event.id))
    ).all()
    mine = [e for e in events if _int(e.data.get("run_id")) == run.id]
    invoice_ids = [e.entity_id for e in mine]
    found = {
        inv.id: (inv, ref)
        for inv, ref in s.exec(
            select(Invoice, Customer.reference_id)
            .join(Customer, col(Customer.id) == col(Invoice.customer_id))
            .where(col(Invoice.id).in_(invoice_ids))
        ).all()
    }
    lines = []
    for e in mine:
        inv, ref = found.get(e.entity_id, (None, None))
        amount = _int(e.data.get("amount_minor"))
        lines.append(
            ParkedLine(
                invoice_id=e.entity_id,
                invoice_number=inv.number if inv else None,
                subscription_id=inv.subscription_id if inv else None,
                customer_reference_id=ref,
                amount_minor=amount if amount is not None else (inv.amount_minor if inv else None),
                currency=e.data.get("currency") or (inv.currency if inv else None),
                reason=e.data.get("reason") or e.reason,
                parked_at=e.at,
                status=inv.status if inv else None,
            )
        )
    return lines


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def review_run(ctx: BillingContext, run_id: int, *, charge_limit: int | None = None) -> RunReview:
    """One run in full; NotFound for an unknown id. `charge_limit` caps the charge list only
    (totals, declines, unresolved and parked are always complete)."""
    with session(ctx.engine) as s:
        run = get_run(s, run_id)
        live = _outcome_tallies(s, [run_id]).get(run_id, {})
        counts = _counts(run, effective_state(run, ctx.clock.now(), stale_after(ctx)), live)
        declines = _declines(s, run_id)
        parked = parked_invoices(s, run)
    charges = list(iter_charges(ctx.engine, run_id, limit=charge_limit))
    unresolved = list(iter_charges(ctx.engine, run_id, states=[str(x) for x in UNRESOLVED]))
    return RunReview(
        counts=counts,
        declines=declines,
        charges=charges,
        charge_count=sum(t.count for t in live.values()),
        unresolved=unresolved,
        parked=parked,
    )
