"""Issue 6 item 6: pre-dunning. A stored card that expires before the next renewal triggers
`instrument.expiring` 30 and 7 days ahead, once each per card, from the daemon job and from
`billing run --once`; on SQLite and PostgreSQL, against the sandbox over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
from sqlmodel import col, select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.daemon.service import Daemon
from billing.engine import customers, subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.engine.expiry import send_expiry_warnings
from billing.store.db import session
from billing.store.models import Event, InstrumentWarning
from billing.testing import APPROVING_CARD, ensure_plan
from tests.integration.conftest import START, Env


def customer_with_card(env: Env, ref: str, exp_month: int, exp_year: int) -> None:
    env.simulator.clock = env.clock  # the sandbox judges expiry on the test clock too
    today = env.clock.now().astimezone(env.ctx.tz).date()
    data = customers.validate_customer({"reference_id": ref, "email": f"{ref}@example.com"}, today)
    customer = customers.create_customer(env.ctx, data)
    with httpx.Client(base_url=env.sandbox_url) as http:
        http.post(
            f"/sandbox/customers/{customer.plexo_id}/instruments",
            json={"cardNumber": APPROVING_CARD, "expMonth": exp_month, "expYear": exp_year},
        ).raise_for_status()
    customers.sync_instruments(env.ctx, ref)


def subscribe(env: Env, ref: str, plan: str = "monthly") -> int:
    sub = subscriptions.create_subscription(
        env.ctx, customer_ref=ref, plan_code=plan, start=START, allow_duplicate=True
    )
    assert sub.id is not None
    return sub.id


def expiring(env: Env) -> list[Event]:
    with session(env.ctx.engine) as s:
        return list(
            s.exec(
                select(Event).where(Event.event == "instrument.expiring").order_by(col(Event.id))
            )
        )


def at(env: Env, moment: datetime) -> None:
    env.clock.advance(moment - env.clock.now())


def test_a_card_expiring_before_the_next_renewal_is_warned_30_and_7_days_ahead(
    env: Env,
) -> None:
    ensure_plan(env.ctx)
    customer_with_card(env, "cus-exp", 4, 2026)  # works through April 30, 2026
    first = subscribe(env, "cus-exp")
    subscribe(env, "cus-exp")  # a second subscription on the same card: still one warning
    customer_with_card(env, "cus-ok", 12, 2035)
    subscribe(env, "cus-ok")
    daemon = Daemon(env.ctx)

    daemon.billing_pass()  # March billed; the April renewal is still before the expiry
    assert daemon.expiry_warnings() == 0
    at(env, datetime(2026, 4, 1, 2, 59, tzinfo=UTC))  # 23:59 on March 31 in Montevideo
    assert daemon.expiry_warnings() == 0
    at(env, datetime(2026, 4, 1, 12, 0, tzinfo=UTC))
    assert run_billing_pass(env.ctx).count("approved") == 3  # April billed on the card
    assert daemon.expiry_warnings() == 1  # May's renewal would hit the expired card
    assert daemon.expiry_warnings() == 0  # once
    [thirty] = expiring(env)
    assert thirty.data["days_before"] == 30 and thirty.data["subscription_id"] == first
    assert thirty.data["expires_at"] == "2026-05-01T00:00:00-03:00"
    assert thirty.entity_type == "instrument"
    assert "4444" not in json.dumps(thirty.data)  # no card data in the event

    at(env, datetime(2026, 4, 24, 2, 0, tzinfo=UTC))
    assert send_expiry_warnings(env.ctx) == 0
    at(env, datetime(2026, 4, 24, 3, 0, tzinfo=UTC))  # 7 days before, local midnight
    assert send_expiry_warnings(env.ctx) == 1
    at(env, datetime(2026, 4, 30, 12, 0, tzinfo=UTC))
    assert send_expiry_warnings(env.ctx) == 0
    assert [e.data["days_before"] for e in expiring(env)] == [30, 7]
    with session(env.ctx.engine) as s:
        rows = s.exec(select(InstrumentWarning.days_before)).all()
    assert sorted(rows) == [7, 30]
    at(env, datetime(2026, 5, 2, tzinfo=UTC))  # expired: the charge itself says so now
    assert send_expiry_warnings(env.ctx) == 0


def test_a_card_first_seen_late_gets_one_warning_and_never_the_earlier_one(env: Env) -> None:
    ensure_plan(env.ctx)
    at(env, datetime(2026, 3, 27, 12, 0, tzinfo=UTC))  # 5 days before the card's last day ends
    customer_with_card(env, "cus-late", 3, 2026)
    sub = subscriptions.create_subscription(
        env.ctx, customer_ref="cus-late", plan_code="monthly", start=env.clock.now()
    )
    assert sub.id is not None
    run_billing_pass(env.ctx)  # next renewal April 27: after the expiry
    assert send_expiry_warnings(env.ctx) == 1
    [event] = expiring(env)
    assert event.data["days_before"] == 7
    assert send_expiry_warnings(env.ctx) == 0
    with session(env.ctx.engine) as s:
        assert sorted(s.exec(select(InstrumentWarning.days_before)).all()) == [7, 30]


def test_no_warnings_when_turned_off_or_for_canceled_subscriptions(env: Env) -> None:
    ensure_plan(env.ctx)
    customer_with_card(env, "cus-exp", 4, 2026)
    sub = subscribe(env, "cus-exp")
    run_billing_pass(env.ctx)
    at(env, datetime(2026, 4, 1, 12, 0, tzinfo=UTC))
    run_billing_pass(env.ctx)
    env.ctx.expiry_warn_days = ()
    assert send_expiry_warnings(env.ctx) == 0
    env.ctx.expiry_warn_days = (30, 7)
    subscriptions.cancel_subscription(env.ctx, sub, at_period_end=False, reason="moving")
    assert send_expiry_warnings(env.ctx) == 0
    assert expiring(env) == []


def test_run_once_sends_the_warnings_too(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx)
    customer_with_card(env, "cus-exp", 4, 2026)
    subscribe(env, "cus-exp")
    run_billing_pass(env.ctx)
    environ = {
        "BILLING_DATABASE_URL": db_url,
        "BILLING_PLEXO_BASE_URL": env.sandbox_url,
        "BILLING_TIMEZONE": "America/Montevideo",
        "BILLING_EXPIRY_WARN_DAYS": "30,7",
    }
    runner = CliRunner()
    moment = (START + timedelta(days=31)).isoformat()  # April 1, 12:00 UTC
    result = runner.invoke(app, ["run", "--once", "--as-of", moment, "--json"], env=environ)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["expiry_warnings"] == 1
    again = runner.invoke(app, ["run", "--once", "--as-of", moment], env=environ)
    assert again.exit_code == 0 and "expiry warning" not in again.stdout
    bad = runner.invoke(
        app,
        ["run", "--once", "--as-of", moment],
        env={**environ, "BILLING_EXPIRY_WARN_DAYS": "30,x"},
    )
    assert bad.exit_code == 2 and "BILLING_EXPIRY_WARN_DAYS" in bad.stderr
    assert len(expiring(env)) == 1
