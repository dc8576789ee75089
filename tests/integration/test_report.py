"""`billing report`: a small history billed on the test clock against the sandbox over HTTP
(SQLite and PostgreSQL), every figure checked against a hand-computed expectation.

The history (09:00 Montevideo = 12:00 UTC; the report covers 2026-03-15 to 2026-05-14):
- A1 monthly 590.00 UYU from Mar 1; on Mar 25 changes to "plus" 990.00 UYU (from Apr 1).
- A2 monthly 590.00 UYU from Mar 1; on Mar 25 changes to 25.00 USD (from Apr 1).
- E yearly 1200.00 UYU from Mar 1 (MRR 100.00).
- C monthly 590.00 UYU from Mar 1; its card is replaced by an always-declining one before
  Apr 1: declined Apr 1, 2, 4, 6, 8, then the chain ends and dunning marks it unpaid.
- B monthly 590.00 UYU from Mar 20 on a card declining its first two charges: declined
  Mar 20 and 21, recovered Mar 23, renewed Apr 20 (and May 20, after the range).
- F monthly 590.00 UYU from Apr 10.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from typer.testing import CliRunner

from billing.cli.main import app
from billing.engine import customers, subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.engine.events import record_event
from billing.engine.report import RevenueReport, revenue_report
from billing.store.db import session
from billing.store.models import Invoice, Subscription
from billing.testing import APPROVING_CARD, ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts

TZ = ZoneInfo("America/Montevideo")
SOFT = "4000000000000010"  # declined 51, always
SOFT_TWICE = "4000000000000341"  # declined 51 on the first two charges, then approved
FROM = datetime(2026, 3, 15, tzinfo=TZ)
TO = datetime(2026, 5, 15, tzinfo=TZ)  # --to 2026-05-14 includes that whole day


def at(month: int, day: int) -> datetime:
    return datetime(2026, month, day, 12, 0, tzinfo=UTC)


def pass_at(env: Env, when: datetime) -> None:
    env.clock.set(when)
    run_billing_pass(env.ctx)


def plant_parked(env: Env, sub_id: int) -> None:
    """Invoices as the safety bounds (another module) leave them: status `parked` and the
    event `invoice.parked`. P1 parked in the range and still parked; P2 parked before the
    range and still parked; P3 parked in the range, since released (open)."""
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None
        for n, (status, minor, when) in enumerate(
            [
                ("parked", 100000, at(4, 15)),
                ("parked", 20000, at(3, 1)),
                ("open", 3000, at(5, 2)),
            ]
        ):
            start = datetime(2030, 1 + n, 1, tzinfo=UTC)
            invoice = Invoice(
                number=f"INV-PLANTED{n:04d}",
                subscription_id=sub_id,
                customer_id=sub.customer_id,
                period_index=100 + n,
                period_start=start,
                period_end=start + timedelta(days=28),
                amount_minor=minor,
                currency="UYU",
                status=status,
                created_at=when,
                updated_at=when,
            )
            s.add(invoice)
            s.flush()
            assert invoice.id is not None
            record_event(
                s,
                at=when,
                entity_type="invoice",
                entity_id=invoice.id,
                event="invoice.parked",
                actor="test",
                reason="above the ceiling",
            )


@pytest.fixture
def history(env: Env) -> Env:
    ctx = env.ctx
    ensure_plan(ctx)
    ensure_plan(ctx, code="plus", amount="990.00")
    ensure_plan(ctx, code="monthly-usd", amount="25.00", currency="USD")
    ensure_plan(ctx, code="yearly", amount="1200.00", interval="year")
    [a1] = seed_subscriptions(ctx, env.sandbox_url, 1, prefix="a1")
    [a2] = seed_subscriptions(ctx, env.sandbox_url, 1, prefix="a2")
    seed_subscriptions(ctx, env.sandbox_url, 1, prefix="e", plan_code="yearly")
    seed_subscriptions(ctx, env.sandbox_url, 1, prefix="c")
    seed_subscriptions(ctx, env.sandbox_url, 1, prefix="b", card=SOFT_TWICE, start=at(3, 20))
    pass_at(env, START)
    for day in (20, 21, 23):
        pass_at(env, at(3, day))
    env.clock.set(at(3, 25))
    subscriptions.change_plan(ctx, a1, plan_code="plus", reason="upgrade")
    subscriptions.change_plan(ctx, a2, plan_code="monthly-usd", reason="pays in dollars")
    env.clock.set(at(3, 31))
    [old] = customers.list_instruments(ctx, "c-00000")
    with session(ctx.engine) as s:
        plexo_id = customers.get_customer(s, "c-00000").plexo_id
    with httpx.Client(base_url=env.sandbox_url) as http:
        http.post(
            f"/sandbox/customers/{plexo_id}/instruments",
            json={"cardNumber": SOFT, "expMonth": 12, "expYear": 2035},
        ).raise_for_status()
    customers.sync_instruments(ctx, "c-00000")
    customers.remove_instrument(ctx, "c-00000", str(old.id))
    for day in (1, 2, 4, 6, 8):
        pass_at(env, at(4, day))
    env.clock.set(at(4, 10))
    [f] = seed_subscriptions(ctx, env.sandbox_url, 1, prefix="f", card=APPROVING_CARD)
    pass_at(env, at(4, 10))
    for month, day in ((4, 20), (5, 1), (5, 10), (5, 20)):
        pass_at(env, at(month, day))
    plant_parked(env, f)
    return env


def figures(report: RevenueReport) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in report.currencies:
        out[c.currency] = {
            name: (getattr(c, name).count, getattr(c, name).amount_minor)
            for name in (
                "collected",
                "failed_attempts",
                "uncollectible",
                "recovered",
                "failed_invoices",
                "recovered_of_failed",
                "involuntary_churn",
                "parked",
                "parked_now",
            )
        }
        out[c.currency].update(
            mrr=(c.mrr_start, c.mrr_end),
            subscriptions=(c.subscriptions_start, c.subscriptions_end),
            movement={k: v for k, v in c.movement.items() if v},
            rate=c.recovery_rate,
        )
    return out


EXPECTED_UYU = {
    # B Mar 23, A1 Apr 1 (990), F Apr 10, B Apr 20, A1 May 1 (990), F May 10.
    "collected": (6, 59000 + 99000 + 59000 + 59000 + 99000 + 59000),
    # B twice, C five times.
    "failed_attempts": (7, 7 * 59000),
    "uncollectible": (1, 59000),  # C's April invoice
    "recovered": (1, 59000),  # B's first invoice
    "failed_invoices": (2, 2 * 59000),  # B's (Mar 20) and C's (Apr 1)
    "recovered_of_failed": (1, 59000),
    "involuntary_churn": (1, 59000),  # C, unpaid on Apr 8: its MRR
    "parked": (2, 100000 + 3000),  # P1 and P3 (parked in the range)
    "parked_now": (2, 100000 + 20000),  # P1 and P2
    # Start: A1, A2, C (590 each), E (1200 / 12). End: A1 (990), E, B, F.
    "mrr": (3 * 59000 + 10000, 99000 + 10000 + 59000 + 59000),
    "subscriptions": (4, 4),
    "movement": {"new": 2 * 59000, "churned": 59000, "expansion": 40000, "moved_out": 59000},
    "rate": Decimal("0.5000"),
}
EXPECTED_USD = {
    "collected": (2, 5000),  # A2 Apr 1 and May 1
    "mrr": (0, 2500),
    "subscriptions": (0, 1),
    "movement": {"moved_in": 2500},
    "rate": None,
}


def test_every_figure_matches_the_hand_computed_history(history: Env) -> None:
    report = revenue_report(history.ctx, FROM, TO)
    got = figures(report)
    assert set(got) == {"UYU", "USD"}
    assert got["UYU"] == EXPECTED_UYU
    usd = got["USD"]
    for name, value in EXPECTED_USD.items():
        assert usd[name] == value, name
    zero = {"failed_attempts", "uncollectible", "recovered", "involuntary_churn", "parked"}
    assert all(usd[name] == (0, 0) for name in zero)
    for c in report.currencies:
        m = c.movement
        assert c.mrr_end == (
            c.mrr_start
            + m["new"]
            + m["reactivated"]
            - m["churned"]
            + m["expansion"]
            - m["contraction"]
            + m["moved_in"]
            - m["moved_out"]
        )
        # The buckets tile the range: their sums are the totals.
        assert sum(b.collected.amount_minor for b in c.buckets) == c.collected.amount_minor
        assert sum(b.failed.count for b in c.buckets) == c.failed_attempts.count
        assert sum(b.recovered.amount_minor for b in c.buckets) == c.recovered.amount_minor
    assert report.bucket == "week"  # 61 days: weeks
    uyu = report.currencies[1]
    assert uyu.buckets[0].bucket.label == "2026-03-09"  # the Monday of the week of Mar 15
    assert uyu.buckets[0].bucket.start == FROM.astimezone(UTC)  # cut to the range
    [march_23] = [b for b in uyu.buckets if b.bucket.label == "2026-03-23"]
    assert (march_23.collected.count, march_23.recovered.count) == (1, 1)


def test_the_range_bounds_and_a_monthly_bucket(history: Env) -> None:
    # Up to Apr 1 included: C's first decline is in, its end (Apr 8) is not.
    report = revenue_report(history.ctx, FROM, datetime(2026, 4, 2, tzinfo=TZ), bucket="month")
    uyu = {c.currency: c for c in report.currencies}["UYU"]
    assert (uyu.failed_attempts.count, uyu.involuntary_churn.count) == (3, 0)
    assert (uyu.failed_invoices.count, uyu.recovered_of_failed.count) == (2, 1)
    assert [b.bucket.label for b in uyu.buckets] == ["2026-03", "2026-04"]
    # C is past_due at the end: it still counts.
    assert uyu.mrr_end == 99000 + 10000 + 59000 + 59000
    # Before anything started, only the invoices parked now (a snapshot, not of the range).
    [early] = revenue_report(history.ctx, datetime(2026, 1, 1, tzinfo=TZ), START).currencies
    assert (early.parked_now.count, early.collected.count, early.mrr_end) == (2, 0, 0)


def cli(db_url: str, *args: str) -> Any:
    environ = {
        "BILLING_DATABASE_URL": db_url,
        "BILLING_TIMEZONE": "America/Montevideo",
    }
    return CliRunner().invoke(app, ["report", *args], env=environ)


RANGE = ("--from", "2026-03-15", "--to", "2026-05-14")


def test_json_and_csv_give_the_same_totals(history: Env, db_url: str) -> None:
    result = cli(db_url, *RANGE, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["from"] == FROM.astimezone(UTC).isoformat()
    assert data["to"] == TO.astimezone(UTC).isoformat()
    uyu = data["currencies"]["UYU"]
    assert uyu["collected"] == {"count": 6, "amount_minor": EXPECTED_UYU["collected"][1]}
    assert uyu["recovery_rate"] == "0.5000"
    assert uyu["mrr"]["start_minor"] == 187000 and uyu["mrr"]["end_minor"] == 227000
    assert uyu["mrr"]["movement"]["moved_out_minor"] == 59000
    assert data["currencies"]["USD"]["mrr"]["movement"]["moved_in_minor"] == 2500
    assert sum(b["collected"]["amount_minor"] for b in uyu["buckets"]) == 434000

    as_csv = cli(db_url, *RANGE, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    totals = {(r["currency"], r["metric"]): r for r in rows if r["section"] in ("totals", "mrr")}
    assert totals[("UYU", "collected")]["count"] == "6"
    assert totals[("UYU", "collected")]["amount"] == "4340.00"
    assert totals[("UYU", "failed_attempts")]["amount"] == "4130.00"
    assert totals[("UYU", "recovery_rate")]["rate"] == "0.5000"
    assert totals[("UYU", "involuntary_churn")]["amount"] == "590.00"
    assert totals[("UYU", "mrr_start")]["amount"] == "1870.00"
    assert totals[("UYU", "mrr_end")]["amount"] == "2270.00"
    assert totals[("USD", "mrr_moved_in")]["amount"] == "25.00"
    weekly = [r for r in rows if r["section"] == "bucket" and r["metric"] == "collected"]
    assert sum(Decimal(r["amount"]) for r in weekly if r["currency"] == "UYU") == Decimal("4340.00")
    # Every JSON total is a CSV row with the same figure.
    for code, figures_ in data["currencies"].items():
        for name in ("collected", "failed_attempts", "uncollectible", "recovered", "parked"):
            row = totals[(code, name)]
            assert int(row["count"]) == figures_[name]["count"]
            assert Decimal(row["amount"]) * 100 == figures_[name]["amount_minor"]


def test_the_table_and_an_output_file(history: Env, db_url: str, tmp_path: Any) -> None:
    result = cli(db_url, *RANGE)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "UYU" in text and "USD" in text
    assert "4340.00" in text and "50.00" in text and "50.0%" in text
    assert "2026-03-15" in text and "2026-05-14" in text
    target = tmp_path / "report.html"
    written = cli(db_url, *RANGE, "--format", "html", "--output", str(target))
    assert written.exit_code == 0, written.output
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert 'data-currency="UYU"' in page and 'data-collected-minor="434000"' in page
    assert str(target) in written.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--from", "2026-13-01", "--to", "2026-05-01"), "--from"),
        (("--from", "2026-05-01", "--to", "2026-04-01"), "before"),
        (("--from", "2026-03-01T00:00:00", "--to", "2026-05-01"), "offset"),
        (("--from", "2026-03-01"), "--to"),
        ((*RANGE, "--format", "pdf"), "--format"),
        ((*RANGE, "--format", "csv", "--json"), "--json"),
        ((*RANGE, "--bucket", "day"), "--bucket"),
        ((*RANGE, "--output", "/nonexistent-dir/report.html"), "--output"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    env: Env, db_url: str, args: tuple[str, ...], needle: str
) -> None:
    ensure_plan(env.ctx)
    before = table_counts(db_url)
    result = cli(db_url, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert result.stdout == ""
    assert table_counts(db_url) == before
