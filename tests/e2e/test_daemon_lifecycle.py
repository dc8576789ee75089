"""The daemon's life as an operator sees it: graceful SIGTERM mid-run, and refusing a bad config.

Graceful stop means: stop claiming, let the charges in flight finish and be recorded, give back
every lease, exit 0 within the stop budget. The leases here are long (60 s), so the next daemon
can only finish quickly if the stopped one really handed its invoices back.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, bindparam, text
from sqlmodel import SQLModel

from billing.store.migrate import upgrade
from billing.store.types import UTCDateTime
from billing.testing import invoice_refs_charged, ledger, sandbox_approved
from tests.e2e.conftest import (
    Sandbox,
    StartDaemon,
    billing_context,
    billing_executable,
    daemon_environ,
    seed_due,
    sigterm_and_check,
    store_state,
    wait_all_paid,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SUBSCRIPTIONS = 60
STOP_BUDGET = 5
LONG_LEASE = {"BILLING_LEASE_SECONDS": "60", "BILLING_STOP_BUDGET_SECONDS": str(STOP_BUDGET)}


def test_sigterm_with_charges_in_flight_stops_cleanly_and_the_next_daemon_finishes(
    sqlite_url: str, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    timings: dict[str, float] = {}
    began = time.monotonic()
    upgrade(sqlite_url)
    with billing_context(sqlite_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, SUBSCRIPTIONS)
        timings["seed"] = time.monotonic() - began
        # Slow gateway: every charge is in flight for 0.3 s, so SIGTERM lands mid-charge.
        sandbox.add_fault("latency", probability=1.0, route="POST /v1/payments", seconds=0.3)

        first = start_daemon(sqlite_url, sandbox.url, "stopping-node", **LONG_LEASE)
        wait_until(
            lambda: len(sandbox.payments()) >= 8, 30, "8 payments", interval=0.02, alive=first.died
        )
        in_flight = _count(
            ctx.engine, "SELECT COUNT(*) FROM charge_attempt WHERE state = 'sending'"
        )
        timings["stop"] = sigterm_and_check(first, STOP_BUDGET + 2)
        assert in_flight > 0, "SIGTERM did not land during a charge; the test proved nothing"
        assert first.events("daemon.stopping")[0]["signal"] == "SIGTERM"
        assert first.events("lease.released"), first.tail()

        # Every charge that was in flight finished and was recorded; no lease left behind.
        assert (
            _count(ctx.engine, "SELECT COUNT(*) FROM charge_attempt WHERE state <> 'approved'") == 0
        )
        assert (
            _count(
                ctx.engine,
                "SELECT COUNT(*) FROM invoice WHERE lease_owner = 'stopping-node'"
                " AND (status = 'open' OR lease_until > :now)",
                now=datetime.now(UTC),
            )
            == 0
        )
        assert _count(ctx.engine, "SELECT COUNT(*) FROM invoice WHERE status = 'charging'") == 0
        partial = sandbox.payments()
        assert len(partial) == store_state(ctx).paid < SUBSCRIPTIONS
        assert ledger(ctx)["approved"] == sandbox_approved(partial)

        sandbox.clear_faults()
        restarted = time.monotonic()
        second = start_daemon(sqlite_url, sandbox.url, "next-node", **LONG_LEASE)
        # Well inside the 60 s lease: only released (not expired) leases let this finish.
        wait_all_paid(ctx, SUBSCRIPTIONS, 25, second)
        timings["finish"] = time.monotonic() - restarted
        sigterm_and_check(second, STOP_BUDGET + 2)

        payments = sandbox.payments()
        charged = invoice_refs_charged(payments)
        assert len(charged) == SUBSCRIPTIONS
        assert set(charged.values()) == {1}
        assert len(payments) == SUBSCRIPTIONS
        book = ledger(ctx)
        assert book["invoices"] == {"paid": SUBSCRIPTIONS}
        assert book["approved"] == sandbox_approved(payments)
    timings["total"] = time.monotonic() - began
    print(f"\nlifecycle: in flight at SIGTERM {in_flight}, timings {timings}")


BAD_CONFIGS: list[tuple[dict[str, str], tuple[str, ...]]] = [
    # A typo must not fall back to the default silently; the message suggests the right name.
    ({"BILLING_CONCURENCY": "4"}, ("BILLING_CONCURENCY", "BILLING_CONCURRENCY")),
    ({"BILLING_CONCURRENCY": "four"}, ("BILLING_CONCURRENCY", "whole number")),
    (
        {"BILLING_LEASE_SECONDS": "3", "BILLING_PLEXO_TIMEOUT_SECONDS": "5"},
        ("BILLING_LEASE_SECONDS",),
    ),
]


def test_bad_config_exits_non_zero_names_the_key_and_writes_nothing(
    sqlite_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    upgrade(sqlite_url)
    with billing_context(sqlite_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, 3, threads=1)  # due work a daemon that started would charge
        before = _row_counts(ctx.engine)
        workdir = tmp_path / "daemon-cwd"  # the daemons' own: nothing may appear in it
        workdir.mkdir()
        for overrides, expected in BAD_CONFIGS:
            env = daemon_environ(sqlite_url, sandbox.url, "bad-config", **overrides)
            done = subprocess.run(
                [billing_executable(), "daemon"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                cwd=workdir,
            )
            assert done.returncode != 0, f"{overrides}: exit 0\n{done.stderr}"
            for word in expected:
                assert word in done.stderr, f"{overrides}: {done.stderr!r}"
            assert "Traceback" not in done.stderr, done.stderr
            assert "daemon.ready" not in done.stderr, done.stderr
        assert _row_counts(ctx.engine) == before
        assert before["invoice"] == 0 and before["charge_attempt"] == 0
        assert sandbox.payments() == []
        assert list(workdir.iterdir()) == []


def _count(engine: Engine, sql: str, **params: object) -> int:
    statement = text(sql).bindparams(
        *(bindparam(k, type_=UTCDateTime()) for k, v in params.items() if isinstance(v, datetime))
    )
    with engine.connect() as conn:
        return int(conn.execute(statement, params).scalar_one())


def _row_counts(engine: Engine) -> dict[str, int]:
    """Rows per table: a daemon that refused to start must not have changed any of them."""
    return {
        name: _count(engine, f'SELECT COUNT(*) FROM "{name}"') for name in SQLModel.metadata.tables
    }


def test_a_stop_that_outlasts_the_budget_exits_at_once_and_loses_nothing(
    sqlite_url: str, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    """Charges hang at the gateway longer than the stop budget: exit 0 at the budget, not
    after the hang; the next daemon resolves the abandoned attempts exactly once."""
    upgrade(sqlite_url)
    with billing_context(sqlite_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, 8, threads=2)
        sandbox.add_fault("latency", probability=1.0, route="POST /v1/payments", seconds=8)
        short = {
            "BILLING_STOP_BUDGET_SECONDS": "1",
            "BILLING_LEASE_SECONDS": "8",
            "BILLING_PLEXO_TIMEOUT_SECONDS": "6",
        }
        first = start_daemon(sqlite_url, sandbox.url, "slow-stop", **short)
        wait_until(
            lambda: _count(ctx.engine, "SELECT COUNT(*) FROM charge_attempt") > 0,
            20,
            "a charge in flight",
            interval=0.02,
            alive=first.died,
        )
        code, seconds = first.signal_and_wait(signal.SIGTERM, 5)
        assert code == 0, first.tail()
        # The charges would only end at the 6 s client timeout.
        assert seconds < 4.5, "it waited for the hanging charges instead of the budget"
        assert first.events("daemon.stopped")[-1]["graceful"] is False
        sandbox.clear_faults()
        second = start_daemon(sqlite_url, sandbox.url, "after-slow-stop", **short)
        wait_all_paid(ctx, 8, 30, second)
        sigterm_and_check(second, 5)
        payments = sandbox.payments()
        assert set(invoice_refs_charged(payments).values()) == {1}
        assert ledger(ctx)["approved"] == sandbox_approved(payments)
