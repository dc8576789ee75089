"""The operator's view (issue 5 item 16): `invoices list` says when it truncates and shows the
latest attempt (referenceId, Plexo payment id, state); every sentence shows times in the
merchant's zone like the tables, while --json stays UTC ISO-8601.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
from sqlmodel import col, select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.engine.billing_pass import run_billing_pass
from billing.store.db import session
from billing.store.models import ChargeAttempt, Invoice
from billing.testing import APPROVING_CARD, ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env
from tests.integration.test_cli import Cli, cli  # noqa: F401  (the CLI fixture)

DECLINING_CARD = "4000000000000010"  # "51" insufficient funds (soft)


def invoke(env: Env, db_url: str, *args: str) -> Any:
    environ = {
        "BILLING_DATABASE_URL": db_url,
        "BILLING_PLEXO_BASE_URL": env.sandbox_url,
        "BILLING_TIMEZONE": "America/Montevideo",
    }
    return CliRunner().invoke(app, list(args), env=environ)


def bill_days(env: Env, days: int) -> None:
    for _ in range(days):
        run_billing_pass(env.ctx)
        env.clock.advance(timedelta(days=1))


def latest_attempts(env: Env) -> dict[str, ChargeAttempt]:
    """Invoice number -> its attempt with the highest attempt number."""
    with session(env.ctx.engine) as s:
        rows = s.exec(
            select(Invoice.number, ChargeAttempt)
            .join(ChargeAttempt, col(ChargeAttempt.invoice_id) == col(Invoice.id))
            .order_by(col(ChargeAttempt.attempt_number))
        ).all()
    return {number: attempt for number, attempt in rows}


def test_invoices_list_says_when_it_truncates_and_shows_the_latest_attempt(
    env: Env, db_url: str
) -> None:
    plan = ensure_plan(env.ctx, code="daily", interval="day")
    seed_subscriptions(env.ctx, env.sandbox_url, 2, plan_code=plan, start=START)
    seed_subscriptions(
        env.ctx, env.sandbox_url, 1, plan_code=plan, start=START, card=DECLINING_CARD, prefix="dec"
    )
    bill_days(env, 4)  # 3 subscriptions x 4 days, then day 5 below: 15 invoices
    with session(env.ctx.engine) as s:  # one declined invoice is tried again now
        declined = s.exec(select(Invoice).where(Invoice.status == "open")).first()
        assert declined is not None
        tried = declined.attempt_count  # scheduled retries (issue 6) may have run already
        declined.next_attempt_at = env.clock.now()
        s.add(declined)
    run_billing_pass(env.ctx)
    latest = latest_attempts(env)
    assert latest[declined.number].attempt_number == tried + 1 >= 2
    assert len(latest) == 15

    shown = invoke(env, db_url, "invoices", "list", "--limit", "5", "--json")
    assert shown.exit_code == 0, shown.output
    assert shown.stderr.strip() == "5 of 15 shown; use --limit N or --all"
    assert len(json.loads(shown.stdout)) == 5

    everything = invoke(env, db_url, "invoices", "list", "--all", "--json")
    assert everything.exit_code == 0, everything.output
    assert everything.stderr == ""
    rows = json.loads(everything.stdout)
    assert len(rows) == 15
    for row in rows:
        attempt = latest[row["number"]]
        assert row["reference_id"] == attempt.reference_id
        assert row["plexo_payment_id"] == attempt.plexo_payment_id
        assert row["attempt_state"] == attempt.state
    states = {row["number"]: row["attempt_state"] for row in rows}
    assert states[declined.number] == "declined"
    assert sorted(set(states.values())) == ["approved", "declined"]
    assert all(r["plexo_payment_id"] for r in rows if r["attempt_state"] == "approved")

    default = invoke(env, db_url, "invoices", "list")
    assert default.exit_code == 0 and default.stderr == "", default.output
    header = default.stdout.splitlines()[0].split()
    assert {"ATTEMPT_STATE", "REFERENCE_ID", "PLEXO_PAYMENT_ID"} <= set(header)
    assert latest[declined.number].reference_id in default.stdout

    both = invoke(env, db_url, "invoices", "list", "--limit", "5", "--all")
    assert both.exit_code == 2
    assert both.stderr.strip() == "error: give --limit N or --all, not both"


def test_an_invoice_never_attempted_shows_no_attempt(env: Env, db_url: str) -> None:
    plan = ensure_plan(env.ctx, code="later", interval="month")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code=plan, start=START)
    from billing.engine.invoicing import create_due_invoices

    create_due_invoices(env.ctx, env.clock.now())  # invoiced, not yet charged
    rows = json.loads(invoke(env, db_url, "invoices", "list", "--json").stdout)
    assert [(r["attempt_state"], r["reference_id"], r["plexo_payment_id"]) for r in rows] == [
        (None, None, None)
    ]


def test_sentences_show_the_merchant_zone_and_json_stays_utc(cli: Cli) -> None:  # noqa: F811
    customer = cli.ok("customers", "create", "--reference-id", "cus-1", "--email", "a@example.com")
    with httpx.Client(base_url=cli.sandbox_url) as http:
        http.post(
            f"/sandbox/customers/{customer['plexo_id']}/instruments",
            json={"cardNumber": APPROVING_CARD, "expMonth": 12, "expYear": 2035},
        ).raise_for_status()
    cli.ok("instruments", "sync", "cus-1")
    cli.ok("plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
           "--currency", "UYU")  # fmt: skip
    sub = cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic",
                 "--start", "2026-01-31", "--backdate")  # fmt: skip

    text = cli("run", "--once", "--as-of", "2026-02-01T02:30:00+00:00")
    assert text.exit_code == 0, text.output
    # 02:30 UTC is still January 31 in Montevideo (UTC-3)
    assert "as of 2026-01-31 23:30 -03" in text.stdout
    assert " UTC" not in text.stdout and "+00:00" not in text.stdout
    data = cli.ok("run", "--once", "--as-of", "2026-02-01T02:30:00+00:00")
    assert data["billing_pass"]["as_of"] == "2026-02-01T02:30:00+00:00"

    sub_id = str(sub["id"])
    cli.ok("subscriptions", "pause", sub_id)
    resumed = cli("subscriptions", "resume", sub_id)
    assert resumed.exit_code == 0, resumed.output
    again = cli.ok("subscriptions", "show", sub_id)
    next_bill = again["next_billing_at"]
    assert next_bill.endswith("+00:00")  # JSON: UTC
    assert "+00:00" not in resumed.stdout and "-03" in resumed.stdout
    assert resumed.stdout.strip().endswith("-03")

    canceled = cli("subscriptions", "cancel", sub_id, "--at-period-end")
    assert canceled.exit_code == 0, canceled.output
    assert "+00:00" not in canceled.stdout and canceled.stdout.strip().endswith("-03)")
