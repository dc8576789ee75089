"""MRR normalization and movement (domain/mrr.py), and report buckets (domain/buckets.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.buckets import bucket_index, bucket_kind, buckets
from billing.domain.mrr import Contribution, monthly_minor, movement

TZ = ZoneInfo("America/Montevideo")


@pytest.mark.parametrize(
    ("amount", "interval", "count", "monthly"),
    [
        (59000, "month", 1, 59000),
        (90000, "month", 3, 30000),
        (120000, "year", 1, 10000),
        (6, "year", 1, 1),  # 0.5 rounds half up
        (5, "year", 1, 0),  # 0.4166... rounds down
        (1000, "week", 1, 4333),  # x 52 / 12 = 4333.33
        (1000, "week", 2, 2167),  # 2166.67
        (100, "day", 1, 3042),  # x 365 / 12 = 3041.67
    ],
)
def test_a_plan_as_a_month(amount: int, interval: str, count: int, monthly: int) -> None:
    assert monthly_minor(amount, interval, count) == monthly


def test_a_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="count"):
        monthly_minor(100, "month", 0)


UYU = Contribution("UYU", 59000)


def test_movement_by_case() -> None:
    assert movement(None, None, counted_before=False) == []
    assert movement(None, UYU, counted_before=False) == [("UYU", "new", 59000)]
    assert movement(None, UYU, counted_before=True) == [("UYU", "reactivated", 59000)]
    assert movement(UYU, None, counted_before=True) == [("UYU", "churned", 59000)]
    assert movement(UYU, Contribution("UYU", 99000), counted_before=True) == [
        ("UYU", "expansion", 40000)
    ]
    assert movement(UYU, Contribution("UYU", 9000), counted_before=True) == [
        ("UYU", "contraction", 50000)
    ]
    assert movement(UYU, UYU, counted_before=True) == []
    assert movement(UYU, Contribution("USD", 2500), counted_before=True) == [
        ("UYU", "moved_out", 59000),
        ("USD", "moved_in", 2500),
    ]


@given(
    st.integers(1, 10**9),
    st.sampled_from(["day", "week", "month", "year"]),
    st.integers(1, 24),
)
def test_monthly_is_within_half_a_minor_unit(amount: int, interval: str, count: int) -> None:
    from fractions import Fraction

    months = {"day": Fraction(12, 365), "week": Fraction(12, 52), "month": 1, "year": 12}
    exact = Fraction(amount) / (months[interval] * count)
    assert abs(monthly_minor(amount, interval, count) - exact) <= Fraction(1, 2)


def test_week_buckets_start_on_monday_and_are_cut_to_the_range() -> None:
    start = datetime(2026, 3, 15, tzinfo=TZ)  # a Sunday
    end = datetime(2026, 3, 31, tzinfo=TZ)
    got = buckets(start, end, "week", TZ)
    assert [b.label for b in got] == ["2026-03-09", "2026-03-16", "2026-03-23", "2026-03-30"]
    assert got[0].start == start.astimezone(UTC) and got[-1].end == end.astimezone(UTC)
    assert all(a.end == b.start for a, b in pairwise(got))
    assert got[1].start == datetime(2026, 3, 16, 3, tzinfo=UTC)  # local midnight
    starts = [b.start for b in got]
    assert bucket_index(starts, datetime(2026, 3, 16, 2, 59, tzinfo=UTC)) == 0
    assert bucket_index(starts, datetime(2026, 3, 16, 3, tzinfo=UTC)) == 1


def test_month_buckets_and_auto() -> None:
    start = datetime(2025, 11, 20, tzinfo=TZ)
    end = datetime(2026, 2, 10, tzinfo=TZ)
    got = buckets(start, end, "month", TZ)
    assert [b.label for b in got] == ["2025-11", "2025-12", "2026-01", "2026-02"]
    assert bucket_kind("auto", start, end) == "week"  # 82 days
    assert bucket_kind("auto", start, datetime(2026, 6, 1, tzinfo=TZ)) == "month"
    with pytest.raises(ValueError, match="bucket"):
        bucket_kind("day", start, end)
