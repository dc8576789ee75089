"""Benchmark: what must stay flat as the store grows (issue 9: keep these true).

1. A pass over 1,000 due subscriptions with SMALL vs LARGE subscriptions stored (the others
   not due: a year until their next period): pass wall time LARGE ÷ SMALL, goal <= 1.2.
   Filler rows by COPY (PostgreSQL) or executemany (SQLite); the due ones as in the other
   benchmarks (tests/benchmarks/_common.py plant_due). Default 10k vs 100k; --full: 10k vs 1M.
2. Peak RSS (VmHWM) of the daemon process running one pass over MANY due vs 1,000 due, each
   on a fresh store: goal <= 1.5. Default 5k due; --full: 100k due (long: the pass runs at
   the engine's zero-latency rate).
3. An idle `billing daemon` (production timers: tick 60 s) on the 1,000-due store after its
   pass, nothing due: its CPU over 30 s (< 1 % of a core) and RSS (< 100 MB).
All against the sandbox in its own process answering at once; passes in their own process
(tests/benchmarks/_pass_worker.py, C=64).

    .venv/bin/python tests/benchmarks/bench_scale.py [--small 10000] [--large 100000]
        [--rss-due 5000] [--idle 30] [--db both|sqlite|pg] [--pg postgresql://...] [--full]
        [--skip stored,rss,idle]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import (
    DEFAULT_PG,
    SandboxProcess,
    count,
    databases,
    fresh_store,
    header,
    load,
    now_utc,
    plant_due,
    plant_stored,
    proc_cpu,
    proc_status_kib,
    run_passes,
    sandbox_process,
    throughput,
)

DUE = 1000
CONCURRENCY = 64
GOAL_STORED = 1.2
GOAL_RSS = 1.5
GOAL_IDLE_CPU = 1.0  # % of one core
GOAL_IDLE_MB = 100.0


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def pass_over(url: str, sandbox: SandboxProcess, stored: int, due: int) -> dict[str, float]:
    """Plant `stored` not-due + `due` due subscriptions, run one pass; its figures."""
    engine = fresh_store(url)
    started = time.perf_counter()
    if stored > due:
        plant_stored(engine, stored - due, at=now_utc())
    plant_due(engine, sandbox.url, due, at=now_utc(), prefix=f"due{uuid.uuid4().hex[:6]}")
    total = count(engine, "SELECT COUNT(*) FROM subscription")
    engine.dispose()
    seeded = time.perf_counter() - started
    before = load()
    [report] = run_passes(url, sandbox.url, ["bench-1"], CONCURRENCY)
    approved, wall = throughput([report])
    if approved != due:
        raise SystemExit(f"{approved} approved of {due} due")
    print(
        f"  {total:>8} stored, {due:>6} due: pass {wall:6.2f}s ({due / wall:5.1f}/s), "
        f"cpu {report['cpu']:.1f}s, peak RSS {report['vmhwm_kib'] / 1024:.0f} MiB "
        f"(seeded in {seeded:.0f}s; load {before})",
        flush=True,
    )
    return {"wall": wall, "hwm_kib": float(report["vmhwm_kib"])}


def idle_daemon(url: str, sandbox: SandboxProcess, seconds: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env |= {
        "BILLING_DATABASE_URL": url,
        "BILLING_PLEXO_BASE_URL": sandbox.url,
        "BILLING_NODE_NAME": "bench-idle",
        "BILLING_METRICS_PORT": "0",
        "BILLING_LOG_FORMAT": "json",
    }
    billing = str(Path(sys.executable).with_name("billing"))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "daemon.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen([billing, "daemon"], env=env, stdout=sink, stderr=sink)
        try:
            deadline = time.monotonic() + 60
            while '"daemon.ready"' not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not get ready: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            time.sleep(2)  # past the first tick's work (nothing due)
            before = load()
            cpu0, t0 = proc_cpu(proc.pid), time.monotonic()
            rss_max = 0
            while time.monotonic() - t0 < seconds:
                rss_max = max(rss_max, proc_status_kib(proc.pid, "VmRSS"))
                time.sleep(1)
            cpu, elapsed = proc_cpu(proc.pid) - cpu0, time.monotonic() - t0
            rss = max(rss_max, proc_status_kib(proc.pid, "VmRSS")) / 1024
            share = 100 * cpu / elapsed
            print(
                f"  idle daemon over {elapsed:.0f}s: CPU {cpu:.2f}s = {share:.2f}% of a core "
                f"(goal < {GOAL_IDLE_CPU}%: {verdict(share < GOAL_IDLE_CPU)}), RSS max "
                f"{rss:.0f} MiB (goal < {GOAL_IDLE_MB:.0f}: {verdict(rss < GOAL_IDLE_MB)}); "
                f"load {before}",
                flush=True,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="stored (default 10k)")
    parser.add_argument("--large", type=int, default=100_000, help="stored (default 100k)")
    parser.add_argument("--rss-due", type=int, default=5_000, help="due (default 5k)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--full", action="store_true", help="1M stored and 100k due")
    parser.add_argument("--skip", default="", help="comma list of stored,rss,idle")
    parser.add_argument("--db", choices=["both", "sqlite", "pg"], default="both")
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin URL; fresh databases are made")
    args = parser.parse_args()
    large = 1_000_000 if args.full else args.large
    rss_due = 100_000 if args.full else args.rss_due
    skip = set(filter(None, args.skip.split(",")))
    header()
    labels = {"both": ["sqlite", "postgres"], "sqlite": ["sqlite"], "pg": ["postgres"]}[args.db]
    for label in labels:
        which = "sqlite" if label == "sqlite" else "pg"
        print(f"{label}:", flush=True)
        with sandbox_process() as sandbox:
            if "stored" not in skip:
                with databases(args.pg, which) as small_db, databases(args.pg, which) as large_db:
                    [(_, small_url)], [(_, large_url)] = list(small_db), list(large_db)
                    small = pass_over(small_url, sandbox, args.small, DUE)
                    big = pass_over(large_url, sandbox, large, DUE)
                    ratio = big["wall"] / small["wall"]
                    print(
                        f"  {DUE} due, {large} vs {args.small} stored: pass time ratio "
                        f"{ratio:.2f} (goal <= {GOAL_STORED}: {verdict(ratio <= GOAL_STORED)})",
                        flush=True,
                    )
            if "rss" not in skip or "idle" not in skip:
                with databases(args.pg, which) as one_db:
                    [(_, one_url)] = list(one_db)
                    one = pass_over(one_url, sandbox, 0, DUE)
                    if "rss" not in skip:
                        with databases(args.pg, which) as many_db:
                            [(_, many_url)] = list(many_db)
                            many = pass_over(many_url, sandbox, 0, rss_due)
                        ratio = many["hwm_kib"] / one["hwm_kib"]
                        print(
                            f"  peak RSS of a pass, {rss_due} due / {DUE} due: {ratio:.2f} "
                            f"(goal <= {GOAL_RSS}: {verdict(ratio <= GOAL_RSS)})",
                            flush=True,
                        )
                    if "idle" not in skip:
                        idle_daemon(one_url, sandbox, args.idle)
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
