"""Benchmark: a latency-bound billing pass, as a ratio to the gateway's ceiling C / L.

The sandbox runs as a real HTTP server in its own process (`python -m billing.sandbox`) with a
latency fault on every POST /v1/payments (L seconds). N due subscriptions are planted straight
into the tables (tests/benchmarks/_common.py plant_due; the sandbox's customers and tokens over
its HTTP API), then ONE billing pass runs in a separate "daemon" process
(tests/benchmarks/_pass_worker.py) with BILLING concurrency C. With C charges in flight and
each taking L, no daemon can exceed C / L charges per second: the figure is achieved ÷ (C / L)
(issue 9 goal: >= 0.9). Measured in the same run, for comparison: the same sandbox answering
bare create_payment calls from C threads with no database (what the gateway side allows).

Also printed: the daemon's CPU per charge (its process CPU time ÷ charges; the sandbox's CPU
is in its own process and printed apart) and the sandbox's approved payments (must equal N).

    .venv/bin/python tests/benchmarks/bench_latency_bound.py [-n 2000] [-c 64] [--latency 0.2]
        [--db both|sqlite|pg] [--pg postgresql://...] [--full]   (--full: N = 20000)
"""

from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from _common import (
    DEFAULT_PG,
    SandboxProcess,
    databases,
    fresh_store,
    header,
    load,
    now_utc,
    plant_due,
    run_passes,
    sandbox_process,
    sandbox_tokens,
    throughput,
)

from billing.plexo.client import PlexoClient
from billing.plexo.models import PaymentRequest

GOAL = 0.9


def bare_gateway(sandbox: SandboxProcess, concurrency: int, calls: int) -> float:
    """Charges/s of `calls` bare create_payment calls from `concurrency` threads (no database)."""
    [(customer_id, token)] = sandbox_tokens(sandbox.url, 1, f"bare-{uuid.uuid4().hex[:6]}")
    with PlexoClient(sandbox.url, "sandbox-client", "sandbox-key", 1, timeout=60) as client:
        requests = [
            PaymentRequest(
                reference_id=f"bare-{uuid.uuid4().hex[:12]}", invoice_number=f"BARE-{i}",
                customer_id=customer_id, amount_minor=59000, currency="UYU", token=token,
            )
            for i in range(calls)
        ]  # fmt: skip
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(client.create_payment, requests))
        elapsed = time.perf_counter() - started
    assert all(o.kind == "approved" for o in outcomes), {o.kind for o in outcomes}
    return calls / elapsed


def measure(label: str, url: str, n: int, concurrency: int, latency: float) -> None:
    ceiling = concurrency / latency
    with sandbox_process() as sandbox:
        started = time.perf_counter()
        engine = fresh_store(url)
        plant_due(engine, sandbox.url, n, at=now_utc())
        engine.dispose()
        print(f"{label}: seeded {n} due in {time.perf_counter() - started:.1f}s", flush=True)
        sandbox.set_latency(latency)
        bare = bare_gateway(sandbox, concurrency, min(n, max(4 * concurrency, 500)))
        before = load()
        sandbox_cpu0 = sandbox.cpu_seconds()
        [report] = run_passes(url, sandbox.url, ["bench-1"], concurrency)
        sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu0
        approved, wall = throughput([report])
        at_sandbox = sandbox.approved() - min(n, max(4 * concurrency, 500))
    rate = approved / wall
    print(
        f"{label}: {approved}/{n} approved in {wall:.1f}s = {rate:.1f} charges/s; "
        f"ceiling C/L = {ceiling:.0f}/s -> ratio {rate / ceiling:.3f} "
        f"(goal >= {GOAL}: {'ok' if rate / ceiling >= GOAL else 'MISSED'})"
    )
    print(
        f"{label}: bare gateway (same sandbox, {concurrency} threads, no DB) {bare:.0f}/s = "
        f"{bare / ceiling:.2f} of C/L; pass / bare = {rate / bare:.3f}"
    )
    print(
        f"{label}: daemon CPU {report['cpu']:.1f}s = {1000 * report['cpu'] / max(approved, 1):.1f}"
        f" ms/charge ({100 * report['cpu'] / wall:.0f}% of a core); sandbox CPU "
        f"{sandbox_cpu:.1f}s; invoiced {report['invoices_created']}; sandbox approved "
        f"{at_sandbox} (must be {approved}); outcomes {report['outcomes']}; "
        f"load before {before}, after {load()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="due subscriptions (default 2000)")
    parser.add_argument("--full", action="store_true", help="the issue's size: N = 20000")
    parser.add_argument("-c", "--concurrency", type=int, default=64, help="default 64")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds (default 0.2)")
    parser.add_argument("--db", choices=["both", "sqlite", "pg"], default="both")
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin URL; a fresh database is made")
    args = parser.parse_args()
    n = 20_000 if args.full else args.n
    header()
    print(f"N={n} due, C={args.concurrency}, L={args.latency * 1000:.0f} ms", flush=True)
    with databases(args.pg, args.db) as dbs:
        for label, url in dbs:
            measure(label, url, n, args.concurrency, args.latency)


if __name__ == "__main__":
    main()
