"""Engine behaviour around one subscription's life, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlmodel import col, select

from billing.domain.bounds import SafetyBounds
from billing.engine import subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.engine.charge import AttemptResult
from billing.engine.invoicing import create_due_invoices
from billing.engine.reconcile import reconcile
from billing.store.db import session
from billing.store.models import BillingRun, ChargeAttempt, Event, Invoice, Subscription
from billing.testing import ensure_plan, invoice_refs_charged, ledger, seed_subscriptions
from tests.integration.conftest import START, Env


def sub_of(env: Env, sub_id: int) -> Subscription:
    with session(env.ctx.engine) as s:
        found = s.get(Subscription, sub_id)
        assert found is not None
        return found


def invoices_of(env: Env, sub_id: int) -> list[Invoice]:
    with session(env.ctx.engine) as s:
        return list(
            s.exec(
                select(Invoice)
                .where(Invoice.subscription_id == sub_id)
                .order_by(col(Invoice.period_index))
            ).all()
        )


def test_soft_decline_marks_past_due_and_keeps_the_invoice_open(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, card="4000000000000010")
    summary = run_billing_pass(env.ctx)
    assert summary.count("declined") == 1
    assert summary.totals["declined"]["decline_classes"] == {"soft": 1}
    assert sub_of(env, sub_id).status == "past_due"
    [invoice] = invoices_of(env, sub_id)
    assert (invoice.status, invoice.last_decline_code, invoice.last_decline_class) == (
        "open",
        "insufficient_funds",  # the word; the processor's "51" is the attempt's result_code
        "soft",
    )
    # The first retry: the next local day at the local hour of the first attempt (09:00 -03).
    assert invoice.next_attempt_at == START + timedelta(days=1)
    assert invoice.retry_schedule is not None and len(invoice.retry_schedule["slots"]) == 4
    assert invoice.lease_owner is None
    with session(env.ctx.engine) as s:
        events = [e.event for e in s.exec(select(Event).order_by(col(Event.id))).all()]
    assert "subscription.past_due" in events and "invoice.payment_failed" in events


def test_hard_decline_is_classified_hard(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, card="4000000000000119")
    run_billing_pass(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    assert (invoice.last_decline_code, invoice.last_decline_class) == ("stolen_card", "hard")


def test_pending_payment_settles_through_the_reconciler(env: Env) -> None:
    ensure_plan(env.ctx)
    env.simulator.pending_polls = 2
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, card="4000000000000259")
    summary = run_billing_pass(env.ctx)
    assert summary.count("pending") == 1
    for _ in range(6):
        env.clock.advance(timedelta(minutes=1))
        reconcile(env.ctx)
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "paid"
    assert ledger(env.ctx)["unresolved"] == []


def test_monthly_periods_clamp_to_month_end_and_each_is_billed_once(env: Env) -> None:
    ensure_plan(env.ctx)
    jan31 = START.replace(month=1, day=31, hour=15)  # 12:00 in Montevideo
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=jan31, backdate=True)
    env.clock.set(jan31 + timedelta(days=95))
    run_billing_pass(env.ctx)
    run_billing_pass(env.ctx)
    starts = [
        i.period_start.astimezone(env.ctx.tz).date().isoformat() for i in invoices_of(env, sub_id)
    ]
    assert starts == ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
    assert {i.status for i in invoices_of(env, sub_id)} == {"paid"}
    sub = sub_of(env, sub_id)
    assert sub.current_period_end is not None
    assert sub.current_period_end.astimezone(env.ctx.tz).date().isoformat() == "2026-05-31"


def test_cancel_at_period_end_bills_nothing_after_the_paid_period(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    run_billing_pass(env.ctx)
    subscriptions.cancel_subscription(env.ctx, sub_id, at_period_end=True, reason="test")
    env.clock.set(START + timedelta(days=70))
    run_billing_pass(env.ctx)
    assert len(invoices_of(env, sub_id)) == 1
    assert sub_of(env, sub_id).status == "canceled"


def test_pause_skips_periods_and_resume_bills_from_the_next_start(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    run_billing_pass(env.ctx)
    subscriptions.pause_subscription(env.ctx, sub_id, reason="holiday")
    env.clock.set(START + timedelta(days=45))
    run_billing_pass(env.ctx)
    assert len(invoices_of(env, sub_id)) == 1
    resumed = subscriptions.resume_subscription(env.ctx, sub_id, reason="back")
    assert resumed.next_billing_at is not None and resumed.next_billing_at > env.clock.now()
    env.clock.set(resumed.next_billing_at)
    run_billing_pass(env.ctx)
    assert [i.period_index for i in invoices_of(env, sub_id)] == [0, 2]


def test_pause_bills_a_period_that_started_while_active_and_resume_skips_the_paused_ones(
    env: Env,
) -> None:
    """Issue 5 item 3: period 1 started while active but no pass ran before the pause (between
    ticks, or the daemon was down): it is billed; period 2, started while paused, is not."""
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    run_billing_pass(env.ctx)
    env.clock.set(START + timedelta(days=35))  # Apr 5: period 1 (Apr 1) started, not invoiced
    subscriptions.pause_subscription(env.ctx, sub_id, reason="holiday")
    assert [i.period_index for i in invoices_of(env, sub_id)] == [0, 1]
    run_billing_pass(env.ctx)  # the owed invoice is charged even while paused
    env.clock.set(START + timedelta(days=70))  # May 10: period 2 (May 1) started while paused
    run_billing_pass(env.ctx)
    resumed = subscriptions.resume_subscription(env.ctx, sub_id, reason="back")
    assert resumed.next_billing_at is not None
    env.clock.set(resumed.next_billing_at)
    run_billing_pass(env.ctx)
    invoices = invoices_of(env, sub_id)
    assert [i.period_index for i in invoices] == [0, 1, 3]
    assert {i.status for i in invoices} == {"paid"}
    assert set(invoice_refs_charged(env.simulator.payments()).values()) == {1}


def test_trial_delays_the_first_charge(env: Env) -> None:
    subscriptions.create_plan(
        env.ctx, code="trial", name="Trial", amount="100", currency="USD", interval="month",
        trial_days=14,
    )  # fmt: skip
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code="trial", start=START)
    assert sub_of(env, sub_id).status == "trialing"
    run_billing_pass(env.ctx)
    assert invoices_of(env, sub_id) == []
    env.clock.set(START + timedelta(days=14))
    run_billing_pass(env.ctx)
    assert [i.status for i in invoices_of(env, sub_id)] == ["paid"]
    assert sub_of(env, sub_id).status == "active"


def test_no_card_means_no_call_and_past_due(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1)
    from billing.engine.customers import remove_instrument

    remove_instrument(env.ctx, "cus-00000", "1")
    run_billing_pass(env.ctx)
    assert env.simulator.payments() == []
    [invoice] = invoices_of(env, sub_id)
    assert invoice.last_decline_code == "no-payment-instrument"
    assert sub_of(env, sub_id).status == "past_due"


def test_a_pass_that_did_work_is_a_billing_run_with_totals_per_currency(env: Env) -> None:
    ensure_plan(env.ctx)
    ensure_plan(env.ctx, code="usd", amount="19.90", currency="USD")
    seed_subscriptions(env.ctx, env.sandbox_url, 2, start=START)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code="usd", start=START, prefix="u")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, card="4000000000000010", prefix="d")
    summary = run_billing_pass(env.ctx)
    idle = run_billing_pass(env.ctx)
    assert idle.run_id is None, "a pass that did nothing leaves no run row"
    with session(env.ctx.engine) as s:
        [run] = s.exec(select(BillingRun)).all()
        attempts = s.exec(select(ChargeAttempt)).all()
    assert run.id == summary.run_id and run.node == "test-node" and run.kind == "pass"
    assert run.invoices_created == 4 and run.attempts == 4
    assert run.totals["approved"]["amounts"] == {"UYU": 118000, "USD": 1990}
    assert run.totals["declined"] == {
        "count": 1,
        "amounts": {"UYU": 59000},
        "decline_classes": {"soft": 1},
    }
    assert run.started_at is not None and run.finished_at is not None
    assert {a.node for a in attempts} == {"test-node"}


def test_concurrent_outcomes_of_one_subscription_keep_the_latest_paid_period(env: Env) -> None:
    """Catch-up charges a year of periods of one subscription in parallel: the subscription's
    paid period must end up at the last one (no lost update between concurrent recorders)."""
    ensure_plan(env.ctx, code="daily", interval="day")
    env.ctx.catchup_max_periods = 60  # a catch-up the operator allowed (default cap: 12)
    env.ctx.bounds = SafetyBounds(max_charges_per_day=60)  # and 60 charges of one customer today
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code="daily", start=START)
    env.clock.set(START + timedelta(days=59, hours=1))
    run_billing_pass(env.ctx)
    invoices = invoices_of(env, sub_id)
    assert len(invoices) == 60 and {i.status for i in invoices} == {"paid"}
    assert sub_of(env, sub_id).current_period_end == invoices[-1].period_end


def test_cancel_never_voids_an_invoice_whose_charge_is_in_flight(env: Env) -> None:
    """Cancel between write-ahead and the answer (sequential; the race itself is closed by the
    atomic `WHERE status = 'open'` in void_open_invoices): the charge is still recorded."""
    from billing.engine.charge import _write_ahead, record_outcome
    from billing.store.claims import claim_invoices

    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    create_due_invoices(env.ctx, env.clock.now())
    [invoice_id] = claim_invoices(env.ctx.engine, "test-node", env.clock.now(), 60, 10)
    request = _write_ahead(env.ctx, invoice_id)
    assert not isinstance(request, AttemptResult)
    subscriptions.cancel_subscription(env.ctx, sub_id, at_period_end=False, reason="race")
    outcome = env.ctx.plexo.create_payment(request)
    record_outcome(env.ctx, request.reference_id, outcome, lease_owner="test-node")
    [invoice] = invoices_of(env, sub_id)
    assert invoice.status == "paid", "the approved charge was lost"
    assert sub_of(env, sub_id).status == "canceled"
    assert ledger(env.ctx)["approved"].keys() == {request.reference_id}


def test_invoicing_does_not_resurrect_a_subscription_canceled_meanwhile(env: Env) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    with session(env.ctx.engine) as s:  # a stale read: cancel lands between read and write
        stale = s.get(Subscription, sub_id)
    subscriptions.cancel_subscription(env.ctx, sub_id, at_period_end=False, reason="race")
    from billing.engine import invoicing

    original = invoicing.session

    @contextmanager
    def stale_session(engine: Any) -> Iterator[Any]:
        with original(engine) as s:
            real_get = s.get
            s.get = lambda model, ident, **kw: (  # type: ignore[method-assign]
                stale if model is Subscription else real_get(model, ident, **kw)
            )
            yield s

    invoicing.session = stale_session  # type: ignore[assignment]
    try:
        step = invoicing.invoice_due_periods(env.ctx, sub_id, env.clock.now())
    finally:
        invoicing.session = original  # type: ignore[assignment]
    assert step.created == 0 and not step.held and invoices_of(env, sub_id) == []


def test_a_refused_resend_is_not_taken_as_proof_that_nothing_was_charged(env: Env) -> None:
    """First send lost; the resend is refused as invalid: the attempt stays unresolved."""
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    env.simulator.faults.queue("drop_after", route="POST /v1/payments")
    env.simulator.faults.queue("query_lag", route="GET /v1/payments/query")
    run_billing_pass(env.ctx)
    # The resend answer: a validation refusal (as if the card had been deleted meanwhile).
    env.clock.advance(timedelta(minutes=5))
    from billing.plexo.outcome import ChargeOutcome

    real = env.ctx.plexo.create_payment
    env.ctx.plexo.create_payment = lambda request: ChargeOutcome(  # type: ignore[method-assign]
        "declined", decline_code="request-validation-errors", not_charged=True
    )
    try:
        env.simulator.faults.clear()
        env.simulator.faults.queue("query_lag", route="GET /v1/payments/query")
        reconcile(env.ctx)
    finally:
        env.ctx.plexo.create_payment = real  # type: ignore[method-assign]
    with session(env.ctx.engine) as s:
        [attempt] = s.exec(select(ChargeAttempt)).all()
        [invoice] = s.exec(select(Invoice)).all()
    assert attempt.send_count == 2 and attempt.state == "unknown"
    assert invoice.status == "charging", "a refused resend must not reopen the invoice"
    settle_env(env)
    assert ledger(env.ctx)["invoices"] == {"paid": 1}


def settle_env(env: Env) -> None:
    for _ in range(20):
        if not ledger(env.ctx)["unresolved"]:
            return
        env.clock.advance(timedelta(minutes=2))
        reconcile(env.ctx)


def test_backlog_gauges_read_ages_from_the_store(env: Env) -> None:
    from billing import metrics
    from billing.daemon.service import Daemon

    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 2, start=START)
    create_due_invoices(env.ctx, env.clock.now())
    env.clock.advance(timedelta(minutes=10))
    gauges = Daemon(env.ctx).store_samples()
    assert gauges[metrics.DUE_BACKLOG.name] == {(): 2}
    assert gauges[metrics.DUE_OLDEST_AGE.name] == {(): 600.0}
    assert gauges[metrics.UNKNOWN_OUTCOMES.name] == {(): 0}
