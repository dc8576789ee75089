"""Issue 8 item 3: the approval gate. With `approval_required`, a pass freezes a plan and
charges nothing; `runs approve` lets the next pass charge exactly the frozen items, once;
reject and expiry charge nothing; a renewal due after freezing waits for the next plan.

On SQLite and PostgreSQL (db_url), the sandbox a real HTTP server, the CLI through CliRunner.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.engine.approval import approve_plan, freeze_plan, reject_plan
from billing.engine.billing_pass import run_billing_pass
from billing.engine.context import BillingContext
from billing.errors import Conflict
from billing.sandbox.simulator import SimRequest, SimResponse
from billing.store import migrate
from billing.store.db import make_engine, session
from billing.store.models import BillingRun, ChargeAttempt, Event, Invoice, RunPlanItem
from billing.testing import ensure_plan, invoice_refs_charged, seed_subscriptions
from tests.integration.conftest import Env

SOFT = "4000000000000010"  # 51 insufficient funds: a soft decline, retried on slots


@pytest.fixture
def gate(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """The env with the gate on and every request to the sandbox's payment API counted."""
    env.ctx.approval_required = True
    env.ctx.approval_expires_after = timedelta(hours=24)
    seen: list[str] = []
    real = env.simulator.handle

    def handle(request: SimRequest) -> SimResponse:
        if request.path.startswith("/v1/payments"):
            seen.append(f"{request.method} {request.path}")
        return real(request)

    monkeypatch.setattr(env.simulator, "handle", handle)
    env.payment_requests = seen  # type: ignore[attr-defined]
    return env


def payment_requests(env: Env) -> list[str]:
    return env.payment_requests  # type: ignore[attr-defined,no-any-return]


def runs(env: Env) -> list[BillingRun]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(BillingRun).order_by(col(BillingRun.id))).all())


def items(env: Env, run_id: int) -> list[RunPlanItem]:
    with session(env.ctx.engine) as s:
        return list(
            s.exec(
                select(RunPlanItem)
                .where(RunPlanItem.run_id == run_id)
                .order_by(col(RunPlanItem.id))
            ).all()
        )


def events(env: Env, run_id: int) -> list[tuple[str, str, str | None]]:
    with session(env.ctx.engine) as s:
        rows = s.exec(
            select(Event)
            .where(Event.entity_type == "billing_run")
            .where(Event.entity_id == run_id)
            .order_by(col(Event.id))
        ).all()
    return [(e.event, e.actor, e.reason) for e in rows]


def seed(env: Env, count: int, prefix: str = "gat") -> list[int]:
    ensure_plan(env.ctx)
    return seed_subscriptions(env.ctx, env.sandbox_url, count, prefix=prefix)


def test_nothing_is_charged_before_approval_then_exactly_the_frozen_charges_once(
    gate: Env,
) -> None:
    seed(gate, 3)
    first = run_billing_pass(gate.ctx)
    assert first.attempts == 0 and first.plan_id is not None
    assert first.plan_totals == {"UYU": {"count": 3, "amount_minor": 3 * 59000}}
    assert payment_requests(gate) == [] and gate.simulator.payments() == []
    plan_id = first.plan_id
    frozen = items(gate, plan_id)
    assert [(i.kind, i.status, i.attempt_number) for i in frozen] == [("renewal", "frozen", 1)] * 3

    # More passes without approval: still nothing sent, and no second plan.
    gate.clock.advance(timedelta(minutes=5))
    again = run_billing_pass(gate.ctx)
    assert again.plan_id is None and again.attempts == 0
    assert payment_requests(gate) == []
    assert [(r.id, r.state) for r in runs(gate)] == [(plan_id, "planned")]

    decision = approve_plan(gate.ctx, plan_id, actor="ana", reason="looks right")
    assert decision.changed and decision.run.state == "approved"
    assert payment_requests(gate) == []  # approving sends nothing by itself
    assert not approve_plan(gate.ctx, plan_id, actor="bob", reason=None).changed

    gate.clock.advance(timedelta(minutes=5))
    charged = run_billing_pass(gate.ctx)
    assert charged.run_id == plan_id and charged.state == "completed"
    assert charged.count("approved") == 3 and charged.plan_id is None  # nothing else is due
    with session(gate.ctx.engine) as s:
        attempts = s.exec(select(ChargeAttempt)).all()
        paid = s.exec(select(Invoice.id).where(Invoice.status == "paid")).all()
    assert sorted(a.invoice_id for a in attempts) == sorted(i.invoice_id for i in frozen)
    assert {a.run_id for a in attempts} == {plan_id}
    assert sorted(paid) == sorted(i.invoice_id for i in frozen)
    refs = invoice_refs_charged(gate.simulator.payments())
    assert len(refs) == 3 and set(refs.values()) == {1}
    assert [i.status for i in items(gate, plan_id)] == ["sent"] * 3
    assert events(gate, plan_id)[:2] == [
        ("run.planned", "test", None),
        ("run.approved", "ana", "looks right"),
    ]
    run = runs(gate)[0]
    assert (run.state, run.decided_by, run.attempts) == ("completed", "ana", 3)

    # Once charged, another pass charges nothing more.
    gate.clock.advance(timedelta(minutes=5))
    run_billing_pass(gate.ctx)
    assert len(gate.simulator.payments()) == 3


