"""The card-network caps hold whatever happens to one card (hypothesis, SQLite and
PostgreSQL, sandbox over HTTP): random declines, manual retries and clock jumps.

Invariants, over every attempt ever written for the card:
- nothing after a hard (never-retry) decline;
- at most 10 declined attempts in any 24 hours and 15 in any 30 days, across its invoices;
- the sandbox saw exactly the attempts we wrote (no charge bypassed the write-ahead).
"""

from __future__ import annotations

import contextlib
import itertools
from datetime import timedelta

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import col, select

from billing.engine import customers
from billing.engine.billing_pass import run_billing_pass
from billing.engine.dunning import retry_invoice
from billing.engine.subscriptions import cancel_subscription, create_subscription
from billing.errors import Conflict
from billing.sandbox.cards import APPROVED, CardOutcome
from billing.store.db import session
from billing.store.models import ChargeAttempt, Invoice, PaymentInstrument
from billing.testing import ensure_plan
from tests.integration.conftest import Env

OUTCOMES = {
    "soft": CardOutcome("denied", "51", "insufficient_funds", "insufficient_funds"),
    "hard": CardOutcome("denied", "43", "stolen_card", "stolen_card"),
    "ok": APPROVED,
}
_seq = itertools.count()

step = st.one_of(
    st.tuples(st.just("outcome"), st.sampled_from(["soft", "soft", "soft", "ok", "hard"])),
    st.tuples(st.just("pass"), st.just(0)),
    st.tuples(st.just("retry"), st.integers(min_value=1, max_value=6)),
    st.tuples(st.just("jump"), st.integers(min_value=1, max_value=24 * 4)),
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=5, max_size=40))
def test_caps_hold_for_one_card(env: Env, steps: list[tuple[str, int]]) -> None:
    ctx = env.ctx
    # Examples share the store, whose clock only moves forward: each starts where the last
    # ended, on a fresh customer and card (the caps are per card).
    env.clock.advance(timedelta(days=31))
    ensure_plan(ctx, code="daily", amount="10.00", interval="day")
    ref = f"prop-{next(_seq)}"
    today = env.clock.now().date()
    data = customers.validate_customer({"reference_id": ref, "email": f"{ref}@x.uy"}, today)
    customer = customers.create_customer(ctx, data)
    with httpx.Client(base_url=env.sandbox_url) as http:
        http.post(
            f"/sandbox/customers/{customer.plexo_id}/instruments",
            json={"cardNumber": "4000000000000010", "expMonth": 12, "expYear": 2035},
        ).raise_for_status()
    [card] = customers.sync_instruments(ctx, ref)
    sub = create_subscription(ctx, customer_ref=ref, plan_code="daily")
    assert sub.id is not None
    try:
        for kind, value in steps:
            if kind == "outcome":
                env.simulator.set_card_outcome(card.token, OUTCOMES[str(value)])
            elif kind == "pass":
                run_billing_pass(ctx)
            elif kind == "jump":
                env.clock.advance(timedelta(hours=value))
            else:
                for _ in range(value):
                    with session(ctx.engine) as s:
                        open_ = s.exec(
                            select(Invoice.number)
                            .where(Invoice.subscription_id == sub.id)
                            .where(Invoice.status == "open")
                        ).first()
                    if open_ is None:
                        break
                    # Refused by a cap (or nothing to do): that is the point.
                    with contextlib.suppress(Conflict):
                        retry_invoice(ctx, open_, "property test")
            check_caps(env, card)
    finally:
        cancel_subscription(ctx, sub.id, at_period_end=False, reason="end of example")


def check_caps(env: Env, card: PaymentInstrument) -> None:
    with session(env.ctx.engine) as s:
        attempts = list(
            s.exec(
                select(ChargeAttempt)
                .where(ChargeAttempt.instrument_id == card.id)
                .order_by(col(ChargeAttempt.created_at), col(ChargeAttempt.id))
            ).all()
        )
    hard = [a for a in attempts if a.decline_class == "hard"]
    if hard:
        assert attempts[-1].id == hard[0].id, "the card was charged after a hard decline"
    declined = [a.created_at for a in attempts if a.state == "declined"]
    for t in declined:
        day = sum(1 for x in declined if t - timedelta(hours=24) < x <= t)
        month = sum(1 for x in declined if t - timedelta(days=30) < x <= t)
        assert day <= 10, f"{day} declines in 24 hours"
        assert month <= 15, f"{month} declines in 30 days"
    payments = env.simulator.payments()
    sent = [p for p in payments if p["paymentMethod"]["card"]["token"] == card.token]
    assert len(sent) == len(attempts)
