"""Issue 8 item 4: safety bounds park an invoice instead of charging it, on SQLite and PostgreSQL.

Three bounds (a ceiling per currency, a factor over the subscription's previous approved
charge, a number of charges of one customer per merchant-zone day), checked in the write-ahead
transaction: a parked invoice sends nothing to the sandbox, is counted by the run and the gauge,
and waits for `invoices release`, after which the next pass charges it exactly once.
"""

from __future__ import annotations

import json
import threading
from contextlib import suppress
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select
from typer.testing import CliRunner

from billing import metrics
from billing.cli.main import app
from billing.daemon.service import Daemon
from billing.domain.bounds import SafetyBounds
from billing.engine import bounds as bounds_engine
from billing.engine import subscriptions
from billing.engine.billing_pass import RunSummary, run_billing_pass
from billing.engine.invoices import release_invoice, void_invoice
from billing.engine.invoicing import create_due_invoices
from billing.engine.preview import preview
from billing.errors import Conflict
from billing.store.db import session
from billing.store.models import (
    BillingRun,
    ChargeAttempt,
    Event,
    Invoice,
    PaymentInstrument,
    Subscription,
)
from billing.testing import ensure_plan, invoice_refs_charged, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts
from tests.integration.test_dunning import add_card
from tests.integration.test_preview import count_requests

OFF = SafetyBounds(max_charges_per_day=None)


def invoices_of(env: Env, sub_id: int | None = None) -> list[Invoice]:
    with session(env.ctx.engine) as s:
        query = select(Invoice).order_by(col(Invoice.period_start), col(Invoice.id))
        if sub_id is not None:
            query = query.where(Invoice.subscription_id == sub_id)
        return list(s.exec(query).all())


def parked_events(env: Env, invoice_id: int | None = None) -> list[Event]:
    with session(env.ctx.engine) as s:
        query = select(Event).where(Event.event == "invoice.parked").order_by(col(Event.id))
        if invoice_id is not None:
            query = query.where(Event.entity_id == invoice_id)
        return list(s.exec(query).all())


def sent_for(env: Env, number: str) -> int:
    """Payment requests the sandbox recorded for an invoice (any status)."""
    return sum(1 for p in env.simulator.payments() if p["invoiceNumber"] == number)


def parked_gauge(env: Env) -> float:
    return Daemon(env.ctx).store_samples()[metrics.INVOICES_PARKED.name][()]


def assert_parked(env: Env, invoice: Invoice, reason: str, summary: RunSummary) -> None:
    """Parked, nothing sent, and the `invoice.parked` event in its contract shape."""
    assert invoice.status == "parked" and invoice.parked_reason == reason
    assert invoice.next_attempt_at is None and invoice.lease_owner is None
    assert invoice.parked_at == env.clock.now() and invoice.attempt_count == 0
    assert sent_for(env, invoice.number) == 0, "the sandbox saw a payment for a parked invoice"
    [event] = parked_events(env, invoice.id)
    assert event.entity_type == "invoice" and event.actor == env.ctx.actor
    assert set(event.data) == {"run_id", "reason", "detail", "amount_minor", "currency"}
    assert event.data["run_id"] == summary.run_id is not None
    assert event.data["reason"] == reason and event.data["detail"] == invoice.parked_detail
    assert (event.data["amount_minor"], event.data["currency"]) == (
        invoice.amount_minor,
        invoice.currency,
    )


def test_over_the_ceiling_is_parked_then_released_and_charged_once(env: Env) -> None:
    env.ctx.bounds = replace(OFF, ceilings={"UYU": 50000})  # 500.00 UYU; the plan is 590.00
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1)
    status_before = subscriptions_status(env, sub_id)
    summary = run_billing_pass(env.ctx)

    [invoice] = invoices_of(env, sub_id)
    assert_parked(env, invoice, "ceiling", summary)
    assert invoice.parked_detail == "590.00 UYU is above the ceiling of 500.00 UYU"
    assert summary.attempts == 0
    assert summary.totals["parked"] == {"count": 1, "amounts": {"UYU": 59000}}
    with session(env.ctx.engine) as s:
        run = s.get(BillingRun, summary.run_id)
        assert run is not None and run.totals["parked"] == summary.totals["parked"]
    assert subscriptions_status(env, sub_id) == status_before, "parked is not past_due"
    assert parked_gauge(env) == 1
    assert run_billing_pass(env.ctx).did_work is False, "parked stays parked, nothing claimed"

    env.ctx.actor = "alice"
    released = release_invoice(env.ctx, invoice.number, reason="big order agreed")
    assert released.status == "open" and released.next_attempt_at == env.clock.now()
    assert (released.released_by, released.released_amount_minor) == ("alice", 59000)
    with pytest.raises(Conflict, match="not parked"):
        release_invoice(env.ctx, invoice.number, reason="twice")
    assert parked_gauge(env) == 0

    again = run_billing_pass(env.ctx)
    assert again.count("approved") == 1 and again.count("parked") == 0
    [paid] = invoices_of(env, sub_id)
    assert paid.status == "paid" and sent_for(env, paid.number) == 1
    assert run_billing_pass(env.ctx).did_work is False
    assert invoice_refs_charged(env.simulator.payments()) == {paid.number: 1}
    with session(env.ctx.engine) as s:
        [event] = s.exec(select(Event).where(Event.event == "invoice.released")).all()
    assert (event.actor, event.reason, event.entity_id) == ("alice", "big order agreed", paid.id)


