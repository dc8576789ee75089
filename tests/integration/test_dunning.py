"""Retries and dunning, journey by journey, on the test clock against the sandbox over HTTP
(SQLite and PostgreSQL): every attempt (time, card, referenceId), the states and the events."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta

import httpx
import pytest
from sqlmodel import col, select

from billing.domain.retry import FinalAction
from billing.engine import customers
from billing.engine.billing_pass import run_billing_pass
from billing.engine.reconcile import reconcile
from billing.store.db import session
from billing.store.models import (
    ChargeAttempt,
    Customer,
    Event,
    Invoice,
    OutboxEvent,
    PaymentInstrument,
    Subscription,
)
from billing.testing import APPROVING_CARD, ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env

SOFT = "4000000000000010"  # 51 insufficient funds
STOLEN = "4000000000000119"  # 43 stolen card (hard)
EXPIRED = "4000000000000069"  # 54 expired card (hard)
SOFT_TWICE = "4000000000000341"  # 51 on the first two charges, then approved
THREE_DS = "4000000000003220"  # pending with an approval_url action
DAY = timedelta(days=1)
# The first attempt runs at START (09:00 in Montevideo): retries are at 09:00 local.
SLOTS = [START + DAY * n for n in (1, 3, 5, 7)]


def sub_of(env: Env, sub_id: int) -> Subscription:
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None
        return sub


def invoices_of(env: Env, sub_id: int) -> list[Invoice]:
    with session(env.ctx.engine) as s:
        return list(
            s.exec(
                select(Invoice)
                .where(Invoice.subscription_id == sub_id)
                .order_by(col(Invoice.period_index))
            ).all()
        )


def attempts_of(env: Env, invoice_id: int | None) -> list[ChargeAttempt]:
    with session(env.ctx.engine) as s:
        return list(
            s.exec(
                select(ChargeAttempt)
                .where(ChargeAttempt.invoice_id == invoice_id)
                .order_by(col(ChargeAttempt.attempt_number))
            ).all()
        )


def events(env: Env) -> Counter[str]:
    with session(env.ctx.engine) as s:
        return Counter(s.exec(select(Event.event)).all())


def notified(env: Env) -> Counter[str]:
    """The notifications the outbox holds for delivery (webhooks, email), by type."""
    with session(env.ctx.engine) as s:
        return Counter(s.exec(select(OutboxEvent.type)).all())


def event_rows(env: Env, name: str) -> list[Event]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(Event).where(Event.event == name).order_by(col(Event.id))))


def card_ids(env: Env, sub_id: int) -> dict[str, int]:
    """The customer's cards by last four digits."""
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None
        rows = s.exec(
            select(PaymentInstrument).where(PaymentInstrument.customer_id == sub.customer_id)
        ).all()
        return {str(r.last4): int(r.id or 0) for r in rows}


def add_card(env: Env, sub_id: int, number: str, *, sync: bool = True) -> None:
    """A card the customer saves at Plexo (the update link); mirrored here if `sync`."""
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None
        customer = s.get(Customer, sub.customer_id)
        assert customer is not None
    with httpx.Client(base_url=env.sandbox_url) as http:
        http.post(
            f"/sandbox/customers/{customer.plexo_id}/instruments",
            json={"cardNumber": number, "expMonth": 12, "expYear": 2035},
        ).raise_for_status()
    if sync:
        customers.sync_instruments(env.ctx, customer.reference_id)


def pass_at(env: Env, when: datetime) -> None:
    env.clock.set(when)
    run_billing_pass(env.ctx)


def approved_at_sandbox(env: Env) -> list[dict[str, object]]:
    return [p for p in env.simulator.payments() if p["status"] == "approved"]


def one_subscription(env: Env, card: str) -> int:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, card=card)
    return sub_id


