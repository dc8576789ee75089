"""Benchmark: charges per second of one billing pass, as a ratio to the bare gateway calls.

Baseline (measured in the same run): N `create_payment` calls straight to the in-process
sandbox, with the same concurrency and no database. Then a billing pass over N due
subscriptions on SQLite (and PostgreSQL when reachable). The ratio says what our bookkeeping
(invoice, claim, write-ahead, record) costs relative to the gateway round trip itself.

    .venv/bin/python tests/benchmarks/bench_billing_pass.py [N] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from _common import _fresh_pg, header

from billing.clock import TestClock
from billing.engine.billing_pass import run_billing_pass
from billing.engine.context import BillingContext
from billing.plexo.client import PlexoClient
from billing.plexo.models import CustomerPayload, PaymentRequest
from billing.sandbox.simulator import PlexoSimulator
from billing.sandbox.transport import SandboxTransport
from billing.store.db import make_engine
from billing.store.migrate import upgrade
from billing.testing import ensure_plan

START = datetime(2026, 3, 1, 12, tzinfo=UTC)
CONCURRENCY = 4


def client_for(simulator: PlexoSimulator) -> PlexoClient:
    return PlexoClient(
        "http://sandbox.local", "sandbox-client", "sandbox-key", 1,
        transport=SandboxTransport(simulator),
    )  # fmt: skip


def baseline(n: int) -> float:
    """Seconds for n bare create_payment calls (no database)."""
    simulator = PlexoSimulator()
    with client_for(simulator) as client:
        plexo_customer = client.create_customer(
            CustomerPayload(reference_id="bench", email="bench@example.com")
        )
        token = simulator.add_instrument(plexo_customer.id, "4444333322221111")["token"]
        requests = [
            PaymentRequest(
                reference_id=f"bench-{i}",
                invoice_number=f"INV-{i}",
                customer_id=plexo_customer.id,
                amount_minor=59000,
                currency="UYU",
                token=token,
            )
            for i in range(n)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(client.create_payment, requests))
        return time.perf_counter() - started


def billing_pass(n: int, url: str) -> float:
    """Seconds for one billing pass over n due subscriptions (seeding not timed)."""
    upgrade(url)
    simulator = PlexoSimulator()
    engine = make_engine(url)
    clock = TestClock(START)
    with client_for(simulator) as client:
        ctx = BillingContext(
            engine=engine, plexo=client, clock=clock, tz=ZoneInfo("America/Montevideo"),
            node="bench", actor="bench", concurrency=CONCURRENCY,
        )  # fmt: skip
        ensure_plan(ctx)
        _seed_direct(ctx, simulator, n)
        started = time.perf_counter()
        summary = run_billing_pass(ctx)
        elapsed = time.perf_counter() - started
        assert summary.count("approved") == n, summary.totals
    engine.dispose()
    return elapsed


def _seed_direct(ctx: BillingContext, simulator: PlexoSimulator, n: int) -> None:
    from billing.engine import customers, subscriptions

    today = START.date()
    for i in range(n):
        ref = f"bench-{i:05d}"
        data = customers.validate_customer({"reference_id": ref, "email": f"{ref}@ex.com"}, today)
        customer = customers.create_customer(ctx, data)
        assert customer.plexo_id is not None
        simulator.add_instrument(customer.plexo_id, "4444333322221111")
        customers.sync_instruments(ctx, ref)
        subscriptions.create_subscription(
            ctx, customer_ref=ref, plan_code="monthly", start=START - timedelta(days=1)
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=300)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    header()
    base = baseline(args.n)
    print(f"baseline: {args.n} bare gateway calls in {base:.2f}s ({args.n / base:.0f}/s)")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = billing_pass(args.n, f"sqlite:///{tmp}/bench.sqlite3")
    print(f"sqlite:   billing pass {sqlite:.2f}s = {sqlite / base:.1f}x baseline")
    pg_url = _fresh_pg(args.pg)
    if pg_url is None:
        print("postgres: skipped (no server reachable)")
        return
    try:
        pg = billing_pass(args.n, pg_url)
        print(f"postgres: billing pass {pg:.2f}s = {pg / base:.1f}x baseline")
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_url.rsplit("/", 1)[1]}"')


if __name__ == "__main__":
    main()
