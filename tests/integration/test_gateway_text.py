"""What Plexo sends back is stored only in a safe form, on SQLite and PostgreSQL (item 10, 12):
card numbers in display fields are masked, a BIN or last4 that is not one is dropped, control
characters are escaped and labels are cut to their column; an identifier that cannot be stored
as it is (too long, not printable) is refused as a gateway failure and nothing is written.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlmodel import select

from billing.domain.cards import MASK
from billing.engine import customers
from billing.engine.billing_pass import run_billing_pass
from billing.engine.events import record_event
from billing.engine.reconcile import reconcile
from billing.plexo.errors import GatewayUnavailable, PlexoError
from billing.plexo.models import PlexoCustomer, PlexoInstrument
from billing.plexo.outcome import ChargeOutcome
from billing.store.db import session
from billing.store.models import ChargeAttempt, Event
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts
from tests.unit.test_cards import fullwidth


def _customer(env: Env) -> None:
    data = customers.validate_customer(
        {"reference_id": "cus-1", "email": "ana@example.com"}, date(2026, 3, 1)
    )
    customers.create_customer(env.ctx, data)


def _plexo_lists(env: Env, monkeypatch: pytest.MonkeyPatch, *items: dict[str, object]) -> None:
    """Plexo (a hostile or broken one) answers the card listing with these bodies."""
    listed = [PlexoInstrument.from_api(item) for item in items]
    monkeypatch.setattr(env.ctx.plexo, "list_instruments", lambda customer_id: listed)


def test_card_data_from_plexo_is_masked_dropped_and_cut(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _customer(env)
    _plexo_lists(
        env,
        monkeypatch,
        {
            "token": "a" * 32,
            "brand": "Visa 4444 3333 2222 1111\x1b[2J",
            "bin": "4444333322221111",  # a whole PAN where 6-8 digits belong (VARCHAR(8))
            "last4": "x1111",
            "cardType": "credit" + "x" * 40,
        },
        {
            "token": "b" * 32,
            "brand": "Master " + fullwidth("5105105105105100"),
            "bin": "510510",
            "last4": "5100",
            "cardType": "debit",
        },
    )
    first, second = customers.sync_instruments(env.ctx, "cus-1")
    assert first.brand == f"Visa {MASK}\\x1b[2J"[:32]
    assert first.bin is None and first.last4 is None
    assert first.card_type == ("credit" + "x" * 40)[:16]
    assert second.brand == f"Master {MASK}"
    assert (second.bin, second.last4, second.card_type) == ("510510", "5100", "debit")


@pytest.mark.parametrize("token", ["t" * 65, "tok\x00en", "tok\nen"])
def test_a_token_that_cannot_be_stored_is_a_gateway_failure(
    env: Env, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    _customer(env)
    before = table_counts(env.ctx.engine.url.render_as_string(hide_password=False))
    _plexo_lists(env, monkeypatch, {"token": token, "brand": "visa"})
    with pytest.raises(PlexoError, match="Plexo sent a card token that cannot be stored"):
        customers.sync_instruments(env.ctx, "cus-1")
    assert table_counts(env.ctx.engine.url.render_as_string(hide_password=False)) == before


def test_a_customer_id_that_cannot_be_stored_writes_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = env.ctx.engine.url.render_as_string(hide_password=False)
    before = table_counts(url)
    monkeypatch.setattr(
        env.ctx.plexo, "create_customer", lambda payload: PlexoCustomer(id="c" * 65)
    )
    data = customers.validate_customer(
        {"reference_id": "cus-1", "email": "ana@example.com"}, date(2026, 3, 1)
    )
    with pytest.raises(PlexoError, match="Plexo sent a customer id that cannot be stored"):
        customers.create_customer(env.ctx, data)
    assert table_counts(url) == before


def test_a_decline_message_from_plexo_is_stored_masked_and_escaped(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START - timedelta(days=1))
    declined = ChargeOutcome(
        "declined",
        decline_code="51",
        decline_message="Fondos insuficientes 4507 9900 0000 4905\n\x1b[31mFAKE",
        http_status=402,
    )
    monkeypatch.setattr(env.ctx.plexo, "create_payment", lambda request: declined)
    run_billing_pass(env.ctx)
    with session(env.ctx.engine) as s:
        [attempt] = s.exec(select(ChargeAttempt)).all()
    assert attempt.message == f"Fondos insuficientes {MASK}\\n\\x1b[31mFAKE"


def test_a_composed_event_reason_is_kept_within_its_column(env: Env) -> None:
    """Engine-made reasons quote gateway codes: never a PostgreSQL-only failure."""
    with session(env.ctx.engine) as s:
        record_event(
            s, at=START, entity_type="invoice", entity_id=1, event="x", actor="t", reason="r" * 600
        )
    with session(env.ctx.engine) as s:
        [event] = s.exec(select(Event)).all()
    assert event.reason == "r" * 500


def test_a_gateway_error_quoted_by_the_reconciler_is_stored_masked(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START - timedelta(days=1))
    unknown = ChargeOutcome("unknown", detail="timeout")
    monkeypatch.setattr(env.ctx.plexo, "create_payment", lambda request: unknown)
    run_billing_pass(env.ctx)

    def broken(ref: str) -> None:
        raise GatewayUnavailable("proxy said: card 4444 3333 2222 1111\r\nX-Injected: 1")

    monkeypatch.setattr(env.ctx.plexo, "find_payment", broken)
    env.clock.advance(timedelta(minutes=5))
    reconcile(env.ctx)
    with session(env.ctx.engine) as s:
        [attempt] = s.exec(select(ChargeAttempt)).all()
    assert attempt.message == f"gateway unavailable: proxy said: card {MASK}\\r\\nX-Injected: 1"
