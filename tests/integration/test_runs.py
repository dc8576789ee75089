"""Every charge belongs to a billing run (issue 5 item 6), on SQLite and PostgreSQL.

A run row exists from the start of its pass, every attempt links to it, its counts are written
as it goes, and it ends `completed` or `interrupted` — also when the process died and could
not say so itself (the next pass closes it, recounted from its attempts).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from billing.engine import billing_pass
from billing.engine.billing_pass import run_billing_pass
from billing.engine.charge import charge_invoice
from billing.engine.invoicing import create_due_invoices
from billing.engine.reconcile import run_reconcile
from billing.engine.runs import (
    RunTracker,
    close_stale_runs,
    effective_state,
    recount,
    stale_after,
)
from billing.store.claims import claim_invoices
from billing.store.db import session
from billing.store.models import BillingRun, ChargeAttempt
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env


def runs_and_attempts(env: Env) -> tuple[list[BillingRun], list[ChargeAttempt]]:
    with session(env.ctx.engine) as s:
        runs = list(s.exec(select(BillingRun).order_by(BillingRun.id)).all())  # type: ignore[arg-type]
        attempts = list(s.exec(select(ChargeAttempt)).all())
    return runs, attempts


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Claims of at most 2 invoices, so a pass has several batches; `fail_on` makes the Nth
    claim raise as if the database went away."""
    state: dict[str, Any] = {"calls": 0, "fail_on": None}

    def claim(engine: Any, owner: str, now: Any, lease: int, limit: int) -> list[int]:
        state["calls"] += 1
        if state["calls"] == state["fail_on"]:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return claim_invoices(engine, owner, now, lease, 2)

    monkeypatch.setattr(billing_pass, "claim_invoices", claim)
    yield state


def test_a_pass_is_one_completed_run_with_counts_matching_its_attempts(env: Env) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 3, start=START)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, card="4000000000000010", prefix="d")

    summary = run_billing_pass(env.ctx)

    [run], attempts = runs_and_attempts(env)
    assert run.id == summary.run_id and run.kind == "pass" and run.state == "completed"
    assert {a.run_id for a in attempts} == {run.id}
    assert run.attempts == len(attempts) == 4 and run.invoices_created == 4
    outcomes = {k: v for k, v in run.totals.items() if k != "due"}
    assert (run.attempts, outcomes) == recount(attempts)
    assert run.totals["due"] == {"count": 4}  # claimed to charge
    assert run.totals["approved"]["count"] == 3 and run.totals["declined"]["count"] == 1
    assert run.heartbeat_at is not None and run.finished_at is not None


def test_a_pass_whose_database_fails_mid_way_is_interrupted_with_its_attempts_linked(
    env: Env, small_batches: dict[str, Any]
) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 3, start=START)
    small_batches["fail_on"] = 2  # the first batch (2 charges) goes through, then the DB fails

    with pytest.raises(OperationalError):
        run_billing_pass(env.ctx)

    [run], attempts = runs_and_attempts(env)
    assert run.state == "interrupted" and run.finished_at is not None
    assert len(attempts) == 2 and {a.run_id for a in attempts} == {run.id}
    assert run.attempts == 2 and run.invoices_created == 3
    # The next pass finishes the work in a run of its own, which completes.
    small_batches["fail_on"] = None
    run_billing_pass(env.ctx)
    runs, attempts = runs_and_attempts(env)
    assert [r.state for r in runs] == ["interrupted", "completed"]
    assert len(attempts) == 3 and {a.run_id for a in attempts} == {r.id for r in runs}


def test_a_pass_asked_to_stop_is_interrupted(env: Env, small_batches: dict[str, Any]) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 3, start=START)

    def should_stop() -> bool:
        # SIGTERM arrives while the first batch is charged: its charges (on the pool's
        # threads) go on, the pass (this thread) claims no more.
        return small_batches["calls"] >= 1 and threading.current_thread() is threading.main_thread()

    summary = run_billing_pass(env.ctx, should_stop)

    [run], attempts = runs_and_attempts(env)
    assert summary.state == run.state == "interrupted"
    assert run.attempts == len(attempts) == 2 and {a.run_id for a in attempts} == {run.id}


def test_a_run_left_running_by_a_dead_process_is_closed_interrupted(env: Env) -> None:
    """A pass SIGKILLed after writing an attempt ahead: nobody closes its run. It is shown
    interrupted once its heartbeat is stale, and the next pass closes it, recounted."""
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 2, start=START)
    create_due_invoices(env.ctx, env.clock.now())
    dead = RunTracker(env.ctx, "pass", env.clock.now())
    dead_id = dead.open()
    [first, _] = claim_invoices(env.ctx.engine, "test-node", env.clock.now(), 60, 2)
    charge_invoice(env.ctx, first, run_id=dead_id)  # ... and the process is killed here

    [run], _ = runs_and_attempts(env)
    assert effective_state(run, env.clock.now(), stale_after(env.ctx)) == "running"
    assert close_stale_runs(env.ctx) == []  # a fresh heartbeat: maybe alive, left alone
    env.clock.advance(stale_after(env.ctx) + timedelta(seconds=1))
    assert effective_state(run, env.clock.now(), stale_after(env.ctx)) == "interrupted"

    run_billing_pass(env.ctx)  # claims the second invoice (the first's lease expired too)

    runs, attempts = runs_and_attempts(env)
    assert [(r.id, r.state) for r in runs] == [(dead_id, "interrupted"), (runs[1].id, "completed")]
    linked = [a for a in attempts if a.run_id == dead_id]
    assert len(linked) == 1 and runs[0].attempts == 1
    assert runs[0].totals == {"approved": {"count": 1, "amounts": {"UYU": 59000}}}
    assert all(a.run_id is not None for a in attempts)


def test_a_restarted_node_closes_its_own_running_runs_at_once(env: Env) -> None:
    RunTracker(env.ctx, "pass", env.clock.now()).open()
    assert close_stale_runs(env.ctx) == []
    [closed] = close_stale_runs(env.ctx, own_node=True)
    [run], _ = runs_and_attempts(env)
    assert run.id == closed and run.state == "interrupted"


def test_an_idle_pass_leaves_no_run_and_a_reconcile_sweep_is_a_run_of_its_own(env: Env) -> None:
    assert run_billing_pass(env.ctx).run_id is None
    assert runs_and_attempts(env)[0] == []
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    env.simulator.faults.queue("drop_after", route="POST /v1/payments", times=1)
    pass_summary = run_billing_pass(env.ctx)
    assert pass_summary.count("unknown") == 1
    env.clock.advance(timedelta(minutes=5))

    summary, swept = run_reconcile(env.ctx)

    assert swept.examined == 1 and summary.run_id is not None
    runs, [attempt] = runs_and_attempts(env)
    assert [(r.kind, r.state) for r in runs] == [("pass", "completed"), ("reconcile", "completed")]
    assert attempt.run_id == pass_summary.run_id and attempt.state == "approved"
    assert runs[1].attempts == 1 and runs[1].totals["approved"]["count"] == 1
