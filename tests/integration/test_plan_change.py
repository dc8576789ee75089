"""subscriptions change-plan: the new plan bills from the next period; started periods bill at
the old plan; another interval re-anchors at the next period start (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlmodel import col, select

from billing.engine import subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.errors import Conflict, NotFound
from billing.store.db import session
from billing.store.models import Event, Invoice, Subscription
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env


def invoices_of(env: Env, sub_id: int) -> list[tuple[str, int, str, str]]:
    with session(env.ctx.engine) as s:
        rows = s.exec(
            select(Invoice).where(Invoice.subscription_id == sub_id).order_by(col(Invoice.id))
        ).all()
        return [(r.period_start.isoformat(), r.amount_minor, r.currency, r.status) for r in rows]


def approved_at_sandbox(env: Env) -> list[tuple[int, str]]:
    return sorted(
        (int(Decimal(p["amount"]["total"]) * 100), p["amount"]["currency"])
        for p in env.simulator.payments()
        if p["status"] == "approved"
    )


def test_same_interval_keeps_the_periods_and_bills_the_new_price_next(env: Env) -> None:
    ensure_plan(env.ctx)
    ensure_plan(env.ctx, code="monthly-usd", amount="25.00", currency="USD")
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1)
    run_billing_pass(env.ctx)  # period 0 at the old plan
    env.clock.advance(timedelta(days=10))
    _, starts = subscriptions.change_plan(
        env.ctx, sub_id, plan_code="monthly-usd", reason="upgrade"
    )
    assert starts == START.replace(month=4)  # the next period, where it was
    env.clock.advance(timedelta(days=60))
    run_billing_pass(env.ctx)
    got = invoices_of(env, sub_id)
    assert [(a, c) for _, a, c, _ in got] == [(59000, "UYU"), (2500, "USD"), (2500, "USD")]
    assert [s for s, *_ in got][1:] == [
        START.replace(month=4).isoformat(),
        START.replace(month=5).isoformat(),
    ]
    with session(env.ctx.engine) as s:
        [event] = s.exec(select(Event).where(Event.event == "subscription.plan_changed")).all()
    assert (event.actor, event.reason) == ("test", "upgrade")
    assert event.data["from_plan"] == "monthly" and event.data["to_plan"] == "monthly-usd"


def test_a_started_period_not_yet_invoiced_bills_at_the_old_plan(env: Env) -> None:
    ensure_plan(env.ctx)
    ensure_plan(env.ctx, code="monthly-usd", amount="25.00", currency="USD")
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1)
    run_billing_pass(env.ctx)
    # Period 1 started an hour ago; no pass has run since.
    env.clock.advance(timedelta(days=31, hours=1))
    subscriptions.change_plan(env.ctx, sub_id, plan_code="monthly-usd", reason=None)
    run_billing_pass(env.ctx)
    got = invoices_of(env, sub_id)
    assert [(a, c) for _, a, c, _ in got] == [(59000, "UYU"), (59000, "UYU")]
    assert approved_at_sandbox(env) == [(59000, "UYU"), (59000, "UYU")]


def test_another_interval_re_anchors_at_the_next_period_start(env: Env) -> None:
    ensure_plan(env.ctx)
    ensure_plan(env.ctx, code="weekly", amount="150.00", interval="week")
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1)
    run_billing_pass(env.ctx)
    env.clock.advance(timedelta(days=5))
    _, starts = subscriptions.change_plan(env.ctx, sub_id, plan_code="weekly", reason=None)
    april = START.replace(month=4)
    assert starts == april
    env.clock.advance(timedelta(days=40))  # to 2026-04-15
    run_billing_pass(env.ctx)
    got = invoices_of(env, sub_id)
    assert [s for s, *_ in got] == [
        START.isoformat(),
        april.isoformat(),
        (april + timedelta(days=7)).isoformat(),
        (april + timedelta(days=14)).isoformat(),
    ]
    assert [a for _, a, _, _ in got] == [59000, 15000, 15000, 15000]
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None and sub.next_billing_at == april + timedelta(days=21)


def test_refusals_change_nothing(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1)
    with pytest.raises(NotFound):
        subscriptions.change_plan(env.ctx, sub_id, plan_code="nope", reason=None)
    with pytest.raises(Conflict, match="already on plan"):
        subscriptions.change_plan(env.ctx, sub_id, plan_code="monthly", reason=None)
    with pytest.raises(NotFound):
        subscriptions.change_plan(env.ctx, 10**30, plan_code="monthly", reason=None)
    ensure_plan(env.ctx, code="yearly", amount="5000.00", interval="year")
    subscriptions.pause_subscription(env.ctx, sub_id, None)
    with pytest.raises(Conflict, match="resume it first"):
        subscriptions.change_plan(env.ctx, sub_id, plan_code="yearly", reason=None)
    with session(env.ctx.engine) as s:
        assert s.exec(select(Event).where(Event.event == "subscription.plan_changed")).all() == []
