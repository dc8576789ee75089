"""Billing periods, computed from the subscription's anchor (never from the previous period end).

Period k starts at the anchor's local wall-clock time in the merchant zone plus k*count units:
- month/year: same wall-clock time, day = min(anchor day, days in the target month), so an
  anchor on Jan 31 bills Jan 31, Feb 28/29, Mar 31, Apr 30, ... and never drifts to the 28th;
- day/week: calendar days added to the local date, so 09:00 local stays 09:00 across DST.
The wall time is then placed in the zone: a time inside a DST gap moves forward by the gap, an
ambiguous one takes its first occurrence (fold=0). Period 0 is the anchor instant itself.
Every function returns or compares aware UTC datetimes; "now" is always an argument.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from billing.clock import ensure_utc
from billing.errors import InvalidInput


class Interval(StrEnum):
    day = "day"
    week = "week"
    month = "month"
    year = "year"


# Calendar units in one interval: days for day/week, months for month/year.
_UNIT_DAYS = {Interval.day: 1, Interval.week: 7}
_UNIT_MONTHS = {Interval.month: 1, Interval.year: 12}


def parse_interval(text: str) -> Interval:
    """The interval named by user input ("month", " Month ", ...)."""
    normalized = text.strip().lower()
    try:
        return Interval(normalized)
    except ValueError:
        choices = ", ".join(i.value for i in Interval)
        raise InvalidInput(f"unknown interval {text!r}: use one of {choices}") from None


def _check_count(count: int) -> None:
    if type(count) is not int or count < 1:
        raise InvalidInput(f"interval count must be a whole number >= 1 (got {count!r})")


def _local_wall(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive wall-clock reading of an instant in the merchant zone."""
    return ensure_utc(instant, "anchor").astimezone(tz).replace(tzinfo=None)


def _wall_start(wall_anchor: datetime, interval: Interval, count: int, index: int) -> datetime:
    """Period `index`'s naive local wall-clock start (before placing it in the zone)."""
    if interval in _UNIT_DAYS:
        return wall_anchor + timedelta(days=_UNIT_DAYS[interval] * count * index)
    months = wall_anchor.month - 1 + _UNIT_MONTHS[interval] * count * index
    year = wall_anchor.year + months // 12
    month = months % 12 + 1
    if year > 9999:
        raise InvalidInput(f"period {index} falls after year 9999")
    day = min(wall_anchor.day, calendar.monthrange(year, month)[1])
    return wall_anchor.replace(year=year, month=month, day=day)


def _place(wall: datetime, tz: ZoneInfo) -> datetime:
    """Wall-clock time in `tz` to UTC.

    With fold=0, PEP 495 reads a time in a DST gap with the offset in force before the gap,
    which lands it `gap` later on the clock (02:30 -> 03:30 in New York), and an ambiguous
    time as its first occurrence. Both are the rules we want, so no special-casing is needed.
    """
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def period_start(
    anchor: datetime, interval: Interval, count: int, index: int, tz: ZoneInfo
) -> datetime:
    """Start (aware UTC) of period `index` (0 = the anchor itself)."""
    _check_count(count)
    if index < 0:
        raise ValueError(f"period index must be >= 0 (got {index})")
    anchor_utc = ensure_utc(anchor, "anchor")
    if index == 0:
        # The anchor may be the second occurrence of an ambiguous local time; keep it exact.
        return anchor_utc
    try:
        wall = _wall_start(_local_wall(anchor_utc, tz), Interval(interval), count, index)
        return _place(wall, tz)
    except OverflowError:
        raise InvalidInput(f"period {index} falls after year 9999") from None


def period_bounds(
    anchor: datetime, interval: Interval, count: int, index: int, tz: ZoneInfo
) -> tuple[datetime, datetime]:
    """[start, end) of period `index`: end is the next period's start, so periods tile time."""
    return (
        period_start(anchor, interval, count, index, tz),
        period_start(anchor, interval, count, index + 1, tz),
    )


def _estimate_index(
    wall_anchor: datetime, interval: Interval, count: int, wall_at: datetime
) -> int:
    """An index within one or two of the true one, from calendar arithmetic on local dates."""
    if interval in _UNIT_DAYS:
        days = (wall_at.date() - wall_anchor.date()).days
        return max(days // (_UNIT_DAYS[interval] * count), 0)
    months = (wall_at.year - wall_anchor.year) * 12 + (wall_at.month - wall_anchor.month)
    return max(months // (_UNIT_MONTHS[interval] * count), 0)


def period_index_at(
    anchor: datetime, interval: Interval, count: int, at: datetime, tz: ZoneInfo
) -> int:
    """Index of the period whose [start, end) contains `at`; -1 if `at` is before the anchor."""
    _check_count(count)
    interval = Interval(interval)
    anchor_utc = ensure_utc(anchor, "anchor")
    at_utc = ensure_utc(at, "at")
    if at_utc < anchor_utc:
        return -1
    index = _estimate_index(_local_wall(anchor_utc, tz), interval, count, _local_wall(at_utc, tz))
    # The estimate ignores clamping, DST shifts and time of day: walk to the exact index.
    while index > 0 and period_start(anchor_utc, interval, count, index, tz) > at_utc:
        index -= 1
    while period_start(anchor_utc, interval, count, index + 1, tz) <= at_utc:
        index += 1
    return index


def periods_started_by(
    anchor: datetime,
    interval: Interval,
    count: int,
    from_index: int,
    now: datetime,
    tz: ZoneInfo,
) -> list[int]:
    """Indices >= `from_index` of the periods whose start is at or before `now`, in order.

    Computed from the period containing `now` (starts strictly increase), so the cost does not
    grow with the subscription's age.
    """
    if from_index < 0:
        raise ValueError(f"from_index must be >= 0 (got {from_index})")
    last = period_index_at(anchor, interval, count, now, tz)
    return list(range(from_index, last + 1))