def test_reject_charges_nothing_and_the_invoices_go_into_the_next_plan(gate: Env) -> None:
    seed(gate, 2)
    plan_id = run_billing_pass(gate.ctx).plan_id
    assert plan_id is not None
    frozen = {i.invoice_id for i in items(gate, plan_id)}
    decision = reject_plan(gate.ctx, plan_id, actor="ana", reason="wrong prices")
    assert decision.changed and decision.run.state == "rejected"
    with pytest.raises(Conflict, match="rejected"):
        approve_plan(gate.ctx, plan_id, actor="bob", reason=None)

    gate.clock.advance(timedelta(minutes=5))
    nxt = run_billing_pass(gate.ctx)
    assert nxt.attempts == 0 and nxt.plan_id not in (None, plan_id)
    assert payment_requests(gate) == [] and gate.simulator.payments() == []
    assert nxt.plan_id is not None
    assert {i.invoice_id for i in items(gate, nxt.plan_id)} == frozen
    assert ("run.rejected", "ana", "wrong prices") in events(gate, plan_id)


def test_an_unapproved_plan_expires_charges_nothing_and_a_new_plan_is_made(gate: Env) -> None:
    seed(gate, 1)
    plan_id = run_billing_pass(gate.ctx).plan_id
    assert plan_id is not None
    gate.clock.advance(timedelta(hours=24, minutes=1))
    with pytest.raises(Conflict, match="expired"):  # past its expiry: not approvable
        approve_plan(gate.ctx, plan_id, actor="ana", reason=None)
    nxt = run_billing_pass(gate.ctx)
    assert nxt.plans_expired == [plan_id] and nxt.attempts == 0
    assert nxt.plan_id is not None and nxt.plan_id != plan_id
    states = {r.id: (r.state, r.decided_by) for r in runs(gate)}
    assert states == {plan_id: ("expired", "system"), nxt.plan_id: ("planned", None)}
    assert ("run.expired", "system", "not approved in time") in events(gate, plan_id)
    assert gate.simulator.payments() == [] and payment_requests(gate) == []
    with pytest.raises(Conflict, match="expired"):
        approve_plan(gate.ctx, plan_id, actor="ana", reason=None)


def test_a_renewal_due_after_freezing_waits_for_the_next_plan(gate: Env) -> None:
    seed(gate, 1, prefix="old")
    plan_id = run_billing_pass(gate.ctx).plan_id
    assert plan_id is not None
    gate.clock.advance(timedelta(minutes=1))
    seed(gate, 1, prefix="new")  # falls due after the plan was frozen
    approve_plan(gate.ctx, plan_id, actor="ana", reason=None)
    gate.clock.advance(timedelta(minutes=1))
    summary = run_billing_pass(gate.ctx)
    assert summary.run_id == plan_id and summary.count("approved") == 1
    assert summary.invoices_created == 1  # the newcomer's, frozen into the next plan
    assert [r.invoices_created for r in runs(gate)] == [1, 1]
    assert len(gate.simulator.payments()) == 1
    assert summary.plan_id is not None  # the newcomer is frozen into the next plan
    (waiting,) = items(gate, summary.plan_id)
    with session(gate.ctx.engine) as s:
        invoice = s.get(Invoice, waiting.invoice_id)
        assert invoice is not None and invoice.status == "open"


