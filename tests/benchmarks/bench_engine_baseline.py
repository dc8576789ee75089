"""Benchmark: the engine's charge path against the same protocol as bare SQL, zero latency.

Baseline (same run, same database, same number of threads): for each of N open invoices, the
two transactions a charge needs, as hand-written SQL through one SQLAlchemy engine per thread
pool (SQLite's BEGIN IMMEDIATE included, as the store does):
  tx1  INSERT the attempt (state sending) + UPDATE the invoice open -> charging (compare-and-set)
  tx2  UPDATE the attempt sending -> approved + UPDATE the invoice charging -> paid
       + UPDATE the subscription's current period
No gateway call: it is what the database allows. Then the engine: one billing pass over the
other N open invoices, in its own process (tests/benchmarks/_pass_worker.py), against the
sandbox in another process answering at once. Both sets are planted and invoiced before
anything is timed, so both start from open invoices. Figures (issue 9 goals): engine ÷
baseline charges/s (>= 0.5), CPU per charge in the daemon process (<= 3 ms; the sandbox's CPU
is its own process's), statements and transactions per charge counted with SQLAlchemy events
(before_cursor_execute, begin) over the whole pass (claims and run bookkeeping included), and
the invoicing step apart (per invoice).

    .venv/bin/python tests/benchmarks/bench_engine_baseline.py [-n 1000] [-c 64]
        [--db both|sqlite|pg] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import (
    DEFAULT_PG,
    Counts,
    count_statements,
    databases,
    fresh_store,
    header,
    load,
    now_utc,
    plant_due,
    run_passes,
    sandbox_process,
    throughput,
)
from sqlalchemy import Engine, bindparam, column, text

from billing.store.db import make_engine
from billing.store.types import UTCDateTime

GOAL_RATIO = 0.5
GOAL_CPU_MS = 3.0

OPEN_INVOICES = text(
    "SELECT i.id AS invoice_id, i.subscription_id, i.number, i.amount_minor, i.currency,"
    " i.period_start, i.period_end, p.id AS instrument_id FROM invoice i"
    " JOIN customer c ON c.id = i.customer_id"
    " JOIN payment_instrument p ON p.customer_id = c.id"
    " WHERE i.status = 'open' AND c.reference_id LIKE :prefix ORDER BY i.id"
).columns(
    column("invoice_id"), column("subscription_id"), column("number"), column("amount_minor"),
    column("currency"), column("period_start", UTCDateTime), column("period_end", UTCDateTime),
    column("instrument_id"),
)  # fmt: skip
INSERT_ATTEMPT = text(
    "INSERT INTO charge_attempt (invoice_id, attempt_number, reference_id, state, amount_minor,"
    " currency, instrument_id, node, send_count, check_count, created_at, last_sent_at)"
    " VALUES (:invoice_id, 1, :ref, 'sending', :amount_minor, :currency, :instrument_id,"
    " 'baseline', 1, 0, :now, :now)"
).bindparams(bindparam("now", type_=UTCDateTime))
MARK_CHARGING = text(
    "UPDATE invoice SET status = 'charging', attempt_count = 1, updated_at = :now"
    " WHERE id = :invoice_id AND status = 'open'"
).bindparams(bindparam("now", type_=UTCDateTime))
RECORD_ATTEMPT = text(
    "UPDATE charge_attempt SET state = 'approved', plexo_payment_id = :payment, resolved_at = :now"
    " WHERE reference_id = :ref AND state = 'sending'"
).bindparams(bindparam("now", type_=UTCDateTime))
MARK_PAID = text(
    "UPDATE invoice SET status = 'paid', paid_at = :now, next_attempt_at = NULL,"
    " lease_owner = NULL, lease_until = NULL, updated_at = :now"
    " WHERE id = :invoice_id AND status = 'charging'"
).bindparams(bindparam("now", type_=UTCDateTime))
ADVANCE = text(
    "UPDATE subscription SET current_period_start = :period_start,"
    " current_period_end = :period_end, updated_at = :now WHERE id = :subscription_id"
).bindparams(
    bindparam("now", type_=UTCDateTime),
    bindparam("period_start", type_=UTCDateTime),
    bindparam("period_end", type_=UTCDateTime),
)


def invoice_all(url: str, sandbox_url: str) -> tuple[int, float, Counts]:
    """Create the invoices of every due subscription (the engine's invoicing, before the
    timed parts): (invoices, seconds, statements counted)."""
    from zoneinfo import ZoneInfo

    from billing.clock import SystemClock
    from billing.engine.context import BillingContext
    from billing.engine.invoicing import create_due_invoices
    from billing.plexo.client import PlexoClient

    engine = make_engine(url)
    counts = count_statements(engine)
    with PlexoClient(sandbox_url, "sandbox-client", "sandbox-key", 1) as client:
        ctx = BillingContext(
            engine=engine, plexo=client, clock=SystemClock(), tz=ZoneInfo("America/Montevideo"),
            node="bench-invoicer", actor="bench",
        )  # fmt: skip
        started = time.perf_counter()
        created = create_due_invoices(ctx, ctx.clock.now()).created
        elapsed = time.perf_counter() - started
    engine.dispose()
    return created, elapsed, counts


def baseline(url: str, threads: int) -> tuple[int, float]:
    """(charges, seconds) of the bare two-transaction protocol over the 'base-' invoices."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(OPEN_INVOICES, {"prefix": "base-%"})]
    utc_now = now_utc()

    def charge(row: dict[str, Any]) -> int:
        ref = f"{row['number']}-1"
        with engine.begin() as conn:
            conn.execute(INSERT_ATTEMPT, {**row, "ref": ref, "now": utc_now})
            if conn.execute(MARK_CHARGING, {**row, "now": utc_now}).rowcount != 1:
                raise RuntimeError("compare-and-set lost")
        # (the gateway call would be here, outside any transaction)
        with engine.begin() as conn:
            conn.execute(RECORD_ATTEMPT, {"ref": ref, "payment": f"pay-{ref}", "now": utc_now})
            conn.execute(MARK_PAID, {**row, "now": utc_now})
            conn.execute(ADVANCE, {**row, "now": utc_now})
        return 1

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(charge, rows))
    elapsed = time.perf_counter() - started
    engine.dispose()
    return done, elapsed


