"""Benchmark: SQL statements, transactions and CPU per charge (issue 9, the hot path).

One store per backend (SQLite, and PostgreSQL when reachable), N due invoices of N customers
(one approving card each), the in-process sandbox at zero latency (as bench_billing_pass.py).
The invoices are claimed in batches as a pass claims them, then charged one after another in
one thread: `charge_invoice` = pre-retry sync check, write-ahead, POST, record.

- Statements and transactions are counted with SQLAlchemy event hooks (before_cursor_execute,
  begin) over the first COUNTED charges; the claim is counted apart (per batch, shown per
  charge). Driver-level BEGIN/COMMIT text is a transaction, not a statement.
- CPU per charge is process time over the other charges, hooks off, minus the CPU of the bare
  `create_payment` calls to the same sandbox measured in the same run (what the gateway side
  of this process costs): what our bookkeeping costs.

`--before PATH` runs the same measurement first on another checkout (PYTHONPATH=PATH, e.g. a
worktree of main) in a child process and prints both with their ratios.

    .venv/bin/python tests/benchmarks/bench_statements_per_charge.py [N] [--pg URL]
        [--before /tmp/main-checkout] [--show]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from _common import _fresh_pg, commit, drop_pg, machine
from bench_billing_pass import client_for
from sqlalchemy import Engine, event

from billing.clock import TestClock
from billing.engine.charge import charge_invoice
from billing.engine.context import BillingContext
from billing.engine.invoicing import create_due_invoices
from billing.plexo.models import PaymentRequest
from billing.sandbox.simulator import PlexoSimulator
from billing.store.claims import claim_invoices
from billing.store.db import make_engine
from billing.store.migrate import upgrade
from billing.testing import APPROVING_CARD, ensure_plan

START = datetime(2026, 3, 1, 12, tzinfo=UTC)
COUNTED = 20
BATCH = 16  # what a pass claims at a time with the default concurrency (4 x 4)


class Counting:
    """Statements and transactions on an engine, grouped by transaction while on."""

    def __init__(self, engine: Engine) -> None:
        self.on = False
        self.statements = 0
        self.transactions = 0
        self.kinds: Counter[str] = Counter()
        self.trace: list[list[str]] = []
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)

    def _begin(self, _conn: Any) -> None:
        if self.on:
            self.transactions += 1
            self.trace.append([])

    def _statement(self, _conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if not self.on:
            return
        words = sql.split()
        verb = words[0].upper() if words else ""
        if verb in ("BEGIN", "COMMIT", "ROLLBACK"):
            return
        self.statements += 1
        self.kinds[verb] += 1
        if self.trace:
            self.trace[-1].append(" ".join(words)[:110])

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False


def gateway_cpu(simulator: PlexoSimulator, customer_id: str, token: str, n: int) -> float:
    """CPU seconds per bare create_payment call to the in-process sandbox (no database)."""
    with client_for(simulator) as client:
        requests = [
            PaymentRequest(
                reference_id=f"bare-{i}",
                invoice_number=f"BARE-{i}",
                customer_id=customer_id,
                amount_minor=59000,
                currency="UYU",
                token=token,
            )
            for i in range(n)
        ]
        started = time.process_time()
        for request in requests:
            client.create_payment(request)
        return (time.process_time() - started) / n


def measure(url: str, n: int) -> dict[str, Any]:
    """One store: seed n due invoices, count the first COUNTED charges, time the rest."""
    from billing.engine import customers, subscriptions

    upgrade(url)
    simulator = PlexoSimulator()
    engine = make_engine(url)
    clock = TestClock(START)
    out: dict[str, Any] = {}
    with client_for(simulator) as client:
        ctx = BillingContext(
            engine=engine, plexo=client, clock=clock, tz=ZoneInfo("America/Montevideo"),
            node="bench", actor="bench",
        )  # fmt: skip
        ensure_plan(ctx)
        today = START.date()
        plexo_customer = token = ""
        for i in range(n):
            ref = f"bench-{i:05d}"
            data = customers.validate_customer({"reference_id": ref, "email": f"{ref}@x.io"}, today)
            customer = customers.create_customer(ctx, data)
            assert customer.plexo_id is not None
            plexo_customer = customer.plexo_id
            token = simulator.add_instrument(customer.plexo_id, APPROVING_CARD)["token"]
            customers.sync_instruments(ctx, ref)
            subscriptions.create_subscription(
                ctx, customer_ref=ref, plan_code="monthly", start=START - timedelta(days=1)
            )
        create_due_invoices(ctx, START)
        counter = Counting(engine)
        claimed: list[int] = []
        with counter.counting():
            while batch := claim_invoices(engine, "bench", START, 300, BATCH):
                claimed += batch
        assert len(claimed) == n, (len(claimed), n)
        out["claim_statements"] = counter.statements / n
        out["claim_transactions"] = counter.transactions / n
        counter.statements = counter.transactions = 0
        counter.kinds.clear()
        counter.trace.clear()
        with counter.counting():
            for invoice_id in claimed[:COUNTED]:
                result = charge_invoice(ctx, invoice_id)
                assert result.outcome == "approved", result
        out["statements"] = counter.statements / COUNTED
        out["transactions"] = counter.transactions / COUNTED
        out["kinds"] = {k: v / COUNTED for k, v in sorted(counter.kinds.items())}
        out["trace"] = counter.trace[-round(out["transactions"]) :]
        rest = claimed[COUNTED:]
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        for invoice_id in rest:
            charge_invoice(ctx, invoice_id)
        out["cpu_ms"] = (time.process_time() - started_cpu) / len(rest) * 1000
        out["wall_ms"] = (time.perf_counter() - started_wall) / len(rest) * 1000
        out["gateway_cpu_ms"] = gateway_cpu(simulator, plexo_customer, token, len(rest)) * 1000
    engine.dispose()
    out["daemon_cpu_ms"] = out["cpu_ms"] - out["gateway_cpu_ms"]
    return out


def measure_all(n: int, pg_admin: str) -> dict[str, Any]:
    results: dict[str, Any] = {"commit": commit()}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(f"sqlite:///{tmp}/bench.sqlite3", n)
    pg_url = _fresh_pg(pg_admin)
    if pg_url is not None:
        try:
            results["postgresql"] = measure(pg_url, n)
        finally:
            drop_pg(pg_admin, pg_url)
    return results


def _before(path: str, n: int, pg_admin: str) -> dict[str, Any]:
    """The same measurement on another checkout, in a child process importing it first."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, str(here)])}
    done = subprocess.run(
        [sys.executable, __file__, str(n), "--pg", pg_admin, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _line(name: str, r: dict[str, Any]) -> str:
    return (
        f"  {name:<7} {r['statements']:5.1f} statements in {r['transactions']:.1f} transactions"
        f" per charge (+ claim {r['claim_statements']:.2f} st / {r['claim_transactions']:.2f} tx);"
        f" CPU {r['cpu_ms']:.2f} ms - gateway {r['gateway_cpu_ms']:.2f} ms"
        f" = daemon {r['daemon_cpu_ms']:.2f} ms; wall {r['wall_ms']:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=300)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--before", help="another checkout to measure first (PYTHONPATH)")
    parser.add_argument("--json", action="store_true", help="one JSON line (for --before)")
    parser.add_argument("--show", action="store_true", help="print one charge's statements")
    args = parser.parse_args()
    if args.n <= COUNTED:
        parser.error(f"N must be above {COUNTED}")
    if args.json:
        print(json.dumps(measure_all(args.n, args.pg)))
        return
    print(f"machine: {machine()}")
    print(f"N = {args.n} due invoices, one thread, zero-latency in-process sandbox")
    before = _before(args.before, args.n, args.pg) if args.before else None
    after = measure_all(args.n, args.pg)
    for label, results in (("before", before), ("after", after)):
        if results is None:
            continue
        print(f"{label}: {results['commit']}")
        for backend in ("sqlite", "postgresql"):
            if backend in results:
                print(_line(backend, results[backend]))
    if before is not None:
        print("after / before:")
        for backend in ("sqlite", "postgresql"):
            if backend in before and backend in after:
                b, a = before[backend], after[backend]
                print(
                    f"  {backend:<10} statements {a['statements'] / b['statements']:.2f}"
                    f"  transactions {a['transactions'] / b['transactions']:.2f}"
                    f"  daemon CPU {a['daemon_cpu_ms'] / b['daemon_cpu_ms']:.2f}"
                    f"  wall {a['wall_ms'] / b['wall_ms']:.2f}"
                )
    if args.show:
        for backend in ("sqlite", "postgresql"):
            if backend in after:
                print(f"{backend}: one charge, statement kinds {after[backend]['kinds']}")
                for i, tx in enumerate(after[backend]["trace"], 1):
                    print(f"  transaction {i}:")
                    for sql in tx:
                        print(f"    {sql}")
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
