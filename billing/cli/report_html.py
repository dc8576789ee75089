"""The revenue report as one self-contained HTML page: inline CSS, inline SVG charts, no
script and no external URL, so it opens offline and survives being attached to an email.

Every text is escaped (html.escape); every chart has a <title>, an aria-label and data-*
attributes with its figures in minor units, so a program (or a test) can read them back.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo

from billing.cli.report_views import FIGURES, money, percent
from billing.engine.report import CurrencyReport, RevenueReport

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2433; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { border-bottom: 2px solid #d8dde8; padding-bottom: .3rem; margin-top: 2.5rem; }
p.meta { color: #5a6478; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; min-width: 32rem; }
th, td { padding: .3rem .8rem; border-bottom: 1px solid #e4e8f0; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 2rem; }
figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: .4rem; }
svg text { font-size: 11px; fill: #3a4356; }
.legend span { display: inline-block; margin-right: 1rem; }
.swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; }
"""
COLOURS = {
    "collected": "#2e9d5b",
    "failed": "#d64545",
    "recovered": "#3b6fd4",
    "level": "#6b7a99",
    "up": "#2e9d5b",
    "down": "#d64545",
}
STEPS = (
    ("new", "+ new", 1),
    ("reactivated", "+ reactivated", 1),
    ("expansion", "+ expansion", 1),
    ("moved_in", "+ moved in", 1),
    ("churned", "- churned", -1),
    ("contraction", "- contraction", -1),
    ("moved_out", "- moved out", -1),
)


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _range_text(report: RevenueReport, tz: ZoneInfo) -> str:
    start = report.range_from.astimezone(tz)
    end = report.range_to.astimezone(tz)
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({report.timezone}, end excluded)"


