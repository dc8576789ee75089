"""Issue 5 item 2: a typo cannot bill for centuries, on SQLite and PostgreSQL.

Two bounds: a start one interval or more in the past needs `backdate`; and a subscription with
more due periods than the catch-up cap in one pass is held for review instead of being charged,
until a person releases it (bill the missed periods once, or skip them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, select

from billing import metrics
from billing.daemon.service import Daemon
from billing.engine import subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.errors import Conflict, InvalidInput
from billing.store.db import session
from billing.store.models import BillingRun, Event, Invoice, Subscription
from billing.testing import ensure_plan, invoice_refs_charged, ledger, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts


def sub_of(env: Env, sub_id: int) -> Subscription:
    with session(env.ctx.engine) as s:
        found = s.get(Subscription, sub_id)
        assert found is not None
        return found


def invoice_indices(env: Env, sub_id: int) -> list[int]:
    with session(env.ctx.engine) as s:
        return list(
            s.exec(
                select(Invoice.period_index)
                .where(Invoice.subscription_id == sub_id)
                .order_by(col(Invoice.period_index))
            ).all()
        )


def events_of(env: Env, sub_id: int) -> list[Event]:
    with session(env.ctx.engine) as s:
        return list(
            s.exec(
                select(Event)
                .where(Event.entity_type == "subscription", Event.entity_id == sub_id)
                .order_by(col(Event.id))
            ).all()
        )


def charged_once_each(env: Env, invoices: int) -> None:
    per_invoice = invoice_refs_charged(env.simulator.payments())
    assert len(per_invoice) == invoices and set(per_invoice.values()) <= {1}, per_invoice


def test_a_start_in_1026_is_refused_and_writes_nothing(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    before = table_counts(db_url)
    typo = datetime(1026, 12, 1, 3, 0, tzinfo=UTC)
    with pytest.raises(InvalidInput, match=r"--backdate") as refused:
        subscriptions.create_subscription(
            env.ctx, customer_ref="cus-00000", plan_code="monthly", start=typo,
            allow_duplicate=True,
        )  # fmt: skip
    assert "11,992 periods" in str(refused.value)
    assert table_counts(db_url) == before


def test_a_start_at_the_edge_of_the_calendar_is_one_clear_refusal(env: Env) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    edge = datetime(1, 1, 1, 1, 0, tzinfo=UTC)  # year 0 in Montevideo's LMT
    with pytest.raises(InvalidInput, match="out of the supported range"):
        subscriptions.create_subscription(
            env.ctx, customer_ref="cus-00000", plan_code="monthly", start=edge,
            allow_duplicate=True, backdate=True,
        )  # fmt: skip


def test_a_start_within_one_interval_needs_no_flag(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(
        env.ctx, env.sandbox_url, 1, start=START - timedelta(days=27)
    )  # Feb 2: one period started
    run_billing_pass(env.ctx)
    assert invoice_indices(env, sub_id) == [0]
    with pytest.raises(InvalidInput, match="2 periods at once"):
        seed_subscriptions(
            env.ctx, env.sandbox_url, 1, start=START - timedelta(days=29), prefix="late"
        )


def test_backdate_within_the_cap_bills_each_period_once(env: Env) -> None:
    ensure_plan(env.ctx)
    start = START - timedelta(days=95)  # Nov 26: Nov, Dec, Jan, Feb started
    assert subscriptions.backdated_periods(env.ctx, plan_code="monthly", start=start) == 4
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=start, backdate=True)
    summary = run_billing_pass(env.ctx)
    assert summary.invoices_created == 4 and summary.subscriptions_held == 0
    assert invoice_indices(env, sub_id) == [0, 1, 2, 3]
    charged_once_each(env, 4)


def test_catch_up_after_downtime_within_the_cap_bills_each_missed_period_once(env: Env) -> None:
    """Monthly plan, daemon down for three months: three invoices, each charged once."""
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    run_billing_pass(env.ctx)
    env.clock.set(START + timedelta(days=93))  # Jun 2: Apr, May and Jun started meanwhile
    summary = run_billing_pass(env.ctx)
    assert summary.invoices_created == 3 and summary.subscriptions_held == 0
    assert run_billing_pass(env.ctx).did_work is False
    assert invoice_indices(env, sub_id) == [0, 1, 2, 3]
    assert ledger(env.ctx)["invoices"] == {"paid": 4}
    charged_once_each(env, 4)


def hold_one(env: Env) -> int:
    """A subscription (and a healthy neighbour) 14 months behind: more than the cap of 12."""
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    run_billing_pass(env.ctx)
    env.clock.set(START + timedelta(days=430))  # 2027-05-05: periods 1..14 started
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=env.clock.now(), prefix="fresh")
    return sub_id


def test_a_catch_up_beyond_the_cap_is_held_not_charged(env: Env) -> None:
    sub_id = hold_one(env)
    paid_before = len(env.simulator.payments())
    summary = run_billing_pass(env.ctx)
    assert summary.subscriptions_held == 1
    assert summary.invoices_created == 1, "the healthy subscription is still billed"
    assert invoice_indices(env, sub_id) == [0], "nothing invoiced for the held one"
    assert len(env.simulator.payments()) == paid_before + 1
    held = sub_of(env, sub_id)
    assert held.held_at == env.clock.now() and held.held_periods == 14
    assert held.held_reason == "14 periods due at once, more than the catch-up cap of 12"
    assert [e.event for e in events_of(env, sub_id)][-1] == "subscription.held"
    with session(env.ctx.engine) as s:
        run = s.get(BillingRun, summary.run_id)
        assert run is not None and run.subscriptions_held == 1
    assert Daemon(env.ctx).store_samples()[metrics.SUBSCRIPTIONS_HELD.name] == {(): 1}
    again = run_billing_pass(env.ctx)
    assert again.subscriptions_held == 0 and again.did_work is False, "held once, not every pass"
    with pytest.raises(Conflict, match="held for review"):
        subscriptions.pause_subscription(env.ctx, sub_id, reason="no")
    subscriptions.cancel_subscription(env.ctx, sub_id, at_period_end=False, reason="gone")
    assert sub_of(env, sub_id).held_at is None, "a canceled subscription is not under review"
    assert Daemon(env.ctx).store_samples()[metrics.SUBSCRIPTIONS_HELD.name] == {(): 0}


def test_release_bills_the_missed_periods_once_past_the_cap(env: Env) -> None:
    sub_id = hold_one(env)
    run_billing_pass(env.ctx)
    with pytest.raises(InvalidInput, match="--reason is required"):
        subscriptions.release_subscription(env.ctx, sub_id, reason=" ", skip_to_now=False)
    env.ctx.actor = "alice"
    sub, billed = subscriptions.release_subscription(
        env.ctx, sub_id, reason="customer agreed", skip_to_now=False
    )
    assert billed == 14 and sub.held_at is None
    with pytest.raises(Conflict, match="is not held"):
        subscriptions.release_subscription(env.ctx, sub_id, reason="twice", skip_to_now=False)
    summary = run_billing_pass(env.ctx)
    assert summary.invoices_created == 14 and summary.subscriptions_held == 0
    assert invoice_indices(env, sub_id) == list(range(15))
    charged_once_each(env, 16)
    released = events_of(env, sub_id)
    [event] = [e for e in released if e.event == "subscription.released"]
    assert (event.actor, event.reason, event.data["mode"]) == ("alice", "customer agreed", "bill")
    assert sub_of(env, sub_id).catchup_through_index is None, "the allowance is used once"
    assert Daemon(env.ctx).store_samples()[metrics.SUBSCRIPTIONS_HELD.name] == {(): 0}
    # The allowance is gone: another long gap is held again (the neighbour's too).
    env.clock.advance(timedelta(days=500))
    assert run_billing_pass(env.ctx).subscriptions_held == 2
    assert sub_of(env, sub_id).held_at is not None


def test_release_with_skip_bills_only_the_current_period(env: Env) -> None:
    sub_id = hold_one(env)
    run_billing_pass(env.ctx)
    sub, billed = subscriptions.release_subscription(
        env.ctx, sub_id, reason="typo in the start", skip_to_now=True
    )
    assert billed == 1 and sub.next_period_index == 14
    run_billing_pass(env.ctx)
    assert invoice_indices(env, sub_id) == [0, 14]
    [event] = [e for e in events_of(env, sub_id) if e.event == "subscription.released"]
    assert event.data["periods_skipped"] == 13 and event.data["mode"] == "skip"


def test_pause_never_invoices_past_the_cap(env: Env, db_url: str) -> None:
    """Pause invoices the periods that started while active, under the same cap as a pass."""
    sub_id = hold_one(env)  # 14 started periods, no pass since
    before = table_counts(db_url)
    with pytest.raises(Conflict, match="14 started periods not yet invoiced"):
        subscriptions.pause_subscription(env.ctx, sub_id, reason="holiday")
    assert table_counts(db_url) == before
    run_billing_pass(env.ctx)  # held
    subscriptions.release_subscription(env.ctx, sub_id, reason="agreed", skip_to_now=False)
    paused = subscriptions.pause_subscription(env.ctx, sub_id, reason="holiday")
    assert paused.status == "paused" and invoice_indices(env, sub_id) == list(range(15))
