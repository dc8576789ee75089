"""Exactly once under every sandbox fault, over real HTTP, on SQLite and PostgreSQL.

Each test: due subscriptions, a billing pass with the fault switched on, then the reconciler
(on the test clock) until nothing is unresolved. Then the sandbox holds exactly one approved
payment per due period and our ledger equals the sandbox's listing.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.engine.billing_pass import run_billing_pass
from billing.engine.reconcile import reconcile
from billing.testing import (
    ensure_plan,
    invoice_refs_charged,
    ledger,
    sandbox_approved,
    seed_subscriptions,
)
from tests.integration.conftest import START, Env

SUBSCRIPTIONS = 12


def settle(env: Env, rounds: int = 40) -> None:
    """Run the reconciler, moving the test clock, until no attempt is unresolved."""
    for _ in range(rounds):
        if not ledger(env.ctx)["unresolved"]:
            return
        env.clock.advance(timedelta(minutes=2))
        reconcile(env.ctx)
    raise AssertionError(f"still unresolved: {ledger(env.ctx)['unresolved']}")


def assert_exactly_once(env: Env, due_periods: int) -> None:
    payments = env.simulator.payments()
    per_invoice = invoice_refs_charged(payments)
    assert len(per_invoice) == due_periods, per_invoice
    assert set(per_invoice.values()) == {1}, "an invoice was charged twice"
    ours = ledger(env.ctx)
    assert ours["approved"] == sandbox_approved(payments)
    assert ours["invoices"] == {"paid": due_periods}
    assert ours["unresolved"] == []


def seed(env: Env) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, SUBSCRIPTIONS, start=START - timedelta(days=1))


@pytest.mark.parametrize(
    "mode",
    [
        "timeout_after",
        "drop_after",
        "error_before",
        "error_after",
        "rate_limit",
        "bare_before",
        "bare_after",
    ],
)
def test_exactly_once_under_fault(env: Env, mode: str) -> None:
    seed(env)
    env.simulator.faults.set_probability(mode, 0.5, route="POST /v1/payments")
    summary = run_billing_pass(env.ctx)
    assert summary.invoices_created == SUBSCRIPTIONS
    assert summary.count("unknown") > 0, "the fault never fired; the test proves nothing"
    # Faults stay on while the reconciler works: resends can be hit too.
    settle(env, rounds=80)
    env.simulator.faults.clear()
    assert_exactly_once(env, SUBSCRIPTIONS)


def test_query_failures_do_not_cause_blind_resends(env: Env) -> None:
    seed(env)
    env.simulator.faults.set_probability("drop_after", 1.0, route="POST /v1/payments")
    env.simulator.faults.set_probability("error_before", 1.0, route="GET /v1/payments/query")
    run_billing_pass(env.ctx)
    for _ in range(5):
        env.clock.advance(timedelta(minutes=10))
        reconcile(env.ctx)
    # Plexo could not be asked: every attempt stays unknown and nothing was sent twice.
    assert len(ledger(env.ctx)["unresolved"]) == SUBSCRIPTIONS
    assert len(env.simulator.payments()) == SUBSCRIPTIONS
    env.simulator.faults.clear()
    settle(env)
    assert_exactly_once(env, SUBSCRIPTIONS)


def test_duplicate_reference_409_resolves_to_the_original(env: Env) -> None:
    """A resend whose original did reach Plexo gets 409; the reconciler adopts the original."""
    seed(env)
    env.simulator.faults.set_probability("drop_after", 1.0, route="POST /v1/payments")
    # The query index "lags": the first look finds nothing, so the reconciler resends.
    env.simulator.faults.queue("query_lag", route="GET /v1/payments/query", times=SUBSCRIPTIONS)
    run_billing_pass(env.ctx)
    env.simulator.faults.clear()
    env.clock.advance(timedelta(minutes=5))
    reconcile(env.ctx)  # query says absent -> resend same referenceId -> 409 duplicate
    settle(env)
    assert_exactly_once(env, SUBSCRIPTIONS)


def test_replay_mode_duplicate_returns_original(env: Env) -> None:
    seed(env)
    env.simulator.duplicate_mode = "replay"
    env.simulator.faults.set_probability("drop_after", 1.0, route="POST /v1/payments")
    env.simulator.faults.queue("query_lag", route="GET /v1/payments/query", times=SUBSCRIPTIONS)
    run_billing_pass(env.ctx)
    env.simulator.faults.clear()
    settle(env)
    assert_exactly_once(env, SUBSCRIPTIONS)


def test_catch_up_after_an_outage_bills_every_missed_period_once(env: Env) -> None:
    seed(env)
    env.clock.set(START + timedelta(days=95))  # four monthly periods have started
    env.simulator.faults.set_probability("timeout_after", 0.3, route="POST /v1/payments")
    run_billing_pass(env.ctx)
    settle(env, rounds=80)
    env.simulator.faults.clear()
    run_billing_pass(env.ctx)  # nothing new: every period already has its invoice
    assert_exactly_once(env, SUBSCRIPTIONS * 4)


BARE_STATUSES = [401, 403, 404, 405, 410, 413, 418, 421]
BARE_SHAPES = ["html", "empty", "json"]
BARE_SUBSCRIPTIONS = 4


@pytest.mark.parametrize("shape", BARE_SHAPES)
@pytest.mark.parametrize("status", BARE_STATUSES)
def test_a_bare_answer_after_recording_never_charges_twice(
    env: Env, status: int, shape: str
) -> None:
    """Something in front of Plexo answers after the payment was recorded (issue 5, item 1).

    The query index lags too, so the reconciler resends the same referenceId and meets the
    sandbox's duplicate behaviour (409, or a replay of the original: alternating by case).
    """
    index = BARE_STATUSES.index(status) * len(BARE_SHAPES) + BARE_SHAPES.index(shape)
    env.simulator.duplicate_mode = "replay" if index % 2 else "reject"
    ensure_plan(env.ctx)
    seed_subscriptions(
        env.ctx, env.sandbox_url, BARE_SUBSCRIPTIONS, start=START - timedelta(days=1)
    )
    faults = env.simulator.faults
    faults.queue("bare_after", times=BARE_SUBSCRIPTIONS, status=status, body=shape)
    faults.queue("query_lag", route="GET /v1/payments/query", times=BARE_SUBSCRIPTIONS)
    summary = run_billing_pass(env.ctx)
    assert summary.count("unknown") == BARE_SUBSCRIPTIONS, "a bare answer was read as an outcome"
    assert len(env.simulator.payments()) == BARE_SUBSCRIPTIONS  # each was recorded once
    env.clock.advance(timedelta(minutes=5))
    settle(env)
    # Long after any "not charged" retry would have fired, another pass charges nothing.
    env.clock.advance(timedelta(hours=1))
    run_billing_pass(env.ctx)
    assert_exactly_once(env, BARE_SUBSCRIPTIONS)


def test_a_bare_answer_before_recording_is_resent_with_the_same_reference(env: Env) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(
        env.ctx, env.sandbox_url, BARE_SUBSCRIPTIONS, start=START - timedelta(days=1)
    )
    env.simulator.faults.queue("bare_before", times=BARE_SUBSCRIPTIONS, status=403, body="empty")
    summary = run_billing_pass(env.ctx)
    assert summary.count("unknown") == BARE_SUBSCRIPTIONS
    assert env.simulator.payments() == []  # nothing reached Plexo
    env.clock.advance(timedelta(minutes=5))
    settle(env)
    assert_exactly_once(env, BARE_SUBSCRIPTIONS)
    assert all(p["referenceId"].endswith("-1") for p in env.simulator.payments())


@pytest.mark.parametrize("mode", ["timeout_after", "error_after", "bare_after"])
def test_exactly_once_with_retries_on(env: Env, mode: str) -> None:
    """Cards that decline twice, then approve: every invoice goes through two scheduled
    retries while the fault hits first sends, retries and resends alike."""
    ensure_plan(env.ctx)
    seed_subscriptions(
        env.ctx, env.sandbox_url, SUBSCRIPTIONS, card="4000000000000341", start=START
    )
    env.simulator.faults.set_probability(mode, 0.3, route="POST /v1/payments")
    run_billing_pass(env.ctx)
    settle(env, rounds=80)
    for days in (1, 3, 5, 7):
        env.clock.set(max(env.clock.now(), START + timedelta(days=days)))
        run_billing_pass(env.ctx)
        settle(env, rounds=80)
    env.simulator.faults.clear()
    assert_exactly_once(env, SUBSCRIPTIONS)
    declined = [p for p in env.simulator.payments() if p["status"] == "denied"]
    assert len(declined) == 2 * SUBSCRIPTIONS  # two declines per invoice, then the approval
