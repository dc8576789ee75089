"""The revenue report as data: JSON (minor units, ISO-8601 UTC) and CSV rows (major units).

Shared by `billing report` (billing/cli/report.py) and its HTML page (billing/cli/report_html.py).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from billing.domain.money import CURRENCY_DIGITS, to_major
from billing.domain.mrr import MOVEMENTS
from billing.engine.report import CurrencyReport, Figure, RevenueReport

FIGURES = (
    ("collected", "collected (approved charges)"),
    ("failed_attempts", "failed (declined attempts)"),
    ("uncollectible", "invoices ended uncollectible"),
    ("recovered", "recovered by dunning (invoices paid)"),
    ("failed_invoices", "invoices that first failed in range"),
    ("recovered_of_failed", "  of them paid by the end"),
    ("involuntary_churn", "involuntary churn (MRR lost)"),
    ("parked", "parked in range"),
    ("parked_now", "parked now (waiting for review)"),
)
CSV_COLUMNS = ("section", "currency", "metric", "bucket", "count", "amount", "rate")


def money(minor: int, currency: str) -> str:
    """Major units with a dot; a currency we do not settle shows its minor units."""
    if currency in CURRENCY_DIGITS:
        return str(to_major(minor, currency))
    return f"{minor} (minor units)"


def percent(report: CurrencyReport) -> str:
    rate = report.recovery_rate
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _figure(f: Figure) -> dict[str, int]:
    return {"count": f.count, "amount_minor": f.amount_minor}


def currency_view(c: CurrencyReport) -> dict[str, Any]:
    view: dict[str, Any] = {name: _figure(getattr(c, name)) for name, _ in FIGURES}
    view["recovery_rate"] = c.recovery_rate
    view["mrr"] = {
        "start_minor": c.mrr_start,
        "end_minor": c.mrr_end,
        "subscriptions_start": c.subscriptions_start,
        "subscriptions_end": c.subscriptions_end,
        "movement": {f"{k}_minor": c.movement[k] for k in MOVEMENTS},
    }
    view["buckets"] = [
        {
            "label": b.bucket.label,
            "start": b.bucket.start,
            "end": b.bucket.end,
            "collected": _figure(b.collected),
            "failed": _figure(b.failed),
            "recovered": _figure(b.recovered),
        }
        for b in c.buckets
    ]
    return view


def report_view(report: RevenueReport) -> dict[str, Any]:
    """JSON: amounts in integer minor units per currency, times ISO-8601 UTC."""
    return {
        "from": report.range_from,
        "to": report.range_to,
        "timezone": report.timezone,
        "bucket": report.bucket,
        "generated_at": report.generated_at,
        "currencies": {c.currency: currency_view(c) for c in report.currencies},
    }


def csv_text(report: RevenueReport) -> str:
    """UTF-8 without a BOM, a header row, amounts in major units with a dot, bucket labels as
    business dates (YYYY-MM-DD week start, YYYY-MM month)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in report.currencies:
        cur = c.currency
        for name, _ in FIGURES:
            f: Figure = getattr(c, name)
            writer.writerow(["totals", cur, name, "", f.count, money(f.amount_minor, cur), ""])
        rate = c.recovery_rate
        writer.writerow(["totals", cur, "recovery_rate", "", "", "", "" if rate is None else rate])
        writer.writerow(
            ["mrr", cur, "mrr_start", "", c.subscriptions_start, money(c.mrr_start, cur), ""]
        )
        for k in MOVEMENTS:
            writer.writerow(["mrr", cur, f"mrr_{k}", "", "", money(c.movement[k], cur), ""])
        writer.writerow(["mrr", cur, "mrr_end", "", c.subscriptions_end, money(c.mrr_end, cur), ""])
        for b in c.buckets:
            for series in ("collected", "failed", "recovered"):
                f = getattr(b, series)
                amount = money(f.amount_minor, cur)
                writer.writerow(["bucket", cur, series, b.bucket.label, f.count, amount, ""])
    return buffer.getvalue()
