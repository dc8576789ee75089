"""`billing reconcile`: the ledger against the sandbox's payment listing, over real HTTP, on
SQLite and PostgreSQL. Billing runs on the test clock (the sandbox shares it, so Plexo's
createdAt and our attempts agree); the check runs through the CLI, as finance would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from billing import metrics
from billing.cli.main import app
from billing.daemon.scheduler import build_scheduler
from billing.daemon.service import Daemon, store_samples
from billing.engine.billing_pass import run_billing_pass
from billing.engine.ledger_check import Ours, Theirs, compare
from billing.plexo.wire import encode_json
from billing.store.db import session
from billing.store.models import ChargeAttempt, Event, LedgerCheckRun, ReconciliationFinding
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts

SOFT = "4000000000000010"  # declined 51, always
AUTH = ("sandbox-client", "sandbox-key")
DAY = "2026-03-01"  # START is 09:00 in Montevideo that day


@pytest.fixture
def billed(env: Env) -> Env:
    """Three approved charges and one declined, on the test clock the sandbox shares."""
    env.simulator.clock = env.clock
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 3)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, card=SOFT, prefix="soft")
    run_billing_pass(env.ctx)
    return env


def cli(env: Env, db_url: str, *args: str, base_url: str | None = None) -> Any:
    environ = {
        "BILLING_DATABASE_URL": db_url,
        "BILLING_PLEXO_BASE_URL": base_url or env.sandbox_url,
        "BILLING_TIMEZONE": "America/Montevideo",
    }
    return CliRunner().invoke(app, list(args), env=environ)


def check(env: Env, db_url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = cli(env, db_url, "reconcile", "--from", DAY, "--to", DAY, "--json", *extra)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def attempts(env: Env) -> list[ChargeAttempt]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(ChargeAttempt).order_by(col(ChargeAttempt.id))).all())


def edit(env: Env, attempt_id: int | None, **values: Any) -> None:
    with session(env.ctx.engine) as s:
        row = s.get(ChargeAttempt, attempt_id)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)
        s.add(row)


def foreign_payment(env: Env, reference_id: str, total: str = "100.00") -> str:
    """An approved payment made at the sandbox by someone else (its HTTP API, not ours)."""
    with httpx.Client(base_url=env.sandbox_url, auth=AUTH, timeout=10) as http:
        customer = http.post(
            "/v1/customers", json={"referenceId": f"other-{reference_id}", "email": "o@x.uy"}
        ).json()
        http.post(
            f"/sandbox/customers/{customer['id']}/instruments",
            json={"cardNumber": "4444333322221111", "expMonth": 12, "expYear": 2035},
        ).raise_for_status()
        [card] = http.get(f"/v1/customers/{customer['id']}/payment-instruments").json()
        body = {
            "merchantId": 1,
            "referenceId": reference_id,
            "invoiceNumber": f"OTHER-{reference_id}",
            "customerId": customer["id"],
            "amount": {"total": Decimal(total), "currency": "UYU"},
            "paymentMethod": {"source": "token", "paymentInstrument": {"token": card["token"]}},
        }
        answer = http.post(
            "/v1/payments", content=encode_json(body), headers={"content-type": "application/json"}
        ).json()
    assert answer["status"] == "approved", answer
    return str(answer["id"])


def test_a_clean_ledger_after_real_passes_has_no_findings(billed: Env, db_url: str) -> None:
    code, report = check(billed, db_url)
    assert code == 0 and report["clean"] is True and report["findings"] == []
    assert report["counts"]["matched"] == 4  # three approved, one declined: Plexo agrees
    assert report["counts"]["plexo_payments"] == 4
    text = cli(billed, db_url, "reconcile", "--from", DAY, "--to", DAY)
    assert text.exit_code == 0 and "no findings" in text.stdout and "4 matched" in text.stdout


def test_four_planted_discrepancies_are_found_resolved_and_not_duplicated(
    billed: Env, db_url: str
) -> None:
    env = billed
    rows = attempts(env)
    approved = [a for a in rows if a.state == "approved"]
    [declined] = [a for a in rows if a.state == "declined"]
    env.clock.advance(timedelta(hours=1))
    foreign_id = foreign_payment(env, "someone-else-1")
    # Approved here, never at Plexo: an attempt the store has and Plexo does not.
    ghost = ChargeAttempt(
        invoice_id=approved[0].invoice_id,
        attempt_number=9,
        reference_id=f"{approved[0].reference_id}-ghost",
        state="approved",
        amount_minor=approved[0].amount_minor,
        currency="UYU",
        node="test",
        created_at=START + timedelta(hours=2),
    )
    with session(env.ctx.engine) as s:
        s.add(ghost)
    edit(env, approved[1].id, amount_minor=approved[1].amount_minor + 100)  # amount mismatch
    edit(env, declined.id, state="approved")  # Plexo says denied: status mismatch

    code, report = check(env, db_url)
    assert code == 1 and report["clean"] is False
    kinds = {f["reference_id"]: f["kind"] for f in report["findings"]}
    assert kinds == {
        "someone-else-1": "missing_here",
        ghost.reference_id: "missing_at_plexo",
        approved[1].reference_id: "amount_mismatch",
        declined.reference_id: "status_mismatch",
    }
    by_kind = {f["kind"]: f for f in report["findings"]}
    assert by_kind["missing_here"]["plexo_payment_id"] == foreign_id
    assert by_kind["missing_here"]["found_amount_minor"] == 10000
    amount = by_kind["amount_mismatch"]
    assert amount["expected_amount_minor"] == approved[1].amount_minor + 100
    assert amount["found_amount_minor"] == approved[1].amount_minor
    assert (amount["expected_currency"], amount["found_currency"]) == ("UYU", "UYU")
    status = by_kind["status_mismatch"]
    assert (status["expected_status"], status["found_status"]) == ("approved", "denied")
    assert by_kind["missing_at_plexo"]["found_status"] == "absent"
    assert report["counts"]["matched"] == 2  # approved[0] and approved[2]

    # A re-run updates the open findings, it does not add new ones.
    code, again = check(env, db_url)
    assert code == 1
    assert sorted(f["id"] for f in again["findings"]) == sorted(f["id"] for f in report["findings"])
    assert {f["last_check_id"] for f in again["findings"]} == {again["check_id"]}
    with session(env.ctx.engine) as s:
        assert len(s.exec(select(ReconciliationFinding)).all()) == 4

    # Resolving is explicit and logged with the actor and the reason.
    target = by_kind["missing_here"]["id"]
    done = cli(
        env, db_url, "reconcile", "findings", "resolve", str(target),
        "--by", "alice", "--reason", "a test payment made by support", "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["resolved_by"] == "alice"
    with session(env.ctx.engine) as s:
        [event] = s.exec(
            select(Event).where(Event.event == "reconciliation.finding_resolved")
        ).all()
    assert (event.actor, event.reason, event.entity_id) == (
        "alice",
        "a test payment made by support",
        target,
    )
    twice = cli(env, db_url, "reconcile", "findings", "resolve", str(target), "--reason", "x")
    assert twice.exit_code == 2 and "already resolved by alice" in twice.stderr
    listed = cli(env, db_url, "reconcile", "findings", "list", "--open", "--json")
    assert listed.exit_code == 0
    assert {f["kind"] for f in json.loads(listed.stdout)} == {
        "missing_at_plexo",
        "amount_mismatch",
        "status_mismatch",
    }

    # The resolved one stays resolved on a re-run; a pair that matches again closes itself.
    edit(env, approved[1].id, amount_minor=approved[1].amount_minor)
    code, third = check(env, db_url)
    assert code == 1
    states = {f["kind"]: f["state"] for f in third["findings"]}
    assert states == {
        "missing_here": "resolved",
        "missing_at_plexo": "open",
        "status_mismatch": "open",
    }
    assert third["auto_resolved"] == [amount["id"]]
    with session(env.ctx.engine) as s:
        assert len(s.exec(select(ReconciliationFinding)).all()) == 4

    csv_out = cli(env, db_url, "reconcile", "--from", DAY, "--to", DAY, "--format", "csv")
    assert csv_out.exit_code == 1
    header, *lines = csv_out.stdout.splitlines()
    assert header.startswith("id,kind,state,reference_id") and len(lines) == 3


def test_paging_reads_every_page(env: Env, db_url: str) -> None:
    env.simulator.clock = env.clock
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 7)
    run_billing_pass(env.ctx)
    env.clock.advance(timedelta(hours=1))
    foreign_payment(env, "late-foreign")  # the last payment listed: on the last page
    code, report = check(env, db_url, "--page-size", "2")
    assert report["counts"]["pages"] == 4 and report["counts"]["plexo_payments"] == 8
    assert report["counts"]["matched"] == 7
    assert [f["reference_id"] for f in report["findings"]] == ["late-foreign"] and code == 1


class Garbage(BaseHTTPRequestHandler):
    """A "gateway" whose first page is a fine page and whose second is a proxy's HTML."""

    def do_GET(self) -> None:
        if "page=1" in self.path:
            item = {
                "id": "aaaaaaaaaaaaaaaaaaaaaaaa",
                "referenceId": "stranger-1",
                "status": "approved",
                "createdAt": "2026-03-01T12:00:00.000Z",
                "amount": {"total": 5.0, "currency": "UYU"},
            }
            body, kind = json.dumps({"items": [item], "page": 1, "size": 1, "total": 9}), "json"
        else:
            body, kind = "<html><body>upstream gone</body></html>", "html"
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", f"application/{kind}" if kind == "json" else "text/html")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def garbage_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_gateway_answering_garbage_stores_nothing_and_says_one_line(
    billed: Env, db_url: str, garbage_url: str
) -> None:
    before = table_counts(db_url)
    args = ("reconcile", "--from", DAY, "--to", DAY, "--page-size", "1")
    result = cli(billed, db_url, *args, base_url=garbage_url)
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "not JSON" in line, line
    assert table_counts(db_url) == before, "a partial listing must store nothing"

    # The sandbox behind a proxy that answers 502 with an HTML page: the same.
    billed.simulator.faults.queue(
        "bare_before", route="GET /v1/payments/query", status=502, body="html"
    )
    result = cli(billed, db_url, "reconcile", "--from", DAY, "--to", DAY)
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert table_counts(db_url) == before


