"""Benchmark: invoicing N due subscriptions, batched against one by one, as a ratio to bare SQL.

Issue 9 item 3. Three fresh stores per backend, seeded alike (N customers, each with one
monthly subscription whose first period has started: billing day), and timed in this run:

- baseline: the bare statements the invoicing of those rows needs, through the driver (no
  SQLAlchemy), in transactions of the batch size: INSERT the invoices, compare-and-set UPDATE
  the subscriptions, INSERT the invoice.created events (rows computed before the clock starts);
- before: the per-subscription path (`invoice_due_periods`: one transaction and several ORM
  round trips per subscription), driven as create_due_invoices drove it until issue 9;
- after: `create_due_invoices` (batches of `--batch` subscriptions per transaction).

Printed: the machine (cores, memory, load before and after), the commit, absolute seconds and
rows per second, each mode's time as a multiple of the baseline, after / before, and the SQL
statements and transactions per subscription. SQLite, and PostgreSQL when reachable.

    .venv/bin/python tests/benchmarks/bench_invoicing.py [--n 5000 | --20k] [--batch 500]
        [--skip-before] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from _common import DEFAULT_PG, _fresh_pg, commit, drop_pg, load, machine
from sqlalchemy import Engine, event, func, select

from billing.clock import TestClock
from billing.domain.periods import Interval, period_bounds
from billing.engine.context import BillingContext
from billing.engine.invoicing import (
    BATCH_SIZE,
    create_due_invoices,
    due_subscription_ids,
    invoice_due_periods,
    new_invoice_number,
)
from billing.plexo.client import PlexoClient
from billing.store.db import make_engine
from billing.store.migrate import upgrade
from billing.store.models import Invoice, Plan, Subscription
from billing.testing import ensure_plan, plant_due_subscriptions

START = datetime(2026, 3, 1, 12, tzinfo=UTC)
ANCHOR = START - timedelta(hours=1)  # every subscription's first period started an hour ago
TZ = ZoneInfo("America/Montevideo")


@dataclass
class Counts:
    statements: int = 0
    transactions: int = 0


def counting(engine: Engine) -> Counts:
    """Count the statements and commits an engine runs (its own listeners, nothing patched)."""
    counts = Counts()

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(*_args: Any) -> None:
        counts.statements += 1

    @event.listens_for(engine, "commit")
    def _commit(*_args: Any) -> None:
        counts.transactions += 1

    return counts


def store(url: str, n: int) -> tuple[Engine, BillingContext]:
    """A migrated store with n due subscriptions (seeding is not timed)."""
    upgrade(url)
    engine = make_engine(url)
    plexo = PlexoClient("http://unused.invalid", "bench", "bench", 1)  # invoicing calls no one
    ctx = BillingContext(
        engine=engine, plexo=plexo, clock=TestClock(START), tz=TZ, node="bench", actor="bench"
    )
    ensure_plan(ctx)
    with engine.connect() as conn:
        plan_id = conn.execute(select(Plan.id).where(Plan.code == "monthly")).scalar_one()
    plant_due_subscriptions(engine, n, plan_id=plan_id, anchor=ANCHOR, at=START)
    return engine, ctx


def invoiced(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Invoice)).scalar_one())


def one_by_one(ctx: BillingContext, now: datetime) -> int:
    """create_due_invoices as it was before issue 9: a transaction per subscription."""
    total = 0
    while True:
        steps = [invoice_due_periods(ctx, sid, now) for sid in due_subscription_ids(ctx, now)]
        created = sum(step.created for step in steps)
        total += created
        if created == 0 and not any(step.held for step in steps):
            return total


def batched(ctx: BillingContext, now: datetime, batch: int) -> int:
    return create_due_invoices(ctx, now, batch_size=batch).created


def bare_sql(engine: Engine, batch: int) -> float:
    """Seconds for the bare statements of invoicing every due subscription (see module doc)."""
    pg = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        subs = conn.execute(
            select(Subscription.id, Subscription.customer_id, Subscription.anchor_at).order_by(
                Subscription.id
            )
        ).all()
    mark = "%s" if pg else "?"

    def stamp(at: datetime) -> Any:  # what UTCDateTime stores on each backend
        return at if pg else at.astimezone(UTC).replace(tzinfo=None).isoformat(" ")

    invoices, updates, events = [], [], []
    for sub_id, customer_id, anchor in subs:
        start, end = period_bounds(anchor, Interval.month, 1, 0, TZ)
        number = new_invoice_number()
        invoices.append(
            (number, sub_id, customer_id, 0, stamp(start), stamp(end), 59000, "UYU", "open", 0,
             stamp(start), stamp(START), stamp(START))
        )  # fmt: skip
        updates.append((1, stamp(end), stamp(START), sub_id, 0))
        data = {"number": number, "period_start": start.isoformat(), "amount_minor": 59000,
                "currency": "UYU"}  # fmt: skip
        events.append(
            (stamp(START), "invoice", number, "invoice.created", "bench", "period started",
             json.dumps(data), sub_id, customer_id)
        )  # fmt: skip
    insert_invoice = (
        "INSERT INTO invoice (number, subscription_id, customer_id, period_index, period_start,"
        " period_end, amount_minor, currency, status, attempt_count, next_attempt_at,"
        f" created_at, updated_at) VALUES ({', '.join([mark] * 13)})"
    )
    update_sub = (
        f"UPDATE subscription SET next_period_index = {mark}, next_billing_at = {mark},"
        f" updated_at = {mark} WHERE id = {mark} AND next_period_index = {mark}"
    )
    # The event's entity_id is the invoice's id: looked up by number in the same statement.
    insert_event = (
        "INSERT INTO event (at, entity_type, entity_id, event, actor, reason, data,"
        f" subscription_id, customer_id) SELECT {mark}, {mark}, invoice.id, {mark}, {mark},"
        f" {mark}, {mark}{'::json' if pg else ''}, {mark}, {mark}"
        f" FROM invoice WHERE invoice.number = {mark}"
    )
    events = [(at, et, ev, actor, reason, data, sid, cid, num)
              for at, et, num, ev, actor, reason, data, sid, cid in events]  # fmt: skip
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        started = time.perf_counter()
        for begin in range(0, len(subs), batch):
            if not pg:
                cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(insert_invoice, invoices[begin : begin + batch])
            cursor.executemany(update_sub, updates[begin : begin + batch])
            cursor.executemany(insert_event, events[begin : begin + batch])
            raw.commit() if pg else cursor.execute("COMMIT")
        elapsed = time.perf_counter() - started
        cursor.close()
    finally:
        raw.close()
    return elapsed


def measure(label: str, url_for: Callable[[], str], n: int, batch: int, before: bool) -> None:
    """Baseline, before and after on three fresh stores of one backend; prints one block."""
    results: dict[str, tuple[float, Counts | None]] = {}
    modes = ["baseline", "after", *(["before"] if before else [])]
    for mode in modes:
        engine, ctx = store(url_for(), n)
        try:
            counts = None if mode == "baseline" else counting(engine)
            started = time.perf_counter()
            if mode == "baseline":
                elapsed = bare_sql(engine, batch)
            else:
                run = batched if mode == "after" else None
                created = run(ctx, START, batch) if run else one_by_one(ctx, START)
                elapsed = time.perf_counter() - started
                assert created == n, (mode, created)
            assert invoiced(engine) == n, mode
            results[mode] = (elapsed, counts)
        finally:
            ctx.plexo.close()
            engine.dispose()
    base = results["baseline"][0]
    print(f"{label}: {n} due subscriptions, batch {batch}")
    for mode in ("baseline", "before", "after"):
        if mode not in results:
            continue
        elapsed, counts = results[mode]
        line = f"  {mode:<8} {elapsed:8.2f}s {n / elapsed:8.0f}/s  {elapsed / base:6.1f}x baseline"
        if counts is not None:
            line += (
                f"  {counts.statements / n:5.2f} statements, "
                f"{counts.transactions / n:5.3f} transactions per subscription"
            )
        print(line)
    if "before" in results:
        print(f"  after / before: {results['after'][0] / results['before'][0]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="due subscriptions (default 5000)")
    parser.add_argument("--20k", dest="twenty", action="store_true", help="--n 20000")
    parser.add_argument("--batch", type=int, default=BATCH_SIZE)
    parser.add_argument("--skip-before", action="store_true", help="skip the one-by-one path")
    parser.add_argument("--pg", default=DEFAULT_PG)
    args = parser.parse_args()
    n = 20_000 if args.twenty else args.n
    print(f"machine: {machine()}")
    print(f"commit:  {commit()}")
    with tempfile.TemporaryDirectory() as tmp:
        made = iter(range(1000))
        measure(
            "sqlite",
            lambda: f"sqlite:///{tmp}/bench-{next(made)}.sqlite3",
            n,
            args.batch,
            not args.skip_before,
        )
    created: list[str] = []

    def pg_url() -> str:
        url = _fresh_pg(args.pg)
        assert url is not None
        created.append(url)
        return url

    if _fresh_pg_reachable(args.pg):
        try:
            measure("postgres", pg_url, n, args.batch, not args.skip_before)
        finally:
            for url in created:
                drop_pg(args.pg, url)
    else:
        print("postgres: skipped (no server reachable)")
    print(f"load after: {load()}")


def _fresh_pg_reachable(admin_url: str) -> bool:
    try:
        with psycopg.connect(admin_url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


if __name__ == "__main__":
    main()