def _totals(c: CurrencyReport) -> str:
    rows = []
    for name, label in FIGURES:
        f = getattr(c, name)
        rows.append(
            f'<tr data-metric="{_attr(name)}" data-count="{f.count}" '
            f'data-amount-minor="{f.amount_minor}"><td>{escape(label)}</td>'
            f'<td class="num">{f.count}</td>'
            f'<td class="num">{escape(money(f.amount_minor, c.currency))}</td></tr>'
        )
    rate = c.recovery_rate
    rows.append(
        f'<tr data-metric="recovery_rate" data-rate="{_attr("" if rate is None else rate)}">'
        f'<td>recovery rate</td><td class="num" colspan="2">{escape(percent(c))}</td></tr>'
    )
    return (
        f'<table class="totals" data-currency="{_attr(c.currency)}"><thead><tr><th>figure</th>'
        f'<th class="num">count</th><th class="num">amount ({escape(c.currency)})</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _mrr_table(c: CurrencyReport) -> str:
    cells = [("MRR at the start", c.mrr_start, "start")]
    cells += [(label, c.movement[key], key) for key, label, _ in STEPS]
    cells.append(("MRR at the end", c.mrr_end, "end"))
    rows = "".join(
        f'<tr data-step="{_attr(key)}" data-minor="{minor}"><td>{escape(label)}</td>'
        f'<td class="num">{escape(money(minor, c.currency))}</td></tr>'
        for label, minor, key in cells
    )
    return (
        f'<table class="mrr" data-currency="{_attr(c.currency)}"><thead><tr><th>MRR</th>'
        f'<th class="num">{escape(c.currency)}</th></tr></thead><tbody>{rows}</tbody></table>'
        f"<p>Subscriptions counted: {c.subscriptions_start} at the start, "
        f"{c.subscriptions_end} at the end.</p>"
    )


def _activity_chart(c: CurrencyReport, bucket: str) -> str:
    """Grouped bars per bucket: collected, failed, recovered."""
    series = ("collected", "failed", "recovered")
    width, height, left, bottom, top = 760, 280, 70, 40, 20
    plot_h = height - bottom - top
    n = max(len(c.buckets), 1)
    slot = (width - left - 10) / n
    bar = max(min(slot / 4, 28), 2)
    peak = max([getattr(b, s).amount_minor for b in c.buckets for s in series] + [1])
    totals = {s: sum(getattr(b, s).amount_minor for b in c.buckets) for s in series}
    label = (
        f"{c.currency} per {bucket}: collected {money(totals['collected'], c.currency)}, "
        f"failed {money(totals['failed'], c.currency)}, "
        f"recovered {money(totals['recovered'], c.currency)}"
    )
    parts = [
        f'<svg class="chart" data-chart="activity" data-currency="{_attr(c.currency)}" '
        f'data-bucket="{_attr(bucket)}" data-buckets="{len(c.buckets)}" '
        + " ".join(f'data-{s}-minor="{totals[s]}"' for s in series)
        + f' role="img" aria-label="{_attr(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{escape(label)}</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 5}" y2="{top + plot_h}" '
        'stroke="#9aa3b5"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">'
        f"{escape(money(peak if peak > 1 else 0, c.currency))}</text>",
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    every = max(1, (n + 11) // 12)
    for i, b in enumerate(c.buckets):
        x0 = left + i * slot + (slot - 3 * bar) / 2
        group = [
            f'<g data-bucket-label="{_attr(b.bucket.label)}" '
            + " ".join(f'data-{s}-minor="{getattr(b, s).amount_minor}"' for s in series)
            + ">"
        ]
        for j, s in enumerate(series):
            f = getattr(b, s)
            h = plot_h * f.amount_minor / peak
            tip = f"{b.bucket.label} {s}: {money(f.amount_minor, c.currency)} ({f.count})"
            group.append(
                f'<rect data-series="{s}" data-minor="{f.amount_minor}" data-count="{f.count}" '
                f'x="{x0 + j * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{COLOURS[s]}"><title>{escape(tip)}</title></rect>'
            )
        if i % every == 0:
            group.append(
                f'<text x="{left + i * slot + slot / 2:.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle">{escape(b.bucket.label)}</text>'
            )
        group.append("</g>")
        parts.append("".join(group))
    parts.append("</svg>")
    legend = "".join(
        f'<span><i class="swatch" style="background:{COLOURS[s]}"></i>{s}</span>' for s in series
    )
    return (
        f"<figure><figcaption>Collected, failed and recovered per {escape(bucket)}"
        f'</figcaption>{"".join(parts)}<div class="legend">{legend}</div></figure>'
    )


def _mrr_chart(c: CurrencyReport) -> str:
    """A waterfall: start, each movement up or down, end."""
    steps: list[tuple[str, str, int, int, int]] = [("start", "start", 0, c.mrr_start, 0)]
    level = c.mrr_start
    for key, label, sign in STEPS:
        value = c.movement[key]
        after = level + sign * value
        steps.append((key, label, min(level, after), max(level, after), sign))
        level = after
    steps.append(("end", "end", 0, c.mrr_end, 0))
    width, height, left, bottom, top = 760, 280, 70, 40, 20
    plot_h = height - bottom - top
    peak = max([high for *_, high, _ in steps] + [1])
    slot = (width - left - 10) / len(steps)
    bar = slot * 0.6
    changes = (
        c.movement["expansion"]
        - c.movement["contraction"]
        + c.movement["moved_in"]
        - c.movement["moved_out"]
    )
    new_total = c.movement["new"] + c.movement["reactivated"]
    label = (
        f"{c.currency} MRR: start {money(c.mrr_start, c.currency)}, new "
        f"{money(new_total, c.currency)}, churned {money(c.movement['churned'], c.currency)}, "
        f"changes {money(changes, c.currency)}, end {money(c.mrr_end, c.currency)}"
    )
    parts = [
        f'<svg class="chart" data-chart="mrr" data-currency="{_attr(c.currency)}" '
        f'data-start-minor="{c.mrr_start}" data-end-minor="{c.mrr_end}" '
        f'data-new-minor="{new_total}" data-churned-minor="{c.movement["churned"]}" '
        f'data-changes-minor="{changes}" role="img" aria-label="{_attr(label)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{escape(label)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 5}" y2="{top + plot_h}" '
        'stroke="#9aa3b5"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">'
        f"{escape(money(peak if peak > 1 else 0, c.currency))}</text>",
    ]
    for i, (key, text, low, high, sign) in enumerate(steps):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h - plot_h * high / peak
        h = max(plot_h * (high - low) / peak, 1.0)
        colour = COLOURS["level"] if sign == 0 else COLOURS["up" if sign > 0 else "down"]
        minor = high - low
        tip = f"{text}: {money(minor, c.currency)}"
        parts.append(
            f'<g data-step="{key}" data-minor="{minor}">'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
            f"<title>{escape(tip)}</title></rect>"
            f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
            f"{escape(text)}</text></g>"
        )
    parts.append("</svg>")
    return f"<figure><figcaption>MRR movement</figcaption>{''.join(parts)}</figure>"


def _section(c: CurrencyReport, bucket: str) -> str:
    return (
        f'<section class="currency" data-currency="{_attr(c.currency)}">'
        f"<h2>{escape(c.currency)}</h2>{_totals(c)}{_mrr_table(c)}"
        f'<div class="charts">{_activity_chart(c, bucket)}{_mrr_chart(c)}</div></section>'
    )


def render_html(report: RevenueReport, tz: ZoneInfo, generated_at: datetime) -> str:
    """The whole page."""
    title = f"Revenue report {_range_text(report, tz)}"
    made = generated_at.astimezone(tz)
    body = (
        "".join(_section(c, report.bucket) for c in report.currencies)
        or "<p>No revenue, failure or subscription in this range.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>Revenue report</h1>"
        f'<p class="meta" data-from="{_attr(report.range_from.isoformat())}" '
        f'data-to="{_attr(report.range_to.isoformat())}">{escape(_range_text(report, tz))}; '
        f"generated {escape(f'{made:%Y-%m-%d %H:%M} {made.tzname()}')}. Amounts in major units "
        "per currency; MRR counts active and past_due subscriptions whose first period "
        f"started.</p>{body}</body></html>\n"
    )
