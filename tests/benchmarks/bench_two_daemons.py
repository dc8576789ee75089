"""Benchmark: two daemons on one PostgreSQL against one, latency-bound (issue 9 goal >= 1.9).

Each side gets a fresh database with N due subscriptions (planted, tests/benchmarks/_common.py)
and a fresh sandbox process answering POST /v1/payments after L. Then one billing pass in ONE
daemon process, or one pass in each of TWO daemon processes started at the same instant
(tests/benchmarks/_pass_worker.py, distinct node names; leases split the work, the UNIQUE
constraints and referenceIds keep it exactly once). Throughput is approved charges ÷ the wall
time from the first pass's start to the last one's end; the figure is two ÷ one. The sandbox's
approved payments are checked against N on both sides (no double charge).

    .venv/bin/python tests/benchmarks/bench_two_daemons.py [-n 2000] [-c 64] [--latency 0.2]
        [--pg postgresql://...] [--repeat 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import (
    DEFAULT_PG,
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

GOAL = 1.9


def side(pg: str, daemons: int, n: int, concurrency: int, latency: float) -> float:
    """Charges/s of `daemons` daemon processes over n due on a fresh database."""
    with databases(pg, "pg") as dbs, sandbox_process() as sandbox:
        [(_, url)] = list(dbs)
        engine = fresh_store(url)
        plant_due(engine, sandbox.url, n, at=now_utc())
        engine.dispose()
        sandbox.set_latency(latency)
        before = load()
        nodes = [f"bench-{i + 1}" for i in range(daemons)]
        reports = run_passes(url, sandbox.url, nodes, concurrency)
        approved, wall = throughput(reports)
        at_sandbox = sandbox.approved()
    if approved != n or at_sandbox != n:
        raise SystemExit(f"{daemons} daemon(s): {approved} approved, sandbox {at_sandbox}, N {n}")
    each = ", ".join(
        f"{r['node']} {r['approved']} in {r['wall']:.1f}s cpu {r['cpu']:.1f}s" for r in reports
    )
    rate = approved / wall
    print(
        f"{daemons} daemon(s): {approved} charges in {wall:.1f}s = {rate:.1f}/s ({each}); "
        f"load before {before}, after {load()}",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="due subscriptions (default 2000)")
    parser.add_argument("-c", "--concurrency", type=int, default=64, help="per daemon (64)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds (default 0.2)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds (default 1)")
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin URL; fresh databases are made")
    args = parser.parse_args()
    header()
    print(f"N={args.n} due, C={args.concurrency} per daemon, L={args.latency * 1000:.0f} ms")
    ones, twos = [], []
    started = time.perf_counter()
    for _ in range(args.repeat):
        ones.append(side(args.pg, 1, args.n, args.concurrency, args.latency))
        twos.append(side(args.pg, 2, args.n, args.concurrency, args.latency))
    one, two = statistics.median(ones), statistics.median(twos)
    ceiling = args.concurrency / args.latency
    print(
        f"one daemon {one:.1f}/s ({one / ceiling:.3f} of C/L), two daemons {two:.1f}/s "
        f"({two / (2 * ceiling):.3f} of 2C/L): two / one = {two / one:.2f} "
        f"(goal >= {GOAL}: {'ok' if two / one >= GOAL else 'MISSED'}); "
        f"{time.perf_counter() - started:.0f}s in all"
    )


if __name__ == "__main__":
    main()
