"""Turn due subscription periods into invoices, one per (subscription, period_start).

A pass invoices in batches (create_due_invoices -> invoice_batch): many subscriptions per
transaction, each advanced by a compare-and-set on the `next_period_index` (and plan, cancel
flag, status) it was read with, so two daemons never both invoice a period; only the winners'
invoices are inserted, and the UNIQUE constraint on (subscription_id, period_start) is the
last line of defence. `pause` and `change_plan` use the one-subscription path
(invoice_periods), which is also the fallback of a batch the database refuses.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String, and_, bindparam, column, or_, text, update, values
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError
from sqlmodel import Session, col, select

from billing.domain.lifecycle import InvoiceStatus, SubscriptionStatus
from billing.domain.periods import Interval, period_bounds, period_start, periods_started_by
from billing.engine.context import BillingContext
from billing.engine.events import NewEvent, record_event, record_events
from billing.logs import log_event
from billing.store.db import session
from billing.store.models import Invoice, Plan, Subscription
from billing.store.types import UTCDateTime

log = logging.getLogger(__name__)

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
# Subscriptions invoiced per transaction: big enough that a billing day's 20k due cost a few
# dozen transactions, small enough that SQLite's write lock is held for milliseconds.
BATCH_SIZE = 500


def new_invoice_number() -> str:
    """Random and never reused, even after the database is rebuilt (see Invoice.number)."""
    return "INV-" + secrets.token_hex(6).upper()


@dataclass(frozen=True)
class Step:
    """What one step did for one subscription: invoices created, or held for review."""

    created: int = 0
    held: bool = False


@dataclass
class Invoiced:
    """What one pass's invoicing did: invoices created, subscriptions held for review."""

    created: int = 0
    held: int = 0
    failed: int = 0  # subscriptions that could not be invoiced (logged; retried next pass)


def due_subscription_ids(ctx: BillingContext, now: datetime, limit: int = 1000) -> list[int]:
    """Subscriptions with at least one period started and not yet invoiced (held ones wait).
    The pass reads them in batches (_due_batch); this list drives the one-by-one loop that
    bench_invoicing.py measures as "before"."""
    with session(ctx.engine) as s:
        rows = s.exec(
            select(Subscription.id)
            .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
            .where(col(Subscription.next_billing_at) <= now)
            .where(col(Subscription.held_at).is_(None))
            .order_by(col(Subscription.next_billing_at), col(Subscription.id))
            .limit(limit)
        ).all()
    return [r for r in rows if r is not None]


def started_periods(ctx: BillingContext, sub: Subscription, plan: Plan, now: datetime) -> list[int]:
    """Indices of the periods of `sub` that started by `now` and are not invoiced yet."""
    interval, count = Interval(plan.interval), plan.interval_count
    return periods_started_by(sub.anchor_at, interval, count, sub.next_period_index, now, ctx.tz)


def over_cap(ctx: BillingContext, sub: Subscription, indices: list[int]) -> int:
    """How many of `indices` exceed the catch-up cap (0 = none): periods a release allowed
    (up to `catchup_through_index`) do not count."""
    allowed = sub.catchup_through_index
    uncovered = len(indices) if allowed is None else sum(1 for i in indices if i > allowed)
    return uncovered if uncovered > ctx.catchup_max_periods else 0


def invoice_due_periods(ctx: BillingContext, subscription_id: int, now: datetime) -> Step:
    """Create the invoices of the started periods of one subscription (at most
    MAX_PERIODS_PER_STEP), or hold it for review when more are due than the catch-up cap."""
    with session(ctx.engine) as s:
        sub = s.get(Subscription, subscription_id)
        if sub is None or sub.status not in INVOICING_STATUSES or sub.held_at is not None:
            return Step()
        plan = s.get(Plan, sub.plan_id)
        assert plan is not None
        indices = started_periods(ctx, sub, plan, now)
        if not indices:
            return Step()
        if over_cap(ctx, sub, indices):
            return Step(held=_hold(ctx, s, sub, len(indices), now))
        created = invoice_periods(ctx, s, sub, plan, indices[:MAX_PERIODS_PER_STEP], now)
        return Step(created=max(created, 0))


