"""The `billing` command end to end (in-process CLI, sandbox over real HTTP, SQLite store).

Bad input: a clear message, a non-zero exit, and nothing written — neither in our tables nor
at the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from billing.cli.main import app
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from billing.store.migrate import upgrade
from tests.integration.conftest import table_counts


@dataclass
class Cli:
    env: dict[str, str]
    db_url: str
    simulator: PlexoSimulator
    sandbox_url: str

    def __call__(self, *args: str, extra_env: dict[str, str] | None = None) -> Any:
        runner = CliRunner()
        return runner.invoke(app, list(args), env={**self.env, **(extra_env or {})})

    def ok(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def snapshot(self) -> dict[str, int]:
        """Row counts of every table plus what the sandbox holds: 'nothing written' evidence."""
        counts = table_counts(self.db_url)
        with httpx.Client(base_url=self.sandbox_url) as http:
            counts["sandbox_payments"] = len(http.get("/sandbox/payments").json())
            auth = ("sandbox-client", "sandbox-key")
            counts["sandbox_customers"] = len(http.get("/v1/customers", auth=auth).json())
        return counts


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    db_url = f"sqlite:///{tmp_path / 'billing.sqlite3'}"
    upgrade(db_url)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    simulator = PlexoSimulator()
    with SandboxServer(simulator) as server:
        env = {
            "BILLING_DATABASE_URL": db_url,
            "BILLING_PLEXO_BASE_URL": server.url,
            "BILLING_TIMEZONE": "America/Montevideo",
        }
        yield Cli(env, db_url, simulator, server.url)


def seed(cli: Cli) -> None:
    cli.ok("customers", "create", "--reference-id", "cus-1", "--email", "ana@example.com")
    cli.ok(
        "plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
        "--currency", "UYU",
    )  # fmt: skip


def refused(cli: Cli, args: list[str], message: str, env: dict[str, str] | None = None) -> None:
    before = cli.snapshot()
    result = cli(*args, extra_env=env)
    assert result.exit_code != 0, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert cli.snapshot() == before, "refused input changed something"


def test_card_number_in_a_customer_field_is_refused(cli: Cli) -> None:
    args = ["customers", "create", "--reference-id", "cus-9", "--email", "x@example.com"]
    refused(
        cli,
        [*args, "--first-name", "4444 3333 2222 1111"],
        "first_name looks like a card number",
    )
    refused(cli, [*args, "--metadata", "note=4444333322221111"], "looks like a card number")
    result = cli(*args, "--first-name", "4444333322221111")
    assert "4444333322221111" not in result.output, "the number must never be echoed"


def test_amount_with_too_many_decimals_is_refused(cli: Cli) -> None:
    refused(
        cli,
        ["plans", "create", "--code", "x", "--name", "X", "--amount", "5.999", "--currency", "UYU"],
        "more than 2 decimal places",
    )


def test_unsupported_currency_is_refused(cli: Cli) -> None:
    refused(
        cli,
        ["plans", "create", "--code", "x", "--name", "X", "--amount", "5", "--currency", "EUR"],
        "unsupported currency 'EUR'",
    )


def test_unknown_plan_is_refused(cli: Cli) -> None:
    seed(cli)
    refused(
        cli,
        ["subscriptions", "create", "--customer", "cus-1", "--plan", "nope"],
        "no plan with code 'nope'",
    )


def test_naive_as_of_is_refused(cli: Cli) -> None:
    refused(cli, ["run", "--once", "--as-of", "2026-03-01T00:00:00"], "has no timezone")


def test_as_of_is_refused_in_production(cli: Cli) -> None:
    production = {
        "BILLING_PLEXO_ENVIRONMENT": "production",
        "BILLING_PLEXO_BASE_URL": "https://api.plexo.com.uy",
        "BILLING_PLEXO_CLIENT_ID": "1234",
        "BILLING_PLEXO_API_KEY": "0123456789abcdef0123456789abcdef",
    }
    refused(
        cli, ["run", "--once", "--as-of", "2026-03-01T00:00:00+00:00"], "production", production
    )


def test_duplicate_customer_reference_is_refused(cli: Cli) -> None:
    seed(cli)
    refused(
        cli,
        ["customers", "create", "--reference-id", "cus-1", "--email", "other@example.com"],
        "already exists",
    )


def test_unknown_config_key_is_refused(cli: Cli, tmp_path: Path) -> None:
    refused(cli, ["customers", "list"], "BILLING_CONCURENCY", {"BILLING_CONCURENCY": "4"})
    config = tmp_path / "billing.toml"
    config.write_text("concurency = 4\n")
    refused(cli, ["--config", str(config), "customers", "list"], "concurency")


def test_bad_document_check_digit_is_refused(cli: Cli) -> None:
    refused(
        cli,
        [
            "customers", "create", "--reference-id", "cus-9", "--email", "x@example.com",
            "--document-type", "CI", "--document-number", "1.234.567-3",
        ],
        "check digit",
    )  # fmt: skip


def test_a_merchant_bills_a_customer_through_the_cli(cli: Cli) -> None:
    created = cli.ok(
        "customers", "create", "--reference-id", "cus-ana", "--email", "Ana@Example.com",
        "--first-name", "Ana", "--document-type", "CI", "--document-number", "1.234.567-2",
        "--address-city", "Montevideo", "--birthdate", "1990-05-01", "--metadata", "tier=gold",
    )  # fmt: skip
    assert created["plexo_id"] and created["document"] == {"type": "CI", "number": "12345672"}
    link = cli.ok("instruments", "link", "cus-ana")
    session_id = link["url"].rstrip("/").rsplit("/", 1)[-1]
    with httpx.Client(base_url=cli.sandbox_url) as http:
        http.post(
            f"/sandbox/sessions/{session_id}/complete",
            json={"cardNumber": "4444333322221111", "expMonth": 12, "expYear": 2031},
        ).raise_for_status()
    cards = cli.ok("instruments", "sync", "cus-ana")
    assert [(c["last4"], c["default"]) for c in cards] == [("1111", True)]
    updated = cli.ok("customers", "update", "cus-ana", "--email", "ana@new.example.com")
    assert updated["email"] == "ana@new.example.com"
    with httpx.Client(base_url=cli.sandbox_url, auth=("sandbox-client", "sandbox-key")) as http:
        remote = http.get(f"/v1/customers/{created['plexo_id']}").json()
        assert remote["email"] == "ana@new.example.com"  # PUT reached Plexo
        http.post(
            f"/sandbox/customers/{created['plexo_id']}/instruments",
            json={"cardNumber": "5555444433332222", "expMonth": 1, "expYear": 2032},
        ).raise_for_status()
    cards = cli.ok("instruments", "sync", "cus-ana")
    second = next(c for c in cards if c["last4"] == "2222")
    cli.ok("instruments", "default", "cus-ana", str(second["id"]))
    cli.ok("instruments", "remove", "cus-ana", str(second["id"]))
    cards = cli.ok("instruments", "list", "cus-ana")
    assert [(c["last4"], c["default"]) for c in cards] == [("1111", True)]
    refused(cli, ["instruments", "default", "cus-ana", "4444333322221111"], "card number")
    cli.ok("plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590.50",
           "--currency", "UYU")  # fmt: skip
    sub = cli.ok(
        "subscriptions", "create", "--customer", "cus-ana", "--plan", "basic",
        "--start", "2026-01-31", "--backdate",
    )  # fmt: skip
    assert sub["status"] == "active"
    first = cli.ok("run", "--once", "--as-of", "2026-01-31T12:00:00+00:00")
    assert first["billing_pass"]["outcomes"]["approved"]["amounts"] == {"UYU": "590.50"}
    second = cli.ok("run", "--once", "--as-of", "2026-03-01T12:00:00-03:00")
    assert second["billing_pass"]["invoices_created"] == 1  # Feb 28 (clamped), not March
    again = cli.ok("run", "--once", "--as-of", "2026-03-01T12:00:00-03:00")
    assert again["billing_pass"]["attempts"] == 0
    invoices = cli.ok("invoices", "list", "--customer", "cus-ana")
    assert [(i["amount"], i["status"]) for i in invoices] == [("590.50", "paid")] * 2
    assert invoices[0]["period_start"] > invoices[1]["period_start"]  # newest first
    runs = cli.ok("runs", "list")
    assert [r["outcomes"]["approved"]["count"] for r in runs if r["kind"] == "pass"] == [1, 1]
    listed = cli.ok("subscriptions", "list", "--status", "active")
    assert [s["customer"] for s in listed] == ["cus-ana"]
    approved = [p for p in cli.simulator.payments() if p["status"] == "approved"]
    assert [p["amount"]["total"] for p in approved] == ["590.50", "590.50"]
    cli.ok("customers", "delete", "cus-ana", "--reason", "asked to leave")
    assert cli.ok("subscriptions", "show", str(sub["id"]))["status"] == "canceled"
    assert cli.ok("customers", "list") == []
    shown = cli.ok("customers", "show", "cus-ana")
    assert shown["status"] == "deleted"


def test_config_show_masks_the_api_key(cli: Cli) -> None:
    result = cli("config", "show", "--json", extra_env={"BILLING_PLEXO_API_KEY": "sk_SECRET_42"})
    assert result.exit_code == 0, result.output
    assert "sk_SECRET_42" not in result.output


def test_check_passes_against_the_sandbox_and_fails_on_bad_credentials(cli: Cli) -> None:
    good = cli("check", "--json")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["ok"] is True
    bad = cli("check", "--json", extra_env={"BILLING_PLEXO_API_KEY": "wrong-key"})
    assert bad.exit_code == 1
    checks = {c["check"]: c for c in json.loads(bad.stdout)["checks"]}
    assert checks["credentials"]["ok"] is False
    assert "wrong-key" not in bad.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plans", "create", "--code", "p4444333322221111", "--name", "P", "--amount", "1",
          "--currency", "UYU"], "plan code looks like a card number"),
        (["plans", "create", "--code", "p", "--name", "Plan 4444 3333 2222 1111", "--amount",
          "1", "--currency", "UYU"], "plan name looks like a card number"),
        (["customers", "create", "--reference-id", "c9", "--email", "x@example.com",
          "--first-name", "4444.3333.2222.1111"], "first_name looks like a card number"),
        (["subscriptions", "cancel", "1", "--reason", "card 4444333322221111 stolen"],
         "reason looks like a card number"),
        (["subscriptions", "pause", "1", "--reason", "4444333322221111"],
         "reason looks like a card number"),
        (["customers", "delete", "cus-1", "--reason", "4444333322221111"],
         "reason looks like a card number"),
        (["plans", "create", "--code", "p", "--name", "P", "--amount", "1e3", "--currency",
          "UYU"], "plain digits"),
    ],
)  # fmt: skip
def test_card_numbers_and_odd_amounts_are_refused_everywhere(
    cli: Cli, args: list[str], message: str
) -> None:
    seed(cli)
    cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")
    refused(cli, args, message)


def test_a_second_live_subscription_to_the_same_plan_needs_a_flag(cli: Cli) -> None:
    seed(cli)
    cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")
    refused(
        cli,
        ["subscriptions", "create", "--customer", "cus-1", "--plan", "basic"],
        "already has subscription",
    )
    cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic",
           "--allow-duplicate")  # fmt: skip


def test_a_gateway_outage_is_a_failure_not_refused_input(cli: Cli) -> None:
    result = cli(
        "customers", "create", "--reference-id", "c1", "--email", "a@example.com",
        extra_env={"BILLING_PLEXO_BASE_URL": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output


def test_a_database_outage_is_one_line_not_a_traceback(cli: Cli) -> None:
    result = cli(
        "customers", "list",
        extra_env={"BILLING_DATABASE_URL": "postgresql://u:SECRET@127.0.0.1:9/billing"},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "SECRET" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def periods_since(text: str) -> int:
    """How many monthly periods a subscription starting on local date `text` has started."""
    from datetime import UTC, date, datetime, time
    from zoneinfo import ZoneInfo

    from billing.domain.periods import Interval, period_index_at

    tz = ZoneInfo("America/Montevideo")
    anchor = datetime.combine(date.fromisoformat(text), time(0), tzinfo=tz)
    return period_index_at(anchor, Interval.month, 1, datetime.now(UTC), tz) + 1


def test_a_start_centuries_ago_is_one_line_naming_backdate_and_writes_nothing(cli: Cli) -> None:
    seed(cli)
    args = ["subscriptions", "create", "--customer", "cus-1", "--plan", "basic"]
    before = cli.snapshot()
    # 1026 is outside what a command line accepts at all (1900-3000); 1926 is the same typo
    # inside it, refused by the backdate rule with the count.
    result = cli(*args, "--start", "1026-12-01")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    result = cli(*args, "--start", "1926-12-01")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "--backdate" in result.stderr
    assert f"bill {periods_since('1926-12-01'):,} periods at once" in result.stderr
    assert cli.snapshot() == before


def test_backdate_prints_the_periods_first_and_a_catch_up_beyond_the_cap_waits_for_release(
    cli: Cli,
) -> None:
    from sqlmodel import select

    from billing.store.db import make_engine, session
    from billing.store.models import Event

    seed(cli)
    start = "2000-01-01"
    periods = periods_since(start)
    result = cli(
        "subscriptions", "create", "--customer", "cus-1", "--plan", "basic", "--start", start,
        "--backdate",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first, created = result.stdout.splitlines()
    assert first.startswith(f"backdate: the next billing pass bills {periods:,} periods, ")
    assert "more than the catch-up cap of 12" in first
    assert created.startswith("created subscription 1 ")
    held_run = cli("run", "--once")
    assert held_run.exit_code == 0, held_run.output
    assert "0 invoices created, 1 subscription held for review" in held_run.stdout
    assert cli.simulator.payments() == [], "a held subscription is not charged"
    shown = cli.ok("subscriptions", "show", "1")
    assert shown["held_periods"] == periods and shown["held_at"] is not None
    assert "catch-up cap of 12" in shown["held_reason"]
    text = cli("subscriptions", "show", "1").stdout
    assert "held_reason" in text and "held_periods" in text
    assert [s["id"] for s in cli.ok("subscriptions", "list", "--held")] == [1]
    [run] = cli.ok("runs", "list")
    assert run["subscriptions_held"] == 1
    refused(cli, ["subscriptions", "release", "1", "--reason", "  "], "--reason is required")
    released = cli(
        "subscriptions", "release", "1", "--reason", "typo in the start", "--skip-to-now",
        "--by", "alice",
    )  # fmt: skip
    assert released.exit_code == 0, released.output
    assert released.stdout.strip() == (
        "subscription 1 released by alice, skipping the missed periods: "
        "the next billing pass bills 1 period"
    )
    billed = cli.ok("run", "--once")
    assert billed["billing_pass"]["invoices_created"] == 1
    assert billed["billing_pass"]["subscriptions_held"] == 0
    assert len(cli.ok("invoices", "list")) == 1  # (cus-1 has no card: declined, not sent)
    assert cli.ok("subscriptions", "list", "--held") == []
    refused(cli, ["subscriptions", "release", "1", "--reason", "again"], "is not held")
    engine = make_engine(cli.db_url)
    with session(engine) as s:
        [event] = s.exec(select(Event).where(Event.event == "subscription.released")).all()
    engine.dispose()
    assert (event.actor, event.reason) == ("alice", "typo in the start")
    assert event.data["periods_skipped"] == periods - 1


def test_change_plan_prints_when_the_new_plan_bills_and_refuses_in_one_line(cli: Cli) -> None:
    seed(cli)
    cli.ok(
        "plans", "create", "--code", "pro", "--name", "Pro", "--amount", "990",
        "--currency", "UYU",
    )  # fmt: skip
    sub = cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")
    sid = str(sub["id"])
    change = ["subscriptions", "change-plan", sid, "--plan"]
    refused(cli, [*change, "nope"], "no plan with code 'nope'")
    refused(cli, ["subscriptions", "change-plan", sid, "--plan", "basic"], "already on plan")
    changed = cli.ok("subscriptions", "change-plan", sid, "--plan", "pro", "--by", "ana")
    assert changed["plan"] == "pro" and changed["plan_effective_at"]
    text = cli("subscriptions", "change-plan", sid, "--plan", "basic", "--reason", "back")
    assert text.exit_code == 0 and "moves to plan basic" in text.stdout
