"""Issue 8 item 2: `billing preview --until` predicts the next pass exactly and writes nothing.

On SQLite and PostgreSQL (db_url), the sandbox a real HTTP server: the preview's charges are the
attempts `run_billing_pass` at UNTIL then makes (same invoices/periods, amounts, currencies,
cards); while the preview runs the sandbox sees no request and no table changes.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import MetaData, select
from sqlmodel import col
from sqlmodel import select as sm_select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.engine import subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.engine.preview import preview, preview_view
from billing.sandbox.simulator import PlexoSimulator, SimRequest, SimResponse
from billing.store.db import make_engine, session
from billing.store.models import ChargeAttempt, Invoice
from billing.testing import APPROVING_CARD, ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts
from tests.integration.test_dunning import add_card

SOFT = "4000000000000010"  # 51 insufficient funds: a soft decline, retried on slots


def dump(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: "nothing changed" evidence."""
    engine = make_engine(db_url)
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        rows = {
            name: sorted((tuple(map(repr, r)) for r in conn.execute(select(table))), key=repr)
            for name, table in meta.tables.items()
        }
    engine.dispose()
    return rows


def count_requests(monkeypatch: pytest.MonkeyPatch, simulator: PlexoSimulator) -> list[str]:
    seen: list[str] = []
    real = simulator.handle

    def handle(request: SimRequest) -> SimResponse:
        seen.append(f"{request.method} {request.path}")
        return real(request)

    monkeypatch.setattr(simulator, "handle", handle)
    return seen


def scenario(env: Env) -> dict[str, int]:
    """New renewals and a 2-period catch-up (UYU and USD), a soft-declined invoice with a
    scheduled retry, a past_due subscription with two cards, a paused and a canceled one,
    and a daily subscription over the catch-up cap (held)."""
    ctx = env.ctx
    ensure_plan(ctx)
    ensure_plan(ctx, "usd", amount="10.50", currency="USD")
    ensure_plan(ctx, "daily", amount="20.00", interval="day")
    url = env.sandbox_url
    subs = {
        "renewing": seed_subscriptions(ctx, url, 1, prefix="ren")[0],
        "usd": seed_subscriptions(ctx, url, 1, plan_code="usd", prefix="usd")[0],
        "retry": seed_subscriptions(ctx, url, 1, card=SOFT, prefix="ret")[0],
        "two_cards": seed_subscriptions(ctx, url, 1, card=SOFT, prefix="two")[0],
        "paused": seed_subscriptions(ctx, url, 1, prefix="pau")[0],
        "canceled": seed_subscriptions(ctx, url, 1, prefix="can")[0],
        "held": seed_subscriptions(ctx, url, 1, plan_code="daily", prefix="hol")[0],
    }
    run_billing_pass(ctx)  # period 0 of each: approved, except the SOFT cards
    add_card(env, subs["two_cards"], APPROVING_CARD)
    subscriptions.pause_subscription(ctx, subs["paused"], "customer asked")
    subscriptions.cancel_subscription(ctx, subs["canceled"], at_period_end=False, reason="test")
    return subs


def attempts_since(env: Env, after_id: int) -> list[tuple[Any, ...]]:
    with session(env.ctx.engine) as s:
        rows = s.exec(
            sm_select(ChargeAttempt, Invoice)
            .join(Invoice, col(Invoice.id) == col(ChargeAttempt.invoice_id))
            .where(col(ChargeAttempt.id) > after_id)
        ).all()
        return sorted(
            (i.subscription_id, i.period_index, a.amount_minor, a.currency, a.instrument_id)
            for a, i in rows
        )


def last_attempt_id(env: Env) -> int:
    with session(env.ctx.engine) as s:
        ids = s.exec(sm_select(ChargeAttempt.id).order_by(col(ChargeAttempt.id).desc())).first()
        return int(ids or 0)


def test_preview_predicts_the_next_pass_and_writes_nothing(
    env: Env, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    subs = scenario(env)
    until = START + timedelta(days=62)  # May 2: periods of Apr 1 and May 1 (a catch-up of 2)
    before_rows, before_counts = dump(db_url), table_counts(db_url)
    seen = count_requests(monkeypatch, env.simulator)
    payments_before = len(env.simulator.payments())

    result = preview(env.ctx, until)

    assert seen == [] and len(env.simulator.payments()) == payments_before
    assert dump(db_url) == before_rows and table_counts(db_url) == before_counts
    predicted = sorted(
        (c.subscription_id, c.period_index, c.amount_minor, c.currency, c.instrument_id)
        for c in result.charges
    )
    kinds = {(c.subscription_id, c.kind) for c in result.lines}
    assert (subs["held"], "held") in kinds
    assert (subs["retry"], "retry") in kinds and (subs["two_cards"], "retry") in kinds
    assert not any(c.subscription_id in (subs["paused"], subs["canceled"]) for c in result.lines)
    renewals = [c for c in result.charges if c.subscription_id == subs["renewing"]]
    assert [c.period_index for c in renewals] == [1, 2]  # the catch-up of 2
    view = preview_view(result)
    assert view["totals"]["USD"] == {"count": 2, "amount_minor": 2100}

    first_new = last_attempt_id(env)
    env.clock.set(until)
    summary = run_billing_pass(env.ctx)
    actual = attempts_since(env, first_new)
    assert actual == predicted, (actual, predicted)
    assert summary.subscriptions_held == 1
    # The two-card customer's retry goes to the card added since the decline.
    two = [p for p in predicted if p[0] == subs["two_cards"] and p[1] == 0]
    retry = [p for p in predicted if p[0] == subs["retry"] and p[1] == 0]
    assert two and retry and two[0][4] != retry[0][4]


@pytest.mark.parametrize(
    ("until", "message"),
    [
        ("2027-06-01T00:00:00", "has no timezone"),
        ("next tuesday", "is neither a date"),
        ("2027-13-01", "is neither a date"),
        ("2020-01-01", "is before now"),
    ],
)
def test_bad_until_is_one_line_exit_2_and_writes_nothing(
    env: Env, db_url: str, monkeypatch: pytest.MonkeyPatch, until: str, message: str
) -> None:
    result, before, after = _cli(env, db_url, monkeypatch, "--until", until)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert before == after


def test_cli_json_lists_charges_and_totals_without_writing(
    env: Env, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 2)
    seen = count_requests(monkeypatch, env.simulator)
    day = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    result, before, after = _cli(env, db_url, monkeypatch, "--until", day, "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    expected = preview_view(preview(env.ctx, datetime.fromisoformat(view["until"])))
    assert view["totals"] == expected["totals"] and view["totals"]["UYU"]["count"] >= 2
    assert {c["customer"] for c in view["charges"]} == {"cus-00000", "cus-00001"}
    assert before == after and seen == []
    text, _, _ = _cli(env, db_url, monkeypatch, "--until", day)
    assert text.exit_code == 0 and "totals:" in text.stdout


def _cli(
    env: Env, db_url: str, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[Any, dict[str, list[tuple[Any, ...]]], dict[str, list[tuple[Any, ...]]]]:
    for key in [k for k in os.environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    before = dump(db_url)
    result = CliRunner().invoke(
        app,
        ["preview", *args],
        env={
            "BILLING_DATABASE_URL": db_url,
            "BILLING_PLEXO_BASE_URL": env.sandbox_url,
            "BILLING_TIMEZONE": "America/Montevideo",
        },
    )
    return result, before, dump(db_url)
