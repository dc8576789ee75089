"""billing reconcile --from --to: the ledger against Plexo's payments; its stored findings.

Not `billing run`'s reconciler, which settles single charges whose outcome is unknown: this
compares a range of the ledger with what Plexo lists (billing/engine/ledger_check.py).
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import typer

from billing.cli.common import (
    ByOption,
    JsonOption,
    ReasonOption,
    bounded_instant,
    fail,
    handle_errors,
    local_time,
    operator_name,
    output,
    settings,
    table,
)
from billing.domain.money import CURRENCY_DIGITS, to_major
from billing.errors import InvalidInput
from billing.store.models import ReconciliationFinding
from billing.wiring import open_context

HELP = (
    "Compare the ledger with Plexo's payments for a range and keep the findings "
    "(not the reconciler of unknown charges)."
)
app = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)
findings_app = typer.Typer(help="Stored findings of ledger checks.", no_args_is_help=True)
app.add_typer(findings_app, name="findings")

FORMATS = ("table", "csv")
CSV_COLUMNS = (
    "id",
    "kind",
    "state",
    "reference_id",
    "plexo_payment_id",
    "attempt_id",
    "invoice_id",
    "expected_status",
    "found_status",
    "expected_amount",
    "expected_currency",
    "found_amount",
    "found_currency",
    "occurred_at",
    "first_seen_at",
    "last_seen_at",
    "resolved_at",
    "resolved_by",
    "resolution",
)
TABLE_COLUMNS = ("id", "kind", "state", "reference_id", "plexo_payment_id", "expected", "found")


def parse_bound(text: str, tz: ZoneInfo, label: str, *, end: bool) -> datetime:
    """A date is a business date in the merchant zone (`--to` includes its whole day); a
    timestamp must carry its offset (`--to` is then exclusive)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            value = datetime.combine(day + timedelta(days=1) if end else day, time(0), tzinfo=tz)
        else:
            value = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{label} {text!r} is not an ISO date or timestamp") from None
    if value.tzinfo is None:
        raise InvalidInput(
            f"{label} {text!r} has no timezone offset; add one (e.g. {text}-03:00) or give a date"
        )
    return bounded_instant(value, label)


def _money(minor: int | None, currency: str | None) -> str | None:
    """Major units with a dot for people; a currency we do not settle shows its minor units."""
    if minor is None:
        return None
    if currency in CURRENCY_DIGITS:
        return str(to_major(minor, currency))
    return f"{minor} (minor units)"


def finding_view(f: ReconciliationFinding) -> dict[str, Any]:
    """JSON: amounts as integer minor units and currency; times ISO-8601 UTC."""
    return {
        "id": f.id,
        "kind": f.kind,
        "state": "open" if f.resolved_at is None else "resolved",
        "reference_id": f.reference_id,
        "plexo_payment_id": f.plexo_payment_id,
        "attempt_id": f.attempt_id,
        "invoice_id": f.invoice_id,
        "expected_status": f.expected_status,
        "found_status": f.found_status,
        "expected_amount_minor": f.expected_amount_minor,
        "expected_currency": f.expected_currency,
        "found_amount_minor": f.found_amount_minor,
        "found_currency": f.found_currency,
        "occurred_at": f.occurred_at,
        "first_seen_at": f.first_seen_at,
        "last_seen_at": f.last_seen_at,
        "first_check_id": f.first_check_id,
        "last_check_id": f.last_check_id,
        "resolved_at": f.resolved_at,
        "resolved_by": f.resolved_by,
        "resolution": f.resolution,
    }


def _side(status: str | None, minor: int | None, currency: str | None) -> str:
    amount = _money(minor, currency)
    parts = [status or "-"]
    if amount is not None:
        parts.append(f"{amount} {currency or ''}".strip())
    return " ".join(parts)


def _rows(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **v,
            "expected": _side(
                v["expected_status"], v["expected_amount_minor"], v["expected_currency"]
            )
            if v["expected_status"]
            else "(not here)",
            "found": _side(v["found_status"], v["found_amount_minor"], v["found_currency"]),
        }
        for v in views
    ]


