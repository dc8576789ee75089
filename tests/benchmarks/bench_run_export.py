"""Benchmark: peak memory of `billing runs export`, 100k attempts against 1k (issue 8 item 1).

Seeds one store with two billing runs, of SMALL and LARGE charge attempts (bulk Core inserts,
billing.testing.plant_run), then exports each run in a fresh `billing` process to /dev/null
and reads that process's peak RSS (VmHWM in /proc/self/status, as it exits). An export that
streams costs the same memory whatever the size of the run: the goal is LARGE / SMALL <= 1.5.
SQLite, and PostgreSQL when reachable; CSV and JSON Lines.

    .venv/bin/python tests/benchmarks/bench_run_export.py [--small N] [--large N] [--repeat N]
        [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import psycopg
from _common import _fresh_pg, commit, machine

from billing.store.db import make_engine
from billing.store.migrate import upgrade
from billing.testing import plant_run

GOAL = 1.5
AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def seed(url: str, sizes: list[int]) -> dict[int, int]:
    """A migrated store with one run per size; returns size -> run id."""
    upgrade(url)
    engine = make_engine(url)
    try:
        runs = {}
        for n in sizes:
            started = time.perf_counter()
            runs[n] = plant_run(engine, n, at=AT)
            print(f"  seeded {n:>7} attempts in {time.perf_counter() - started:.1f}s", flush=True)
        return runs
    finally:
        engine.dispose()


# The `billing` command, reporting its own peak RSS (VmHWM) on stderr as it exits. Not
# os.wait4's ru_maxrss: on Linux that includes the pages the child shared with this (large,
# seeding) process between fork and exec.
CHILD = """
import atexit, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("VmHWM_KIB=" + line.split()[1] + "\\n")
atexit.register(hwm)
sys.argv = ["billing", *sys.argv[1:]]
from billing.cli.main import main
main()
"""


def export_once(url: str, run_id: int, fmt: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `billing runs export` process writing to /dev/null."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env |= {"BILLING_DATABASE_URL": url, "BILLING_TIMEZONE": "America/Montevideo"}
    args = [sys.executable, "-c", CHILD, "runs", "export", str(run_id), "--format", fmt]
    args += ["--output", os.devnull]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    err = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise SystemExit(f"export failed ({done.returncode}): {err}")
    [kib] = [line.split("=", 1)[1] for line in err.splitlines() if line.startswith("VmHWM_KIB=")]
    return int(kib) / 1024, elapsed


def measure(label: str, url: str, small: int, large: int, repeat: int) -> list[float]:
    print(f"{label}:", flush=True)
    runs = seed(url, [small, large])
    ratios = []
    for fmt in ("csv", "json"):
        figures = {}
        for n in (small, large):
            samples = [export_once(url, runs[n], fmt) for _ in range(repeat)]
            rss = statistics.median(s[0] for s in samples)
            secs = statistics.median(s[1] for s in samples)
            figures[n] = rss
            print(
                f"  {fmt:4} {n:>7} attempts: peak RSS {rss:6.1f} MiB, {secs:5.2f}s "
                f"({n / secs:,.0f} rows/s)"
            )
        ratio = figures[large] / figures[small]
        ratios.append(ratio)
        verdict = "ok" if ratio <= GOAL else "MISSED"
        print(f"  {fmt:4} ratio {large // 1000}k / {small // 1000}k = {ratio:.2f} "
              f"(goal <= {GOAL}: {verdict})")  # fmt: skip
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"commit:  {commit()}")
    with tempfile.TemporaryDirectory() as tmp:
        measure("sqlite", f"sqlite:///{tmp}/bench.sqlite3", args.small, args.large, args.repeat)
    pg_url = _fresh_pg(args.pg)
    if pg_url is None:
        print("postgres: skipped (no server reachable)")
        return
    try:
        measure("postgres", pg_url, args.small, args.large, args.repeat)
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_url.rsplit("/", 1)[1]}"')


if __name__ == "__main__":
    main()