def subscriptions_status(env: Env, sub_id: int) -> str:
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None
        return sub.status


def test_a_release_covers_its_amount_only(env: Env) -> None:
    """Released at 590.00; the amount changed before the pass: it is checked (parked) again."""
    env.ctx.bounds = replace(OFF, ceilings={"UYU": 50000})
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1)
    run_billing_pass(env.ctx)
    [invoice] = invoices_of(env)
    release_invoice(env.ctx, invoice.number, reason="agreed")
    with session(env.ctx.engine) as s:
        s.exec(update(Invoice).where(col(Invoice.id) == invoice.id).values(amount_minor=60000))
    env.clock.advance(timedelta(minutes=1))
    summary = run_billing_pass(env.ctx)
    assert summary.count("parked") == 1 and summary.attempts == 0
    [again] = invoices_of(env)
    assert again.status == "parked" and sent_for(env, again.number) == 0
    assert len(parked_events(env, again.id)) == 2


def test_more_than_the_factor_above_the_last_approved_charge_is_parked(env: Env) -> None:
    env.ctx.bounds = replace(OFF, max_increase_factor=Decimal("3"))
    ensure_plan(env.ctx)  # 590.00
    ensure_plan(env.ctx, code="premium", amount="2000.00")  # 3.39 times
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1)
    run_billing_pass(env.ctx)  # period 0 approved at 590.00
    env.clock.advance(timedelta(days=10))
    subscriptions.change_plan(env.ctx, sub_id, plan_code="premium", reason="upgrade")
    env.clock.set(START.replace(month=4) + timedelta(hours=1))
    summary = run_billing_pass(env.ctx)
    first, second = invoices_of(env, sub_id)
    assert first.status == "paid"
    assert_parked(env, second, "factor", summary)
    assert second.parked_detail == (
        "2000.00 UYU is more than 3 times the previous approved charge of 590.00 UYU"
    )
    release_invoice(env.ctx, second.number, reason="upgrade confirmed")
    assert run_billing_pass(env.ctx).count("approved") == 1
    # The next period compares with the 2000.00 now approved: charged, not parked.
    env.clock.set(START.replace(month=5) + timedelta(hours=1))
    later = run_billing_pass(env.ctx)
    assert later.count("approved") == 1 and later.count("parked") == 0
    assert [i.status for i in invoices_of(env, sub_id)] == ["paid", "paid", "paid"]
    assert set(invoice_refs_charged(env.simulator.payments()).values()) == {1}


def daily_catch_up(env: Env, days: int, subs: int = 1) -> list[int]:
    """A customer with `subs` daily subscriptions, `days` + 1 periods each due in one pass."""
    ensure_plan(env.ctx, code="daily", amount="20.00", interval="day")
    [first] = seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code="daily")
    ids = [first]
    for _ in range(subs - 1):
        sub = subscriptions.create_subscription(
            env.ctx, customer_ref="cus-00000", plan_code="daily", allow_duplicate=True
        )
        assert sub.id is not None
        ids.append(sub.id)
    env.clock.advance(timedelta(days=days, hours=1))
    return ids


