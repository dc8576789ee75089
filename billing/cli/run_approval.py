"""billing runs approve / reject / plan: the approval gate's commands (engine/approval.py),
registered on the `runs` sub-app by cli/main.py."""

from __future__ import annotations

from typing import Any

import typer
from sqlmodel import Session, col, select

from billing.cli.common import (
    ByOption,
    JsonOption,
    handle_errors,
    local_time,
    operator_name,
    output,
    settings,
    table,
)
from billing.domain.money import to_major
from billing.engine.approval import (
    WAITING,
    Decision,
    approve_plan,
    plan_items,
    plan_totals,
    reject_plan,
)
from billing.engine.runs import is_plan
from billing.errors import Conflict, NotFound
from billing.store.db import session
from billing.store.models import BillingRun, is_row_id
from billing.wiring import open_context

RunArgument = typer.Argument(..., help="The plan's run id (see `billing runs plan`).")


def plan_view(s: Session, run: BillingRun) -> dict[str, Any]:
    """A plan with its frozen items and totals per currency (money: minor units + currency,
    and the major amount as text)."""
    assert run.id is not None
    rows = plan_items(s, run.id)
    totals = plan_totals([item for item, _ in rows])
    return {
        "id": run.id,
        "state": run.state,
        "frozen_at": run.as_of,
        "expires_at": run.expires_at,
        "decided_by": run.decided_by,
        "decided_at": run.decided_at,
        "decision_reason": run.decision_reason,
        "totals": {
            cur: {**entry, "amount": str(to_major(entry["amount_minor"], cur))}
            for cur, entry in sorted(totals.items())
        },
        "items": [
            {
                "invoice": number,
                "invoice_id": item.invoice_id,
                "kind": item.kind,
                "amount_minor": item.amount_minor,
                "amount": str(to_major(item.amount_minor, item.currency)),
                "currency": item.currency,
                "instrument_id": item.instrument_id,
                "attempt_number": item.attempt_number,
                "status": item.status,
                "outcome": item.outcome,
                "note": item.note,
            }
            for item, number in rows
        ],
    }


def render_plan(view: dict[str, Any]) -> str:
    totals = ", ".join(
        f"{entry['count']} x {entry['amount']} {cur}" for cur, entry in view["totals"].items()
    )
    head = f"plan {view['id']} {view['state']}, frozen {local_time(view['frozen_at'])}"
    if view["state"] == "planned" and view["expires_at"] is not None:
        head += f", expires {local_time(view['expires_at'])}"
    if view["decided_by"]:
        head += f"; {view['state']} by {view['decided_by']}"
        if view["decision_reason"]:
            head += f" ({view['decision_reason']})"
    head += f": {totals or 'no charges'}"
    columns = ["invoice", "kind", "amount", "currency", "instrument_id", "attempt_number"]
    columns += ["status", "outcome", "note"]
    return head + "\n" + table(view["items"], columns)


@handle_errors
def plan(
    run: int | None = typer.Argument(None, help="A plan's run id (default: the waiting one)."),
    as_json: bool = JsonOption,
) -> None:
    """Show the plan waiting for approval (or plan RUN): its frozen charges and totals."""
    with open_context(settings()) as ctx, session(ctx.engine) as s:
        if run is None:
            found = s.exec(
                select(BillingRun)
                .where(col(BillingRun.state).in_(WAITING))
                .order_by(col(BillingRun.id))
            ).first()
            if found is None:
                output(None, as_json, "no plan waits for approval")
                return
        else:
            found = s.get(BillingRun, run) if is_row_id(run) else None
            if found is None:
                raise NotFound(f"no billing run {run}")
            if not is_plan(found):
                raise Conflict(f"run {run} is not a plan of the approval gate")
        view = plan_view(s, found)
    output(view, as_json, render_plan(view))


@handle_errors
def approve(
    run: int = RunArgument,
    by: str | None = ByOption,
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the event log)."),
    as_json: bool = JsonOption,
) -> None:
    """Approve a planned run: the next billing pass charges exactly its frozen items."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        decision = approve_plan(ctx, run, actor=actor, reason=reason)
    _say(decision, "approved", actor, as_json)


@handle_errors
def reject(
    run: int = RunArgument,
    by: str | None = ByOption,
    reason: str = typer.Option(..., "--reason", help="Why (kept in the event log)."),
    as_json: bool = JsonOption,
) -> None:
    """Reject a planned run: it charges nothing; its invoices go into the next plan."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        decision = reject_plan(ctx, run, actor=actor, reason=reason)
    _say(decision, "rejected", actor, as_json)


def _say(decision: Decision, verb: str, actor: str, as_json: bool) -> None:
    run = decision.run
    view = {
        "id": run.id,
        "state": run.state,
        "changed": decision.changed,
        "decided_by": run.decided_by,
        "decided_at": run.decided_at,
        "decision_reason": run.decision_reason,
    }
    if decision.changed:
        text = f"run {run.id} {verb} by {actor}"
        if verb == "approved":
            text += ": the next billing pass charges its frozen items"
    else:
        who = f" by {run.decided_by}" if run.decided_by else ""
        text = f"run {run.id} was already {verb}{who} (now {run.state}): nothing changed"
    output(view, as_json, text)


COMMANDS = {"approve": approve, "reject": reject, "plan": plan}
