"""billing report --from --to: the revenue report per currency (engine/report.py), as a
table, CSV, JSON or one self-contained HTML page."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import typer

from billing.cli.common import JsonOption, handle_errors, output, settings, table
from billing.cli.reconcile_cmd import parse_bound
from billing.domain.buckets import BUCKET_KINDS
from billing.domain.mrr import MOVEMENTS
from billing.engine.report import CurrencyReport, RevenueReport
from billing.errors import InvalidInput

HELP = "Revenue per currency for a range: collected, failed, recovered, churn, MRR (HTML too)."
FORMATS = ("table", "csv", "json", "html")


def _range_words(report: RevenueReport, tz: ZoneInfo) -> str:
    start = report.range_from.astimezone(tz)
    end = report.range_to.astimezone(tz)
    if start.time() == time(0) and end.time() == time(0):
        last = datetime.fromordinal(end.toordinal() - 1).date()
        return f"{start:%Y-%m-%d} to {last:%Y-%m-%d} included ({report.timezone})"
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} excluded ({report.timezone})"


def _currency_text(c: CurrencyReport) -> str:
    from billing.cli.report_views import FIGURES, money, percent

    cur = c.currency
    rows: list[dict[str, object]] = [
        {
            "figure": label.strip(),
            "count": getattr(c, name).count,
            "amount": money(getattr(c, name).amount_minor, cur),
        }
        for name, label in FIGURES
    ]
    rows.append({"figure": "recovery rate", "count": None, "amount": percent(c)})
    mrr_rows: list[dict[str, object]] = [
        {"mrr": "start", "subscriptions": c.subscriptions_start, "amount": money(c.mrr_start, cur)}
    ]
    for key in MOVEMENTS:
        sign = "-" if key in ("churned", "contraction", "moved_out") else "+"
        mrr_rows.append({"mrr": f"{sign} {key}", "amount": money(c.movement[key], cur)})
    mrr_rows.append(
        {"mrr": "end", "subscriptions": c.subscriptions_end, "amount": money(c.mrr_end, cur)}
    )
    bucket_rows = [
        {
            "bucket": b.bucket.label,
            "collected": money(b.collected.amount_minor, cur),
            "failed": money(b.failed.amount_minor, cur),
            "recovered": money(b.recovered.amount_minor, cur),
        }
        for b in c.buckets
    ]
    return "\n\n".join(
        [
            f"== {cur} ==",
            table(rows, ("figure", "count", "amount")),
            table(mrr_rows, ("mrr", "subscriptions", "amount")),
            table(bucket_rows, ("bucket", "collected", "failed", "recovered")),
        ]
    )


def _checked_output(path: str | None) -> Path | None:
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise InvalidInput(f"--output {path!r} is a directory; name a file")
    if not target.parent.is_dir():
        raise InvalidInput(f"--output {path!r}: directory {str(target.parent)!r} does not exist")
    return target


def _write(target: Path, text: str) -> None:
    """Whole or not at all: a temporary file beside it, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=".report-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@handle_errors
def report(
    start: str | None = typer.Option(
        None, "--from", help="First business date (merchant zone), included; or an aware time."
    ),
    end: str | None = typer.Option(
        None, "--to", help="Last business date, included (or an aware timestamp, excluded)."
    ),
    fmt: str = typer.Option("table", "--format", help="table, csv, json or html"),
    bucket: str = typer.Option(
        "auto", "--bucket", help="Chart and CSV buckets: auto (weeks up to 92 days), week, month"
    ),
    output_path: str | None = typer.Option(
        None, "--output", help="Write to this file (replaced whole) instead of stdout."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Revenue per currency for a range: collected, failed, recovered, churn, MRR (HTML too).

    Collected: approved charges settled in the range. Failed: declined attempts, and invoices
    that ended uncollectible. Recovered: invoices paid in the range after a failed attempt.
    MRR counts active and past_due subscriptions whose first period started (README).
    """
    if start is None or end is None:
        raise InvalidInput("give --from DATE and --to DATE")
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    if as_json and fmt not in ("table", "json"):
        raise InvalidInput(f"give --json or --format {fmt}, not both")
    if bucket not in BUCKET_KINDS:
        raise InvalidInput(f"unknown --bucket {bucket!r}; use one of {', '.join(BUCKET_KINDS)}")
    fmt = "json" if as_json else fmt
    cfg = settings()
    range_from = parse_bound(start, cfg.tz, "--from", end=False)
    range_to = parse_bound(end, cfg.tz, "--to", end=True)
    if not range_from < range_to:
        raise InvalidInput("--from must be before --to")
    target = _checked_output(output_path)
    from billing.cli.report_views import csv_text, report_view
    from billing.engine.report import revenue_report
    from billing.wiring import open_context

    with open_context(cfg) as bctx:
        result = revenue_report(bctx, range_from, range_to, bucket=bucket)
    if fmt == "html":
        from billing.cli.report_html import render_html

        text = render_html(result, cfg.tz, result.generated_at)
    elif fmt == "csv":
        text = csv_text(result)
    elif fmt == "json":
        import json

        from billing.cli.common import to_jsonable

        text = json.dumps(to_jsonable(report_view(result)), indent=2) + "\n"
    else:
        body = "\n\n".join(_currency_text(c) for c in result.currencies) or "(no figures)"
        text = f"revenue report {_range_words(result, cfg.tz)}, per {result.bucket}\n\n{body}\n"
    if target is not None:
        _write(target, text)
        output({"written": str(target), "format": fmt}, False, f"report written to {target}")
    elif fmt == "table":
        output(None, False, text.rstrip("\n"))
    else:
        typer.echo(text, nl=False)