def test_the_daily_count_parks_the_charges_beyond_n(env: Env) -> None:
    env.ctx.bounds = SafetyBounds(max_charges_per_day=3)
    [sub_id] = daily_catch_up(env, days=4)  # 5 periods due at once
    summary = run_billing_pass(env.ctx)
    assert summary.count("approved") == 3 and summary.count("parked") == 2
    invoices = invoices_of(env, sub_id)
    assert [i.status for i in invoices] == ["paid"] * 3 + ["parked"] * 2
    for parked in invoices[3:]:
        assert_parked(env, parked, "daily_count", summary)
    assert invoices[3].parked_detail == (
        "the customer was already charged 3 times today (at most 3 a day)"
    )
    assert len(env.simulator.payments()) == 3
    # Released the same day: the release is the permission, the count does not stop it.
    for parked in invoices[3:]:
        release_invoice(env.ctx, parked.number, reason="catch-up agreed")
    assert run_billing_pass(env.ctx).count("approved") == 2
    assert set(invoice_refs_charged(env.simulator.payments()).values()) == {1}
    assert len(invoice_refs_charged(env.simulator.payments())) == 5


def test_declines_do_not_count_towards_the_day(env: Env) -> None:
    env.ctx.bounds = SafetyBounds(max_charges_per_day=1)
    ensure_plan(env.ctx, code="daily", amount="20.00", interval="day")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code="daily", card="4000000000000010")
    assert run_billing_pass(env.ctx).count("declined") == 1
    subscriptions.create_subscription(
        env.ctx, customer_ref="cus-00000", plan_code="daily", allow_duplicate=True
    )
    summary = run_billing_pass(env.ctx)
    assert summary.count("parked") == 0 and summary.attempts == 1


CARDS = ("5555444433332222", "4507990000004905", "5588220000000006")  # approving, besides the first


def one_customer_four_cards(env: Env, per_card: int) -> None:
    """Customer cus-00000 with four cards and `per_card` monthly subscriptions on each, the
    subscriptions of one card starting a minute before the next card's: claimed in batches
    of `per_card`, each node gets one card (a card row lock alone would not serialize
    charges on different cards)."""
    ensure_plan(env.ctx)
    [first] = seed_subscriptions(env.ctx, env.sandbox_url, 1)  # card 1, starting at START
    for number in CARDS:
        add_card(env, first, number)
    with session(env.ctx.engine) as s:
        cards = [str(i.id) for i in s.exec(select(PaymentInstrument)).all()]
    assert len(cards) == 4
    for k, card in enumerate(cards):
        for n in range(per_card):
            if k == 0 and n == 0:
                continue  # the seeded subscription
            subscriptions.create_subscription(
                env.ctx, customer_ref="cus-00000", plan_code="monthly", instrument=card,
                start=START + timedelta(minutes=k, seconds=n), allow_duplicate=True,
            )  # fmt: skip
    env.clock.advance(timedelta(hours=1))