def _csv(views: list[dict[str, Any]]) -> str:
    """UTF-8 without a BOM, a header row, ISO-8601 UTC times, amounts in major units."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for v in views:
        row = {
            **v,
            "expected_amount": _money(v["expected_amount_minor"], v["expected_currency"]),
            "found_amount": _money(v["found_amount_minor"], v["found_currency"]),
        }
        writer.writerow(
            [
                ""
                if row[c] is None
                else (row[c].isoformat() if isinstance(row[c], datetime) else row[c])
                for c in CSV_COLUMNS
            ]
        )
    return buffer.getvalue()


@app.callback()
@handle_errors
def reconcile(
    ctx: typer.Context,
    start: str | None = typer.Option(
        None, "--from", help="First business date (merchant zone) or an aware timestamp."
    ),
    end: str | None = typer.Option(
        None, "--to", help="Last business date, included (or an aware timestamp, excluded)."
    ),
    fmt: str = typer.Option("table", "--format", help="table or csv"),
    page_size: int = typer.Option(100, "--page-size", min=1, max=100, hidden=True),
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Compare the ledger with Plexo's payments for a range and keep the findings (not the
    reconciler of unknown charges).

    Matched pairs, payments approved at Plexo but missing here (or recorded declined), charges
    approved here but missing at Plexo, status and amount/currency mismatches. Exit 1 while any
    finding of the range is open, 0 when clean.
    """
    if ctx.invoked_subcommand is not None:
        if start is not None or end is not None:
            raise InvalidInput("--from/--to belong to `billing reconcile` itself, not findings")
        return
    if start is None or end is None:
        raise InvalidInput("give --from DATE and --to DATE (or `billing reconcile findings ...`)")
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown --format {fmt!r}; use table or csv")
    if as_json and fmt != "table":
        raise InvalidInput("give --json or --format csv, not both")
    actor = operator_name(by)
    cfg = settings()
    range_from = parse_bound(start, cfg.tz, "--from", end=False)
    range_to = parse_bound(end, cfg.tz, "--to", end=True)
    if not range_from < range_to:
        raise InvalidInput("--from must be before --to")
    from billing.engine.ledger_check import run_ledger_check

    with open_context(cfg, actor=actor) as bctx:
        result = run_ledger_check(bctx, range_from, range_to, page_size=page_size)
    views = [finding_view(f) for f in result.findings]
    counts = result.counts
    if as_json:
        output(
            {
                "check_id": result.check_id,
                "from": result.range_from,
                "to": result.range_to,
                "clean": result.clean,
                "counts": counts,
                "auto_resolved": result.auto_resolved,
                "findings": views,
            },
            True,
            "",
        )
    elif fmt == "csv":
        typer.echo(_csv(views), nl=False)
    else:
        summary = (
            f"ledger check {result.check_id}, {local_time(range_from)} to {local_time(range_to)}: "
            f"{counts.get('matched', 0)} matched, {counts.get('unresolved', 0)} still unresolved "
            f"(left to the reconciler), {len(result.open_findings)} open finding(s); Plexo listed "
            f"{counts['plexo_payments']} payment(s) in {counts['pages']} page(s)"
        )
        if counts.get("undated"):
            summary += f", {counts['undated']} without a readable createdAt"
        if result.auto_resolved:
            summary += f"; {len(result.auto_resolved)} earlier finding(s) now match: resolved"
        body = table(_rows(views), TABLE_COLUMNS) if views else "no findings"
        output(None, False, f"{body}\n{summary}")
    if not result.clean:
        raise typer.Exit(1)


@findings_app.command("list")
@handle_errors
def list_findings_cmd(
    open_only: bool = typer.Option(False, "--open", help="Only findings not resolved yet."),
    limit: int = typer.Option(500, "--limit", min=1, max=100_000),
    fmt: str = typer.Option("table", "--format", help="table or csv"),
    as_json: bool = JsonOption,
) -> None:
    """List stored findings, newest first."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown --format {fmt!r}; use table or csv")
    if as_json and fmt != "table":
        raise InvalidInput("give --json or --format csv, not both")
    from billing.engine.ledger_check import list_findings

    with open_context(settings()) as bctx:
        views = [finding_view(f) for f in list_findings(bctx, open_only=open_only, limit=limit)]
    if fmt == "csv":
        typer.echo(_csv(views), nl=False)
        return
    output(views, as_json, table(_rows(views), (*TABLE_COLUMNS, "resolved_by")))


@findings_app.command("resolve")
@handle_errors
def resolve_cmd(
    finding: int = typer.Argument(..., help="Finding id."),
    reason: str = ReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Mark a finding explained, with who and why (kept on it and in the event log)."""
    from billing.engine.ledger_check import resolve_finding

    if finding < 1:
        fail("no such finding (ids start at 1)", 2)
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as bctx:
        done = resolve_finding(bctx, finding, reason)
    output(finding_view(done), as_json, f"finding {done.id} ({done.kind}) resolved by {actor}")
