"""Periods from the anchor: clamped month ends, no drift, DST-stable wall-clock times."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.domain.periods import (
    Interval,
    parse_interval,
    period_bounds,
    period_index_at,
    period_start,
    periods_started_by,
)
from billing.errors import InvalidInput

MVD = ZoneInfo("America/Montevideo")
NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
ZONES = [MVD, ZoneInfo("UTC"), NY, LONDON]
MONTHLY = Interval.month


def local(dt: datetime, tz: ZoneInfo) -> datetime:
    return dt.astimezone(tz)


def wall_exists(wall: datetime, tz: ZoneInfo) -> bool:
    """True unless the naive wall time falls in a DST gap of `tz`."""
    there = wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    return there == wall


# --- strategies -------------------------------------------------------------------------

zones = st.sampled_from(ZONES)
intervals = st.sampled_from(list(Interval))
counts = st.integers(min_value=1, max_value=4)
# Local times near DST switches (01:00-02:59) are over-weighted so gaps and folds get hit.
minutes = st.one_of(
    st.sampled_from([60, 90, 120, 150]), st.integers(min_value=0, max_value=24 * 60 - 1)
)


@st.composite
def anchors(draw: st.DrawFn) -> tuple[datetime, ZoneInfo]:
    """An instant whose local date in a chosen zone is a month end (29th-31st) or Feb 29."""
    tz = draw(zones)
    year = draw(st.integers(min_value=2000, max_value=2035))
    kind = draw(st.sampled_from(["month_end", "feb29", "any"]))
    if kind == "feb29":
        year = draw(st.sampled_from([y for y in range(2000, 2036) if calendar.isleap(y)]))
        month, day = 2, 29
    else:
        month = draw(st.integers(min_value=1, max_value=12))
        length = calendar.monthrange(year, month)[1]
        low = 29 if kind == "month_end" else 1
        day = draw(st.integers(min_value=min(low, length), max_value=length))
    minute = draw(minutes)
    second = draw(st.integers(min_value=0, max_value=59))
    micro = draw(st.sampled_from([0, 1, 999_999]))
    wall = datetime(year, month, day, minute // 60, minute % 60, second, micro)
    # A wall time in a DST gap is not a real instant; anchors are real instants.
    instant = wall.replace(tzinfo=tz).astimezone(UTC)
    return instant, tz


def expected_wall(anchor_local: datetime, interval: Interval, count: int, k: int) -> datetime:
    """Independent restatement of the rule, month arithmetic done by counting."""
    naive = anchor_local.replace(tzinfo=None)
    if interval is Interval.day:
        return naive + timedelta(days=count * k)
    if interval is Interval.week:
        return naive + timedelta(weeks=count * k)
    step = count * k * (12 if interval is Interval.year else 1)
    year, month = naive.year, naive.month
    for _ in range(step):
        month += 1
        if month == 13:
            year, month = year + 1, 1
    day = min(naive.day, calendar.monthrange(year, month)[1])
    return naive.replace(year=year, month=month, day=day)


# --- properties -------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(anchors(), intervals, counts, st.integers(min_value=0, max_value=40))
def test_starts_increase_and_tile(
    anchor_tz: tuple[datetime, ZoneInfo], interval: Interval, count: int, k: int
) -> None:
    anchor, tz = anchor_tz
    s0 = period_start(anchor, interval, count, k, tz)
    s1 = period_start(anchor, interval, count, k + 1, tz)
    s2 = period_start(anchor, interval, count, k + 2, tz)
    assert s0.tzinfo is UTC
    assert s0 < s1 < s2
    assert period_bounds(anchor, interval, count, k, tz) == (s0, s1)
    assert period_bounds(anchor, interval, count, k + 1, tz)[0] == s1


@settings(max_examples=150, deadline=None)
@given(anchors(), intervals, counts, st.integers(min_value=1, max_value=150))
def test_local_start_follows_the_anchor_rule(
    anchor_tz: tuple[datetime, ZoneInfo], interval: Interval, count: int, first: int
) -> None:
    anchor, tz = anchor_tz
    # A run of consecutive periods, so daily runs cross DST switches often.
    for k in range(first, first + 30):
        start = local(period_start(anchor, interval, count, k, tz), tz)
        want = expected_wall(local(anchor, tz), interval, count, k)
        got = start.replace(tzinfo=None)
        if wall_exists(want, tz):
            assert got == want
            # Ambiguous wall times resolve to their first occurrence (compare as instants).
            assert start.astimezone(UTC) == want.replace(tzinfo=tz, fold=0).astimezone(UTC)
        else:
            # In a DST gap: moved forward by the gap (one hour in these zones).
            assert got == want + timedelta(hours=1)
        if interval in (Interval.month, Interval.year):
            length = calendar.monthrange(got.year, got.month)[1]
            assert got.day == min(local(anchor, tz).day, length)


@settings(max_examples=100, deadline=None)
@given(anchors())
def test_no_drift_after_ten_years_monthly(anchor_tz: tuple[datetime, ZoneInfo]) -> None:
    anchor, tz = anchor_tz
    a = local(anchor, tz)
    start = local(period_start(anchor, MONTHLY, 1, 120, tz), tz)
    assert (start.year, start.month) == (a.year + 10, a.month)
    assert start.day == min(a.day, calendar.monthrange(a.year + 10, a.month)[1])
    want = start.replace(hour=a.hour, minute=a.minute, second=a.second, microsecond=a.microsecond)
    if wall_exists(want.replace(tzinfo=None), tz):
        assert start.time() == a.time()
    else:
        assert start.replace(tzinfo=None) == want.replace(tzinfo=None) + timedelta(hours=1)


@settings(max_examples=150, deadline=None)
@given(anchors(), intervals, counts, st.integers(min_value=0, max_value=60))
def test_index_at_inverts_start(
    anchor_tz: tuple[datetime, ZoneInfo], interval: Interval, count: int, k: int
) -> None:
    anchor, tz = anchor_tz
    start, end = period_bounds(anchor, interval, count, k, tz)
    assert period_index_at(anchor, interval, count, start, tz) == k
    assert period_index_at(anchor, interval, count, end - timedelta(microseconds=1), tz) == k
    assert period_index_at(anchor, interval, count, end, tz) == k + 1
    middle = start + (end - start) / 2
    assert period_index_at(anchor, interval, count, middle, tz) == k


@settings(max_examples=150, deadline=None)
@given(
    anchors(),
    intervals,
    counts,
    st.integers(min_value=0, max_value=30),
    st.timedeltas(min_value=timedelta(days=-40), max_value=timedelta(days=3 * 366)),
)
def test_periods_started_by_matches_period_start(
    anchor_tz: tuple[datetime, ZoneInfo],
    interval: Interval,
    count: int,
    from_index: int,
    offset: timedelta,
) -> None:
    anchor, tz = anchor_tz
    now = anchor + offset
    got = periods_started_by(anchor, interval, count, from_index, now, tz)
    assert got == sorted(got)
    assert all(i >= from_index for i in got)
    assert all(period_start(anchor, interval, count, i, tz) <= now for i in got)
    # The next index after the result (or from_index if empty) has not started yet.
    following = got[-1] + 1 if got else from_index
    assert period_start(anchor, interval, count, following, tz) > now
    if got:
        assert got == list(range(from_index, got[-1] + 1))


# --- examples ---------------------------------------------------------------------------


def test_jan_31_anchor_clamps_and_returns_to_31() -> None:
    anchor = datetime(2024, 1, 31, 10, 0, tzinfo=MVD)  # Montevideo is UTC-3 (no DST since 2015)
    starts = [local(period_start(anchor, MONTHLY, 1, k, MVD), MVD) for k in range(6)]
    assert [(s.month, s.day) for s in starts] == [
        (1, 31),
        (2, 29),
        (3, 31),
        (4, 30),
        (5, 31),
        (6, 30),
    ]
    assert all(s.hour == 10 and s.minute == 0 for s in starts)
    assert period_start(anchor, MONTHLY, 1, 13, MVD) == datetime(2025, 2, 28, 13, 0, tzinfo=UTC)


def test_quarterly_count_three() -> None:
    anchor = datetime(2023, 11, 30, 12, tzinfo=UTC)
    starts = [period_start(anchor, MONTHLY, 3, k, ZoneInfo("UTC")) for k in range(4)]
    assert [s.date().isoformat() for s in starts] == [
        "2023-11-30",
        "2024-02-29",
        "2024-05-30",
        "2024-08-30",
    ]


def test_feb_29_yearly() -> None:
    anchor = datetime(2024, 2, 29, 9, 30, tzinfo=MVD)
    got = [local(period_start(anchor, Interval.year, 1, k, MVD), MVD).date() for k in range(5)]
    assert [d.isoformat() for d in got] == [
        "2024-02-29",
        "2025-02-28",
        "2026-02-28",
        "2027-02-28",
        "2028-02-29",
    ]


def test_weekly_across_dst_keeps_local_time() -> None:
    # New York springs forward on 2024-03-10 and falls back on 2024-11-03.
    anchor = datetime(2024, 3, 1, 9, 0, tzinfo=NY)
    before = period_start(anchor, Interval.week, 1, 1, NY)  # Mar 8, EST
    after = period_start(anchor, Interval.week, 1, 2, NY)  # Mar 15, EDT
    assert before == datetime(2024, 3, 8, 14, 0, tzinfo=UTC)
    assert after == datetime(2024, 3, 15, 13, 0, tzinfo=UTC)
    assert after - before == timedelta(days=7, hours=-1)
    for k in range(0, 40):
        assert local(period_start(anchor, Interval.week, 1, k, NY), NY).hour == 9


def test_daily_in_dst_gap_moves_forward_and_ambiguous_takes_first() -> None:
    anchor = datetime(2024, 3, 8, 2, 30, tzinfo=NY)
    gap_day = local(period_start(anchor, Interval.day, 1, 2, NY), NY)  # 2024-03-10 02:30 missing
    assert gap_day.replace(tzinfo=None) == datetime(2024, 3, 10, 3, 30)
    assert local(period_start(anchor, Interval.day, 1, 3, NY), NY).hour == 2  # back to 02:30
    fall = datetime(2024, 10, 30, 1, 30, tzinfo=NY)
    ambiguous = period_start(fall, Interval.day, 1, 4, NY)  # 2024-11-03 01:30 happens twice
    assert ambiguous == datetime(2024, 11, 3, 5, 30, tzinfo=UTC)  # first: EDT (UTC-4)


def test_period_zero_is_the_anchor_even_on_second_ambiguous_hour() -> None:
    anchor = datetime(2024, 11, 3, 6, 30, tzinfo=UTC)  # 01:30 EST, the second 01:30 in NY
    assert period_start(anchor, Interval.day, 1, 0, NY) == anchor
    assert period_index_at(anchor, Interval.day, 1, anchor, NY) == 0
    assert period_start(anchor, Interval.day, 1, 1, NY) == datetime(2024, 11, 4, 6, 30, tzinfo=UTC)


def test_index_before_anchor_is_minus_one() -> None:
    anchor = datetime(2024, 1, 31, tzinfo=UTC)
    assert period_index_at(anchor, MONTHLY, 1, anchor - timedelta(microseconds=1), MVD) == -1
    assert periods_started_by(anchor, MONTHLY, 1, 0, anchor - timedelta(days=1), MVD) == []


def test_periods_started_by_is_cheap_for_old_daily_subscriptions() -> None:
    anchor = datetime(2015, 1, 1, 9, tzinfo=MVD)
    now = datetime(2025, 1, 1, 12, tzinfo=MVD)
    got = periods_started_by(anchor, Interval.day, 1, 3650, now, MVD)
    assert got == [3650, 3651, 3652, 3653]  # 2015..2024 holds three leap days
    assert local(period_start(anchor, Interval.day, 1, 3653, MVD), MVD).date().isoformat() == (
        "2025-01-01"
    )


def test_parse_interval() -> None:
    assert parse_interval(" Month ") is Interval.month
    assert parse_interval("year") is Interval.year
    with pytest.raises(InvalidInput, match="unknown interval 'fortnight'"):
        parse_interval("fortnight")


@pytest.mark.parametrize("count", [0, -1])
def test_count_must_be_positive(count: int) -> None:
    with pytest.raises(InvalidInput, match="interval count"):
        period_start(datetime(2024, 1, 1, tzinfo=UTC), MONTHLY, count, 1, MVD)
    with pytest.raises(InvalidInput, match="interval count"):
        period_index_at(datetime(2024, 1, 1, tzinfo=UTC), MONTHLY, count, datetime.now(UTC), MVD)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        period_start(datetime(2024, 1, 1), MONTHLY, 1, 1, MVD)
    with pytest.raises(ValueError, match="timezone"):
        period_index_at(datetime(2024, 1, 1, tzinfo=UTC), MONTHLY, 1, datetime(2024, 5, 1), MVD)


def test_negative_index_is_a_bug() -> None:
    with pytest.raises(ValueError):
        period_start(datetime(2024, 1, 1, tzinfo=UTC), MONTHLY, 1, -1, MVD)


def test_far_future_refused_cleanly() -> None:
    with pytest.raises(InvalidInput, match="9999"):
        period_start(datetime(2024, 1, 1, tzinfo=UTC), Interval.year, 1, 9000, MVD)