def test_soft_decline_recovered_on_the_second_retry(env: Env) -> None:
    sub_id = one_subscription(env, SOFT_TWICE)
    run_billing_pass(env.ctx)
    assert sub_of(env, sub_id).status == "past_due"  # at once, not after the last retry
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "open" and invoice.next_attempt_at == SLOTS[0]
    pass_at(env, SLOTS[0] - timedelta(minutes=1))  # not due yet: nothing sent
    assert len(env.simulator.payments()) == 1
    pass_at(env, SLOTS[0])
    [invoice] = invoices_of(env, sub_id)
    assert invoice.next_attempt_at == SLOTS[1]
    pass_at(env, SLOTS[1])
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "paid"
    attempts = attempts_of(env, invoice.id)
    assert [(a.created_at, a.state, a.reference_id) for a in attempts] == [
        (START, "declined", f"{invoice.number}-1"),
        (SLOTS[0], "declined", f"{invoice.number}-2"),
        (SLOTS[1], "approved", f"{invoice.number}-3"),
    ]
    assert len({a.instrument_id for a in attempts}) == 1
    sub = sub_of(env, sub_id)
    assert sub.status == "active"
    assert (sub.current_period_start, sub.current_period_end) == (
        invoice.period_start,
        invoice.period_end,
    )
    seen = events(env)
    assert seen["subscription.recovered"] == 1 and seen["subscription.active"] == 0
    assert seen["invoice.payment_failed"] == 2 and seen["subscription.past_due"] == 1
    assert seen["invoice.paid"] == 1
    assert notified(env) == Counter(
        {
            "invoice.payment_failed": 2,
            "subscription.past_due": 1,
            "subscription.recovered": 1,
            "invoice.paid": 1,
        }
    )
    [failed, _] = event_rows(env, "invoice.payment_failed")
    assert failed.data["next_retry_at"] == SLOTS[0].isoformat()
    assert failed.data["subscription_id"] == sub_id and failed.data["attempt_number"] == 1
    assert failed.data["decline_class"] == "soft"
    assert [p["referenceId"] for p in approved_at_sandbox(env)] == [f"{invoice.number}-3"]
    # Later passes within the period charge nothing more; the period advanced once.
    pass_at(env, SLOTS[3] + DAY)
    assert len(env.simulator.payments()) == 3
    assert sub_of(env, sub_id).current_period_end == invoice.period_end


@pytest.mark.parametrize("bad", [STOLEN, EXPIRED])
def test_hard_decline_falls_back_to_the_next_card(env: Env, bad: str) -> None:
    sub_id = one_subscription(env, bad)
    add_card(env, sub_id, APPROVING_CARD)
    cards = card_ids(env, sub_id)
    run_billing_pass(env.ctx)  # declined hard, then at once the other card
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "paid"
    attempts = attempts_of(env, invoice.id)
    assert [(a.instrument_id, a.state, a.decline_class) for a in attempts] == [
        (cards[bad[-4:]], "declined", "hard"),
        (cards[APPROVING_CARD[-4:]], "approved", None),
    ]
    assert sub_of(env, sub_id).status == "active"
    assert events(env)["subscription.recovered"] == 1
    assert len(approved_at_sandbox(env)) == 1


