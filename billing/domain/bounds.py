"""Safety bounds: an invoice that breaks one is parked for a person instead of charged.

Three bounds, each off when unset: a ceiling per currency (minor units), a factor above the
subscription's previous approved charge (same currency only), and a number of charges of one
customer per merchant-zone day (approved plus in flight). Pure rules: the store side (the
previous charge, the day's count, parking) is engine/bounds.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from billing.domain.money import to_major

DEFAULT_MAX_CHARGES_PER_DAY = 15
"""Above the catch-up cap (12): an honest catch-up of one subscription is never parked by it
(Kill Bill parks an account with more than 15 invoice items in a day)."""


class ParkReason(StrEnum):
    ceiling = "ceiling"
    factor = "factor"
    daily_count = "daily_count"


@dataclass(frozen=True)
class SafetyBounds:
    """The bounds in force; None (or an empty mapping) switches a bound off."""

    ceilings: Mapping[str, int] = field(default_factory=dict)  # currency -> minor units
    max_increase_factor: Decimal | None = None
    max_charges_per_day: int | None = DEFAULT_MAX_CHARGES_PER_DAY


@dataclass(frozen=True)
class Breach:
    """Why an invoice is parked: the bound (`reason`) and one human line (`detail`)."""

    reason: ParkReason
    detail: str


def _money(minor: int, currency: str) -> str:
    return f"{to_major(minor, currency)} {currency}"


def amount_breach(
    bounds: SafetyBounds,
    amount_minor: int,
    currency: str,
    previous: tuple[int, str] | None,
) -> Breach | None:
    """The ceiling, then the factor over `previous` (the subscription's last approved charge,
    minor units and currency; a charge in another currency is not compared)."""
    ceiling = bounds.ceilings.get(currency)
    if ceiling is not None and amount_minor > ceiling:
        return Breach(
            ParkReason.ceiling,
            f"{_money(amount_minor, currency)} is above the ceiling of {_money(ceiling, currency)}",
        )
    factor = bounds.max_increase_factor
    if factor and previous is not None:
        prev_minor, prev_currency = previous
        if prev_currency == currency and prev_minor > 0 and amount_minor > factor * prev_minor:
            return Breach(
                ParkReason.factor,
                f"{_money(amount_minor, currency)} is more than {factor} times the previous "
                f"approved charge of {_money(prev_minor, currency)}",
            )
    return None


def count_breach(bounds: SafetyBounds, charges_today: int) -> Breach | None:
    """One more charge of the customer today would exceed the daily number."""
    limit = bounds.max_charges_per_day
    if limit and charges_today >= limit:
        return Breach(
            ParkReason.daily_count,
            f"the customer was already charged {charges_today} times today (at most {limit} a day)",
        )
    return None


def local_day(now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The merchant-zone day of `now` as a UTC-aware [start, end) pair (23 or 25 hours on a
    DST change)."""
    day: date = now.astimezone(tz).date()
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start, end
