"""`billing invoices retry` and the dunning stage of `billing subscriptions show`, through the
CLI (in-process, SQLite, sandbox over real HTTP, the real clock)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from billing.store.db import make_engine, session
from billing.store.migrate import upgrade
from billing.store.models import Event
from tests.integration.conftest import table_counts


class Cli:
    def __init__(self, env: dict[str, str], db_url: str, sandbox_url: str) -> None:
        self.env, self.db_url, self.sandbox_url = env, db_url, sandbox_url

    def __call__(self, *args: str) -> Any:
        return CliRunner().invoke(app, list(args), env=self.env)

    def ok(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    db_url = f"sqlite:///{tmp_path / 'billing.sqlite3'}"
    upgrade(db_url)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    with SandboxServer(PlexoSimulator()) as server:
        env = {
            "BILLING_DATABASE_URL": db_url,
            "BILLING_PLEXO_BASE_URL": server.url,
            "BILLING_TIMEZONE": "America/Montevideo",
        }
        yield Cli(env, db_url, server.url)


def subscribed(cli: Cli, card: str) -> str:
    """cus-1 with `card` saved at Plexo, subscribed and billed once; returns the invoice."""
    customer = cli.ok("customers", "create", "--reference-id", "cus-1", "--email", "a@b.uy")
    with httpx.Client(base_url=cli.sandbox_url) as http:
        http.post(
            f"/sandbox/customers/{customer['plexo_id']}/instruments",
            json={"cardNumber": card, "expMonth": 12, "expYear": 2035},
        ).raise_for_status()
    cli.ok("instruments", "sync", "cus-1")
    cli.ok(
        "plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
        "--currency", "UYU",
    )  # fmt: skip
    cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")
    assert cli("run", "--once").exit_code == 0
    [invoice] = cli.ok("invoices", "list")
    return str(invoice["number"])


def test_retry_now_then_the_24_hour_cap_refuses_in_one_line(cli: Cli) -> None:
    number = subscribed(cli, "4000000000000010")  # soft decline, always
    stage = cli.ok("subscriptions", "show", "1")["dunning"]
    assert (stage["invoice"], stage["attempt"], stage["of"]) == (number, 1, 5)
    assert stage["final_action"] == "mark_unpaid" and stage["next_retry_at"] is not None
    text = cli("subscriptions", "show", "1")
    assert text.exit_code == 0 and f"invoice {number}: attempt 1 of 5, next retry" in text.stdout
    for n in range(2, 11):  # nine retries now: ten declines of this card in 24 hours
        done = cli.ok("invoices", "retry", number, "--reason", "customer called", "--by", "ana")
        assert (done["attempt"], done["outcome"], done["decline_class"]) == (n, "declined", "soft")
        assert done["reference_id"] == f"{number}-{n}"
    before = table_counts(cli.db_url)
    refused = cli("invoices", "retry", number, "--reason", "once more")
    assert refused.exit_code == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"error: invoice {number} not retried: card-network cap 24h")
    assert table_counts(cli.db_url) == before  # nothing written
    with httpx.Client(base_url=cli.sandbox_url) as http:
        assert len(http.get("/sandbox/payments").json()) == 10
    assert cli.ok("subscriptions", "show", "1")["dunning"]["attempt"] == 10
    engine = make_engine(cli.db_url)
    with session(engine) as s:
        asked = s.exec(select(Event).where(Event.event == "invoice.retry_requested")).all()
        sent = s.exec(select(Event).where(Event.event == "attempt.sending")).all()
    engine.dispose()
    assert {(e.actor, e.reason) for e in asked} == {("ana", "customer called")} and len(asked) == 9
    assert [e.actor for e in sent].count("ana") == 9  # the attempts were made as ana


def test_retry_of_a_paid_invoice_is_refused(cli: Cli) -> None:
    number = subscribed(cli, "4444333322221111")
    before = table_counts(cli.db_url)
    result = cli("invoices", "retry", number, "--reason", "why not")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: invoice {number} is paid: only an open one can be retried"
    )
    assert table_counts(cli.db_url) == before
    assert cli.ok("subscriptions", "show", "1")["dunning"] is None
    missing = cli("invoices", "retry", "INV-000000000000", "--reason", "x")
    assert missing.exit_code == 2 and "no invoice" in missing.stderr
