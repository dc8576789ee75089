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
from billing.domain.bounds import SafetyBounds
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
    # One invoice above the UYU ceiling (1,000.00): a yearly plan bills once in the quarter.
    env.ctx.bounds = SafetyBounds(ceilings={"UYU": 100000})
    ensure_plan(env.ctx)  # "monthly": 590.00 UYU
    ensure_plan(env.ctx, code="monthly-usd", amount="25.00", currency="USD")
    ensure_plan(env.ctx, code="premium", amount="1500.00", currency="UYU", interval="year")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, prefix="big", plan_code="premium")
    seed_subscriptions(env.ctx, env.sandbox_url, 2, prefix="steady")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, prefix="recover", card=RECOVERING_CARD)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, prefix="churn", card=EXPIRED_CARD)
    [changer] = seed_subscriptions(env.ctx, env.sandbox_url, 1, prefix="change")
    for day in range(DAYS):
        if day == 40:
            subscriptions.change_plan(env.ctx, changer, plan_code="monthly-usd", reason="to USD")
        run_billing_pass(env.ctx)
        env.clock.advance(timedelta(days=1))


def minor(amount: str) -> int:
    return int(Decimal(amount) * 100)


def add(into: Counter[str], amounts: dict[str, str]) -> None:
    for currency, amount in amounts.items():
        into[currency] += minor(amount)


@pytest.mark.slow
def test_a_scripted_quarter_agrees_everywhere(env: Env) -> None:
    play_the_quarter(env)
    sandbox = approved_at_sandbox(env)
    # 2 steady x 3 + recovered x 3 + change x 2 in UYU; change x 1 in USD; big: parked.
    assert sandbox == {"UYU": 11 * 59000, "USD": 2500}

    # The runs listing: approved amounts per currency, declines, one parked invoice.
    runs = json.loads(cli(env, "runs", "list", "--limit", "1000", "--json").stdout)
    approved_in_runs: Counter[str] = Counter()
    declined_in_runs: Counter[str] = Counter()
    parked_in_runs: Counter[str] = Counter()
    for run in runs:
        add(approved_in_runs, run["outcomes"].get("approved", {}).get("amounts", {}))
        add(declined_in_runs, run["outcomes"].get("declined", {}).get("amounts", {}))
        add(parked_in_runs, run["parked"]["amounts"])
    assert dict(approved_in_runs) == sandbox
    assert dict(declined_in_runs) == {"UYU": 3 * 59000}  # recover x 2 (soft), churn x 1 (hard)
    assert dict(parked_in_runs) == {"UYU": 150000}

    # The export of every run, read back with the csv module: the same totals, row by row.
    exported: Counter[str] = Counter()
    attempts = 0
    for run in runs:
        result = cli(env, "runs", "export", str(run["id"]), "--format", "csv")
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader(io.StringIO(result.stdout.removeprefix("\ufeff"))))
        attempts += len(rows)
        for row in rows:
            assert row["run_id"] == str(run["id"])
            if row["outcome"] == "approved":
                exported[row["currency"]] += minor(row["amount"])
    assert dict(exported) == sandbox
    assert attempts == len(env.simulator.payments())  # one attempt per request Plexo recorded

    # The revenue report over the quarter: collected, failed, recovered, churn, parked.
    args = ["report", "--from", "2026-03-01", "--to", "2026-05-31"]
    report = json.loads(cli(env, *args, "--json").stdout)["currencies"]
    assert {
        c: r["collected"]["amount_minor"] for c, r in report.items() if r["collected"]["count"]
    } == sandbox
    uyu = report["UYU"]
    assert uyu["failed_attempts"] == {"count": 3, "amount_minor": 3 * 59000}
    assert uyu["recovered"] == {"count": 1, "amount_minor": 59000}
    assert uyu["involuntary_churn"]["count"] == 1
    assert uyu["parked"] == {"count": 1, "amount_minor": 150000}
    as_csv = cli(env, *args, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    collected_csv = {
        row["currency"]: minor(row["amount"])
        for row in csv.DictReader(io.StringIO(as_csv.stdout.removeprefix("\ufeff")))
        if row["metric"] == "collected" and not row["bucket"] and int(row["count"] or 0)
    }
    assert collected_csv == sandbox

    # Reconciliation against Plexo's payment listing: nothing differs.
    findings = cli(env, "reconcile", "--from", "2026-03-01", "--to", "2026-05-31", "--json")
    assert findings.exit_code == 0, findings.output