def test_hard_decline_without_another_card_ends_the_chain(env: Env) -> None:
    sub_id = one_subscription(env, STOLEN)
    run_billing_pass(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "uncollectible" and invoice.next_attempt_at is None
    sub = sub_of(env, sub_id)
    assert sub.status == "unpaid"  # the default final action
    seen = events(env)
    assert seen["invoice.uncollectible"] == 1 and seen["subscription.unpaid"] == 1
    told = notified(env)
    assert told["invoice.uncollectible"] == 1 and told["subscription.unpaid"] == 1
    assert told["invoice.payment_failed"] == 1
    # The card is never charged again, whatever time passes.
    for days in (1, 3, 8, 40, 70):
        pass_at(env, START + DAY * days)
        reconcile(env.ctx)
    assert len(env.simulator.payments()) == 1
    assert events(env)["subscription.unpaid"] == 1


def fail_every_retry(env: Env, action: FinalAction) -> tuple[int, Invoice]:
    """Period 0 paid, then the card is replaced by one that always declines (soft): period 1
    goes through every retry. Returns the subscription and its failed invoice."""
    env.ctx.retry = replace(env.ctx.retry, final_action=action)
    sub_id = one_subscription(env, APPROVING_CARD)
    run_billing_pass(env.ctx)
    [paid] = invoices_of(env, sub_id)
    assert paid.status == "paid"
    with session(env.ctx.engine) as s:
        customer = s.get(Customer, paid.customer_id)
        assert customer is not None
        reference = customer.reference_id
    add_card(env, sub_id, SOFT)
    customers.remove_instrument(env.ctx, reference, str(card_ids(env, sub_id)["1111"]))
    renewal = paid.period_end
    pass_at(env, renewal)
    slots = [renewal + DAY * n for n in (1, 3, 5, 7)]
    for slot in slots:
        invoice = invoices_of(env, sub_id)[1]
        assert invoice.next_attempt_at == slot
        pass_at(env, slot)
    failed = invoices_of(env, sub_id)[1]
    return sub_id, failed


@pytest.mark.parametrize("action", list(FinalAction))
def test_all_retries_fail_then_the_final_action_applies_once(env: Env, action: FinalAction) -> None:
    sub_id, failed = fail_every_retry(env, action)
    assert failed.status == "uncollectible" and failed.next_attempt_at is None
    assert [a.state for a in attempts_of(env, failed.id)] == ["declined"] * 5
    sub = sub_of(env, sub_id)
    expected = {
        FinalAction.cancel_now: ("canceled", "subscription.canceled"),
        FinalAction.cancel_at_period_end: ("past_due", "subscription.cancel_scheduled"),
        FinalAction.mark_unpaid: ("unpaid", "subscription.unpaid"),
        FinalAction.pause: ("paused", "subscription.paused"),
    }[action]
    assert sub.status == expected[0]
    seen = events(env)
    assert seen[expected[1]] == 1 and seen["invoice.uncollectible"] == 1
    told = notified(env)
    assert told["invoice.uncollectible"] == 1 and told["invoice.payment_failed"] == 5
    if expected[1] != "subscription.cancel_scheduled":
        assert told[expected[1]] == 1
    [gone] = event_rows(env, "invoice.uncollectible")
    assert gone.data["final_action"] == action and gone.data["final_action_applied"] is True
    # Time goes on: the next period is not billed, nothing is applied twice.
    next_period = failed.period_end
    for when in (next_period, next_period + DAY * 3, next_period + DAY * 40):
        pass_at(env, when)
        reconcile(env.ctx)
    assert len(invoices_of(env, sub_id)) == 2
    assert len(env.simulator.payments()) == 6  # period 0, then 5 declines of period 1
    seen = events(env)
    assert seen[expected[1]] == 1 and seen["invoice.uncollectible"] == 1
    if action == FinalAction.cancel_at_period_end:
        assert sub_of(env, sub_id).status == "canceled"
        assert seen["subscription.canceled"] == 1
    else:
        assert sub_of(env, sub_id).status == expected[0]


def test_action_required_is_not_retried_and_waits(env: Env) -> None:
    sub_id = one_subscription(env, THREE_DS)
    run_billing_pass(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "charging"
    for _ in range(30):
        env.clock.advance(timedelta(hours=2))
        run_billing_pass(env.ctx)
        reconcile(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    [attempt] = attempts_of(env, invoice.id)
    assert attempt.state == "pending" and attempt.action_required_at == START
    assert len(env.simulator.payments()) == 1  # never sent again
    seen = events(env)
    assert seen["invoice.payment_action_required"] == 1
    assert seen["invoice.payment_failed"] == 0
    told = notified(env)
    assert told["invoice.payment_action_required"] == 1 and told["invoice.payment_failed"] == 0
    # Past BILLING_PENDING_MAX_DAYS it stops being polled: a person is asked to look.
    env.clock.set(START + DAY * 3 + timedelta(hours=1))
    reconcile(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    [attempt] = attempts_of(env, invoice.id)
    assert invoice.attention == "pending_too_long" and attempt.next_check_at is None
    assert events(env)["invoice.needs_attention"] == 1
    checks = attempt.check_count
    for _ in range(5):
        env.clock.advance(timedelta(hours=6))
        reconcile(env.ctx)
    assert attempts_of(env, invoice.id)[0].check_count == checks
    assert events(env)["invoice.needs_attention"] == 1


def test_unknown_outcome_that_was_approved_is_not_retried(env: Env) -> None:
    sub_id = one_subscription(env, APPROVING_CARD)
    env.simulator.faults.queue("timeout_after", route="POST /v1/payments", times=1)
    summary = run_billing_pass(env.ctx)
    assert summary.count("unknown") == 1
    for _ in range(10):
        env.clock.advance(timedelta(minutes=3))
        reconcile(env.ctx)
        run_billing_pass(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "paid" and invoice.retry_schedule is None
    assert len(attempts_of(env, invoice.id)) == 1
    seen = events(env)
    assert seen["invoice.payment_failed"] == 0 and seen["subscription.past_due"] == 0
    assert notified(env) == Counter({"invoice.paid": 1})  # no failure notification
    assert len(env.simulator.payments()) == 1 and len(approved_at_sandbox(env)) == 1
    assert sub_of(env, sub_id).status == "active"


def test_settings_change_mid_chain_leaves_the_snapshot(env: Env) -> None:
    sub_id = one_subscription(env, SOFT)
    run_billing_pass(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    snapshot = invoice.retry_schedule
    assert snapshot is not None and snapshot["final_action"] == "mark_unpaid"
    # The merchant changes the policy: running chains keep theirs.
    env.ctx.retry = replace(
        env.ctx.retry, soft_days=(2,), retry_hour=3, final_action=FinalAction.cancel_now
    )
    for slot in SLOTS:
        pass_at(env, slot)
        assert invoices_of(env, sub_id)[0].retry_schedule == snapshot
    [invoice] = invoices_of(env, sub_id)
    assert [a.created_at for a in attempts_of(env, invoice.id)] == [START, *SLOTS]
    assert invoice.status == "uncollectible"
    assert sub_of(env, sub_id).status == "unpaid"  # the snapshot's action, not cancel_now


def test_card_added_through_the_update_link_is_used_by_the_next_retry(env: Env) -> None:
    sub_id = one_subscription(env, SOFT)
    run_billing_pass(env.ctx)
    assert sub_of(env, sub_id).status == "past_due"
    # The customer saves a new card at Plexo; we have not synced it.
    add_card(env, sub_id, APPROVING_CARD, sync=False)
    assert "1111" not in card_ids(env, sub_id)
    pass_at(env, SLOTS[0])
    cards = card_ids(env, sub_id)
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "paid"
    attempts = attempts_of(env, invoice.id)
    assert [(a.instrument_id, a.state) for a in attempts] == [
        (cards["0010"], "declined"),
        (cards["1111"], "approved"),
    ]
    assert sub_of(env, sub_id).status == "active"
    assert events(env)["subscription.recovered"] == 1


def test_without_fallback_a_hard_decline_ends_the_chain(env: Env) -> None:
    env.ctx.retry = replace(env.ctx.retry, instrument_fallback=False)
    sub_id = one_subscription(env, STOLEN)
    add_card(env, sub_id, APPROVING_CARD)
    run_billing_pass(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "uncollectible"
    assert len(attempts_of(env, invoice.id)) == 1 and approved_at_sandbox(env) == []
    assert sub_of(env, sub_id).status == "unpaid"


def test_retry_after_advice_on_a_decline_is_honoured_by_every_path(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing.engine.dunning import retry_invoice
    from billing.errors import Conflict

    real = env.ctx.plexo.create_payment

    def advised(request: object) -> object:
        outcome = real(request)  # type: ignore[arg-type]
        return replace(outcome, retry_after=2 * 86400.0)  # capped to an hour

    monkeypatch.setattr(env.ctx.plexo, "create_payment", advised)
    sub_id = one_subscription(env, SOFT)
    run_billing_pass(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    assert invoice.retry_not_before == START + timedelta(hours=1)
    assert invoice.next_attempt_at == SLOTS[0]  # the slot is later than the advice
    env.clock.set(START + timedelta(minutes=30))
    with pytest.raises(Conflict, match="cap retry_after"):
        retry_invoice(env.ctx, invoice.number, "too early")
    env.clock.set(START + timedelta(hours=1))
    done = retry_invoice(env.ctx, invoice.number, "after the advice")
    assert done.attempt_number == 2
    [requested] = event_rows(env, "invoice.retry_requested")
    assert (requested.actor, requested.reason) == ("test", "after the advice")
