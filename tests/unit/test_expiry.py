"""Pre-dunning rules (billing/domain/expiry.py): when a card stops working, which warnings
are due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from billing.domain.expiry import card_expires_at, due_warnings, renews_after_expiry, warning_at

MVD = ZoneInfo("America/Montevideo")


def test_a_card_works_through_the_last_day_of_its_month() -> None:
    assert card_expires_at(4, 2026, MVD) == datetime(2026, 5, 1, tzinfo=MVD)
    assert card_expires_at(12, 2026, MVD) == datetime(2027, 1, 1, tzinfo=MVD)
    assert card_expires_at(13, 2026, MVD) is None
    assert card_expires_at(0, 2026, MVD) is None


def test_warnings_come_at_local_midnight_once_each() -> None:
    expires = card_expires_at(4, 2026, MVD)
    assert expires is not None
    assert warning_at(expires, 30, MVD) == datetime(2026, 4, 1, tzinfo=MVD)
    before = datetime(2026, 4, 1, 2, 59, tzinfo=UTC)  # 23:59 on March 31 in Montevideo
    assert due_warnings(expires, before, (30, 7), set(), MVD) == []
    at = datetime(2026, 4, 1, 3, 0, tzinfo=UTC)
    assert due_warnings(expires, at, (30, 7), set(), MVD) == [30]
    assert due_warnings(expires, at, (30, 7), {30}, MVD) == []
    late = datetime(2026, 4, 28, tzinfo=UTC)  # both passed: both due, nearest last
    assert due_warnings(expires, late, (30, 7), set(), MVD) == [30, 7]
    assert due_warnings(expires, expires, (30, 7), set(), MVD) == []  # expired: none


def test_only_a_renewal_on_or_after_the_expiry_needs_a_warning() -> None:
    expires = datetime(2026, 5, 1, tzinfo=MVD)
    assert not renews_after_expiry(None, expires)
    assert not renews_after_expiry(expires - timedelta(seconds=1), expires)
    assert renews_after_expiry(expires, expires)


@given(
    month=st.integers(1, 12),
    year=st.integers(2000, 2100),
    days=st.lists(st.integers(1, 365), min_size=1, max_size=4, unique=True),
    offset=st.integers(0, 400 * 24),
)
def test_each_warning_is_due_exactly_once_over_time(
    month: int, year: int, days: list[int], offset: int
) -> None:
    expires = card_expires_at(month, year, MVD)
    assert expires is not None
    sent: set[int] = set()
    now, last = expires - timedelta(hours=offset), None
    while now < expires:
        due = due_warnings(expires, now, tuple(days), sent, MVD)
        assert not sent & set(due)  # never twice
        sent |= set(due)
        now, last = now + timedelta(hours=7), now
    if last is not None:  # every warning whose moment came before the card expired was sent
        assert sent == {d for d in days if warning_at(expires, d, MVD) <= last}