def _hold(ctx: BillingContext, s: Session, sub: Subscription, due: int, now: datetime) -> bool:
    """Hold `sub` for review (guarded like invoicing: only if nobody moved it meanwhile)."""
    assert sub.id is not None
    reason = f"{due} periods due at once, more than the catch-up cap of {ctx.catchup_max_periods}"
    held = s.exec(
        update(Subscription)
        .where(col(Subscription.id) == sub.id)
        .where(col(Subscription.next_period_index) == sub.next_period_index)
        .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
        .where(col(Subscription.held_at).is_(None))
        .values(held_at=now, held_reason=reason, held_periods=due, updated_at=now)
    )
    if held.rowcount != 1:
        s.rollback()
        return False
    log_event(log, "subscription.held", logging.WARNING, subscription_id=sub.id, periods=due)
    record_event(
        s,
        at=now,
        entity_type="subscription",
        entity_id=sub.id,
        event="subscription.held",
        actor=ctx.actor,
        reason=reason,
        periods=due,
        cap=ctx.catchup_max_periods,
        first_period_index=sub.next_period_index,
    )
    return True


def period_invoices(
    ctx: BillingContext,
    sub: Subscription,
    plan: Plan,
    indices: list[int],
    now: datetime,
    number: Callable[[], str],
) -> tuple[list[Invoice], datetime | None]:
    """The invoices for `indices` (nothing written), stopping at a cancel at period end: then
    also the moment the subscription ends. Shared by invoicing and the preview."""
    rows, cancel_at = period_rows(ctx, sub, plan, indices, now, number)
    return [Invoice(**row) for row in rows], cancel_at


