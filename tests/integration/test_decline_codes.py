"""A decline keeps both of its codes and its payment id, whichever way Plexo says it (item 9)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from billing.engine.billing_pass import run_billing_pass
from billing.store.db import session
from billing.store.models import ChargeAttempt, Invoice
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env

STOLEN = "4000000000000119"  # sandbox: hard decline 43 stolen_card
PICKUP = "4000000000000143"  # sandbox: hard decline 04 pickup_card


@pytest.mark.parametrize("style", ["body", "error"])
@pytest.mark.parametrize(
    ("card", "word", "number"), [(STOLEN, "stolen_card", "43"), (PICKUP, "pickup_card", "04")]
)
def test_a_decline_is_stored_the_same_from_a_body_or_an_envelope(
    env: Env, style: str, card: str, word: str, number: str
) -> None:
    env.simulator.decline_style = style
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, card=card, start=START - timedelta(days=1))
    summary = run_billing_pass(env.ctx)
    assert summary.count("declined") == 1
    (payment,) = env.simulator.payments()
    with session(env.ctx.engine) as s:
        attempt = s.exec(select(ChargeAttempt)).one()
        invoice = s.exec(select(Invoice)).one()
    assert (attempt.decline_code, attempt.result_code, attempt.decline_class) == (
        word,
        number,
        "hard",
    )
    assert attempt.plexo_payment_id == payment["id"]  # a 402 envelope's paymentId is kept
    assert (invoice.last_decline_code, invoice.last_decline_class) == (word, "hard")
