"""The store's rules and its runs through the `billing` command (SQLite; the engine-level
tests in test_store_rules.py and test_runs.py cover PostgreSQL too)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from billing.clock import SystemClock
from tests.integration import test_cli
from tests.integration.test_cli import Cli, refused


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """test_cli's `cli` fixture: an in-process CLI on a migrated SQLite store and a sandbox."""
    yield from test_cli.cli.__wrapped__(tmp_path, monkeypatch)  # type: ignore[attr-defined]


def customer_with_card(cli: Cli) -> None:
    cli.ok("customers", "create", "--reference-id", "cus-1", "--email", "ana@example.com")
    link = cli.ok("instruments", "link", "cus-1")
    session_id = link["url"].rstrip("/").rsplit("/", 1)[-1]
    with httpx.Client(base_url=cli.sandbox_url) as http:
        http.post(
            f"/sandbox/sessions/{session_id}/complete",
            json={"cardNumber": "4444333322221111", "expMonth": 12, "expYear": 2031},
        ).raise_for_status()
    cli.ok("instruments", "sync", "cus-1")
    cli.ok("plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
           "--currency", "UYU")  # fmt: skip


def one_error_line(result: object) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert len(stderr.splitlines()) == 1, stderr
    return stderr


def test_a_changed_time_zone_is_refused_in_one_line_by_every_command(cli: Cli) -> None:
    cli.ok("customers", "list")  # first use records America/Montevideo
    madrid = {"BILLING_TIMEZONE": "Europe/Madrid"}
    for args in (["run", "--once"], ["customers", "list"], ["runs", "list"]):
        refused(cli, args, "BILLING_TIMEZONE is Europe/Madrid", madrid)
        line = one_error_line(cli(*args, extra_env=madrid))
        assert "America/Montevideo" in line
    cli.ok("customers", "list")


def test_a_future_test_clock_then_the_real_clock_is_refused_not_stranded(cli: Cli) -> None:
    customer_with_card(cli)
    future = (SystemClock().now() + timedelta(days=60)).replace(microsecond=0)
    cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")
    cli.simulator.faults.queue("drop_after", route="POST /v1/payments", times=1)
    first = cli.ok("run", "--once", "--as-of", future.isoformat())
    assert first["billing_pass"]["outcomes"]["unknown"]["count"] == 1  # parked in the future

    refused(cli, ["run", "--once"], f"driven to {future.isoformat()} by a test clock")
    earlier = (future - timedelta(days=1)).isoformat()
    refused(cli, ["run", "--once", "--as-of", earlier], "a test clock only moves forward")
    assert "Traceback" not in one_error_line(cli("run", "--once"))
    later = cli.ok("run", "--once", "--as-of", (future + timedelta(hours=1)).isoformat())
    assert later["reconcile"]["outcomes"]["approved"]["count"] == 1


def test_runs_list_shows_the_state_and_both_kinds(cli: Cli) -> None:
    customer_with_card(cli)
    cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic",
           "--start", "2026-01-31", "--backdate")  # fmt: skip
    cli.simulator.faults.queue("drop_after", route="POST /v1/payments", times=1)
    cli.ok("run", "--once", "--as-of", "2026-01-31T12:00:00+00:00")
    second = cli.ok("run", "--once", "--as-of", "2026-01-31T13:00:00+00:00")
    assert second["reconcile"]["state"] == "completed"

    runs = cli.ok("runs", "list")
    assert [(r["kind"], r["state"]) for r in runs] == [
        ("reconcile", "completed"),
        ("pass", "completed"),
    ]
    # The pass recorded an unknown outcome; the sweep found it approved at Plexo.
    assert runs[1]["recorded_outcomes"]["unknown"]["count"] == 1
    assert runs[1]["outcomes"]["approved"]["count"] == 1 and "unknown" not in runs[1]["outcomes"]
    assert [r["kind"] for r in cli.ok("runs", "list", "--kind", "pass")] == ["pass"]
    text = cli("runs", "list")
    assert text.exit_code == 0 and "STATE" in text.stdout and "completed" in text.stdout
    refused(cli, ["runs", "list", "--kind", "sweep"], "unknown run kind 'sweep'")


def test_check_reports_a_zone_that_differs_from_the_store(cli: Cli) -> None:
    first = cli("check", "--json")
    assert first.exit_code == 0, first.output
    cli.ok("customers", "list")
    bad = cli("check", "--json", extra_env={"BILLING_TIMEZONE": "UTC"})
    assert bad.exit_code == 1
    checks = {c["check"]: c for c in json.loads(bad.stdout)["checks"]}
    assert checks["timezone"]["ok"] is False
    assert "America/Montevideo" in checks["timezone"]["detail"]
