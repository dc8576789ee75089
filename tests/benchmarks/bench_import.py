"""Benchmark: customers imported per second, as a ratio to the bare gateway calls.

Baseline (measured in the same run): N `create_customer` calls straight to the in-process
sandbox, CONCURRENCY at a time like the import, with no database. Then `customers import` of a
CSV of N customers into a fresh SQLite store (and PostgreSQL when reachable), parsing
included. The ratio says what validation and our bookkeeping cost relative to the gateway.

    .venv/bin/python tests/benchmarks/bench_import.py [N] [--pg postgresql://...] [--latency-ms MS]

--latency-ms adds a fixed round trip to every gateway call (the in-process sandbox answers in
microseconds, which makes the database look like all of the cost).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import httpx
import psycopg
from _common import _fresh_pg, header
from bench_billing_pass import CONCURRENCY, START

from billing.cli.imports import CUSTOMER_COLUMNS, import_customers
from billing.clock import TestClock
from billing.domain.importfile import parse_rows
from billing.engine.context import BillingContext
from billing.plexo.client import PlexoClient
from billing.plexo.models import CustomerPayload
from billing.sandbox.simulator import PlexoSimulator
from billing.sandbox.transport import SandboxTransport
from billing.store.db import make_engine
from billing.store.migrate import upgrade


def csv_file(n: int) -> bytes:
    lines = ["reference_id,email,first_name,last_name,phone,metadata.source"]
    lines += [
        f"imp-{i:05d},imp{i}@example.com,Ana,Pérez,09912{i % 10000:04d},bench" for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


class SlowTransport(SandboxTransport):
    """The in-process sandbox plus a fixed round trip, as a real gateway has."""

    def __init__(self, simulator: PlexoSimulator, latency: float) -> None:
        super().__init__(simulator)
        self.latency = latency

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.latency:
            time.sleep(self.latency)
        return super().handle_request(request)


def client(latency: float) -> PlexoClient:
    return PlexoClient(
        "http://sandbox.local", "sandbox-client", "sandbox-key", 1,
        transport=SlowTransport(PlexoSimulator(), latency),
    )  # fmt: skip


def baseline(n: int, latency: float) -> float:
    """Seconds for n bare create_customer calls, CONCURRENCY at a time (no database)."""
    payloads = [
        CustomerPayload(reference_id=f"imp-{i:05d}", email=f"imp{i}@example.com") for i in range(n)
    ]
    with client(latency) as plexo:
        started = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(plexo.create_customer, payloads))
        return time.perf_counter() - started


def import_run(n: int, url: str, latency: float) -> float:
    """Seconds to parse and import n customers into a fresh store."""
    upgrade(url)
    engine = make_engine(url)
    data = csv_file(n)
    with client(latency) as plexo:
        ctx = BillingContext(
            engine=engine, plexo=plexo, clock=TestClock(START), tz=ZoneInfo("America/Montevideo"),
            node="bench", actor="bench", concurrency=CONCURRENCY,
        )  # fmt: skip
        started = time.perf_counter()
        rows = parse_rows(data, "csv", CUSTOMER_COLUMNS)
        counts = Counter(r.status for r in import_customers(ctx, rows))
        elapsed = time.perf_counter() - started
    engine.dispose()
    assert counts == {"ok": n}, counts
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=10_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="gateway round trip to add (default 0)"
    )
    args = parser.parse_args()
    header()
    latency = args.latency_ms / 1000
    print(f"{args.n} customers, concurrency {CONCURRENCY}, added latency {args.latency_ms:g} ms")
    base = baseline(args.n, latency)
    print(f"baseline: {args.n} bare create_customer calls in {base:.2f}s ({args.n / base:.0f}/s)")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = import_run(args.n, f"sqlite:///{tmp}/bench.sqlite3", latency)
    print(
        f"sqlite:   import {sqlite:.2f}s ({args.n / sqlite:.0f}/s) = {sqlite / base:.1f}x baseline"
    )
    pg_url = _fresh_pg(args.pg)
    if pg_url is None:
        print("postgres: skipped (no server reachable)")
        return
    try:
        pg = import_run(args.n, pg_url, latency)
        print(f"postgres: import {pg:.2f}s ({args.n / pg:.0f}/s) = {pg / base:.1f}x baseline")
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_url.rsplit("/", 1)[1]}"')


if __name__ == "__main__":
    main()
