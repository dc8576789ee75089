"""SIGKILL the daemon between state changes and their webhook deliveries: after a restart every
event is delivered, one receiver-visible event id per state change, correctly signed.

Real processes over loopback HTTP (`billing sandbox`, `billing daemon`) and a real webhook
receiver in the test process. The receiver holds every request while the first daemon runs,
so at the kill the invoices are paid (their outbox rows committed with them) and the
deliveries are in flight or waiting. The second daemon meets a receiver that fails three
times, then recovers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from billing.domain.notifications import SIGNATURE_HEADER
from tests.e2e.conftest import (
    Sandbox,
    StartDaemon,
    billing_context,
    seed_due,
    sigterm_and_check,
    store_state,
    wait_until,
)
from tests.receivers import WebhookReceiver, webhook_receiver
from tests.unit.test_webhook_signature import readme_verify

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SUBSCRIPTIONS = 6
SECRET = "whsec-e2e-0123456789abcdef"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as r:
        yield r


def test_sigkill_between_state_change_and_delivery_still_delivers_once_per_event(
    e2e_db_url: str, sandbox: Sandbox, start_daemon: StartDaemon, receiver: WebhookReceiver
) -> None:
    hooks = {
        "BILLING_WEBHOOK_URLS": receiver.url,
        "BILLING_WEBHOOK_SECRET": SECRET,
        "BILLING_NOTIFY_SECONDS": "1",
        "BILLING_NOTIFY_BACKOFF_SECONDS": "1",
        "BILLING_WEBHOOK_TIMEOUT_SECONDS": "5",  # lease 2 x 5 + 5 s
    }
    with billing_context(e2e_db_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, SUBSCRIPTIONS)
        receiver.hold.clear()  # every request waits: nothing gets delivered by the first daemon
        first = start_daemon(e2e_db_url, sandbox.url, "notify-first", **hooks)
        wait_until(
            lambda: store_state(ctx).paid == SUBSCRIPTIONS and len(receiver.requests) >= 1,
            30,
            "paid invoices and a delivery in flight",
            alive=first.died,
        )
        first.popen.send_signal(signal.SIGKILL)
        assert first.popen.wait(10) == -signal.SIGKILL
        before = _rows(ctx.engine)
        assert before["events"] == SUBSCRIPTIONS  # one invoice.paid per paid invoice
        assert before["delivered"] == 0 and before["leased"] >= 1, before

        receiver.hold.set()  # the held requests answer a dead sender
        time.sleep(0.2)
        receiver.fail_next = 3
        receiver.accepted.clear()
        second = start_daemon(e2e_db_url, sandbox.url, "notify-second", **hooks)
        wait_until(
            lambda: _rows(ctx.engine)["delivered"] == SUBSCRIPTIONS,
            45,
            "every delivery to be delivered",
            alive=second.died,
        )
        sigterm_and_check(second, 15)
        ids = _event_ids(ctx.engine)

    accepted = receiver.accepted_ids()
    # At least once, deduplicable: every event arrived; no event id beyond the state changes.
    assert set(accepted) == ids and len(ids) == SUBSCRIPTIONS
    verify = readme_verify()
    for request in receiver.accepted:
        assert request.json["type"] == "invoice.paid"
        assert verify(SECRET, request.headers[SIGNATURE_HEADER], request.body)
    failed = second.events("notify.failed")
    assert len(failed) >= 3 and {r["error"] for r in failed} >= {"HTTP 500"}
    log = first.log_text() + second.log_text()
    assert SECRET not in log


def _rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        events = conn.execute(text("SELECT COUNT(*) FROM outbox_event")).scalar_one()
        delivered = conn.execute(
            text("SELECT COUNT(*) FROM outbox_delivery WHERE state = 'delivered'")
        ).scalar_one()
        leased = conn.execute(
            text("SELECT COUNT(*) FROM outbox_delivery WHERE lease_owner IS NOT NULL")
        ).scalar_one()
    return {"events": int(events), "delivered": int(delivered), "leased": int(leased)}


def _event_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(v) for v in conn.execute(text("SELECT event_id FROM outbox_event")).scalars()}
