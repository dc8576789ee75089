"""Calendar buckets of a report range: weeks (Monday to Monday) or months, in the merchant zone.

Each bucket is a half-open [start, end) of aware UTC instants, cut to the range, so a range's
buckets tile it exactly and every instant of it falls in one bucket.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

BUCKET_KINDS = ("auto", "week", "month")
AUTO_WEEKS_UP_TO_DAYS = 92
"""`auto` takes weeks for a range of at most this many days (about a quarter), else months."""


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime  # aware UTC, inclusive
    end: datetime  # aware UTC, exclusive
    label: str  # the business date it starts (week) or YYYY-MM (month), merchant zone


def bucket_kind(kind: str, range_from: datetime, range_to: datetime) -> str:
    """`week` or `month`; `auto` picks by the range's length."""
    if kind not in BUCKET_KINDS:
        raise ValueError(f"unknown bucket {kind!r}; use one of {', '.join(BUCKET_KINDS)}")
    if kind != "auto":
        return kind
    return "week" if range_to - range_from <= timedelta(days=AUTO_WEEKS_UP_TO_DAYS) else "month"


def _next_boundary(day: date, kind: str) -> date:
    if kind == "week":
        return day + timedelta(days=7 - day.weekday())
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _bucket_start(day: date, kind: str) -> date:
    return day - timedelta(days=day.weekday()) if kind == "week" else day.replace(day=1)


def buckets(range_from: datetime, range_to: datetime, kind: str, tz: ZoneInfo) -> list[Bucket]:
    """The week or month buckets covering [range_from, range_to), cut to it."""
    if not range_from < range_to:
        return []
    result: list[Bucket] = []
    cursor = range_from.astimezone(UTC)
    end = range_to.astimezone(UTC)
    while cursor < end:
        local_day = cursor.astimezone(tz).date()
        start_day = _bucket_start(local_day, kind)
        boundary = datetime.combine(_next_boundary(local_day, kind), time(0), tzinfo=tz)
        upper = min(boundary.astimezone(UTC), end)
        label = start_day.isoformat() if kind == "week" else f"{start_day:%Y-%m}"
        result.append(Bucket(cursor, upper, label))
        cursor = upper
    return result


def bucket_index(starts: list[datetime], at: datetime) -> int:
    """Index of the bucket holding `at`, given the buckets' starts in order (at in range)."""
    return max(bisect_right(starts, at) - 1, 0)
