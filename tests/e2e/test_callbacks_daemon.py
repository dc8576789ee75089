"""Issue 6 item 8 with real processes: `billing daemon` with its callback receiver on, and
`billing sandbox`. A pending payment settles at the sandbox, the sandbox POSTs the callback,
and the daemon records it long before its reconciler would look (its interval is an hour)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from sqlalchemy import text

from billing.settings import CALLBACK_PATH
from billing.testing import ensure_plan, invoice_refs_charged, seed_subscriptions
from tests.e2e.conftest import (
    Sandbox,
    StartDaemon,
    billing_context,
    sigterm_and_check,
    store_state,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

TOKEN = "e2e-" + "Qw3rTy" * 6
PENDING_APPROVES = "4000000000000259"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_daemon_records_a_settled_payment_from_its_callback(
    sqlite_url: str, sandbox: Sandbox, start_daemon: StartDaemon
) -> None:
    from billing.store.migrate import upgrade

    upgrade(sqlite_url)
    sandbox.http.post("/sandbox/config", json={"pendingPolls": 1000}).raise_for_status()
    with billing_context(sqlite_url, sandbox.url) as ctx:
        ensure_plan(ctx)
        seed_subscriptions(ctx, sandbox.url, 1, card=PENDING_APPROVES)
        port = free_port()
        daemon = start_daemon(
            sqlite_url,
            sandbox.url,
            "callback-node",
            BILLING_RECONCILE_SECONDS="3600",  # the reconciler looks once, at start
            BILLING_CALLBACK_ENABLED="true",
            BILLING_CALLBACK_PORT=str(port),
            BILLING_CALLBACK_TOKEN=TOKEN,
        )
        [payment] = wait_until(
            lambda: sandbox.payments() or None, 20, "the charge", alive=daemon.died
        )
        assert payment["status"] == "pending"
        assert payment["callbackUrl"] == f"http://127.0.0.1:{port}{CALLBACK_PATH}/{TOKEN}"
        wait_until(lambda: store_state(ctx).unresolved == 1, 10, "the pending attempt")

        wrong = httpx.post(f"http://127.0.0.1:{port}{CALLBACK_PATH}/{'x' * 40}", json=payment)
        assert wrong.status_code == 404
        assert store_state(ctx).unresolved == 1

        settled = time.monotonic()
        sandbox.http.post(f"/sandbox/payments/{payment['id']}/settle").raise_for_status()
        wait_until(lambda: store_state(ctx).paid == 1, 10, "the callback", alive=daemon.died)
        print(
            f"\ncallback: settled at the sandbox -> paid here in {time.monotonic() - settled:.3f} s"
        )
        with ctx.engine.connect() as conn:
            checks = conn.execute(text("SELECT check_count FROM charge_attempt")).scalar_one()
        assert checks == 0  # the reconciler never asked: the callback did it
        received = daemon.events("callback.received")
        assert any(r.get("outcome") == "recorded:approved" for r in received), daemon.tail()
        assert TOKEN not in daemon.log_text()
        sigterm_and_check(daemon, 15)
        assert set(invoice_refs_charged(sandbox.payments()).values()) == {1}
