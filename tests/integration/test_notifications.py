"""The outbox: notifications written with their change, delivered at least once with leases,
retried with backoff, dead-lettered, redelivered; email through a real SMTP server.

On the test clock against the sandbox over HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import ssl
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import col, select

from billing import metrics
from billing.domain.notifications import SIGNATURE_HEADER, sign
from billing.engine.billing_pass import run_billing_pass
from billing.engine.events import record_event
from billing.engine.notifications import list_deliveries, redeliver
from billing.errors import Conflict, InvalidInput, NotFound
from billing.notify import email as email_module
from billing.notify.config import NotifyConfig
from billing.notify.deliver import Notifier
from billing.store.db import session
from billing.store.models import Customer, Event, OutboxDelivery, OutboxEvent
from billing.store.outbox import claim_deliveries, fan_out
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import Env
from tests.receivers import (
    SmtpSink,
    WebhookReceiver,
    self_signed_tls,
    smtp_sink,
    webhook_receiver,
)
from tests.unit.test_webhook_signature import readme_verify

SECRET = "whsec-integration-0123456789"
SOFT_DECLINE = "4000000000000010"


@pytest.fixture
def receiver() -> Any:
    with webhook_receiver() as r:
        yield r


def hooks(receiver: WebhookReceiver, **overrides: Any) -> NotifyConfig:
    values: dict[str, Any] = {
        "webhook_urls": (receiver.url,),
        "webhook_secret": SecretStr(SECRET),
        "webhook_timeout_seconds": 5.0,
        "backoff_seconds": 30,
        **overrides,
    }
    return NotifyConfig(**values)


def decline_one(env: Env, **metadata: str) -> int:
    """One customer whose first charge is soft-declined; returns the customer id."""
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, card=SOFT_DECLINE, prefix="dun")
    if metadata:
        with session(env.ctx.engine) as s:
            customer = s.exec(select(Customer)).one()
            customer.attributes = {**customer.attributes, **metadata}
            customer.first_name = "Ana"
            s.add(customer)
    run_billing_pass(env.ctx)
    with session(env.ctx.engine) as s:
        customer_id = s.exec(select(Customer.id)).one()
    assert customer_id is not None
    return customer_id


def outbox(env: Env) -> list[OutboxEvent]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(OutboxEvent).order_by(col(OutboxEvent.id))).all())


def deliveries(env: Env) -> list[OutboxDelivery]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(OutboxDelivery).order_by(col(OutboxDelivery.id))).all())


def test_a_decline_writes_its_notifications_with_the_change_ids_only(env: Env) -> None:
    customer_id = decline_one(env)
    events = {e.type: e for e in outbox(env)}
    # A decline is announced as invoice.payment_failed; past_due with it.
    assert set(events) == {"invoice.payment_failed", "subscription.past_due"}
    failed = events["invoice.payment_failed"]
    assert failed.customer_id == customer_id
    assert failed.event_id.startswith("evt_") and len(failed.event_id) == 36
    assert set(failed.payload) <= {
        "invoice_id",
        "invoice_number",
        "subscription_id",
        "customer_id",
        "customer_reference",
        "reference_id",
        "instrument_id",
    }
    assert {"invoice_id", "subscription_id", "customer_id"} <= set(failed.payload)
    # Fan-out adds the merchant's reference of the customer, once, before any delivery.
    fan_out(env.ctx.engine, env.clock.now(), [("webhook", "http://127.0.0.1:9/")], frozenset())
    failed = next(e for e in outbox(env) if e.type == "invoice.payment_failed")
    assert failed.payload["customer_reference"] == "dun-00000"
    text = json.dumps([e.payload for e in events.values()])
    assert SOFT_DECLINE not in text and "token" not in text
    # Same transaction as the event log row: the log and the outbox agree.
    with session(env.ctx.engine) as s:
        logged = s.exec(select(Event.event).where(Event.event == "invoice.payment_failed")).all()
    assert len(logged) == 1


def test_a_rolled_back_change_leaves_no_notification(env: Env) -> None:
    with pytest.raises(RuntimeError), session(env.ctx.engine) as s:
        record_event(
            s,
            at=env.clock.now(),
            entity_type="subscription",
            entity_id=1,
            event="subscription.canceled",
            actor="test",
        )
        s.flush()
        raise RuntimeError("the change failed")
    assert outbox(env) == []


def test_a_receiver_failing_three_times_then_recovering_gets_the_event(
    env: Env, receiver: WebhookReceiver
) -> None:
    decline_one(env)
    receiver.fail_next = 3 * 2  # both events fail three times each
    notifier = Notifier(env.ctx, hooks(receiver))
    failures = metrics.NOTIFICATION_FAILURES.labels(channel="webhook", reason="http_5xx")
    before = failures._value.get()
    try:
        delays = []
        for _ in range(3):
            summary = notifier.run()
            assert summary.failed == 2 and summary.delivered == 0
            due = min(d.next_attempt_at for d in deliveries(env) if d.next_attempt_at)
            delays.append(due - env.clock.now())
            assert notifier.run().failed == 0  # nothing due before the backoff ends
            env.clock.advance(due - env.clock.now())
        assert delays == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
        assert notifier.run().delivered == 2
        assert notifier.run().delivered == 0  # delivered once, not again
    finally:
        notifier.close()
    assert failures._value.get() - before == 6
    rows = deliveries(env)
    assert {(d.state, d.attempts) for d in rows} == {("delivered", 4)}
    ids = {e.event_id for e in outbox(env)}
    assert sorted(receiver.accepted_ids()) == sorted(ids)
    # Every try of one event carried the same id and body, each correctly signed.
    verify = readme_verify()
    by_id: dict[str, set[bytes]] = {}
    for request in receiver.requests:
        by_id.setdefault(request.json["id"], set()).add(request.body)
        header = request.headers[SIGNATURE_HEADER]
        ts = int(header.split(",")[0].removeprefix("t="))
        assert abs(ts - env.clock.now().timestamp()) < 300
    assert set(by_id) == ids and all(len(bodies) == 1 for bodies in by_id.values())
    # The README recipe checks against the real clock: sign a fresh copy to run it as written.
    body = receiver.accepted[0].body
    assert verify(SECRET, sign(SECRET, int(time.time()), body), body)


def test_dead_letter_after_the_limit_then_redeliver(env: Env, receiver: WebhookReceiver) -> None:
    decline_one(env)
    receiver.fail_next = 1000
    notifier = Notifier(env.ctx, hooks(receiver, max_attempts=2, backoff_seconds=1))
    try:
        notifier.run()
        env.clock.advance(timedelta(seconds=5))
        notifier.run()
        assert {d.state for d in deliveries(env)} == {"dead"}
        backlog = notifier.gauge_samples()[metrics.OUTBOX_BACKLOG.name]
        assert backlog[("webhook", "dead")] == 2 and backlog[("webhook", "pending")] == 0
        assert {d.last_error for d in deliveries(env)} == {"HTTP 500"}
        env.clock.advance(timedelta(hours=1))
        assert notifier.run().failed == 0  # dead stays dead
        dead = list_deliveries(env.ctx, state="dead")
        assert len(dead) == 2
        event_id = dead[0].event.event_id
        env.ctx.actor = "ops-ana"
        assert redeliver(env.ctx, event_id, "endpoint fixed") == 1
        with pytest.raises(Conflict):
            redeliver(env.ctx, event_id, "twice")  # already pending
        with pytest.raises(NotFound):
            redeliver(env.ctx, "evt_" + "0" * 32, "no such")
        with pytest.raises(InvalidInput):
            redeliver(env.ctx, "12; DROP TABLE", "bad id")
        receiver.fail_next = 0
        assert notifier.run().delivered == 1
        assert notifier.gauge_samples()[metrics.OUTBOX_BACKLOG.name][("webhook", "dead")] == 1
    finally:
        notifier.close()
    assert receiver.accepted_ids() == [event_id]
    with session(env.ctx.engine) as s:
        logged = s.exec(select(Event).where(Event.event == "outbox.redeliver")).one()
    assert (logged.actor, logged.reason, logged.data["event_id"]) == (
        "ops-ana",
        "endpoint fixed",
        event_id,
    )


def test_a_leased_delivery_is_not_handed_to_a_second_node(env: Env) -> None:
    decline_one(env)
    now = env.clock.now()
    fan_out(env.ctx.engine, now, [("webhook", "http://127.0.0.1:9/hook")], frozenset())
    first = claim_deliveries(env.ctx.engine, "node-a", now, 60, 10)
    assert len(first) == 2
    assert claim_deliveries(env.ctx.engine, "node-b", now, 60, 10) == []
    # A crashed holder's lease expires: another node takes the work over.
    later = now + timedelta(seconds=61)
    assert sorted(claim_deliveries(env.ctx.engine, "node-b", later, 60, 10)) == sorted(first)
    # Fanning out again creates nothing new.
    assert (
        fan_out(env.ctx.engine, later, [("webhook", "http://127.0.0.1:9/hook")], frozenset()) == 0
    )


def test_two_nodes_delivering_at_once_send_each_event_once(
    env: Env, receiver: WebhookReceiver
) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 8, card=SOFT_DECLINE, prefix="two")
    run_billing_pass(env.ctx)  # 8 x (payment_failed + past_due)
    nodes = [
        Notifier(dataclasses.replace(env.ctx, node=name, concurrency=2), hooks(receiver))
        for name in ("node-a", "node-b")
    ]
    start = threading.Barrier(2)

    def work(notifier: Notifier) -> None:
        start.wait()
        notifier.run()

    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for notifier in nodes:
            notifier.close()
    ids = [r.json["id"] for r in receiver.requests]
    assert len(ids) == 16 and len(set(ids)) == 16  # every event sent, none twice
    assert {d.state for d in deliveries(env)} == {"delivered"}


def test_secrets_stay_out_of_logs_and_errors(
    env: Env, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    decline_one(env)
    receiver.fail_next = 1
    caplog.set_level(logging.DEBUG)
    password = "smtp-pass-SECRET-42"
    cfg = hooks(
        receiver,
        smtp_host="127.0.0.1",
        smtp_port=1,  # nothing listens: the email fails
        smtp_starttls=False,
        smtp_user="billing",
        smtp_password=SecretStr(password),
        email_from="billing@shop.example",
    )
    assert SECRET not in repr(cfg) and password not in repr(cfg)
    notifier = Notifier(env.ctx, cfg)
    try:
        notifier.run()
    finally:
        notifier.close()
    rows = deliveries(env)
    assert {d.channel for d in rows} == {"webhook", "email"}
    errors = " ".join(d.last_error or "" for d in rows)
    assert "SMTP failed" in errors
    for text in (caplog.text, errors):
        assert SECRET not in text and password not in text


def test_customer_email_through_a_real_smtp_server(env: Env) -> None:
    with smtp_sink() as sink:
        decline_one(env, language="en")
        notifier = Notifier(env.ctx, mail(sink))
        try:
            assert notifier.run().delivered == 1  # payment_failed; past_due is webhook-only
        finally:
            notifier.close()
    assert len(sink.messages) == 1
    message = sink.messages[0]
    assert sink.recipients == [["dun-00000@example.com"]]
    assert message["From"] == "billing@shop.example"
    assert message["Subject"].startswith("We could not charge your subscription")
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    text, page = text_part.get_content(), html_part.get_content()
    assert "Hello Ana" in text and "UYU 590.00" in text
    # The link to add a card: a fresh tokenization session at the sandbox.
    links = [w for w in text.split() if w.startswith("http")]
    assert len(links) == 1 and f'href="{links[0]}"' in page.replace("&amp;", "&")
    assert links[0].startswith(env.sandbox_url + "/sandbox/checkout/")
    event = next(e for e in outbox(env) if e.type == "invoice.payment_failed")
    assert message["X-Billing-Event-Id"] == event.event_id


def test_customer_email_defaults_to_spanish(env: Env) -> None:
    with smtp_sink() as sink:
        decline_one(env)
        notifier = Notifier(env.ctx, mail(sink))
        try:
            notifier.run()
        finally:
            notifier.close()
    assert len(sink.messages) == 1
    assert sink.messages[0]["Subject"].startswith("No pudimos cobrar tu suscripción")
    body = sink.messages[0].get_body(preferencelist=("plain",))
    assert body is not None and "Hola" in body.get_content()


def mail(sink: SmtpSink) -> NotifyConfig:
    return NotifyConfig(
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_starttls=False,  # loopback test server without TLS
        email_from="billing@shop.example",
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_email_over_starttls_with_a_login(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_tls, cert = self_signed_tls(tmp_path)
    # The client verifies the server as usual; it only has to trust the test's own CA.
    trusting = functools.partial(ssl.create_default_context, cafile=str(cert))
    monkeypatch.setattr(email_module.ssl, "create_default_context", trusting)
    password = "smtp-login-SECRET-7"
    with smtp_sink(tls=server_tls, login=("billing", password)) as sink:
        decline_one(env)
        cfg = dataclasses.replace(
            mail(sink), smtp_starttls=True, smtp_user="billing", smtp_password=SecretStr(password)
        )
        notifier = Notifier(env.ctx, cfg)
        try:
            assert notifier.run().delivered == 1
        finally:
            notifier.close()
        assert sink.logins == 1 and len(sink.messages) == 1
        # Without STARTTLS this server refuses: the delivery fails, nothing is sent.
        decline_one_more(env)
        plain = Notifier(env.ctx, dataclasses.replace(cfg, smtp_starttls=False))
        try:
            assert plain.run().failed == 1
        finally:
            plain.close()
        assert len(sink.messages) == 1
    errors = [d.last_error for d in deliveries(env) if d.last_error]
    assert errors and all(password not in e for e in errors)


def decline_one_more(env: Env) -> None:
    seed_subscriptions(env.ctx, env.sandbox_url, 1, card=SOFT_DECLINE, prefix="more")
    run_billing_pass(env.ctx)