def test_an_invoice_changed_or_paid_since_freezing_is_skipped_and_reported(gate: Env) -> None:
    seed(gate, 3)
    plan_id = run_billing_pass(gate.ctx).plan_id
    assert plan_id is not None
    changed, voided, kept = (i.invoice_id for i in items(gate, plan_id))
    with session(gate.ctx.engine) as s:
        s.exec(update(Invoice).where(col(Invoice.id) == changed).values(amount_minor=99900))
        s.exec(update(Invoice).where(col(Invoice.id) == voided).values(status="void"))
    approve_plan(gate.ctx, plan_id, actor="ana", reason=None)
    summary = run_billing_pass(gate.ctx)
    assert summary.count("approved") == 1
    refs = invoice_refs_charged(gate.simulator.payments())
    with session(gate.ctx.engine) as s:
        number = s.get(Invoice, kept).number  # type: ignore[union-attr]
    assert list(refs) == [number]
    report = {i.invoice_id: (i.status, i.note) for i in items(gate, plan_id)}
    assert report[kept] == ("sent", None)
    assert report[changed] == ("skipped", "amount changed since the plan was frozen")
    assert report[voided] == ("skipped", "invoice void since the plan was frozen")
    skipped = [e for e in events(gate, plan_id) if e[0] == "run.item_skipped"]
    assert len(skipped) == 2
    # The changed invoice is still due: the next plan freezes it at its new amount.
    assert summary.plan_id is not None
    (again,) = items(gate, summary.plan_id)
    assert (again.invoice_id, again.amount_minor) == (changed, 99900)


def test_only_one_plan_waits_even_when_freezing_twice(gate: Env) -> None:
    seed(gate, 2)
    first = run_billing_pass(gate.ctx).plan_id
    assert first is not None
    # A second daemon freezing at the same moment finds the waiting plan and makes none.
    assert freeze_plan(gate.ctx, gate.clock.now()) is None
    # The partial UNIQUE index is the last word.
    with Session(gate.ctx.engine) as s, pytest.raises(IntegrityError):
        s.add(
            BillingRun(
                kind="pass",
                node="other",
                state="planned",
                as_of=gate.clock.now(),
                started_at=gate.clock.now(),
                expires_at=gate.clock.now() + timedelta(hours=1),
            )
        )
        s.flush()
    assert [r.state for r in runs(gate)] == ["planned"]


def test_a_scheduled_retry_is_a_charge_and_waits_for_approval(gate: Env) -> None:
    ensure_plan(gate.ctx)
    seed_subscriptions(gate.ctx, gate.sandbox_url, 1, card=SOFT, prefix="soft")
    plan_id = run_billing_pass(gate.ctx).plan_id
    assert plan_id is not None
    approve_plan(gate.ctx, plan_id, actor="ana", reason=None)
    declined = run_billing_pass(gate.ctx)
    assert declined.count("declined") == 1 and declined.plan_id is None  # retry not due yet
    assert len(gate.simulator.payments()) == 1
    gate.clock.advance(timedelta(days=2))
    retry = run_billing_pass(gate.ctx)
    assert retry.attempts == 0 and retry.plan_id is not None
    (item,) = items(gate, retry.plan_id)
    assert (item.kind, item.attempt_number) == ("retry", 2)
    assert len(gate.simulator.payments()) == 1  # the retry is not sent before approval


def test_billing_run_once_with_the_gate_on_freezes_a_plan(gate: Env, db_url: str) -> None:
    seed(gate, 1)
    environ = {"BILLING_APPROVAL_REQUIRED": "true", "BILLING_APPROVAL_EXPIRES_AFTER": "90m"}
    as_of = (gate.clock.now() + timedelta(minutes=1)).isoformat()
    result = invoke(gate, db_url, "run", "--once", "--as-of", as_of, extra=environ)
    assert result.exit_code == 0, result.output
    (plan,) = runs(gate)
    assert plan.state == "planned" and plan.expires_at is not None
    assert plan.expires_at - plan.as_of == timedelta(minutes=90)
    assert f"plan {plan.id} frozen (1 x 590.00 UYU)" in result.stdout
    assert gate.simulator.payments() == [] and payment_requests(gate) == []


def test_two_daemons_freezing_at_once_make_one_plan(gate: Env) -> None:
    seed(gate, 4)
    other = replace(gate.ctx, node="other-node")
    barrier = threading.Barrier(2)

    def one_pass(ctx: BillingContext) -> int | None:
        barrier.wait()
        return run_billing_pass(ctx).plan_id

    with ThreadPoolExecutor(max_workers=2) as pool:
        made = list(pool.map(one_pass, [gate.ctx, other]))
    assert sorted(made, key=lambda x: x is None)[1] is None  # one made it, the other none
    (plan,) = runs(gate)
    assert plan.state == "planned" and plan.id in made
    assert len(items(gate, plan.id)) == 4  # type: ignore[arg-type]
    assert gate.simulator.payments() == []