def period_rows(
    ctx: BillingContext,
    sub: Subscription,
    plan: Plan,
    indices: list[int],
    now: datetime,
    number: Callable[[], str],
) -> tuple[list[dict[str, Any]], datetime | None]:
    """period_invoices as column values: what a batch inserts (an ORM object per invoice
    costs more than the rest of the batch's Python)."""
    assert sub.id is not None
    interval = Interval(plan.interval)
    rows: list[dict[str, Any]] = []
    ends = sub.current_period_end
    for index in indices:
        start, end = period_bounds(sub.anchor_at, interval, plan.interval_count, index, ctx.tz)
        if sub.cancel_at_period_end and ends is not None and start >= ends:
            return rows, start
        rows.append(
            {
                "number": number(),
                "subscription_id": sub.id,
                "customer_id": sub.customer_id,
                "period_index": index,
                "period_start": start,
                "period_end": end,
                "amount_minor": plan.amount_minor,
                "currency": plan.currency,
                "status": InvoiceStatus.open,
                "attempt_count": 0,
                "next_attempt_at": start,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows, None


def invoice_periods(
    ctx: BillingContext,
    s: Session,
    sub: Subscription,
    plan: Plan,
    indices: list[int],
    now: datetime,
) -> int:
    """Invoice `indices` (consecutive, from sub.next_period_index) in the caller's transaction;
    returns how many, or -1 when the compare-and-set lost (someone moved the subscription)."""
    subscription_id = sub.id
    assert subscription_id is not None
    interval = Interval(plan.interval)
    first = sub.next_period_index
    created, cancel_at = period_invoices(ctx, sub, plan, indices, now, new_invoice_number)
    next_index = first + len(created)
    values: dict[str, object] = {
        "next_period_index": next_index,
        "next_billing_at": period_start(
            sub.anchor_at, interval, plan.interval_count, next_index, ctx.tz
        ),
        "updated_at": now,
    }
    allowed = sub.catchup_through_index
    if allowed is not None and next_index > allowed:
        values["catchup_through_index"] = None  # a release's allowance is used once
    if cancel_at is not None:
        values.update(
            status=SubscriptionStatus.canceled, canceled_at=cancel_at, next_billing_at=None
        )
    # Compare-and-set: only the node that moves next_period_index from `first` invoices...
    moved = s.exec(
        update(Subscription)
        .where(col(Subscription.id) == subscription_id)
        .where(col(Subscription.next_period_index) == first)
        # ...and only if nobody paused, canceled or held it since we read it.
        .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
        .where(col(Subscription.cancel_at_period_end) == sub.cancel_at_period_end)
        .where(col(Subscription.held_at).is_(None))
        .values(**values)
    )
    if moved.rowcount != 1:
        s.rollback()
        return -1
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


def create_due_invoices(
    ctx: BillingContext, now: datetime, batch_size: int = BATCH_SIZE
) -> Invoiced:
    """Invoice every started period of every due subscription; hold those over the cap.

    Sweeps the due subscriptions in batches (invoice_batch), each batch one transaction; a
    sweep that changed something is followed by another (a subscription may still owe periods
    after MAX_PERIODS_PER_STEP), until one changes nothing. The keyset cursor moves past a
    subscription that could not be invoiced, so no bad row blocks the ones after it."""
    total = Invoiced()
    failed: set[int] = set()  # a sweep after the first meets the same ones again
    while True:
        progress = False
        after: tuple[datetime, int] | None = None
        while True:
            batch = _invoice_next_batch(ctx, now, after, batch_size)
            if batch is None:
                break
            after, done = batch
            total.created += done.created
            total.held += done.held
            failed.update(done.failed)
            total.failed = len(failed)
            progress = progress or done.moved > 0
        if not progress:
            return total


@dataclass
class Batch:
    """What one batch did: invoices created, subscriptions held, subscriptions moved (advanced
    or held: the sweep made progress), the ids of those that could not be invoiced."""

    created: int = 0
    held: int = 0
    moved: int = 0
    failed: list[int] = field(default_factory=list)


def _invoice_next_batch(
    ctx: BillingContext, now: datetime, after: tuple[datetime, int] | None, limit: int
) -> tuple[tuple[datetime, int], Batch] | None:
    """Invoice the next `limit` due subscriptions after the cursor in one transaction; None
    when none is left. A batch the database refuses as a whole (e.g. an IntegrityError) is
    rolled back and redone one subscription at a time, so one bad row costs only itself."""
    ids: list[int] = []
    cursor: tuple[datetime, int] | None = None
    try:
        with session(ctx.engine) as s:
            subs = _due_batch(s, now, after, limit)
            if not subs:
                return None
            last = subs[-1]
            assert last.id is not None and last.next_billing_at is not None
            cursor = (last.next_billing_at, last.id)
            ids = [sub.id for sub in subs if sub.id is not None]
            return cursor, invoice_batch(ctx, s, subs, now)
    except (IntegrityError, DataError) as exc:  # a row the database refuses, not a bug of ours
        if cursor is None:
            raise
        log_event(
            log, "invoicing.batch_failed", logging.ERROR, error=type(exc).__name__, size=len(ids)
        )
        return cursor, _one_by_one(ctx, ids, now)


def _due_batch(
    s: Session, now: datetime, after: tuple[datetime, int] | None, limit: int
) -> list[Subscription]:
    """The next due subscriptions in (next_billing_at, id) order, locked for this transaction.

    PostgreSQL: `FOR UPDATE OF subscription SKIP LOCKED`, so two daemons invoice disjoint
    batches instead of queueing on each other (a row locked elsewhere is left for the next
    sweep or pass; it stays due). SQLite renders no lock: BEGIN IMMEDIATE serializes writers."""
    query = (
        select(Subscription)
        .where(col(Subscription.status).in_([str(x) for x in INVOICING_STATUSES]))
        .where(col(Subscription.next_billing_at) <= now)
        .where(col(Subscription.held_at).is_(None))
    )
    if after is not None:
        at, sub_id = after
        query = query.where(
            or_(
                col(Subscription.next_billing_at) > at,
                and_(col(Subscription.next_billing_at) == at, col(Subscription.id) > sub_id),
            )
        )
    query = (
        query.order_by(col(Subscription.next_billing_at), col(Subscription.id))
        .limit(limit)
        .with_for_update(of=Subscription, skip_locked=True)
    )
    return list(s.exec(query).all())


def _one_by_one(ctx: BillingContext, ids: list[int], now: datetime) -> Batch:
    """The fallback of a refused batch: each subscription in its own transaction (the
    per-subscription path), a failure logged and counted, never raised past the others."""
    done = Batch()
    for sub_id in ids:
        try:
            step = invoice_due_periods(ctx, sub_id, now)
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            done.failed.append(sub_id)
            log_event(
                log,
                "invoicing.failed",
                logging.ERROR,
                subscription_id=sub_id,
                error=type(exc).__name__,
            )
            continue
        done.created += step.created
        done.held += int(step.held)
        done.moved += int(step.created > 0 or step.held)
    return done


@dataclass
class _Advance:
    """One subscription's planned move: the invoices of its started periods and its next
    period (what invoice_periods does for one, kept for the batch's statements)."""

    sub: Subscription
    invoices: list[dict[str, Any]]  # period_rows
    next_index: int
    next_billing_at: datetime | None
    canceled_at: datetime | None
    reset_catchup: bool


def invoice_batch(
    ctx: BillingContext, s: Session, subs: list[Subscription], now: datetime
) -> Batch:
    """Invoice the started periods of `subs` (read in this transaction) with a few set-based
    statements: a compare-and-set UPDATE ... FROM (the rows) RETURNING id for the holds (rare)
    and one for the advances (ADVANCE_SQL), one INSERT ... ON CONFLICT (subscription_id,
    period_start) DO NOTHING RETURNING for the invoices of the subscriptions whose
    compare-and-set won (INSERT_SQL), one INSERT for the events. A subscription that cannot be
    planned (its plan is gone or broken) is logged and skipped; the others go on."""
    done = Batch()
    plans = _plans_of(s, subs)
    advances: list[_Advance] = []
    holds: list[tuple[Subscription, int]] = []
    for sub in subs:
        try:
            planned = _plan(ctx, sub, plans.get(sub.plan_id), now)
        except Exception as exc:
            assert sub.id is not None
            done.failed.append(sub.id)
            log_event(
                log,
                "invoicing.failed",
                logging.ERROR,
                subscription_id=sub.id,
                error=type(exc).__name__,
            )
            continue
        if isinstance(planned, _Advance):
            advances.append(planned)
        elif planned:
            holds.append((sub, planned))
    events: list[NewEvent] = []
    for sub, due in _hold_all(ctx, s, holds, now):
        done.held += 1
        log_event(log, "subscription.held", logging.WARNING, subscription_id=sub.id, periods=due)
        events.append(_held_event(ctx, sub, due))
    moved = _advance_all(ctx, s, advances, now)
    created = _insert_invoices(s, [invoice for a in moved for invoice in a.invoices])
    done.created = len(created)
    done.moved = done.held + len(moved)
    for invoice_id, row in created:
        events.append(_created_event(invoice_id, row))
    for a in moved:
        if a.canceled_at is not None:
            assert a.sub.id is not None
            events.append(
                NewEvent(
                    "subscription",
                    a.sub.id,
                    "subscription.canceled",
                    {"subscription_id": a.sub.id, "customer_id": a.sub.customer_id},
                    reason="canceled at period end",
                )
            )
    record_events(s, at=now, actor=ctx.actor, events=events)
    return done


def _plans_of(s: Session, subs: list[Subscription]) -> dict[int, Plan]:
    """The plans of a batch in one query (plans are few; many subscriptions share one)."""
    ids = {sub.plan_id for sub in subs}
    rows = s.exec(select(Plan).where(col(Plan.id).in_(ids))).all()
    return {plan.id: plan for plan in rows if plan.id is not None}


def _plan(
    ctx: BillingContext, sub: Subscription, plan: Plan | None, now: datetime
) -> _Advance | int:
    """What one subscription needs, decided as invoice_due_periods does: an advance, a hold
    (the number of periods due, over the cap), or 0 (nothing started)."""
    if plan is None:
        raise LookupError(f"plan {sub.plan_id} of subscription {sub.id} not found")
    indices = started_periods(ctx, sub, plan, now)
    if not indices:
        return 0
    if over_cap(ctx, sub, indices):
        return len(indices)
    created, cancel_at = period_rows(
        ctx, sub, plan, indices[:MAX_PERIODS_PER_STEP], now, new_invoice_number
    )
    next_index = sub.next_period_index + len(created)
    allowed = sub.catchup_through_index
    next_at = period_start(
        sub.anchor_at, Interval(plan.interval), plan.interval_count, next_index, ctx.tz
    )
    return _Advance(
        sub=sub,
        invoices=created,
        next_index=next_index,
        next_billing_at=None if cancel_at is not None else next_at,
        canceled_at=cancel_at,
        reset_catchup=allowed is not None and next_index > allowed,
    )


def _guarded(values: Any) -> list[Any]:
    """The compare-and-set of every batch statement (as _AS_READ): the subscription is as
    we read it, its status included (the read only takes INVOICING_STATUSES). Only
    comparisons with the rows, so PostgreSQL cannot start from ix_subscription_due on stale
    statistics and re-read the rows for every due subscription: it finds each by its key."""
    sub = Subscription.__table__.c  # type: ignore[attr-defined]
    return [
        sub.id == values.c.id,
        sub.next_period_index == values.c.first,
        sub.plan_id == values.c.plan_id,
        sub.cancel_at_period_end == values.c.cape,
        sub.status == values.c.status,
        sub.held_at.is_(None),
    ]


def _hold_all(
    ctx: BillingContext, s: Session, holds: list[tuple[Subscription, int]], now: datetime
) -> list[tuple[Subscription, int]]:
    """Hold these subscriptions for review (compare-and-set, one statement); returns those
    held (one somebody moved meanwhile is left as it is)."""
    if not holds:
        return []
    table = Subscription.__table__  # type: ignore[attr-defined]
    cap = ctx.catchup_max_periods
    v = (
        values(
            column("id", Integer),
            column("first", Integer),
            column("plan_id", Integer),
            column("cape", Boolean),
            column("status", String),
            column("due", Integer),
            column("reason", String),
            name="v",
        )
        .data(
            [
                (
                    sub.id,
                    sub.next_period_index,
                    sub.plan_id,
                    sub.cancel_at_period_end,
                    str(sub.status),
                    due,
                    f"{due} periods due at once, more than the catch-up cap of {cap}",
                )
                for sub, due in holds
            ]
        )
        .cte("v")
    )
    won = set(
        s.connection()
        .execute(
            update(table)
            .where(*_guarded(v))
            .values(held_at=now, held_reason=v.c.reason, held_periods=v.c.due, updated_at=now)
            .returning(table.c.id)
        )
        .scalars()
    )
    return [(sub, due) for sub, due in holds if sub.id in won]


# The advance of a batch, one statement: the planned moves travel as one JSON parameter (so
# the statement is the same text for any batch: compiled once, no thousands of bind
# parameters), and each row is applied only where the subscription is still as we read it.
# The guard compares with the rows only (see _guarded): each subscription found by its key.
_SET_ADVANCED = """
    next_period_index = v.next_index,
    next_billing_at = v.next_at,
    updated_at = :now,
    status = CASE WHEN v.cancel THEN 'canceled' ELSE subscription.status END,
    canceled_at = CASE WHEN v.cancel THEN v.canceled_at ELSE subscription.canceled_at END,
    catchup_through_index =
        CASE WHEN v.reset THEN NULL ELSE subscription.catchup_through_index END"""
_AS_READ = """
    subscription.id = v.id
    AND subscription.next_period_index = v.first
    AND subscription.plan_id = v.plan_id
    AND subscription.cancel_at_period_end = v.cape
    AND subscription.status = v.status
    AND subscription.held_at IS NULL
RETURNING subscription.id"""
ADVANCE_SQL = {
    "postgresql": f"""
UPDATE subscription SET {_SET_ADVANCED}
FROM json_to_recordset(CAST(:rows AS json)) AS v(
    id integer, first integer, plan_id integer, cape boolean, status varchar,
    next_index integer, next_at timestamptz, canceled_at timestamptz, cancel boolean,
    reset boolean)
WHERE {_AS_READ}""",
    "sqlite": f"""
WITH v AS MATERIALIZED (
    SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.first') AS first,
        json_extract(value, '$.plan_id') AS plan_id, json_extract(value, '$.cape') AS cape,
        json_extract(value, '$.status') AS status,
        json_extract(value, '$.next_index') AS next_index,
        json_extract(value, '$.next_at') AS next_at,
        json_extract(value, '$.canceled_at') AS canceled_at,
        json_extract(value, '$.cancel') AS cancel, json_extract(value, '$.reset') AS reset
    FROM json_each(:rows))
UPDATE subscription SET {_SET_ADVANCED}
FROM v
WHERE {_AS_READ}""",
}


def _advance_all(
    ctx: BillingContext, s: Session, advances: list[_Advance], now: datetime
) -> list[_Advance]:
    """Move each subscription past its invoiced periods with one compare-and-set UPDATE ...
    FROM (the rows) RETURNING id (ADVANCE_SQL); returns the advances that won. Only a
    winner's invoices are inserted: the node that moved next_period_index from `first` is the
    one that bills those periods. Status and the release allowance change only where the plan
    says so (a concurrent past_due is kept)."""
    if not advances:
        return []
    dialect = s.get_bind().dialect
    stamp = _stored(dialect)
    rows = [
        {
            "id": a.sub.id,
            "first": a.sub.next_period_index,
            "plan_id": a.sub.plan_id,
            "cape": int(a.sub.cancel_at_period_end),
            "status": str(a.sub.status),
            "next_index": a.next_index,
            "next_at": stamp(a.next_billing_at),
            "canceled_at": stamp(a.canceled_at),
            "cancel": int(a.canceled_at is not None),
            "reset": int(a.reset_catchup),
        }
        for a in advances
    ]
    if dialect.name == "postgresql":
        for row in rows:  # json_to_recordset reads JSON booleans into boolean columns
            row.update(cape=bool(row["cape"]), cancel=bool(row["cancel"]), reset=bool(row["reset"]))
    statement = text(ADVANCE_SQL[dialect.name]).bindparams(bindparam("now", type_=UTCDateTime))
    won = set(
        s.connection()
        .execute(
            statement,
            {"rows": json.dumps(rows), "now": now},
        )
        .scalars()
    )
    return [a for a in advances if a.sub.id in won]


def _stored(dialect: Dialect) -> Callable[[datetime | None], str | None]:
    """A timestamp as its column stores it (UTCDateTime), as JSON text: SQLite compares the
    stored text, so it must be the very same spelling; PostgreSQL parses ISO 8601."""
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)

    def stamp(at: datetime | None) -> str | None:
        value: Any = process(at) if process is not None else at
        return value.isoformat() if isinstance(value, datetime) else value

    return stamp


_INVOICE_COLUMNS = (
    "number, subscription_id, customer_id, period_index, period_start, period_end,"
    " amount_minor, currency, status, next_attempt_at"
)
# The invoices of a batch, one statement, the rows as one JSON parameter (like ADVANCE_SQL).
# ON CONFLICT on the UNIQUE period: a period that exists already is skipped, never doubled.
INSERT_SQL = {
    "postgresql": f"""
INSERT INTO invoice ({_INVOICE_COLUMNS}, attempt_count, created_at, updated_at)
SELECT {_INVOICE_COLUMNS}, 0, :now, :now
FROM json_to_recordset(CAST(:rows AS json)) AS r(
    number varchar, subscription_id integer, customer_id integer, period_index integer,
    period_start timestamptz, period_end timestamptz, amount_minor integer, currency varchar,
    status varchar, next_attempt_at timestamptz)
ON CONFLICT (subscription_id, period_start) DO NOTHING
RETURNING id, number""",
    "sqlite": f"""
INSERT INTO invoice ({_INVOICE_COLUMNS}, attempt_count, created_at, updated_at)
SELECT json_extract(value, '$.number'), json_extract(value, '$.subscription_id'),
    json_extract(value, '$.customer_id'), json_extract(value, '$.period_index'),
    json_extract(value, '$.period_start'), json_extract(value, '$.period_end'),
    json_extract(value, '$.amount_minor'), json_extract(value, '$.currency'),
    json_extract(value, '$.status'), json_extract(value, '$.next_attempt_at'), 0, :now, :now
FROM json_each(:rows)
WHERE true
ON CONFLICT (subscription_id, period_start) DO NOTHING
RETURNING id, number""",
}
_STAMPED = ("period_start", "period_end", "next_attempt_at")


def _insert_invoices(s: Session, rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Insert the invoice rows (INSERT_SQL), skipping any period that exists already (the
    UNIQUE period is the last line of defence: such a period is billed once, by whoever
    inserted it first); returns (id, row) of those inserted, in subscription and period
    order. Every row of one batch has the same created_at (the pass's now)."""
    if not rows:
        return []
    dialect = s.get_bind().dialect
    stamp = _stored(dialect)
    payload = [
        {
            **{k: v for k, v in row.items() if k not in ("created_at", "updated_at")},
            **{k: stamp(row[k]) for k in _STAMPED},
            "status": str(row["status"]),
        }
        for row in rows
    ]
    statement = text(INSERT_SQL[dialect.name]).bindparams(bindparam("now", type_=UTCDateTime))
    by_number = {row["number"]: row for row in rows}
    result = s.connection().execute(
        statement, {"rows": json.dumps(payload), "now": rows[0]["created_at"]}
    )
    created = [(invoice_id, by_number[number]) for invoice_id, number in result.all()]
    created.sort(key=lambda c: (c[1]["subscription_id"], c[1]["period_index"]))
    return created


def _created_event(invoice_id: int, row: dict[str, Any]) -> NewEvent:
    return NewEvent(
        "invoice",
        invoice_id,
        "invoice.created",
        {
            "invoice_id": invoice_id,
            "invoice_number": row["number"],
            "subscription_id": row["subscription_id"],
            "customer_id": row["customer_id"],
        },
        reason="period started",
        data={
            "number": row["number"],
            "period_start": row["period_start"].isoformat(),
            "amount_minor": row["amount_minor"],
            "currency": row["currency"],
        },
    )


def _held_event(ctx: BillingContext, sub: Subscription, due: int) -> NewEvent:
    assert sub.id is not None
    cap = ctx.catchup_max_periods
    return NewEvent(
        "subscription",
        sub.id,
        "subscription.held",
        {"subscription_id": sub.id, "customer_id": sub.customer_id},
        reason=f"{due} periods due at once, more than the catch-up cap of {cap}",
        data={"periods": due, "cap": cap, "first_period_index": sub.next_period_index},
    )


def void_open_invoices(
    ctx: BillingContext,
    s: Session,
    now: datetime,
    reason: str,
    *,
    subscription_id: int | None = None,
    customer_id: int | None = None,
) -> int:
    """Void the open (and parked) invoices of a subscription or customer, atomically
    `WHERE status IN ('open', 'parked')`: an invoice a node moved to `charging` meanwhile is
    left alone (its charge may take money)."""
    query = update(Invoice).where(
        col(Invoice.status).in_([InvoiceStatus.open, InvoiceStatus.parked])
    )
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
