"""One "daemon" process for the benchmarks: build the engine context as the daemon would
(own engine, PlexoClient over real HTTP to the sandbox, system clock), then run ONE billing
pass and print one JSON line with what it did and cost.

Its own process so that its CPU time and peak RSS are the daemon's alone (the sandbox and the
parent's seeding are elsewhere), and so that two of them are two daemons. With --wait-go it
prints {"ready": true} and waits for a line on stdin before the pass, so that the parent can
start several at the same instant.

    python tests/benchmarks/_pass_worker.py --url URL --sandbox URL [--concurrency C]
        [--node NAME] [--pre-invoice] [--wait-go] [--count]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from zoneinfo import ZoneInfo

from _common import count_statements, proc_status_kib

from billing.clock import SystemClock
from billing.engine.billing_pass import run_billing_pass
from billing.engine.context import BillingContext
from billing.engine.invoicing import create_due_invoices
from billing.plexo.client import PlexoClient
from billing.store.db import make_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="database URL")
    parser.add_argument("--sandbox", required=True, help="sandbox base URL")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--node", default="bench-1")
    parser.add_argument(
        "--pre-invoice", action="store_true", help="invoice everything due first (not timed)"
    )
    parser.add_argument("--wait-go", action="store_true", help="wait for a stdin line first")
    parser.add_argument("--count", action="store_true", help="count statements/transactions")
    args = parser.parse_args()
    engine = make_engine(args.url)
    client = PlexoClient(args.sandbox, "sandbox-client", "sandbox-key", 1, timeout=60)
    ctx = BillingContext(
        engine=engine, plexo=client, clock=SystemClock(), tz=ZoneInfo("America/Montevideo"),
        node=args.node, actor="bench", concurrency=args.concurrency,
    )  # fmt: skip
    out: dict[str, object] = {"node": args.node}
    counts = count_statements(engine) if args.count else None
    if args.pre_invoice:
        started, cpu0 = time.perf_counter(), time.process_time()
        out["pre_invoiced"] = create_due_invoices(ctx, ctx.clock.now()).created
        out["pre_invoice_s"] = time.perf_counter() - started
        out["pre_invoice_cpu"] = time.process_time() - cpu0
        if counts is not None:
            out["pre_invoice_statements"] = counts.statements
            out["pre_invoice_transactions"] = counts.transactions
            counts.statements = counts.transactions = 0
            counts.by_kind.clear()
    if args.wait_go:
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
    rss_before = proc_status_kib_self("VmRSS")
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0, t_start = time.process_time(), time.perf_counter(), time.time()
    summary = run_billing_pass(ctx)
    wall, cpu, t_end = time.perf_counter() - wall0, time.process_time() - cpu0, time.time()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    out |= {
        "approved": summary.count("approved"),
        "attempts": summary.attempts,
        "invoices_created": summary.invoices_created,
        "outcomes": {k: v["count"] for k, v in summary.totals.items()},
        "state": summary.state,
        "wall": wall,
        "cpu": cpu,
        "t_start": t_start,
        "t_end": t_end,
        "voluntary_switches": usage1.ru_nvcsw - usage0.ru_nvcsw,
        "rss_before_kib": rss_before,
        "vmhwm_kib": proc_status_kib_self("VmHWM"),
    }
    if counts is not None:
        out |= {
            "statements": counts.statements,
            "transactions": counts.transactions,
            "by_kind": counts.by_kind,
        }
    client.close()
    engine.dispose()
    print(json.dumps(out), flush=True)


def proc_status_kib_self(key: str) -> int:
    import os

    return proc_status_kib(os.getpid(), key)


if __name__ == "__main__":
    main()
