"""`billing notifications list` and `billing notifications redeliver` (and the hidden alias
`billing events redeliver`): filters, --json, actor and reason,
one-line refusals that change nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.store.db import make_engine, session
from billing.store.migrate import upgrade
from billing.store.models import Event, OutboxDelivery, OutboxEvent

EVENT_ID = "evt_" + "c" * 32
AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    db_url = f"sqlite:///{tmp_path / 'billing.sqlite3'}"
    upgrade(db_url)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    engine = make_engine(db_url)
    with session(engine) as s:
        event = OutboxEvent(
            event_id=EVENT_ID,
            type="invoice.payment_failed",
            created_at=AT,
            entity_type="invoice",
            entity_id=1,
            payload={"invoice_id": 1},
            fanned_out_at=AT,
        )
        s.add(event)
        s.flush()
        assert event.id is not None
        for channel, target, state in [
            ("webhook", "https://shop.example/hook", "dead"),
            ("email", "customer", "delivered"),
        ]:
            s.add(
                OutboxDelivery(
                    outbox_id=event.id,
                    channel=channel,
                    target=target,
                    state=state,
                    attempts=12 if state == "dead" else 1,
                    last_error="HTTP 500" if state == "dead" else None,
                    created_at=AT,
                    updated_at=AT,
                )
            )
    engine.dispose()
    return {"BILLING_DATABASE_URL": db_url}


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_list_filters_and_json(env: dict[str, str]) -> None:
    code, out, _ = run(env, "notifications", "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {(r["channel"], r["state"]) for r in rows} == {
        ("webhook", "dead"),
        ("email", "delivered"),
    }
    assert rows[0]["event_id"] == EVENT_ID and rows[0]["data"] == {"invoice_id": 1}
    code, out, _ = run(env, "notifications", "list", "--state", "dead", "--json")
    assert [r["last_error"] for r in json.loads(out)] == ["HTTP 500"]
    code, out, _ = run(env, "notifications", "list", "--type", "invoice.paid", "--json")
    assert json.loads(out) == []
    code, out, _ = run(env, "notifications", "list")
    assert code == 0 and EVENT_ID in out and "dead" in out


def test_redeliver_records_who_and_why(env: dict[str, str]) -> None:
    code, out, err = run(
        env, "notifications", "redeliver", EVENT_ID, "--channel", "webhook",
        "--by", "ana", "--reason", "endpoint fixed", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {"event_id": EVENT_ID, "deliveries": 1, "by": "ana"}
    engine = make_engine(env["BILLING_DATABASE_URL"])
    with session(engine) as s:
        states = {d.channel: (d.state, d.attempts) for d in s.exec(select(OutboxDelivery))}
        logged = s.exec(select(Event).where(Event.event == "outbox.redeliver")).one()
    engine.dispose()
    assert states == {"webhook": ("pending", 0), "email": ("delivered", 1)}
    assert (logged.actor, logged.reason) == ("ana", "endpoint fixed")


def test_events_redeliver_is_a_hidden_alias(env: dict[str, str]) -> None:
    """Runbooks written before the audit log took `events` keep working."""
    code, out, err = run(
        env, "events", "redeliver", EVENT_ID, "--by", "ana", "--reason", "old runbook", "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {"event_id": EVENT_ID, "deliveries": 2, "by": "ana"}
    code, out, _ = run(env, "events", "--help")
    assert code == 0 and "redeliver" not in out and "list" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["notifications", "redeliver", "nope", "--reason", "x"], "an event id looks like evt_"),
        (["notifications", "redeliver", "evt_" + "d" * 32, "--reason", "x"], "no event evt_"),
        (["notifications", "list", "--state", "lost"], "unknown state 'lost'"),
        (["notifications", "list", "--type", "invoice.nul\x00"], "unknown event type"),
        (["notifications", "list", "--channel", "sms"], "unknown channel 'sms'"),
        (["notifications", "redeliver", EVENT_ID, "--reason", "x\x1b[31m"], "reason"),
    ],
)
def test_refusals_are_one_line_and_change_nothing(
    env: dict[str, str], args: list[str], message: str
) -> None:
    code, _, err = run(env, *args)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    engine = make_engine(env["BILLING_DATABASE_URL"])
    with session(engine) as s:
        states = sorted(d.state for d in s.exec(select(OutboxDelivery)))
        redelivered = s.exec(select(Event).where(Event.event == "outbox.redeliver")).all()
    engine.dispose()
    assert states == ["dead", "delivered"] and redelivered == []
