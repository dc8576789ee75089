"""billing events list: the audit log (every state change, who made it and why).

Notifications moved to `billing notifications`; `events redeliver` stays as a hidden alias
so runbooks written before the move keep working.
"""

from __future__ import annotations

import typer

from billing.cli.common import JsonOption, handle_errors, output, settings, table
from billing.cli.notifications import redeliver_notification
from billing.cli.reconcile_cmd import parse_bound
from billing.engine.audit import AuditFilter, event_view, list_audit_events
from billing.wiring import open_context

app = typer.Typer(
    help="The audit log: every state change, with who made it and why.", no_args_is_help=True
)


@app.command("list")
@handle_errors
def list_events(
    subscription: int | None = typer.Option(
        None, "--subscription", help="Its events and its invoices' and attempts'."
    ),
    invoice: str | None = typer.Option(None, "--invoice", help="Invoice id or number."),
    customer: str | None = typer.Option(
        None, "--customer", help="ReferenceId or id: everything about the customer."
    ),
    actor: str | None = typer.Option(None, "--actor", help="Who (e.g. ana, daemon, cli)."),
    type_: str | None = typer.Option(
        None, "--type", help="Event name, or a prefix ending in '.' (e.g. invoice.)."
    ),
    start: str | None = typer.Option(
        None, "--from", help="Business date (merchant zone) or ISO instant with offset."
    ),
    end: str | None = typer.Option(
        None, "--to", help="Business date (whole day included) or ISO instant (exclusive)."
    ),
    before_id: int | None = typer.Option(
        None, "--before-id", min=1, help="Only events older than this id (the next page)."
    ),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    as_json: bool = JsonOption,
) -> None:
    """List audit events, newest first; a full page says how to get the next one."""
    cfg = settings()
    query = AuditFilter(
        subscription=subscription,
        invoice=invoice,
        customer=customer,
        actor=actor,
        type_=type_,
        since=parse_bound(start, cfg.tz, "--from", end=False) if start else None,
        until=parse_bound(end, cfg.tz, "--to", end=True) if end else None,
        before_id=before_id,
    )
    with open_context(cfg) as ctx:
        page = list_audit_events(ctx, query, limit)
    views = [event_view(e) for e in page.events]
    rows = [
        {**v, "entity": f"{e.entity_type} {e.entity_id}"}
        for v, e in zip(views, page.events, strict=True)
    ]
    output(views, as_json, table(rows, ["id", "at", "event", "entity", "actor", "reason"]))
    if page.more:
        typer.echo(
            f"{len(views)} shown, older ones match too: --before-id {page.events[-1].id}",
            err=True,
        )


# Deprecated: notifications are `billing notifications ...` now (runbooks may still say this).
app.command("redeliver", hidden=True)(redeliver_notification)
