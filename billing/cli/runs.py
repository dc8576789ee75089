"""billing runs list / show / export: what each billing run did, for finance to review.

The counting and the rows live in billing/engine/run_review.py and run_export.py; this module
parses, prints and opens the output file.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import typer

from billing.cli.common import JsonOption, cell, handle_errors, output, settings, table
from billing.cli.reconcile_cmd import parse_bound
from billing.domain.money import to_major
from billing.engine.run_export import FORMATS, ChargeRow, export_run, json_record
from billing.engine.run_review import (
    DeclineLine,
    ParkedLine,
    RunCounts,
    Tally,
    get_run,
    list_run_counts,
    review_run,
    tally_of,
)
from billing.engine.runs import EXTRA_TOTALS, RUN_KINDS, is_plan
from billing.errors import InvalidInput
from billing.store.db import session
from billing.wiring import open_context

runs_app = typer.Typer(
    help="Billing runs: every pass or reconciler sweep that did work.", no_args_is_help=True
)

DEFAULT_CHARGE_LIMIT = 200


def _amounts(amounts: dict[str, int]) -> dict[str, str]:
    return {cur: str(to_major(minor, cur)) for cur, minor in sorted(amounts.items())}


def tally_view(t: Tally) -> dict[str, Any]:
    """JSON: amounts in major units as strings, per currency (like every other view)."""
    return {"count": t.count, "amounts": _amounts(t.amounts)}


def counts_view(c: RunCounts) -> dict[str, Any]:
    r = c.run
    return {
        "id": r.id,
        "kind": r.kind,
        "state": c.state,
        "node": r.node,
        "as_of": r.as_of,
        "started_at": r.started_at,
        "heartbeat_at": r.heartbeat_at,
        "finished_at": r.finished_at,
        "invoices_created": r.invoices_created,
        "invoices_due": c.due,
        "subscriptions_held": r.subscriptions_held,
        "attempts": r.attempts,
        "outcomes": {o: tally_view(t) for o, t in c.outcomes.items()},
        "parked": tally_view(c.parked),
        # What the run itself recorded at its end (before later reconciliation).
        "recorded_outcomes": {
            o: tally_view(tally_of(e)) for o, e in r.totals.items() if o not in EXTRA_TOTALS
        },
    }


def _money_cell(amounts: dict[str, str]) -> str:
    return ", ".join(f"{v} {cur}" for cur, v in amounts.items()) or "-"


def _count_cell(view: dict[str, Any], *outcomes: str) -> int:
    return sum(view["outcomes"].get(o, {}).get("count", 0) for o in outcomes)


@runs_app.command("list")
@handle_errors
def list_runs(
    kind: str | None = typer.Option(None, "--kind", help="pass or reconcile (default: both)"),
    start: str | None = typer.Option(
        None, "--from", help="Runs started on or after this date (merchant zone)."
    ),
    end: str | None = typer.Option(
        None, "--to", help="Runs started on or before this date (merchant zone, included)."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=100_000),
    as_json: bool = JsonOption,
) -> None:
    """List billing runs newest first: state, invoices due, approved, declined, unknown and
    parked, with the approved amount per currency (--json: every outcome's amounts)."""
    if kind is not None and kind not in RUN_KINDS:
        raise InvalidInput(f"unknown run kind {kind!r}; use one of " + ", ".join(RUN_KINDS))
    cfg = settings()
    since = parse_bound(start, cfg.tz, "--from", end=False) if start is not None else None
    until = parse_bound(end, cfg.tz, "--to", end=True) if end is not None else None
    if since is not None and until is not None and not since < until:
        raise InvalidInput("--from must be before --to")
    with open_context(cfg) as ctx:
        runs = list_run_counts(
            ctx, kind=kind, started_from=since, started_before=until, limit=limit
        )
    views = [counts_view(c) for c in runs]
    rows = [
        {
            **v,
            "due": v["invoices_due"],
            "approved": _count_cell(v, "approved"),
            "declined": _count_cell(v, "declined"),
            "unknown": _count_cell(v, "unknown", "pending"),
            "parked": v["parked"]["count"],
            "approved_amount": _money_cell(v["outcomes"].get("approved", {}).get("amounts", {})),
        }
        for v in views
    ]
    columns = ["id", "kind", "state", "started_at", "due", "approved", "declined", "unknown"]
    columns += ["parked", "approved_amount"]
    output(views, as_json, table(rows, columns))


def charge_view(row: ChargeRow) -> dict[str, Any]:
    """A charge as in `runs export --format json` (amount in major units and minor units)."""
    return json_record(row)


def decline_view(d: DeclineLine) -> dict[str, Any]:
    return {
        "decline_class": d.decline_class,
        "decline_code": d.decline_code,
        "result_code": d.result_code,
        "count": d.count,
        "amounts": _amounts(d.amounts),
    }


def parked_view(p: ParkedLine) -> dict[str, Any]:
    return {
        "invoice_id": p.invoice_id,
        "invoice_number": p.invoice_number,
        "subscription_id": p.subscription_id,
        "customer_reference_id": p.customer_reference_id,
        "amount": str(to_major(p.amount_minor, p.currency))
        if p.amount_minor is not None and p.currency
        else None,
        "currency": p.currency,
        "reason": p.reason,
        "parked_at": p.parked_at,
        "status": p.status,
    }


@runs_app.command("show")
@handle_errors
def show_run(
    run: int = typer.Argument(..., help="Run id (see `billing runs list`)."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=100_000,
        help=f"List at most N charges (default {DEFAULT_CHARGE_LIMIT}).",
    ),
    show_all: bool = typer.Option(False, "--all", help="List every charge of the run."),
    as_json: bool = JsonOption,
) -> None:  # fmt: skip
    """Show one run: totals per outcome and currency, declines by class and code, its
    charges, and whatever is parked or still unknown/pending."""
    if show_all and limit is not None:
        raise InvalidInput("give --limit N or --all, not both")
    cap = None if show_all else limit or DEFAULT_CHARGE_LIMIT
    plan: dict[str, Any] | None = None
    with open_context(settings()) as ctx:
        review = review_run(ctx, run, charge_limit=cap)
        if is_plan(review.counts.run):  # the approval gate's frozen charges (runs plan RUN)
            from billing.cli.run_approval import plan_view

            with session(ctx.engine) as s:
                plan = plan_view(s, review.counts.run)
    view = {
        **counts_view(review.counts),
        "declines": [decline_view(d) for d in review.declines],
        "charge_count": review.charge_count,
        "charges": [charge_view(c) for c in review.charges],
        "unresolved": [charge_view(c) for c in review.unresolved],
        "parked_invoices": [parked_view(p) for p in review.parked],
        "plan": plan,
    }
    text = render_run(view)
    if plan is not None:
        text += (
            f"\nplan: {len(plan['items'])} frozen charges ({plan['state']}); "
            f"`billing runs plan {run}` lists them"
        )
    output(view, as_json, text)
    if review.charge_count > len(review.charges):
        typer.echo(
            f"{len(review.charges)} of {review.charge_count} charges shown; use --limit N, "
            "--all or `billing runs export`",
            err=True,
        )


CHARGE_COLUMNS = ["invoice_number", "subscription_id", "customer_reference_id", "amount"]
CHARGE_COLUMNS += ["currency", "outcome", "decline_code", "plexo_payment_id", "reference_id"]
CHARGE_COLUMNS += ["attempted_at", "resolved_at"]


def _local(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Charge views carry ISO strings (JSON); the table shows the merchant's zone."""
    keys = ("attempted_at", "resolved_at", "parked_at")
    return [
        {
            k: datetime.fromisoformat(v) if k in keys and isinstance(v, str) else v
            for k, v in r.items()
        }
        for r in rows
    ]


def render_run(view: dict[str, Any]) -> str:
    head = (
        f"run {view['id']} {view['kind']}  {view['state']}  node {cell(view['node'])}  "
        f"started {cell(view['started_at'])}  finished {cell(view['finished_at'])}"
    )
    due = view["invoices_due"]
    lines = [
        head,
        f"invoices created {view['invoices_created']}, due {cell(due)}, "
        f"subscriptions held {view['subscriptions_held']}, charges {view['charge_count']}",
        "",
        "totals:",
    ]
    totals = [
        {"outcome": o, "count": t["count"], "currency": cur, "amount": amount}
        for o, t in [*view["outcomes"].items(), ("parked", view["parked"])]
        for cur, amount in (t["amounts"].items() or [("-", "-")])
        if o != "parked" or t["count"]
    ]
    lines.append(table(totals, ["outcome", "count", "currency", "amount"]))
    if view["declines"]:
        declines = [{**d, "amount": _money_cell(d["amounts"])} for d in view["declines"]]
        columns = ["decline_class", "decline_code", "result_code", "count", "amount"]
        lines += ["", "declines:", table(declines, columns)]
    if view["parked_invoices"]:
        columns = ["invoice_number", "customer_reference_id", "amount", "currency", "reason"]
        columns += ["parked_at", "status"]
        lines += ["", "parked:", table(_local(view["parked_invoices"]), columns)]
    if view["unresolved"]:
        lines += [
            "",
            "still unknown or pending:",
            table(_local(view["unresolved"]), CHARGE_COLUMNS),
        ]
    lines += ["", "charges:", table(_local(view["charges"]), CHARGE_COLUMNS)]
    return "\n".join(lines)


@contextmanager
def _destination(path: str | None, encoding: str) -> Iterator[IO[str]]:
    """A text stream over stdout or a file, newline translation off (the writer chooses).
    A regular file is written beside its target and renamed when complete, so a failed
    export never leaves a half file under the name asked for."""
    if path is None:
        sys.stdout.flush()
        stream = io.TextIOWrapper(sys.stdout.buffer, encoding=encoding, newline="")
        try:
            yield stream
        finally:
            stream.flush()
            stream.detach()  # stdout itself stays open
        return
    target = Path(path)
    if target.exists() and not target.is_file():  # /dev/null, a pipe: write it directly
        try:
            with open(target, "w", encoding=encoding, newline="") as stream:
                yield stream
        except OSError as exc:
            raise InvalidInput(
                f"cannot write {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        return
    partial = target.with_name(f".{target.name}.partial")
    try:
        handle = open(partial, "w", encoding=encoding, newline="")  # noqa: SIM115
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        with handle:
            yield handle
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()


@runs_app.command("export")
@handle_errors
def export(
    run: int = typer.Argument(..., help="Run id (see `billing runs list`)."),
    fmt: str = typer.Option(..., "--format", help="csv or json (JSON Lines)."),
    dest: str | None = typer.Option(None, "--output", help="Write to FILE (default: stdout)."),
) -> None:
    """One line per charge attempt of the run, streamed. CSV: UTF-8 with a BOM, CRLF, a
    header, ISO-8601 UTC times, amounts in major units with a dot; json: JSON Lines."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; use one of " + ", ".join(FORMATS))
    with open_context(settings()) as ctx:
        with session(ctx.engine) as s:
            get_run(s, run)  # an unknown run: one line, and no file is created
        # The BOM makes spreadsheets read UTF-8; a JSON parser would refuse it.
        with _destination(dest, "utf-8-sig" if fmt == "csv" else "utf-8") as out:
            count = export_run(ctx.engine, run, fmt, out)
    if dest is not None:
        typer.echo(f"run {run}: {count} charge attempts written to {cell(dest)}", err=True)