def test_gate_off_changes_nothing(env: Env) -> None:
    seed(env, 2)
    summary = run_billing_pass(env.ctx)
    assert summary.count("approved") == 2 and summary.plan_id is None
    with session(env.ctx.engine) as s:
        assert s.exec(select(RunPlanItem)).all() == []
        (run,) = s.exec(select(BillingRun)).all()
    assert (run.state, run.expires_at) == ("completed", None)


# --- the CLI ------------------------------------------------------------------------------


def invoke(env: Env, db_url: str, *args: str, extra: dict[str, str] | None = None) -> Any:
    environ = {
        "BILLING_DATABASE_URL": db_url,
        "BILLING_PLEXO_BASE_URL": env.sandbox_url,
        "BILLING_TIMEZONE": "America/Montevideo",
        **(extra or {}),
    }
    return CliRunner().invoke(app, list(args), env=environ)


def test_cli_plan_approve_reject_and_runs_list(
    gate: Env, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # The CLI runs on the real clock: freeze the plan at (about) the real now.
    gate.clock.set(datetime.now(UTC).replace(microsecond=0))
    seed(gate, 2)
    plan_id = run_billing_pass(gate.ctx).plan_id
    assert plan_id is not None

    shown = invoke(gate, db_url, "runs", "plan", "--json")
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.stdout)
    assert view["id"] == plan_id and view["state"] == "planned"
    assert view["totals"] == {"UYU": {"count": 2, "amount_minor": 118000, "amount": "1180.00"}}
    assert [i["status"] for i in view["items"]] == ["frozen", "frozen"]
    text_view = invoke(gate, db_url, "runs", "plan", str(plan_id))
    assert "2 x 1180.00 UYU" in text_view.stdout and "renewal" in text_view.stdout

    listed = json.loads(invoke(gate, db_url, "runs", "list", "--json").stdout)
    assert listed[0]["state"] == "planned"
    assert listed[0]["outcomes"] == {"planned": {"count": 2, "amounts": {"UYU": "1180.00"}}}
    shown_run = json.loads(invoke(gate, db_url, "runs", "show", str(plan_id), "--json").stdout)
    assert [i["invoice"] for i in shown_run["plan"]["items"]] == [
        i["invoice"] for i in view["items"]
    ]
    assert "2 frozen charges (planned)" in invoke(gate, db_url, "runs", "show", str(plan_id)).stdout

    bad = invoke(gate, db_url, "runs", "reject", str(plan_id), "--by", "ana")
    assert bad.exit_code == 2 and "--reason" in bad.stderr
    missing = invoke(gate, db_url, "runs", "approve", "999999", "--by", "ana")
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1

    done = invoke(gate, db_url, "runs", "approve", str(plan_id), "--by", "ana", "--reason", "ok")
    assert done.exit_code == 0, done.output
    assert f"run {plan_id} approved by ana" in done.stdout
    twice = invoke(gate, db_url, "runs", "approve", str(plan_id), "--by", "bob")
    assert twice.exit_code == 0 and twice.stdout.count("\n") == 1
    assert "already approved by ana" in twice.stdout
    assert events(gate, plan_id)[1:] == [("run.approved", "ana", "ok")]
    assert gate.simulator.payments() == []

    rejected = invoke(gate, db_url, "runs", "reject", str(plan_id), "--by", "eve", "--reason", "x")
    assert rejected.exit_code == 0  # an approved plan not yet started can still be stopped
    again = invoke(gate, db_url, "runs", "approve", str(plan_id), "--by", "ana")
    assert again.exit_code == 2 and "rejected" in again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.output

    gate.clock.advance(timedelta(minutes=1))
    run_billing_pass(gate.ctx)
    assert gate.simulator.payments() == []


# --- the migration ------------------------------------------------------------------------


def test_migration_up_and_down(db_url: str) -> None:
    script = Path(migrate.__file__).resolve().parents[2] / "migrations" / "versions"
    (path,) = script.glob("*_f3c0ffee0803_*.py")
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    down = namespace["down_revision"]
    assert migrate.schema_diff(db_url) == []
    command.downgrade(migrate.alembic_config(db_url), down)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn, pytest.raises(Exception, match=r"(?i)run_plan_item"):
            conn.execute(text("SELECT count(*) FROM run_plan_item"))
        migrate.upgrade(db_url)
        assert migrate.schema_diff(db_url) == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM run_plan_item")).scalar_one() == 0
    finally:
        engine.dispose()
