"""Two daemon processes, one PostgreSQL database, one gateway: every period charged once.

Both nodes invoice the same due subscriptions (compare-and-set on the period index), claim from
the same invoice table (FOR UPDATE SKIP LOCKED) and reconcile the same unknown outcomes (a few
connections are dropped after the sandbox took the money), all at the same time.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from billing.testing import invoice_refs_charged, ledger, sandbox_approved
from tests.e2e.conftest import (
    Sandbox,
    StartDaemon,
    billing_context,
    seed_due,
    sigterm_and_check,
    wait_all_paid,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SUBSCRIPTIONS = 500
BACKLOG = 150  # due before the daemons start
NODES = ("node-a", "node-b")


def test_two_daemons_share_one_postgres_and_charge_each_period_once(
    pg_url: str, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    from billing.store.migrate import upgrade

    timings: dict[str, float] = {}
    began = time.monotonic()
    upgrade(pg_url)
    with billing_context(pg_url, sandbox.url) as ctx:
        # About 1 in 50 charges is taken but never answered: both reconcilers race for them.
        # (The first matching rule that fires wins, so the drop rule goes before latency.)
        sandbox.add_fault("drop_after", probability=0.02, route="POST /v1/payments")
        # A proxy's empty 403 after Plexo recorded the payment: unknown, never "not charged".
        sandbox.add_fault(
            "bare_after", probability=0.02, route="POST /v1/payments", status=403, body="empty"
        )
        sandbox.add_fault("latency", probability=1.0, route="POST /v1/payments", seconds=0.03)
        # A backlog both nodes find due at start-up, then a stream of new due subscriptions
        # while they run: every tick both nodes race to invoice and claim the same rows.
        seed_due(ctx, sandbox.url, BACKLOG)
        timings["seed backlog"] = time.monotonic() - began
        daemons = [start_daemon(pg_url, sandbox.url, node, wait=False) for node in NODES]
        seed_due(ctx, sandbox.url, SUBSCRIPTIONS)  # tops up to SUBSCRIPTIONS in all
        timings["seed"] = time.monotonic() - began
        for daemon in daemons:
            daemon.wait_event("daemon.ready", timeout=30)
        wait_all_paid(ctx, SUBSCRIPTIONS, 60, *daemons)
        timings["all paid"] = time.monotonic() - began
        cpu = {daemon.name: daemon.cpu_seconds() for daemon in daemons}
        for daemon in daemons:
            timings[f"stop {daemon.name}"] = sigterm_and_check(daemon, 15)

        payments = sandbox.payments()
        charged = invoice_refs_charged(payments)
        assert set(charged.values()) == {1}, {n: c for n, c in charged.items() if c > 1}
        assert len(charged) == SUBSCRIPTIONS
        assert len(payments) == SUBSCRIPTIONS
        assert all(p["status"] == "approved" for p in payments)
        book = ledger(ctx)
        assert book["invoices"] == {"paid": SUBSCRIPTIONS}
        assert book["unresolved"] == []
        assert book["approved"] == sandbox_approved(payments)

        with ctx.engine.connect() as conn:
            rows = conn.execute(text("SELECT node, COUNT(*) FROM charge_attempt GROUP BY node"))
            by_node = {str(node): int(count) for node, count in rows}
            unknown_resolved = conn.execute(
                text("SELECT COUNT(*) FROM charge_attempt WHERE check_count > 0")
            ).scalar_one()
        assert set(by_node) == set(NODES), by_node
        assert sum(by_node.values()) == SUBSCRIPTIONS  # one attempt per invoice, none wasted
    timings["total"] = time.monotonic() - began
    print(
        f"\ntwo daemons: attempts by node {by_node}, reconciled {unknown_resolved},"
        f" daemon CPU s {cpu}, timings {timings}"
    )
