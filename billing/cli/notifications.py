"""billing notifications list / redeliver: what the outbox delivers (webhooks, email).

(They were `billing events ...` before the audit log took that name; `events redeliver`
remains as a hidden alias.)"""

from __future__ import annotations

import typer

from billing.cli.common import JsonOption, handle_errors, operator_name, output, settings, table
from billing.engine.notifications import list_deliveries, redeliver
from billing.wiring import open_context

app = typer.Typer(
    help="Notifications (webhooks, email) and their deliveries.", no_args_is_help=True
)


@app.command("list")
@handle_errors
def list_notifications(
    type_: str | None = typer.Option(None, "--type", help="e.g. invoice.payment_failed"),
    state: str | None = typer.Option(None, "--state", help="pending, delivered or dead"),
    channel: str | None = typer.Option(None, "--channel", help="webhook or email"),
    event_id: str | None = typer.Option(None, "--id", help="One event (evt_...)."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    as_json: bool = JsonOption,
) -> None:
    """List notification events, newest first, one line per delivery."""
    with open_context(settings()) as ctx:
        views = [
            v.as_dict()
            for v in list_deliveries(
                ctx, type_=type_, state=state, channel=channel, event_id=event_id, limit=limit
            )
        ]
    columns = ["event_id", "type", "created_at", "channel", "state", "attempts"]
    columns += ["next_attempt_at", "last_error", "target"]
    output(views, as_json, table(views, columns))


@app.command("redeliver")
@handle_errors
def redeliver_notification(
    event_id: str,
    reason: str = typer.Option(..., "--reason", help="Why (kept in the event log)."),
    channel: str | None = typer.Option(None, "--channel", help="Only webhook or only email."),
    by: str | None = typer.Option(None, "--by", help="Who asks (default: the OS user)."),
    as_json: bool = JsonOption,
) -> None:
    """Send a delivered or dead event again (same event id: receivers dedupe on it)."""

    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        count = redeliver(ctx, event_id, reason, channel)
    noun = "delivery" if count == 1 else "deliveries"
    output(
        {"event_id": event_id, "deliveries": count, "by": actor},
        as_json,
        f"event {event_id}: {count} {noun} back to pending (by {actor}); the daemon sends "
        "them on its next notify run",
    )
