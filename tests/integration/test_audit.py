"""The audit log: `billing events list` filters, keyset paging and --json; and every manual
action through the CLI records who (`--by`) and why (`--reason`), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from billing.store.db import make_engine, session
from billing.store.migrate import upgrade
from billing.store.models import (
    ChargeAttempt,
    Customer,
    Event,
    Invoice,
    LedgerCheckRun,
    OutboxDelivery,
    OutboxEvent,
    ReconciliationFinding,
    Subscription,
)
from tests.integration.conftest import table_counts

APPROVING = "4444333322221111"


@dataclass
class Cli:
    env: dict[str, str]
    db_url: str
    sandbox_url: str

    def __call__(self, *args: str) -> Any:
        return CliRunner().invoke(app, list(args), env=self.env)

    def ok(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, (args, result.output)
        text = result.stdout.strip()
        return json.loads(text) if text.startswith(("{", "[")) else text

    def events(self, *args: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.ok("events", "list", *args)
        return rows

    def add_card(self, reference: str, card: str = APPROVING) -> None:
        engine = make_engine(self.db_url)
        with session(engine) as s:
            plexo_id = s.exec(select(Customer.plexo_id).where(Customer.reference_id == reference))
            customer = plexo_id.one()
        engine.dispose()
        with httpx.Client(base_url=self.sandbox_url) as http:
            http.post(
                f"/sandbox/customers/{customer}/instruments",
                json={"cardNumber": card, "expMonth": 12, "expYear": 2035},
            ).raise_for_status()


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    upgrade(db_url)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    with SandboxServer(PlexoSimulator()) as server:
        env = {
            "BILLING_DATABASE_URL": db_url,
            "BILLING_PLEXO_BASE_URL": server.url,
            "BILLING_TIMEZONE": "America/Montevideo",
        }
        yield Cli(env, db_url, server.url)


def _customer(cli: Cli, reference: str, *extra: str) -> None:
    cli.ok("customers", "create", "--reference-id", reference, "--email", "a@example.com", *extra)


def _plan(cli: Cli, code: str, *extra: str) -> None:
    cli.ok(
        "plans", "create", "--code", code, "--name", code.title(), "--amount", "590",
        "--currency", "UYU", *extra,
    )  # fmt: skip


def _seed_rows(cli: Cli, subscription_id: int) -> dict[str, Any]:
    """Rows the commands below act on that only time or Plexo would make: two open invoices,
    one charging with an unknown attempt, a stored finding, a dead notification."""
    engine = make_engine(cli.db_url)
    now = datetime.now(UTC)
    with session(engine) as s:
        sub = s.get(Subscription, subscription_id)
        assert sub is not None
        sub.current_period_end = now + timedelta(days=30)  # as if a period were paid
        s.add(sub)
        invoices = []
        for n, status in enumerate(["open", "open", "open", "charging"]):
            invoice = Invoice(
                number=f"INV-AUDIT{n:07d}",
                subscription_id=subscription_id,
                customer_id=sub.customer_id,
                period_index=100 + n,
                period_start=now - timedelta(days=40 - n),
                period_end=now - timedelta(days=10 - n),
                amount_minor=59000,
                currency="UYU",
                status=status,
                attempt_count=1 if status == "charging" else 0,
                next_attempt_at=None,
                created_at=now,
                updated_at=now,
            )
            s.add(invoice)
            s.flush()
            invoices.append(invoice)
        charging = invoices[-1]
        assert charging.id is not None
        s.add(
            ChargeAttempt(
                invoice_id=charging.id,
                attempt_number=1,
                reference_id=f"{charging.number}-1",
                state="unknown",
                amount_minor=59000,
                currency="UYU",
                node="gone",
                created_at=now,
            )
        )
        check = LedgerCheckRun(
            range_from=now - timedelta(days=1),
            range_to=now,
            trigger="cli",
            actor="finance",
            node="n1",
            started_at=now,
            finished_at=now,
            counts={},
        )
        s.add(check)
        s.flush()
        assert check.id is not None
        finding = ReconciliationFinding(
            key="REF-X",
            kind="missing_here",
            reference_id="REF-X",
            invoice_id=invoices[0].id,
            first_seen_at=now,
            last_seen_at=now,
            first_check_id=check.id,
            last_check_id=check.id,
        )
        outbox = OutboxEvent(
            event_id="evt_" + "a" * 32,
            type="invoice.payment_failed",
            created_at=now,
            entity_type="invoice",
            entity_id=invoices[0].id or 0,
            customer_id=sub.customer_id,
            payload={"invoice_id": invoices[0].id, "subscription_id": subscription_id},
            fanned_out_at=now,
        )
        s.add(finding)
        s.add(outbox)
        s.flush()
        assert outbox.id is not None
        s.add(
            OutboxDelivery(
                outbox_id=outbox.id,
                channel="webhook",
                target="https://shop.example/hook",
                state="dead",
                attempts=12,
                created_at=now,
                updated_at=now,
            )
        )
        held = Subscription(
            customer_id=sub.customer_id,
            plan_id=sub.plan_id,
            status="active",
            anchor_at=now,
            next_period_index=1,
            next_billing_at=now + timedelta(days=30),
            held_at=now,
            held_reason="too many periods",
            held_periods=20,
            created_at=now,
            updated_at=now,
        )
        s.add(held)
        s.flush()
        ids = {
            "void": invoices[0].number,
            "uncollectible": invoices[1].number,
            "retry": invoices[2].number,
            "resolve": charging.number,
            "finding": str(finding.id),
            "held": str(held.id),
        }
    engine.dispose()
    return ids


def _instrument_ids(cli: Cli, reference: str) -> list[str]:
    return [str(i["id"]) for i in cli.ok("instruments", "list", reference)]


def test_every_manual_action_records_its_actor_and_reason(cli: Cli, tmp_path: Path) -> None:
    """Each mutating command, run with --by alice --reason R: an event by alice with R."""
    customers_file = tmp_path / "customers.csv"
    customers_file.write_text("reference_id,email\ncus-imp,imp@example.com\n")
    subscriptions_file = tmp_path / "subscriptions.jsonl"
    subscriptions_file.write_text('{"customer": "cus-imp", "plan": "basic"}\n')

    # (command, the event it must write); each runs with --by alice --reason "why <n>".
    steps: list[tuple[list[str], str]] = [
        (["customers", "create", "--reference-id", "cus-a", "--email", "a@x.example"],
         "customer.created"),
        (["customers", "update", "cus-a", "--first-name", "Ana"], "customer.updated"),
        (["instruments", "sync", "cus-a"], "instruments.synced"),
        (["instruments", "default", "cus-a", "{card2}"], "instrument.default"),
        (["instruments", "remove", "cus-a", "{card2}"], "instrument.removed"),
        (["plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
          "--currency", "UYU"], "plan.created"),
        (["subscriptions", "create", "--customer", "cus-a", "--plan", "basic"],
         "subscription.created"),
        (["subscriptions", "pause", "{sub}"], "subscription.paused"),
        (["subscriptions", "resume", "{sub}"], "subscription.resumed"),
        (["subscriptions", "change-plan", "{sub}", "--plan", "pro"], "subscription.plan_changed"),
        (["subscriptions", "cancel", "{sub}", "--at-period-end"], "subscription.cancel_scheduled"),
        (["subscriptions", "uncancel", "{sub}"], "subscription.cancel_unscheduled"),
        (["subscriptions", "release", "{held}", "--skip-to-now"], "subscription.released"),
        (["invoices", "void", "{void}"], "invoice.voided"),
        (["invoices", "mark-uncollectible", "{uncollectible}"], "invoice.uncollectible"),
        (["invoices", "retry", "{retry}"], "invoice.retry_requested"),
        (["invoices", "resolve", "{resolve}", "--not-charged"], "attempt.resolved"),
        (["reconcile", "findings", "resolve", "{finding}"], "reconciliation.finding_resolved"),
        (["notifications", "redeliver", "evt_" + "a" * 32], "outbox.redeliver"),
        (["customers", "import", str(customers_file)], "customer.created"),
        (["subscriptions", "import", str(subscriptions_file)], "subscription.created"),
        (["subscriptions", "cancel", "{sub}"], "subscription.canceled"),
        (["customers", "delete", "cus-imp"], "customer.deleted"),
    ]  # fmt: skip
    _plan(cli, "pro")  # the plan change's target (not under test)
    ids: dict[str, str] = {}
    for n, (command, expected) in enumerate(steps):
        if command[:2] == ["instruments", "sync"]:
            cli.add_card("cus-a")
            cli.add_card("cus-a", "5555444433332222")
        if command[:2] == ["subscriptions", "pause"]:
            ids.update(_seed_rows(cli, int(ids["sub"])))
        args = [part.format(**ids) for part in command]
        before = _last_event_id(cli)
        result = cli(*args, "--by", "alice", "--reason", f"why {n}", "--json")
        assert result.exit_code == 0, (args, result.output)
        written = _events_after(cli, before)
        assert any(
            (e.event, e.actor, e.reason) == (expected, "alice", f"why {n}") for e in written
        ), (args, [(e.event, e.actor, e.reason) for e in written])
        shown = cli.events("--actor", "alice", "--type", expected, "--limit", "1")
        assert (shown[0]["actor"], shown[0]["reason"]) == ("alice", f"why {n}"), args
        if command[:2] == ["instruments", "sync"]:
            ids["card2"] = _instrument_ids(cli, "cus-a")[-1]
        if command[:2] == ["subscriptions", "create"]:
            ids["sub"] = str(json.loads(result.stdout)["id"])
    assert {e["actor"] for e in cli.events("--actor", "alice", "--limit", "1000")} == {"alice"}


def test_a_bad_by_or_reason_is_refused_and_writes_nothing(cli: Cli) -> None:
    before = table_counts(cli.db_url)
    for extra in (["--by", "  "], ["--reason", "x\x1b[31m"]):
        result = cli(
            "customers", "create", "--reference-id", "cus-z", "--email", "z@x.example", *extra
        )
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert table_counts(cli.db_url) == before


def test_filters_paging_and_json(cli: Cli) -> None:
    _customer(cli, "cus-1", "--by", "ana")
    _customer(cli, "cus-2", "--by", "bob")
    _plan(cli, "basic", "--by", "ana")
    sub1 = cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")["id"]
    sub2 = cli.ok("subscriptions", "create", "--customer", "cus-2", "--plan", "basic")["id"]
    cli.ok("subscriptions", "pause", str(sub1), "--by", "ana", "--reason", "holiday")
    ids = _seed_rows(cli, sub1)
    cli.ok("invoices", "void", ids["void"], "--by", "carla", "--reason", "dup")

    # --customer (by referenceId or id) sees the customer's invoice events too.
    mine = cli.events("--customer", "cus-1")
    names = [e["event"] for e in mine]
    assert "invoice.voided" in names and "subscription.paused" in names
    assert "customer.created" in names and "plan.created" not in names
    assert all(e["customer_id"] == mine[0]["customer_id"] for e in mine)
    assert cli.events("--customer", str(mine[0]["customer_id"])) == mine
    assert [e["event"] for e in cli.events("--customer", "cus-2")] == [
        "subscription.created",
        "customer.created",
    ]
    # --subscription: its own events and its invoices'; not the other subscription's.
    for_sub = cli.events("--subscription", str(sub1))
    assert {"invoice.voided", "subscription.paused", "subscription.created"} <= {
        e["event"] for e in for_sub
    }
    assert all(e["subscription_id"] == sub1 for e in for_sub)
    assert [e["event"] for e in cli.events("--subscription", str(sub2))] == ["subscription.created"]
    # --invoice by number or id; --actor; --type exact and prefix.
    voided = cli.events("--invoice", ids["void"])
    assert [(e["event"], e["actor"], e["reason"]) for e in voided] == [
        ("invoice.voided", "carla", "dup")
    ]
    assert cli.events("--invoice", str(voided[0]["entity"]["id"])) == voided
    assert {e["event"] for e in cli.events("--actor", "bob")} == {"customer.created"}
    assert {e["event"] for e in cli.events("--type", "customer.")} == {"customer.created"}
    assert cli.events("--type", "customer.") == cli.events("--type", "customer.created")
    assert cli.events("--type", "customer") == []  # no prefix without the dot
    # --from/--to: business dates or instants.
    everything = cli.events("--limit", "1000")
    assert cli.events("--from", "2000-01-01", "--to", "2998-12-31", "--limit", "1000") == (
        everything
    )
    assert cli.events("--to", "2000-01-01") == []
    assert cli.events("--from", "2998-01-01T00:00:00+00:00") == []

    # --json: one object per event, newest first, with these fields.
    first = everything[0]
    assert set(first) >= {"id", "at", "entity", "event", "actor", "reason", "data"}
    assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)
    assert datetime.fromisoformat(first["at"]).utcoffset() == timedelta(0)

    # Keyset paging: pages of 2 concatenate to the whole log, and say there is more.
    pages: list[dict[str, Any]] = []
    before: list[str] = []
    while True:
        result = cli("events", "list", "--limit", "2", "--json", *before)
        assert result.exit_code == 0, result.output
        page = json.loads(result.stdout)
        pages += page
        if "--before-id" not in result.stderr:
            break
        assert len(page) == 2
        before = ["--before-id", str(page[-1]["id"])]
    assert pages == everything

    # The table for people.
    table = cli("events", "list", "--actor", "carla")
    assert table.exit_code == 0
    assert "invoice.voided" in table.stdout and "carla" in table.stdout
    assert f"invoice {voided[0]['entity']['id']}" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customer", "nobody"], "no customer 'nobody'"),
        (["--invoice", "INV-NOPE"], "no invoice INV-NOPE"),
        (["--from", "2026-13-01"], "--from '2026-13-01' is not an ISO date"),
        (["--from", "2026-03-02", "--to", "2026-03-01"], "--from must be before --to"),
        (["--to", "2026-03-01T00:00:00"], "has no timezone offset"),
        (["--actor", "a\x1b[2J"], "--actor must be"),
        (["--before-id", "0"], "--before-id"),
    ],
)
def test_bad_filters_are_one_line(cli: Cli, args: list[str], message: str) -> None:
    result = cli("events", "list", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _last_event_id(cli: Cli) -> int:
    engine = make_engine(cli.db_url)
    with session(engine) as s:
        last = s.exec(select(Event.id).order_by(col(Event.id).desc())).first()
    engine.dispose()
    return last or 0


def _events_after(cli: Cli, after: int) -> list[Event]:
    engine = make_engine(cli.db_url)
    with session(engine) as s:
        rows = list(s.exec(select(Event).where(col(Event.id) > after)).all())
        s.expunge_all()
    engine.dispose()
    return rows