def test_bad_ranges_are_refused_in_one_line(billed: Env, db_url: str) -> None:
    before = table_counts(db_url)
    for args, message in [
        (("--from", "2026-03-02", "--to", "2026-03-01"), "--from must be before --to"),
        (("--from", "yesterday", "--to", DAY), "not an ISO date"),
        (("--from", "2026-03-01T00:00:00", "--to", DAY), "no timezone offset"),
        (("--to", DAY), "give --from DATE and --to DATE"),
        (("--from", DAY, "--to", DAY, "--format", "xml"), "unknown --format"),
    ]:
        result = cli(billed, db_url, "reconcile", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert table_counts(db_url) == before


def test_the_daemon_checks_once_a_day_after_its_hour_and_exposes_open_findings(
    billed: Env,
) -> None:
    env = billed
    env.clock.advance(timedelta(hours=1))
    foreign_payment(env, "daily-foreign")
    daemon = Daemon(env.ctx, ledger_check=(6, 3))
    env.clock.set(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))  # 05:00 in Montevideo: not yet
    assert daemon.ledger_check() is None
    env.clock.set(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))  # 07:00: due
    check_id = daemon.ledger_check()
    assert check_id is not None
    assert daemon.ledger_check() is None, "once a day"
    with session(env.ctx.engine) as s:
        run = s.get(LedgerCheckRun, check_id)
        assert run is not None and run.trigger == "daemon"
        assert run.range_to == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # local midnight
        assert run.range_from == datetime(2026, 2, 27, 3, 0, tzinfo=UTC)
        assert run.counts["matched"] == 4 and run.counts["missing_here"] == 1
    samples = store_samples(env.ctx.engine, env.ctx.clock.now())
    assert samples[metrics.RECONCILIATION_OPEN.name] == {
        ("missing_here",): 1.0,
        ("missing_at_plexo",): 0.0,
        ("status_mismatch",): 0.0,
        ("amount_mismatch",): 0.0,
    }
    assert Daemon(env.ctx).ledger_check() is None, "off unless configured"


