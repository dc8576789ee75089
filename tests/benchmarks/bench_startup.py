"""Benchmark: wall time of short `billing` commands, as a ratio to a bare interpreter.

Every command is a fresh process, so its time is the interpreter plus what it imports plus the
work. Baselines (measured in the same run, interleaved with the commands so load hits all
alike): `python -c pass`, `python -c 'import typer'` (the CLI framework alone) and
`python -c 'import billing.store.models'` (SQLAlchemy + SQLModel + our tables: the floor of any
command that reads the store). The goal of issue 5 item 17: `billing --help` and
`billing customers list` under 0.3 s.

    .venv/bin/python tests/benchmarks/bench_startup.py [--repeat N] [--customers N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import commit, machine

GOAL_SECONDS = 0.3
ROOT = Path(__file__).resolve().parents[2]


def seed(url: str, n: int) -> None:
    """A migrated store with n customers (rows written directly: setup, not timed)."""
    from billing.store.db import make_engine, session
    from billing.store.migrate import upgrade
    from billing.store.models import Customer

    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    with session(engine) as s:
        for i in range(n):
            s.add(
                Customer(
                    reference_id=f"cus-{i:04d}",
                    email=f"cus{i}@example.com",
                    first_name="Ana",
                    last_name="Pérez",
                    created_at=now,
                    updated_at=now,
                )
            )
    engine.dispose()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run (CPU time suffers less from a loaded machine)."""
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[:500]}")
    return elapsed, _children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15, help="runs of each (default 15)")
    parser.add_argument("--customers", type=int, default=20, help="rows in the store")
    args = parser.parse_args()
    billing = str(Path(sys.executable).with_name("billing"))
    python = sys.executable
    cases = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import typer'": [python, "-c", "import typer"],
        "python -c 'import billing.store.models'": [python, "-c", "import billing.store.models"],
        "billing --help": [billing, "--help"],
        "billing customers list": [billing, "customers", "list"],
        "billing invoices list": [billing, "invoices", "list"],
    }
    print(f"machine: {machine()}")
    print(f"commit:  {commit()}")
    print(f"{args.repeat} runs each, interleaved; wall median (min), CPU median")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite3"
        seed(url, args.customers)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
        env |= {"BILLING_DATABASE_URL": url, "BILLING_TIMEZONE": "America/Montevideo"}
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        for argv in cases.values():  # warm the page cache and the .pyc files
            once(argv, env)
        for _ in range(args.repeat):
            for name, argv in cases.items():
                wall, cpu = once(argv, env)
                times[name].append(wall)
                cpus[name].append(cpu)
    base = statistics.median(times["python -c pass"])
    floor = statistics.median(times["python -c 'import billing.store.models'"])
    for name, values in times.items():
        median = statistics.median(values)
        extra = ""
        if name.startswith("billing"):
            extra = f", {median / floor:4.2f}x the store floor"
            extra += "  ok" if median < GOAL_SECONDS else f"  over the {GOAL_SECONDS:.1f} s goal"
        cpu = statistics.median(cpus[name])
        print(
            f"{name:<42} {median:6.3f} s ({min(values):.3f}) cpu {cpu:.3f}"
            f" = {median / base:5.1f}x python -c pass{extra}"
        )
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
