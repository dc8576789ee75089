"""Issue 6 item 8: Plexo payment callbacks as hints, end to end over HTTP both ways: billing
sends `callbackUrl` with each payment, the sandbox POSTs the PaymentDto there when the payment
settles (at least once, retried on non-2xx), and the receiver confirms with
`GET /v1/payments/{id}` before it records anything. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from threading import Thread
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from billing.daemon.callbacks import CallbackReceiver
from billing.engine.billing_pass import run_billing_pass
from billing.settings import CALLBACK_PATH
from billing.store.db import session
from billing.store.models import BillingRun, ChargeAttempt, Event, Invoice, Subscription
from billing.testing import ensure_plan, invoice_refs_charged, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts

TOKEN = "t0ken-" + "a1B2c3D4" * 5
PENDING_APPROVES = "4000000000000259"
PENDING_DENIES = "4000000000000267"
DECLINING_CARD = "4000000000000010"


@pytest.fixture
def receiver(env: Env) -> Iterator[str]:
    """The receiver on a free loopback port; billing sends its URL as callbackUrl."""
    env.simulator.pending_polls = 1000  # only a settle (or its callback) ends a pending payment
    with CallbackReceiver(env.ctx, "127.0.0.1", 0, TOKEN) as server:
        env.ctx.callback_url = f"{server.base_url}{CALLBACK_PATH}/{TOKEN}"
        yield server.base_url


def attempt(env: Env) -> ChargeAttempt:
    with session(env.ctx.engine) as s:
        [row] = s.exec(select(ChargeAttempt)).all()
        return row


def invoice(env: Env) -> Invoice:
    with session(env.ctx.engine) as s:
        [row] = s.exec(select(Invoice)).all()
        return row


def paid_events(env: Env) -> list[Event]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(Event).where(Event.event == "invoice.paid")))


def wait_for(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def sandbox(env: Env) -> httpx.Client:
    return httpx.Client(base_url=env.sandbox_url, timeout=10)


def state(env: Env) -> dict[str, Any]:
    """Everything a callback could change: row counts, invoices, attempts, sandbox payments."""
    with session(env.ctx.engine) as s:
        invoices = [i.model_dump() for i in s.exec(select(Invoice).order_by(col(Invoice.id)))]
        attempts = [a.model_dump() for a in s.exec(select(ChargeAttempt))]
        subs = [x.model_dump() for x in s.exec(select(Subscription))]
    return {
        "counts": table_counts(env.ctx.engine.url.render_as_string(hide_password=False)),
        "invoices": invoices,
        "attempts": attempts,
        "subscriptions": subs,
        "sandbox": env.simulator.payments(),
    }


def test_billing_sends_its_callback_url_with_each_payment(env: Env, receiver: str) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    run_billing_pass(env.ctx)
    [payment] = env.simulator.payments()
    assert payment["callbackUrl"] == f"{receiver}{CALLBACK_PATH}/{TOKEN}"
    # Approved at once: its callback arrives while (or after) the charge records its answer;
    # either way one payment, one paid event, and the last delivery was acknowledged.
    assert env.simulator.callbacks.wait_idle()
    deliveries = env.simulator.callbacks.deliveries()
    assert deliveries and deliveries[-1].http_status == 200
    assert {d.http_status for d in deliveries} <= {200, 503}
    assert invoice(env).status == "paid" and len(paid_events(env)) == 1


def test_a_pending_payment_settles_and_the_callback_resolves_it_without_the_reconciler(
    env: Env, receiver: str
) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START, card=PENDING_APPROVES)
    run_billing_pass(env.ctx)
    pending = attempt(env)
    assert pending.state == "pending" and invoice(env).status == "charging"
    with sandbox(env) as http:
        http.post("/sandbox/config", json={"callbackDuplicates": 2}).raise_for_status()
        http.post(f"/sandbox/payments/{pending.plexo_payment_id}/settle").raise_for_status()

    wait_for(lambda: invoice(env).status == "paid")
    assert env.simulator.callbacks.wait_idle()
    settled = attempt(env)
    assert settled.state == "approved" and settled.check_count == 0
    period_end = invoice(env).period_end
    with session(env.ctx.engine) as s:
        assert s.exec(select(BillingRun).where(BillingRun.kind == "reconcile")).all() == []
        sub = s.get(Subscription, sub_id)
        assert sub is not None and sub.current_period_end == period_end
    # At least once: three copies delivered, all acknowledged, recorded once
    deliveries = env.simulator.callbacks.deliveries()
    # (a copy that arrives while another one holds the invoice gets 503 and comes again)
    answers = [d.http_status for d in deliveries]
    assert answers.count(200) == 3 and set(answers) <= {200, 503}
    assert {d.status for d in deliveries} == {"approved"}
    assert len(paid_events(env)) == 1
    assert invoice_refs_charged(env.simulator.payments()) == {invoice(env).number: 1}


def test_a_forged_approved_callback_for_a_denied_payment_changes_nothing(
    env: Env, receiver: str
) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START, card=DECLINING_CARD)
    run_billing_pass(env.ctx)
    assert attempt(env).state == "declined"
    assert env.simulator.callbacks.wait_idle()
    [denied] = env.simulator.payments()
    assert denied["status"] == "denied"
    forged = {**denied, "status": "approved"}
    forged["transactions"] = [
        {**t, "status": "approved", "resultCode": "0"} for t in denied["transactions"]
    ]
    before = state(env)
    url = f"{receiver}{CALLBACK_PATH}/{TOKEN}"
    answers = [httpx.post(url, json=forged).status_code for _ in range(3)]
    assert answers == [200, 200, 200]  # acknowledged (no retries), ignored
    # another reference, or one we never wrote: nothing either
    assert httpx.post(url, json={**forged, "referenceId": "INV-000000000000-1"}).status_code == 200
    assert httpx.post(url, content=b"<html>").status_code == 400
    assert state(env) == before
    assert paid_events(env) == []


def test_a_forged_callback_for_a_pending_payment_is_checked_and_the_truth_recorded(
    env: Env, receiver: str
) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START, card=PENDING_DENIES)
    run_billing_pass(env.ctx)
    pending = attempt(env)
    assert pending.state == "pending"
    with sandbox(env) as http:  # the processor denies it; its real callback is lost
        http.post("/sandbox/config", json={"callbacks": False}).raise_for_status()
        http.post(f"/sandbox/payments/{pending.plexo_payment_id}/settle").raise_for_status()
    [payment] = env.simulator.payments()
    forged = {**payment, "status": "approved"}
    url = f"{receiver}{CALLBACK_PATH}/{TOKEN}"
    assert httpx.post(url, json=forged).status_code == 200
    confirmed = attempt(env)
    assert (confirmed.state, confirmed.decline_code) == ("declined", "insufficient_funds")
    assert invoice(env).status == "open" and paid_events(env) == []

    # A callback naming another payment id for our reference: our stored id is what we ask
    other = {**forged, "id": "ffffffffffffffffffffffff"}
    assert httpx.post(url, json=other).status_code == 200
    assert attempt(env).state == "declined"


def test_a_wrong_path_token_is_404_and_changes_nothing(env: Env, receiver: str) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START, card=PENDING_APPROVES)
    run_billing_pass(env.ctx)
    pending = attempt(env)
    with sandbox(env) as http:
        http.post("/sandbox/config", json={"callbacks": False}).raise_for_status()
        http.post(f"/sandbox/payments/{pending.plexo_payment_id}/settle").raise_for_status()
    [payment] = env.simulator.payments()
    assert payment["status"] == "approved"
    before = state(env)
    body = json.dumps(payment)
    for path in (
        f"{CALLBACK_PATH}/{TOKEN[:-1]}x",
        f"{CALLBACK_PATH}/{TOKEN}/",
        f"{CALLBACK_PATH}/",
        CALLBACK_PATH,
        f"/{TOKEN}",
        "/",
    ):
        answer = httpx.post(f"{receiver}{path}", content=body)
        assert answer.status_code == 404, path
        assert answer.content == b""
    assert httpx.get(f"{receiver}{CALLBACK_PATH}/{TOKEN}").status_code == 405
    assert state(env) == before
    assert attempt(env).state == "pending"

    # The right token: the hint is confirmed and recorded
    assert httpx.post(f"{receiver}{CALLBACK_PATH}/{TOKEN}", content=body).status_code == 200
    assert attempt(env).state == "approved" and invoice(env).status == "paid"


def test_the_sandbox_retries_a_callback_until_it_is_acknowledged(env: Env) -> None:
    """plexo-api.md section 7 row 8: at least once, retried on non-2xx."""
    answers = iter([500, 503, 200])
    seen: list[bytes] = []

    class Flaky(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(next(answers))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Flaky)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env.ctx.callback_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        ensure_plan(env.ctx)
        seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
        run_billing_pass(env.ctx)
        assert env.simulator.callbacks.wait_idle()
    finally:
        server.shutdown()
        server.server_close()
    assert [d.http_status for d in env.simulator.callbacks.deliveries()] == [500, 503, 200]
    assert [d.try_number for d in env.simulator.callbacks.deliveries()] == [1, 2, 3]
    assert len(seen) == 3 and json.loads(seen[0])["referenceId"] == attempt(env).reference_id
