"""billing run --once [--as-of TIMESTAMP]: one billing pass (plus a reconciler sweep) by hand."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer

from billing.cli.common import (
    JsonOption,
    bounded_instant,
    handle_errors,
    local_time,
    output,
    settings,
    table,
)
from billing.clock import Clock, TestClock
from billing.daemon.service import Daemon
from billing.domain.money import to_major
from billing.engine.billing_pass import RunSummary
from billing.errors import ConfigError, InvalidInput
from billing.wiring import open_context


def parse_as_of(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--as-of {text!r} is not an ISO-8601 timestamp") from None
    if value.tzinfo is None or value.utcoffset() is None:
        example = value.isoformat()
        raise InvalidInput(
            f"--as-of {text!r} has no timezone; give an offset, e.g. {example}+00:00 or "
            f"{example}-03:00"
        )
    return bounded_instant(value, "--as-of")


def summary_view(summary: RunSummary) -> dict[str, Any]:
    return {
        "run_id": summary.run_id,
        "kind": summary.kind,
        "state": summary.state if summary.run_id else None,
        "as_of": summary.as_of,
        "invoices_created": summary.invoices_created,
        "subscriptions_held": summary.subscriptions_held,
        "attempts": summary.attempts,
        "outcomes": {
            outcome: {
                "count": entry["count"],
                "amounts": {
                    cur: str(to_major(minor, cur)) for cur, minor in entry["amounts"].items()
                },
                **(
                    {"decline_classes": entry["decline_classes"]}
                    if "decline_classes" in entry
                    else {}
                ),
            }
            for outcome, entry in summary.totals.items()
        },
        **(
            {
                "plan_id": summary.plan_id,
                "plan_totals": summary.plan_totals,
                "plans_expired": summary.plans_expired,
            }
            if summary.kind == "pass"
            else {}
        ),
    }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def render_summary(summary: RunSummary) -> str:
    view = summary_view(summary)
    rows = [
        {
            "outcome": outcome,
            "count": entry["count"],
            "amounts": ", ".join(f"{v} {c}" for c, v in sorted(entry["amounts"].items())),
        }
        for outcome, entry in view["outcomes"].items()
    ]
    name = f"run {summary.run_id}" if summary.run_id else "nothing to record"
    if summary.run_id and summary.state != "completed":
        name += f" [{summary.state}]"
    work = "resolved outcome" if summary.kind == "reconcile" else "charge attempt"
    held = (
        f"{_count(summary.subscriptions_held, 'subscription')} held for review "
        "(see `billing subscriptions list --held`), "
        if summary.subscriptions_held
        else ""
    )
    parked = summary.count("parked")
    parked_text = (
        f", {_count(parked, 'invoice')} parked over a safety bound "
        "(see `billing invoices list --status parked`)"
        if parked
        else ""
    )
    head = (
        f"{name} ({summary.kind}) as of {local_time(summary.as_of)}: "
        f"{_count(summary.invoices_created, 'invoice')} created, {held}"
        f"{_count(summary.attempts, work)}{parked_text}"
    )
    text = head + ("\n" + table(rows, ["outcome", "count", "amounts"]) if rows else "")
    if summary.plans_expired:
        text += "\nplans expired unapproved: " + ", ".join(map(str, summary.plans_expired))
    if summary.plan_id is not None:
        amounts = ", ".join(
            f"{e['count']} x {to_major(e['amount_minor'], c)} {c}"
            for c, e in sorted(summary.plan_totals.items())
        )
        text += (
            f"\nplan {summary.plan_id} frozen ({amounts}): nothing is charged until "
            f"`billing runs approve {summary.plan_id}`"
        )
    return text


@handle_errors
def run(
    once: bool = typer.Option(False, "--once", help="Run one pass and exit (required)."),
    as_of: str | None = typer.Option(
        None, "--as-of", help="Run on a test clock at this ISO timestamp (not in production)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Run one billing pass and a reconciler sweep, and print their summary."""
    if not once:
        raise InvalidInput(
            "only `billing run --once` is supported; use `billing daemon` to keep going"
        )
    cfg = settings()
    clock: Clock | None = None
    if as_of is not None:
        moment = parse_as_of(as_of)
        if cfg.is_production:
            raise ConfigError(
                "--as-of (a test clock) is refused when the environment is production"
            )
        clock = TestClock(moment)
    with open_context(cfg, actor="cli:run", clock=clock, billing_work=True) as ctx:
        daemon = Daemon(ctx)
        billing = daemon.billing_pass()
        reconciled = daemon.reconcile()
        warned = daemon.expiry_warnings()
    warnings = f"\n{warned} card expiry warning" + "s" * (warned != 1) + " sent" if warned else ""
    output(
        {
            "billing_pass": summary_view(billing),
            "reconcile": summary_view(reconciled),
            "expiry_warnings": warned,
        },
        as_json,
        render_summary(billing) + "\n" + render_summary(reconciled) + warnings,
    )
