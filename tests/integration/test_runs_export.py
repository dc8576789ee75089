"""Finance's view of billing runs (issue 8 item 1): `runs list --from/--to` with counts,
`runs show`, `runs export --format csv|json`, on SQLite and PostgreSQL, through the real CLI.

Parked invoices come from the safety bounds (another change): they are planted here as that
contract writes them (`totals["parked"]` and an `invoice.parked` event naming the run).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.engine import run_export
from billing.engine.billing_pass import run_billing_pass
from billing.engine.events import record_event
from billing.engine.run_export import COLUMNS
from billing.store.db import session
from billing.store.models import BillingRun, ChargeAttempt, Customer, Invoice
from billing.testing import ensure_plan, plant_run, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts

DECLINING_CARD = "4000000000000010"


class Cli:
    """The `billing` command against the env's store and sandbox (CliRunner, in-process)."""

    def __init__(self, env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.chdir(tmp_path)
        for key in [k for k in os.environ if k.startswith("BILLING_")]:
            monkeypatch.delenv(key)
        self.env = {
            "BILLING_DATABASE_URL": env.ctx.engine.url.render_as_string(hide_password=False),
            "BILLING_PLEXO_BASE_URL": env.sandbox_url,
            "BILLING_TIMEZONE": "America/Montevideo",
        }

    def __call__(self, *args: str) -> Any:
        return CliRunner().invoke(app, list(args), env=self.env)

    def ok(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def refused(self, args: list[str], message: str) -> None:
        result = self(*args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.fixture
def cli(env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    return Cli(env, monkeypatch, tmp_path)


def billed_month(env: Env) -> int:
    """One pass: 3 approved in UYU, 2 approved in USD, one soft decline (UYU), one unknown
    (the connection drops after Plexo recorded the first payment). Returns the run id."""
    env.ctx.concurrency = 1  # charges in claim order: the first one is the unknown
    ensure_plan(env.ctx)
    ensure_plan(env.ctx, "monthly-usd", amount="19.90", currency="USD")
    seed_subscriptions(env.ctx, env.sandbox_url, 3, start=START, prefix="uyu")
    seed_subscriptions(env.ctx, env.sandbox_url, 2, start=START, plan_code="monthly-usd")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START, card=DECLINING_CARD, prefix="d")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START, prefix="lost")
    env.simulator.faults.queue("drop_after", route="POST /v1/payments", times=1)
    summary = run_billing_pass(env.ctx)
    assert summary.run_id is not None
    return summary.run_id


def plant_parked(env: Env, run_id: int) -> int:
    """As the safety bounds will: an invoice parked by this run, in its totals and events."""
    with session(env.ctx.engine) as s:
        invoice = s.exec(select(Invoice).order_by(col(Invoice.id))).first()
        assert invoice is not None and invoice.id is not None
        record_event(
            s, at=env.clock.now(), entity_type="invoice", entity_id=invoice.id,
            event="invoice.parked", actor="system", run_id=run_id,
            reason="above the UYU ceiling", amount_minor=12345600, currency="UYU",
        )  # fmt: skip
        run = s.get(BillingRun, run_id)
        assert run is not None
        run.totals = {**run.totals, "parked": {"count": 1, "amounts": {"UYU": 12345600}}}
        s.add(run)
        return invoice.id


def sums(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, Decimal]]:
    """(outcome, currency) -> (count, amount in major units) of export rows."""
    out: dict[tuple[str, str], tuple[int, Decimal]] = {}
    for r in rows:
        key = (r["outcome"], r["currency"])
        n, amount = out.get(key, (0, Decimal(0)))
        out[key] = (n + 1, amount + Decimal(r["amount"]))
    return out


def shown_sums(view: dict[str, Any]) -> dict[tuple[str, str], tuple[int, Decimal]]:
    """The same from `runs show --json`: its totals per outcome and currency."""
    out = {}
    for outcome, entry in view["outcomes"].items():
        for cur, amount in entry["amounts"].items():
            count = sum(
                1 for c in view["charges"] if c["outcome"] == outcome and c["currency"] == cur
            )
            out[(outcome, cur)] = (count, Decimal(amount))
    return out


def test_show_explains_a_run_per_outcome_currency_decline_and_charge(cli: Cli, env: Env) -> None:
    run_id = billed_month(env)
    parked_id = plant_parked(env, run_id)

    view = cli.ok("runs", "show", str(run_id))

    assert view["id"] == run_id and view["state"] == "completed"
    assert view["invoices_created"] == 7 and view["invoices_due"] == 7
    assert view["charge_count"] == 7 and len(view["charges"]) == 7
    assert view["outcomes"] == {
        "approved": {"count": 5, "amounts": {"USD": "39.80", "UYU": "1770.00"}},
        "declined": {"count": 1, "amounts": {"UYU": "590.00"}},
        "unknown": {"count": 1, "amounts": {"UYU": "590.00"}},
    }
    [decline] = view["declines"]
    assert decline["decline_class"] == "soft" and decline["count"] == 1
    assert decline["decline_code"] and decline["amounts"] == {"UYU": "590.00"}
    [unresolved] = view["unresolved"]
    assert unresolved["outcome"] == "unknown" and unresolved["plexo_payment_id"] is None
    assert view["parked"] == {"count": 1, "amounts": {"UYU": "123456.00"}}
    [parked] = view["parked_invoices"]
    assert parked["invoice_id"] == parked_id and parked["reason"] == "above the UYU ceiling"
    assert parked["amount"] == "123456.00" and parked["customer_reference_id"]
    with session(env.ctx.engine) as s:
        refs = dict(s.exec(select(Customer.id, Customer.reference_id)).all())
        numbers = {
            i.number: (i.subscription_id, refs[i.customer_id]) for i in s.exec(select(Invoice))
        }
    for charge in view["charges"]:
        assert numbers[charge["invoice_number"]] == (
            charge["subscription_id"],
            charge["customer_reference_id"],
        )
        assert charge["reference_id"] == f"{charge['invoice_number']}-1"
        assert charge["attempted_at"].endswith("+00:00")
        if charge["outcome"] in ("approved", "declined"):
            assert charge["plexo_payment_id"] and charge["resolved_at"]
    assert Counter(c["outcome"] for c in view["charges"]) == {
        "approved": 5,
        "declined": 1,
        "unknown": 1,
    }

    text = cli("runs", "show", str(run_id))
    assert text.exit_code == 0, text.output
    for part in ("totals:", "declines:", "parked:", "still unknown or pending:", "charges:"):
        assert part in text.stdout
    assert "1770.00" in text.stdout and "above the UYU ceiling" in text.stdout
    assert "2026-03-01 09:00" in text.stdout  # the merchant's zone (12:00 UTC)

    limited = cli("runs", "show", str(run_id), "--limit", "2", "--json")
    assert limited.exit_code == 0 and len(json.loads(limited.stdout)["charges"]) == 2
    assert limited.stderr.strip() == (
        "2 of 7 charges shown; use --limit N, --all or `billing runs export`"
    )


def test_list_filters_by_merchant_date_and_counts_each_run(cli: Cli, env: Env) -> None:
    first = billed_month(env)
    env.clock.advance(timedelta(days=31))  # 2026-04-01 09:00 in Montevideo
    second = run_billing_pass(env.ctx).run_id
    assert second is not None
    plant_parked(env, second)

    both = cli.ok("runs", "list", "--kind", "pass")
    assert [r["id"] for r in both] == [second, first]
    [march] = cli.ok("runs", "list", "--from", "2026-03-01", "--to", "2026-03-31")
    assert march["id"] == first
    assert march["invoices_due"] == 7 and march["parked"] == {"count": 0, "amounts": {}}
    assert march["outcomes"]["approved"]["amounts"] == {"USD": "39.80", "UYU": "1770.00"}
    [april] = cli.ok("runs", "list", "--from", "2026-04-01")
    assert april["id"] == second and april["parked"]["count"] == 1
    assert cli.ok("runs", "list", "--to", "2026-02-28") == []
    # --to includes the whole merchant day (the run started 09:00 there).
    assert [r["id"] for r in cli.ok("runs", "list", "--to", "2026-03-01")] == [first]

    text = cli("runs", "list", "--from", "2026-03-01", "--to", "2026-03-01")
    assert text.exit_code == 0, text.output
    header, row = text.stdout.splitlines()
    assert header.split() == [
        "ID", "KIND", "STATE", "STARTED_AT", "DUE", "APPROVED", "DECLINED", "UNKNOWN",
        "PARKED", "APPROVED_AMOUNT",
    ]  # fmt: skip
    assert row.split()[5:10] == ["7", "5", "1", "1", "0"] and "1770.00 UYU" in row


def test_bad_input_is_one_line_and_writes_nothing(cli: Cli, env: Env, tmp_path: Path) -> None:
    run_id = billed_month(env)
    before = table_counts(cli.env["BILLING_DATABASE_URL"])
    cli.refused(["runs", "list", "--from", "2026-13-01"], "--from '2026-13-01' is not an ISO")
    cli.refused(["runs", "list", "--to", "yesterday"], "--to 'yesterday' is not an ISO")
    cli.refused(["runs", "list", "--from", "2026-03-02", "--to", "2026-03-01"], "before --to")
    cli.refused(["runs", "list", "--from", "2026-03-01T10:00"], "has no timezone offset")
    cli.refused(["runs", "show", "999"], "no billing run 999")
    cli.refused(["runs", "show", str(2**40)], f"no billing run {2**40}")
    cli.refused(["runs", "show", "abc"], "")
    cli.refused(["runs", "show", str(run_id), "--all", "--limit", "3"], "not both")
    outdir = tmp_path / "out"
    outdir.mkdir()
    target = outdir / "out.csv"
    cli.refused(["runs", "export", "999", "--format", "csv", "--output", str(target)], "999")
    cli.refused(["runs", "export", str(run_id), "--format", "xlsx"], "unknown format 'xlsx'")
    cli.refused(
        ["runs", "export", str(run_id), "--format", "csv", "--output", "/nonexistent/x.csv"],
        "cannot write /nonexistent/x.csv",
    )
    assert list(outdir.iterdir()) == []  # no file, no half file
    assert table_counts(cli.env["BILLING_DATABASE_URL"]) == before


def test_export_csv_round_trips_with_the_totals_of_runs_show(
    cli: Cli, env: Env, tmp_path: Path
) -> None:
    run_id = billed_month(env)
    view = cli.ok("runs", "show", str(run_id))
    target = tmp_path / "run.csv"

    done = cli("runs", "export", str(run_id), "--format", "csv", "--output", str(target))

    assert done.exit_code == 0, done.output
    assert done.stderr.strip() == f"run {run_id}: 7 charge attempts written to {target}"
    raw = target.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\r\n") == 8  # BOM, CRLF, 1 + 7 lines
    with target.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    assert sums(rows) == shown_sums(view)
    assert all(Decimal(r["amount"]).as_tuple().exponent == -2 for r in rows)  # "590.00"
    by_ref = {r["reference_id"]: r for r in rows}
    for charge in view["charges"]:
        row = by_ref[charge["reference_id"]]
        assert row["run_id"] == str(run_id)
        assert row["period_start"] == charge["period_start"]  # ISO-8601 UTC
        assert row["attempted_at"] == charge["attempted_at"]
        assert row["plexo_payment_id"] == (charge["plexo_payment_id"] or "")
    [declined] = [r for r in rows if r["outcome"] == "declined"]
    assert declined["decline_class"] == "soft" and declined["decline_code"]
    assert declined["result_code"]  # both codes of the decline

    # Without --output: the same bytes on stdout.
    streamed = cli("runs", "export", str(run_id), "--format", "csv")
    assert streamed.exit_code == 0 and streamed.stdout_bytes == raw


def test_export_json_lines_parse_with_the_same_totals(cli: Cli, env: Env) -> None:
    run_id = billed_month(env)
    view = cli.ok("runs", "show", str(run_id))

    done = cli("runs", "export", str(run_id), "--format", "json")

    assert done.exit_code == 0, done.output
    assert not done.stdout_bytes.startswith(b"\xef\xbb\xbf")  # JSON takes no BOM
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 7 and sums(records) == shown_sums(view)
    assert all(set(COLUMNS) | {"amount_minor"} == set(r) for r in records)
    assert {r["reference_id"]: r for r in records} == {
        c["reference_id"]: c for c in view["charges"]
    }


def test_a_text_cell_that_starts_a_formula_gets_an_apostrophe(
    cli: Cli, env: Env, tmp_path: Path
) -> None:
    run_id = billed_month(env)
    with session(env.ctx.engine) as s:
        attempt = s.exec(select(ChargeAttempt).where(ChargeAttempt.state == "declined")).one()
        invoice = s.get(Invoice, attempt.invoice_id)
        assert invoice is not None
        s.exec(
            update(ChargeAttempt)
            .where(col(ChargeAttempt.id) == attempt.id)
            .values(decline_code="=HYPERLINK(1)", result_code="-1", plexo_payment_id="@SUM(A1)")
        )
        s.exec(
            update(Customer)
            .where(col(Customer.id) == invoice.customer_id)
            .values(reference_id="+59899")
        )
    target = tmp_path / "run.csv"
    done = cli("runs", "export", str(run_id), "--format", "csv", "--output", str(target))
    assert done.exit_code == 0, done.output
    with target.open(encoding="utf-8-sig", newline="") as f:
        [row] = [r for r in csv.DictReader(f) if r["outcome"] == "declined"]
    assert row["decline_code"] == "'=HYPERLINK(1)" and row["result_code"] == "'-1"
    assert row["plexo_payment_id"] == "'@SUM(A1)" and row["customer_reference_id"] == "'+59899"
    assert row["amount"] == "590.00"  # numbers are not text cells: never escaped
    # JSON Lines keeps the values as they are.
    [record] = [
        json.loads(line)
        for line in cli("runs", "export", str(run_id), "--format", "json").stdout.splitlines()
        if json.loads(line)["outcome"] == "declined"
    ]
    assert record["decline_code"] == "=HYPERLINK(1)" and record["result_code"] == "-1"


def test_a_streamed_export_of_thousands_of_attempts_is_complete_and_in_order(
    cli: Cli, env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3000
    run_id = plant_run(env.ctx.engine, n, at=START)
    monkeypatch.setattr(run_export, "PAGE", 128)  # many pages of the one cursor
    view = cli.ok("runs", "show", str(run_id), "--limit", "1")
    target = tmp_path / "big.csv"

    done = cli("runs", "export", str(run_id), "--format", "csv", "--output", str(target))

    assert done.exit_code == 0, done.output
    with target.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["reference_id"] for r in rows] == [f"INV-B{run_id:04d}{i:09d}-1" for i in range(n)]
    totals = sums(rows)
    assert {(o, c): amount for (o, c), (_, amount) in totals.items()} == {
        (o, c): Decimal(a) for o, e in view["outcomes"].items() for c, a in e["amounts"].items()
    }
    per_outcome = Counter(r["outcome"] for r in rows)
    assert per_outcome == {o: e["count"] for o, e in view["outcomes"].items()}
    assert sum(e["count"] for e in view["outcomes"].values()) == n == view["charge_count"]
    assert len(view["unresolved"]) == n // 10
    lines = cli("runs", "export", str(run_id), "--format", "json").stdout.splitlines()
    assert len(lines) == n and json.loads(lines[-1])["reference_id"] == rows[-1]["reference_id"]


def test_export_streams_rows_as_they_come(env: Env) -> None:
    """The writer pulls rows one by one from the cursor: it has written the first rows
    before the query has produced the last (nothing holds the whole run)."""
    run_id = plant_run(env.ctx.engine, 500, at=START)
    out = io.StringIO()

    def rows() -> Any:
        for i, row in enumerate(run_export.iter_charges(env.ctx.engine, run_id)):
            assert out.getvalue().count("\r\n") == i + 1  # header + every row before this
            yield row

    assert run_export.write_csv(rows(), out) == 500
    assert out.getvalue().count("\r\n") == 501