def paid(engine: Engine, prefix: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT COUNT(*) FROM invoice i JOIN customer c ON c.id = i.customer_id"
                    " WHERE i.status = 'paid' AND c.reference_id LIKE :p"
                ),
                {"p": prefix},
            ).scalar_one()
        )


def measure(label: str, url: str, n: int, concurrency: int, threads: int) -> None:
    with sandbox_process() as sandbox:
        started = time.perf_counter()
        engine = fresh_store(url)
        at = now_utc()
        plant_due(engine, sandbox.url, n, at=at, prefix="base")
        plant_due(engine, sandbox.url, n, at=at, prefix="eng")
        invoiced, invoice_s, invoice_counts = invoice_all(url, sandbox.url)
        print(f"{label}: seeded and invoiced 2 x {n} in {time.perf_counter() - started:.1f}s")
        before = load()
        done, base_s = baseline(url, threads)
        assert done == n and paid(engine, "base-%") == n, (done, paid(engine, "base-%"))
        base_rate = done / base_s
        mid = load()
        sandbox_cpu0 = sandbox.cpu_seconds()
        [report] = run_passes(url, sandbox.url, ["bench-1"], concurrency, "--count")
        sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu0
        approved, wall = throughput([report])
        assert approved == n and paid(engine, "eng-%") == n, (approved, paid(engine, "eng-%"))
        engine.dispose()
    rate = approved / wall
    cpu_ms = 1000 * report["cpu"] / approved
    ratio = rate / base_rate
    print(
        f"{label}: baseline bare SQL {done} charges in {base_s:.2f}s = {base_rate:.0f}/s "
        f"({threads} threads, load {before})"
    )
    print(
        f"{label}: engine pass {approved} charges in {wall:.2f}s = {rate:.1f}/s "
        f"(C={concurrency}, load {mid}) -> engine / baseline = {ratio:.3f} "
        f"(goal >= {GOAL_RATIO}: {'ok' if ratio >= GOAL_RATIO else 'MISSED'})"
    )
    print(
        f"{label}: daemon CPU {report['cpu']:.2f}s = {cpu_ms:.1f} ms/charge "
        f"(goal <= {GOAL_CPU_MS}: {'ok' if cpu_ms <= GOAL_CPU_MS else 'MISSED'}); "
        f"sandbox CPU {sandbox_cpu:.2f}s = {1000 * sandbox_cpu / approved:.1f} ms/charge"
    )
    sql = report["statements"] - report["by_kind"].get("BEGIN", 0)
    kinds = ", ".join(f"{k} {v / approved:.1f}" for k, v in sorted(report["by_kind"].items()))
    print(
        f"{label}: per charge {sql / approved:.1f} statements (BEGIN not counted) in "
        f"{report['transactions'] / approved:.2f} transactions ({kinds}); the baseline: 5 in 2"
    )
    print(
        f"{label}: invoicing (engine, before the timed parts) {invoiced} invoices in "
        f"{invoice_s:.2f}s = {invoiced / invoice_s:.0f}/s, "
        f"{invoice_counts.statements / invoiced:.1f} statements and "
        f"{invoice_counts.transactions / invoiced:.2f} transactions per invoice"
    )
    print(f"{label}: load after {load()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="charges per side (default 1000)")
    parser.add_argument("-c", "--concurrency", type=int, default=64, help="engine (default 64)")
    parser.add_argument(
        "--threads", type=int, default=None, help="baseline threads (default: the concurrency)"
    )
    parser.add_argument("--db", choices=["both", "sqlite", "pg"], default="both")
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin URL; a fresh database is made")
    args = parser.parse_args()
    header()
    print(f"N={args.n} per side, C={args.concurrency}, zero latency", flush=True)
    with databases(args.pg, args.db) as dbs:
        for label, url in dbs:
            measure(label, url, args.n, args.concurrency, args.threads or args.concurrency)


if __name__ == "__main__":
    main()
