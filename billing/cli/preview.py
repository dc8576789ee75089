"""billing preview --until DATE: the charges a billing pass would attempt; writes nothing."""

from __future__ import annotations

from datetime import datetime, time

import typer

from billing.cli.common import JsonOption, bounded_instant, handle_errors, output, settings, table
from billing.domain.money import to_major
from billing.errors import ConfigError, InvalidInput

HELP = "Dry run: the charges a billing pass up to DATE would attempt (writes nothing)."


def parse_until(text: str, tz: object) -> datetime:
    """An aware ISO timestamp, or a business date (the end of that day, merchant zone)."""
    from datetime import date
    from zoneinfo import ZoneInfo

    assert isinstance(tz, ZoneInfo)
    stripped = text.strip()
    try:
        if len(stripped) == 10:
            day = date.fromisoformat(stripped)
            value = datetime.combine(day, time(23, 59, 59), tzinfo=tz)
        else:
            value = datetime.fromisoformat(stripped)
    except ValueError:
        raise InvalidInput(
            f"--until {text!r} is neither a date (YYYY-MM-DD) nor an ISO-8601 timestamp"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(
            f"--until {text!r} has no timezone; give a date or an offset, e.g. "
            f"{value.isoformat()}-03:00"
        )
    return bounded_instant(value, "--until")


@handle_errors
def preview(
    until: str = typer.Option(
        ...,
        "--until",
        help="A business date (through its end, BILLING_TIMEZONE) or an aware timestamp.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Dry run: the charges a billing pass up to DATE would attempt (writes nothing).

    Lists what one billing pass at UNTIL would do: renewals (periods starting by UNTIL,
    catch-up included; subscriptions over the catch-up cap are shown held, not charged),
    the next scheduled attempt of each open invoice, deferrals by card-network caps and
    final actions of chains with no card left. Outcomes are unknown, so each invoice is
    listed once, as scheduled now: a retry that would follow a decline is not a charge
    here; IF_DECLINED says what a decline would lead to. Cards are those mirrored here
    (a retry first refreshes them from Plexo). Plexo is not called.
    """
    from billing.engine.preview import preview as run_preview
    from billing.engine.preview import preview_view
    from billing.engine.store_rules import check_timezone
    from billing.store.meta import latest_clock
    from billing.store.migrate import is_at_head
    from billing.wiring import open_context

    cfg = settings()
    moment = parse_until(until, cfg.tz)
    if not is_at_head(cfg.database_url):
        raise ConfigError(
            "the database schema is not at the latest revision; run `billing db upgrade`"
        )
    # require_schema=False: open_context would record the zone at first use (a write).
    with open_context(cfg, actor="cli:preview", require_schema=False) as ctx:
        check_timezone(ctx.engine, cfg.timezone, ctx.clock, record=False)
        now = ctx.clock.now()
        reading = latest_clock(ctx.engine)
        if reading is not None and reading.at > now:
            now = reading.at  # a test clock drove the store ahead: its now is that
        if moment < now:
            raise InvalidInput(
                f"--until {until!r} is before now ({now.isoformat()}): a preview looks ahead"
            )
        result = run_preview(ctx, moment)
    view = preview_view(result)
    output(view, as_json, render(view))


def render(view: dict[str, object]) -> str:
    def rows(key: str) -> list[dict[str, object]]:
        lines = view[key]
        assert isinstance(lines, list)
        return [
            {**line, "amount": str(to_major(line["amount_minor"], line["currency"]))}
            for line in lines
        ]

    charges = rows("charges")
    columns = ["kind", "customer", "invoice", "period_start", "amount", "currency"]
    columns += ["due_at", "attempt_number", "instrument", "if_declined"]
    parts = [f"charges a billing pass at {view['until']} would attempt:", table(charges, columns)]
    other = rows("not_charged")
    if other:
        parts += [
            "not charged:",
            table(
                other,
                ["kind", "customer", "subscription_id", "invoice", "amount", "currency", "detail"],
            ),
        ]
    totals = view["totals"]
    assert isinstance(totals, dict)
    total_rows = [
        {"currency": cur, "count": t["count"], "amount": str(to_major(t["amount_minor"], cur))}
        for cur, t in sorted(totals.items())
    ]
    parts += ["totals:", table(total_rows, ["currency", "count", "amount"])]
    return "\n".join(parts)
