"""SIGKILL the daemon mid-run; the next daemon finishes the work and nothing is charged twice.

Every attempt the dead daemon wrote belongs to a billing run, which is shown `interrupted`.

Real processes over loopback HTTP: `billing sandbox` and `billing daemon`. At the kill some
attempts are `sending` (the sandbox may already hold their payment), some invoices are leased to
the dead node, and a few attempts are `unknown` (the sandbox took the money and dropped the
connection). The restarted daemon must reclaim all of it through expired leases and the
reconciler, and the sandbox must end with exactly one approved payment per invoice.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from billing.testing import invoice_refs_charged, ledger, sandbox_approved
from tests.e2e.conftest import (
    Sandbox,
    StartDaemon,
    billing_context,
    billing_executable,
    clean_environ,
    seed_due,
    sigterm_and_check,
    store_state,
    wait_all_paid,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SUBSCRIPTIONS = 200
DROP_AT = 30  # recorded payments when a few connection drops are queued
KILL_AT = 60  # recorded payments when the daemon is SIGKILLed (must stay < SUBSCRIPTIONS)


def test_sigkill_mid_run_then_restart_charges_every_period_exactly_once(
    e2e_db_url: str, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    timings: dict[str, float] = {}
    began = time.monotonic()
    with billing_context(e2e_db_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, SUBSCRIPTIONS)
        timings["seed"] = time.monotonic() - began
        sandbox.add_fault("latency", probability=1.0, route="POST /v1/payments", seconds=0.04)

        first = start_daemon(e2e_db_url, sandbox.url, "crash-first")
        run_started = time.monotonic()
        wait_until(
            lambda: len(sandbox.payments()) >= DROP_AT,
            30,
            f"{DROP_AT} payments",
            interval=0.02,
            alive=first.died,
        )
        # The next three charges reach the sandbox (money taken) but get no answer.
        sandbox.add_fault("drop_after", route="POST /v1/payments", times=3)
        wait_until(
            lambda: len(sandbox.payments()) >= KILL_AT,
            30,
            f"{KILL_AT} payments",
            interval=0.02,
            alive=first.died,
        )
        first.popen.send_signal(signal.SIGKILL)
        assert first.popen.wait(10) == -signal.SIGKILL
        timings["first run"] = time.monotonic() - run_started
        at_kill = len(sandbox.payments())
        assert at_kill < SUBSCRIPTIONS, "the daemon finished before it could be killed"

        # What the dead node left behind: the restart has real crash debris to clean up.
        left = _leftovers(ctx.engine, "crash-first")
        assert left["unresolved"] + left["leased_open"] > 0, left
        assert store_state(ctx).paid < SUBSCRIPTIONS
        # Every attempt it wrote ahead belongs to a run, left `running` by the dead process.
        runs = _runs(ctx.engine)
        assert runs["unlinked_attempts"] == 0, runs
        assert ("crash-first", "pass", "running") in runs["states"], runs

        sandbox.clear_faults()
        sandbox.add_fault("latency", probability=1.0, route="POST /v1/payments", seconds=0.02)
        restarted = time.monotonic()
        second = start_daemon(e2e_db_url, sandbox.url, "crash-second")
        wait_all_paid(ctx, SUBSCRIPTIONS, 45, second)
        timings["recovery"] = time.monotonic() - restarted
        killed_at = run_started + timings["first run"]
        # Its heartbeat gone stale (2 x the 4 s lease), the next pass closes the dead run.
        wait_until(
            lambda: all(
                n != "crash-first" or s != "running" for n, _, s in _runs(ctx.engine)["states"]
            ),
            30,
            "the dead node's run to be closed",
            alive=second.died,
        )
        timings["dead run closed after kill"] = time.monotonic() - killed_at
        timings["stop"] = sigterm_and_check(second, 15)

        payments = sandbox.payments()
        charged = invoice_refs_charged(payments)
        assert len(charged) == SUBSCRIPTIONS, "an invoice was never charged"
        assert set(charged.values()) == {1}, {n: c for n, c in charged.items() if c > 1}
        assert len(payments) == SUBSCRIPTIONS  # no declined or stray payment either
        book = ledger(ctx)
        assert book["invoices"] == {"paid": SUBSCRIPTIONS}
        assert book["unresolved"] == []
        assert book["approved"] == sandbox_approved(payments)
        runs = _runs(ctx.engine)
        assert runs["unlinked_attempts"] == 0, runs
        assert ("crash-first", "pass", "interrupted") in runs["states"], runs
        assert {s for _, _, s in runs["states"]} <= {"completed", "interrupted"}, runs
        listed = subprocess.run(
            [billing_executable(), "runs", "list", "--json", "--limit", "1000"],
            env=clean_environ(BILLING_DATABASE_URL=e2e_db_url),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        shown = {(r["node"], r["state"]) for r in json.loads(listed.stdout)}
        assert ("crash-first", "interrupted") in shown, shown
        # The second node resolved the dead node's attempts by asking the gateway.
        reconciled = second.events("billing.reconcile")
        assert sum(int(r.get("examined", 0)) for r in reconciled) >= left["unresolved"]
    timings["total"] = time.monotonic() - began
    backend = e2e_db_url.split(":")[0]
    print(f"\ncrash e2e ({backend}): {at_kill} paid at kill, left {left}, timings {timings}")


def _runs(engine: Engine) -> dict[str, Any]:
    """(node, kind, state) of every run, and how many attempts link to no run."""
    with engine.connect() as conn:
        states = conn.execute(text("SELECT node, kind, state FROM billing_run")).all()
        unlinked = conn.execute(
            text("SELECT COUNT(*) FROM charge_attempt WHERE run_id IS NULL")
        ).scalar_one()
    return {"states": {tuple(row) for row in states}, "unlinked_attempts": int(unlinked)}


def _leftovers(engine: Engine, node: str) -> dict[str, int]:
    """What a dead node left: unresolved attempts and the open invoices it still leases."""
    with engine.connect() as conn:
        unresolved = conn.execute(
            text(
                "SELECT COUNT(*) FROM charge_attempt"
                " WHERE state IN ('sending', 'unknown', 'pending')"
            )
        ).scalar_one()
        sending = conn.execute(
            text("SELECT COUNT(*) FROM charge_attempt WHERE state = 'sending'")
        ).scalar_one()
        leased_open = conn.execute(
            text("SELECT COUNT(*) FROM invoice WHERE status = 'open' AND lease_owner = :node"),
            {"node": node},
        ).scalar_one()
    return {
        "unresolved": int(unresolved),
        "sending": int(sending),
        "leased_open": int(leased_open),
    }
