"""billing plans ... and billing subscriptions ..."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import typer
from sqlmodel import select

from billing.cli.common import (
    ByOption,
    JsonOption,
    OptionalReasonOption,
    ReasonOption,
    bounded_instant,
    cell,
    handle_errors,
    local_time,
    operator_name,
    output,
    settings,
    table,
)
from billing.domain.money import to_major
from billing.engine import subscriptions as svc
from billing.errors import InvalidInput
from billing.store.db import session
from billing.store.models import Customer, Plan, Subscription
from billing.wiring import open_context

plans_app = typer.Typer(help="Plans: price, currency and billing interval.", no_args_is_help=True)
app = typer.Typer(help="Subscriptions of customers to plans.", no_args_is_help=True)


def plan_view(p: Plan) -> dict[str, Any]:
    return {
        "code": p.code,
        "name": p.name,
        "amount": str(to_major(p.amount_minor, p.currency)),
        "amount_minor": p.amount_minor,
        "currency": p.currency,
        "interval": p.interval,
        "interval_count": p.interval_count,
        "trial_days": p.trial_days,
        "active": p.active,
    }


def subscription_view(sub: Subscription, customer: str | None, plan: str | None) -> dict[str, Any]:
    return {
        "id": sub.id,
        "customer": customer,
        "plan": plan,
        "status": sub.status,
        "anchor_at": sub.anchor_at,
        "trial_end_at": sub.trial_end_at,
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "next_billing_at": sub.next_billing_at,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "canceled_at": sub.canceled_at,
        "instrument_id": sub.instrument_id,
        "held_at": sub.held_at,
        "held_reason": sub.held_reason,
        "held_periods": sub.held_periods,
    }


def _views(engine: Any, subs: list[Subscription]) -> list[dict[str, Any]]:
    with session(engine) as s:
        customers = {c.id: c.reference_id for c in s.exec(select(Customer)).all()}
        plans = {p.id: p.code for p in s.exec(select(Plan)).all()}
    return [subscription_view(x, customers.get(x.customer_id), plans.get(x.plan_id)) for x in subs]


def parse_start(text: str, tz: ZoneInfo) -> datetime:
    """A date means local midnight in the merchant zone; a datetime must carry its offset."""
    try:
        if len(text) == 10:
            value = datetime.combine(date.fromisoformat(text), time(0), tzinfo=tz)
        else:
            value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"start {text!r} is not an ISO date or datetime") from None
    if value.tzinfo is None:
        raise InvalidInput(
            f"start {text!r} has no timezone offset; add one (e.g. {text}-03:00) or give a date"
        )
    return bounded_instant(value, "start")


@plans_app.command("create")
@handle_errors
def create_plan(
    code: str = typer.Option(..., "--code"),
    name: str = typer.Option(..., "--name"),
    amount: str = typer.Option(..., "--amount", help="Major units, e.g. 590.00"),
    currency: str = typer.Option(..., "--currency", help="UYU or USD"),
    interval: str = typer.Option("month", "--interval", help="day, week, month or year"),
    interval_count: int = typer.Option(1, "--interval-count"),
    trial_days: int = typer.Option(0, "--trial-days"),
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a plan."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        plan = svc.create_plan(
            ctx,
            code=code,
            name=name,
            amount=amount,
            currency=currency,
            interval=interval,
            interval_count=interval_count,
            trial_days=trial_days,
            reason=reason,
        )
    view = plan_view(plan)
    output(view, as_json, f"created plan {plan.code}: {view['amount']} {plan.currency}")


@plans_app.command("list")
@handle_errors
def list_plans(as_json: bool = JsonOption) -> None:
    """List plans."""
    with open_context(settings()) as ctx:
        rows = [plan_view(p) for p in svc.list_plans(ctx)]
    columns = ["code", "name", "amount", "currency", "interval", "interval_count", "trial_days"]
    output(rows, as_json, table(rows, columns))


@app.command("create")
@handle_errors
def create(
    customer: str = typer.Option(..., "--customer", help="Customer reference id."),
    plan: str = typer.Option(..., "--plan", help="Plan code."),
    start: str | None = typer.Option(None, "--start", help="ISO date or datetime with offset."),
    instrument: str | None = typer.Option(None, "--instrument", help="Card id or token."),
    allow_duplicate: bool = typer.Option(
        False, "--allow-duplicate", help="Allow a second live subscription to the same plan."
    ),
    backdate: bool = typer.Option(
        False, "--backdate", help="Allow a start one interval or more ago (bills each period)."
    ),
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Subscribe a customer to a plan (the anchor is the start)."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        begin = parse_start(start, ctx.tz) if start else None
        if backdate:
            periods = svc.backdated_periods(ctx, plan_code=plan, start=begin)
            typer.echo(backdate_notice(periods, ctx.catchup_max_periods), err=as_json)
        sub = svc.create_subscription(
            ctx,
            customer_ref=customer,
            plan_code=plan,
            start=begin,
            instrument=instrument,
            allow_duplicate=allow_duplicate,
            backdate=backdate,
            reason=reason,
        )
        view = _views(ctx.engine, [sub])[0]
    output(view, as_json, f"created subscription {sub.id} ({sub.status})")


def backdate_notice(periods: int, cap: int) -> str:
    """The one line `--backdate` prints before it creates anything."""
    line = f"backdate: the next billing pass bills {periods:,} period" + "s" * (periods != 1)
    if periods > cap:
        line += (
            f", more than the catch-up cap of {cap}: the pass holds the subscription for review "
            "until `billing subscriptions release ID --reason ...`"
        )
    return line


@app.command("show")
@handle_errors
def show(subscription_id: int, as_json: bool = JsonOption) -> None:
    """Show one subscription, with its dunning stage while a retry chain runs."""
    from billing.engine.dunning import dunning_stage

    with open_context(settings()) as ctx:
        with session(ctx.engine) as s:
            sub = svc.get_subscription(s, subscription_id)
            stage = dunning_stage(s, sub)
        view = {**_views(ctx.engine, [sub])[0], "dunning": stage}
    lines = [f"{k:<22} {cell(v)}" for k, v in view.items() if v is not None and k != "dunning"]
    if stage is not None:
        lines.append(f"{'dunning':<22} {dunning_line(stage)}")
    output(view, as_json, "\n".join(lines))


def dunning_line(stage: dict[str, Any]) -> str:
    """ "attempt 2 of 5, next retry 2026-03-04 09:00 -03, then mark_unpaid" for people."""
    nxt = stage["next_retry_at"]
    when = f"next retry {local_time(nxt)}" if nxt is not None else "no retry scheduled"
    line = f"invoice {stage['invoice']}: attempt {stage['attempt']} of {stage['of']}, {when}"
    line += f", last decline {stage['last_decline']}" if stage["last_decline"] else ""
    line += f", final action {stage['final_action']}"
    if stage["attention"]:
        line += f" (needs attention: {stage['attention']})"
    return line


@app.command("list")
@handle_errors
def list_(
    status: str | None = typer.Option(None, "--status"),
    customer: str | None = typer.Option(None, "--customer"),
    held: bool = typer.Option(False, "--held", help="Only those held for review."),
    as_json: bool = JsonOption,
) -> None:
    """List subscriptions, optionally by status or customer, or those held for review."""
    with open_context(settings()) as ctx:
        subs = svc.list_subscriptions(ctx, status=status, customer_ref=customer, held=held)
        rows = _views(ctx.engine, subs)
    columns = ["id", "customer", "plan", "status", "next_billing_at", "current_period_end"]
    if held:
        columns += ["held_at", "held_periods"]
    output(rows, as_json, table(rows, columns))


@app.command("cancel")
@handle_errors
def cancel(
    subscription_id: int,
    at_period_end: bool = typer.Option(False, "--at-period-end", help="Else cancel now."),
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Cancel now (open invoices are voided) or at the end of the paid period."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        sub = svc.cancel_subscription(
            ctx, subscription_id, at_period_end=at_period_end, reason=reason
        )
        view = _views(ctx.engine, [sub])[0]
    when = "now" if sub.status == "canceled" else f"at period end ({_when(sub.current_period_end)})"
    output(view, as_json, f"subscription {subscription_id} canceled {when}")


@app.command("pause")
@handle_errors
def pause(
    subscription_id: int,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Pause billing; periods that start while paused are not billed."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        sub = svc.pause_subscription(ctx, subscription_id, reason)
        view = _views(ctx.engine, [sub])[0]
    if sub.status == "canceled":
        output(view, as_json, f"subscription {subscription_id} is canceled (at period end)")
    else:
        output(view, as_json, f"subscription {subscription_id} paused")


@app.command("resume")
@handle_errors
def resume(
    subscription_id: int,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Resume billing from the next period start."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        sub = svc.resume_subscription(ctx, subscription_id, reason)
        view = _views(ctx.engine, [sub])[0]
    output(
        view,
        as_json,
        f"subscription {subscription_id} resumed; next bill {_when(sub.next_billing_at)}",
    )


@app.command("uncancel")
@handle_errors
def uncancel(
    subscription_id: int,
    reason: str = ReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Undo a cancel scheduled for the period end (cancel --at-period-end)."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        sub = svc.uncancel_subscription(ctx, subscription_id, reason=reason)
        view = _views(ctx.engine, [sub])[0]
    output(
        view,
        as_json,
        f"subscription {subscription_id}: scheduled cancel undone by {actor}; next bill "
        f"{_when(sub.next_billing_at)}",
    )


@app.command("release")
@handle_errors
def release(
    subscription_id: int,
    reason: str = typer.Option(..., "--reason", help="Why (kept in the event log)."),
    skip_to_now: bool = typer.Option(
        False, "--skip-to-now", help="Skip the missed periods; bill from the current one."
    ),
    by: str | None = typer.Option(None, "--by", help="Who releases it (default: the OS user)."),
    as_json: bool = JsonOption,
) -> None:
    """Release a subscription held for review: bill its missed periods, or skip them."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        sub, billed = svc.release_subscription(
            ctx, subscription_id, reason=reason, skip_to_now=skip_to_now
        )
        view = _views(ctx.engine, [sub])[0]
    how = "skipping the missed periods" if skip_to_now else "billing the missed periods"
    output(
        {**view, "periods_to_bill": billed},
        as_json,
        f"subscription {subscription_id} released by {actor}, {how}: the next billing pass "
        f"bills {billed:,} period" + "s" * (billed != 1),
    )


@app.command("change-plan")
@handle_errors
def change_plan(
    subscription_id: int,
    plan: str = typer.Option(..., "--plan", help="Code of the new plan."),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the event log)."),
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Move to another plan from the next period on (started periods bill at the old plan)."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        sub, starts = svc.change_plan(ctx, subscription_id, plan_code=plan, reason=reason)
        view = _views(ctx.engine, [sub])[0]
    output(
        {**view, "plan_effective_at": starts},
        as_json,
        f"subscription {subscription_id} moves to plan {plan} (by {actor}); the new plan bills "
        f"from {local_time(starts)}",
    )


def _when(value: datetime | None) -> str:
    return local_time(value) if value is not None else "none scheduled"
