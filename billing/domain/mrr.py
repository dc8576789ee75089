"""Monthly recurring revenue: a plan's price as a month, and how one subscription's MRR moved.

Pure arithmetic on integer minor units: each subscription's monthly value is rounded once
(half up) to a minor unit, so per-currency sums and movements add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from billing.domain.periods import Interval

# Months in one unit of each interval: a year is 12 months, a week 12/52 of a month (52 weeks a
# year), a day 12/365 of one (365 days a year), as finance usually counts them.
_MONTHS_PER_UNIT: dict[Interval, Fraction] = {
    Interval.day: Fraction(12, 365),
    Interval.week: Fraction(12, 52),
    Interval.month: Fraction(1),
    Interval.year: Fraction(12),
}

# Statuses in which a subscription counts towards MRR (once its first period started):
# past_due still bills every period while dunning runs; trialing, incomplete, paused, unpaid
# and canceled bring in nothing.
COUNTING_STATUSES = frozenset({"active", "past_due"})

MOVEMENTS = (
    "new",
    "reactivated",
    "churned",
    "expansion",
    "contraction",
    "moved_in",
    "moved_out",
)
"""MRR movement components, per currency: end = start + new + reactivated - churned +
expansion - contraction + moved_in - moved_out (all non-negative)."""


def monthly_minor(amount_minor: int, interval: Interval | str, count: int) -> int:
    """A plan's amount per `count` x `interval` as a monthly amount, rounded half up."""
    if count < 1:
        raise ValueError(f"interval count must be >= 1 (got {count})")
    months = _MONTHS_PER_UNIT[Interval(interval)] * count
    value = Fraction(amount_minor) / months
    return int((value + Fraction(1, 2)).__floor__())


@dataclass(frozen=True, slots=True)
class Contribution:
    """One subscription's MRR at an instant: its monthly amount in its plan's currency."""

    currency: str
    minor: int


def movement(
    start: Contribution | None, end: Contribution | None, *, counted_before: bool
) -> list[tuple[str, str, int]]:
    """How one subscription moved MRR between two instants: (currency, component, minor) items.

    `counted_before`: it counted at some instant before the start (a return is a
    reactivation, not new). Another currency moves its MRR out of one and into the other.
    """
    if start is None and end is None:
        return []
    if start is None:
        assert end is not None
        return [(end.currency, "reactivated" if counted_before else "new", end.minor)]
    if end is None:
        return [(start.currency, "churned", start.minor)]
    if start.currency != end.currency:
        return [(start.currency, "moved_out", start.minor), (end.currency, "moved_in", end.minor)]
    change = end.minor - start.minor
    if change > 0:
        return [(end.currency, "expansion", change)]
    if change < 0:
        return [(end.currency, "contraction", -change)]
    return []