def test_the_daily_job_is_scheduled_only_when_enabled() -> None:
    class Jobs:
        def __getattr__(self, name: str) -> Any:
            return lambda: None

    off = build_scheduler(Jobs(), tick_seconds=60, reconcile_seconds=60, reaper_seconds=60)  # type: ignore[arg-type]
    assert "ledger_check" not in {job.id for job in off.get_jobs()}
    on = build_scheduler(
        Jobs(),  # type: ignore[arg-type]
        tick_seconds=60,
        reconcile_seconds=60,
        reaper_seconds=60,
        ledger_check_seconds=600,
    )
    [job] = [job for job in on.get_jobs() if job.id == "ledger_check"]
    assert job.coalesce is True and job.max_instances == 1


def ours(state: str, minor: int = 59000, currency: str = "UYU") -> Ours:
    return Ours(1, 1, "INV-1", "INV-1-1", state, minor, currency, START)


def theirs(status: str | None, minor: int | None = 59000, currency: str | None = "UYU") -> Theirs:
    return Theirs("p1", "INV-1-1", status, minor, currency, START)


@pytest.mark.parametrize(
    ("mine", "plexo", "verdict"),
    [
        (ours("approved"), theirs("approved"), "matched"),
        (ours("approved"), theirs("approved", 59100), "amount_mismatch"),
        (ours("approved"), theirs("approved", 59000, "USD"), "amount_mismatch"),
        (ours("approved"), theirs("approved", None, None), "amount_mismatch"),
        (ours("approved"), theirs("denied"), "status_mismatch"),
        (ours("approved"), theirs("refunded"), "status_mismatch"),
        (ours("approved"), theirs("pending"), "status_mismatch"),
        (ours("approved"), None, "missing_at_plexo"),
        (ours("declined"), theirs("denied"), "matched"),
        (ours("declined"), None, "matched"),  # refused before any payment existed
        (ours("declined"), theirs("approved"), "missing_here"),
        (ours("declined"), theirs("refunded"), "status_mismatch"),
        (ours("unknown"), theirs("approved"), "unresolved"),
        (ours("sending"), None, "unresolved"),
        (None, theirs("approved"), "missing_here"),
        (None, theirs("partially-refunded"), "missing_here"),
        (None, theirs("denied"), "ignored"),
    ],
)
def test_compare_table(mine: Ours | None, plexo: Theirs | None, verdict: str) -> None:
    assert compare(mine, plexo) == verdict