def test_passes_at_once_never_exceed_the_daily_count(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four daemons (nodes) charge one customer's invoices on four cards in parallel: the
    count is taken under the customer's row lock, so at most N charges reach the sandbox.

    The race is made to happen: the first write-ahead that counts N - 1 waits (up to 2 s)
    for a second one to count too before it goes on. Without the lock the second arrives
    and both charge (N + 1); with it the second waits for the first to commit."""
    limit = 3
    env.ctx.bounds = SafetyBounds(max_charges_per_day=limit)
    meet = threading.Barrier(2, timeout=2)
    counted = bounds_engine.charges_today

    def charges_today(*args: Any, **kwargs: Any) -> int:
        n = counted(*args, **kwargs)
        if n == limit - 1 and not meet.broken:
            with suppress(threading.BrokenBarrierError):  # nobody else got this far
                meet.wait()
        return n

    monkeypatch.setattr(bounds_engine, "charges_today", charges_today)
    one_customer_four_cards(env, per_card=8)  # 32 due, 8 on each card
    create_due_invoices(env.ctx, env.clock.now())  # so that every node finds some to claim
    env.ctx.concurrency = 1  # claim batches of 8: one card's invoices for each node
    nodes = [env.ctx] + [replace(env.ctx, node=f"test-node-{n}") for n in range(2, 5)]
    summaries: list[RunSummary] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(nodes))

    def run(ctx: Any) -> None:
        try:
            start.wait()
            summaries.append(run_billing_pass(ctx))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(env.simulator.payments()) <= limit
    for _ in range(30):  # anything deferred meanwhile (a card in flight on another node)
        env.clock.advance(timedelta(minutes=1))
        more = run_billing_pass(env.ctx)
        summaries.append(more)
        if not more.did_work:
            break
    statuses = [i.status for i in invoices_of(env)]
    assert len(statuses) == 32 and statuses.count("paid") == limit
    assert statuses.count("parked") == 32 - limit
    assert len(env.simulator.payments()) == limit
    assert sum(s.count("parked") for s in summaries) == 32 - limit
    with session(env.ctx.engine) as s:
        assert len(s.exec(select(ChargeAttempt)).all()) == limit


def test_preview_shows_parked_and_the_pass_does_the_same(
    env: Env, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.ctx.bounds = SafetyBounds(ceilings={"USD": 2000}, max_charges_per_day=2)
    ensure_plan(env.ctx, code="usd", amount="25.00", currency="USD")
    [over] = seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code="usd", prefix="usd")
    [daily] = daily_catch_up(env, days=3)  # 4 periods of one customer: 2 charged, 2 parked
    before = table_counts(db_url)
    seen = count_requests(monkeypatch, env.simulator)
    result = preview(env.ctx, env.clock.now())
    assert seen == [] and table_counts(db_url) == before
    parked = [line for line in result.lines if line.kind == "parked"]
    assert sorted((p.subscription_id, p.period_index) for p in parked) == [
        (over, 0),
        (daily, 2),
        (daily, 3),
    ]
    assert all(not p.charged for p in parked)
    assert parked[0].detail is not None and "ceiling" in parked[0].detail
    assert result.totals() == {"UYU": {"count": 2, "amount_minor": 4000}}
    summary = run_billing_pass(env.ctx)
    really = sorted((i.subscription_id, i.period_index) for i in invoices_of(env) if i.parked_at)
    assert really == [(over, 0), (daily, 2), (daily, 3)]
    assert summary.count("approved") == len(result.charges) == 2


def test_void_and_cancel_end_a_parked_invoice(env: Env) -> None:
    env.ctx.bounds = replace(OFF, ceilings={"UYU": 100})
    ensure_plan(env.ctx)
    _, second = seed_subscriptions(env.ctx, env.sandbox_url, 2)
    run_billing_pass(env.ctx)
    a, b = invoices_of(env)
    assert {a.status, b.status} == {"parked"}
    assert void_invoice(env.ctx, a.number, reason="not owed").status == "void"
    subscriptions.cancel_subscription(env.ctx, second, at_period_end=False, reason="gone")
    assert [i.status for i in invoices_of(env)] == ["void", "void"]
    assert parked_gauge(env) == 0 and env.simulator.payments() == []


def invoke(env: Env, db_url: str, *args: str) -> Any:
    environ = {
        "BILLING_DATABASE_URL": db_url,
        "BILLING_PLEXO_BASE_URL": env.sandbox_url,
        "BILLING_TIMEZONE": "America/Montevideo",
        "BILLING_CEILING_PER_CURRENCY": "UYU=100",
    }
    return CliRunner().invoke(app, list(args), env=environ)


def test_cli_lists_shows_and_releases_parked_invoices(env: Env, db_url: str) -> None:
    env.ctx.bounds = replace(OFF, ceilings={"UYU": 100})
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 2)
    run_billing_pass(env.ctx)
    a, b = invoices_of(env)
    listed = invoke(env, db_url, "invoices", "list", "--status", "parked", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert sorted(r["number"] for r in rows) == sorted([a.number, b.number])
    assert {r["parked_reason"] for r in rows} == {"ceiling"}
    shown = invoke(env, db_url, "invoices", "show", a.number)
    assert shown.exit_code == 0, shown.output
    assert "parked" in shown.stdout and "above the ceiling of 1.00 UYU" in shown.stdout

    done = invoke(env, db_url, "invoices", "release", a.number, "--by", "bob", "--reason", "ok")
    assert done.exit_code == 0, done.output
    assert f"invoice {a.number} released by bob" in done.stdout
    [event] = [e for e in all_events(env) if e.event == "invoice.released"]
    assert (event.actor, event.reason, event.entity_id) == ("bob", "ok", a.id)

    before = table_counts(db_url)
    again = invoke(env, db_url, "invoices", "release", a.number, "--reason", "twice")
    assert again.exit_code == 2 and again.stderr.startswith("error: ")
    assert "not parked" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    no_reason = invoke(env, db_url, "invoices", "release", b.number, "--reason", " ")
    assert no_reason.exit_code == 2 and "--reason is required" in no_reason.stderr
    assert table_counts(db_url) == before


def all_events(env: Env) -> list[Event]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(Event).order_by(col(Event.id))).all())
