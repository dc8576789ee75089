"""Pre-dunning: when a stored card stops working and which expiry warnings are due.

Pure rules (no I/O). A card is valid through the last day of its expiry month, so it stops
working at the first midnight of the next month in the merchant's zone. Warnings are due
`d` calendar days before that moment, for each configured `d`, once each.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def card_expires_at(exp_month: int, exp_year: int, tz: ZoneInfo) -> datetime | None:
    """The first moment the card no longer works; None for a month/year that is no date."""
    if not 1 <= exp_month <= 12 or not 1 <= exp_year <= 9998:
        return None
    year, month = (exp_year + 1, 1) if exp_month == 12 else (exp_year, exp_month + 1)
    return datetime.combine(date(year, month, 1), time(0), tzinfo=tz)


def warning_at(expires_at: datetime, days: int, tz: ZoneInfo) -> datetime:
    """Local midnight `days` calendar days before the expiry (DST does not shift it)."""
    local = expires_at.astimezone(tz).date() - timedelta(days=days)
    return datetime.combine(local, time(0), tzinfo=tz)


def due_warnings(
    expires_at: datetime,
    now: datetime,
    days: tuple[int, ...],
    sent: set[int],
    tz: ZoneInfo,
) -> list[int]:
    """The warnings (days ahead) whose moment has come and that were not sent yet, largest
    first. None once the card has expired: the charge itself then tells the customer."""
    if now >= expires_at:
        return []
    due = [d for d in days if d not in sent and now >= warning_at(expires_at, d, tz)]
    return sorted(due, reverse=True)


def renews_after_expiry(next_billing_at: datetime | None, expires_at: datetime) -> bool:
    """Whether the next renewal would be charged on a card that has expired by then."""
    return next_billing_at is not None and next_billing_at >= expires_at
