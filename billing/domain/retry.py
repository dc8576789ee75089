"""The retry policy and the card-network caps: pure, table-driven, in one place.

What happens after a declined charge, by decline class (`POLICY` below):

| class           | next attempt                                   | same card again? | past_due |
|-----------------|------------------------------------------------|------------------|----------|
| soft            | the next slot of the invoice's snapshot:       | yes              | yes      |
|                 | first failure's local date + 1, 3, 5, 7 days   |                  |          |
|                 | at the merchant's business hour                |                  |          |
| hard            | at once, on the customer's next active card    | never            | yes      |
|                 | (fallback); none left: the chain ends          |                  |          |
| invalid_request | in 15 minutes, at most 8 times in a row, then  | yes              | no       |
|                 | flagged for a human (no money moved)           |                  |          |
| technical       | never a decline: the reconciler owns unknowns  |                  |          |

When the chain ends (no slot left, or no card left after a hard decline) the final action
applies once: cancel now, cancel at period end, mark unpaid, or pause; the invoice becomes
`uncollectible`.

The schedule is snapshotted into the invoice (`invoice.retry_schedule`) at its first failure,
so a settings change does not rewrite a chain already running.

The caps (`check_caps`) are card-network rules that no setting can loosen: a card that had a
hard decline is never charged again; at most 15 declined attempts per card in 30 days (Visa) and
10 in 24 hours (Mastercard), across all invoices of that card; any retry-after advice honoured;
and one charge of a card at a time, so that each sees the answer to the one before (unresolved
attempts count as declines until they are resolved).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from billing.domain.declines import DeclineClass


class FinalAction(StrEnum):
    cancel_now = "cancel_now"
    cancel_at_period_end = "cancel_at_period_end"
    mark_unpaid = "mark_unpaid"
    pause = "pause"


class NextStep(StrEnum):
    retry = "retry"  # try again at `at` (a slot, or a short delay)
    fallback = "fallback"  # try at once on another card
    exhausted = "exhausted"  # the chain ended: the final action applies
    flag = "flag"  # stop and wait for a person (no money moved, nothing to fine us for)


@dataclass(frozen=True)
class ClassRule:
    """One row of the policy table."""

    reuse_card: bool  # may the same card be charged again
    past_due: bool  # is it the customer's problem (dunning starts)
    uses_slots: bool  # retried on the snapshot's day-scale slots


POLICY: dict[DeclineClass, ClassRule] = {
    DeclineClass.soft: ClassRule(reuse_card=True, past_due=True, uses_slots=True),
    DeclineClass.hard: ClassRule(reuse_card=False, past_due=True, uses_slots=False),
    DeclineClass.invalid_request: ClassRule(reuse_card=True, past_due=False, uses_slots=False),
    # A technical answer is never a decline here (unknown: the reconciler); kept for totality.
    DeclineClass.technical: ClassRule(reuse_card=True, past_due=True, uses_slots=True),
}

# Card-network caps: constants, not settings.
CAP_DECLINES_30D = 15
CAP_DECLINES_24H = 10
WINDOW_30D = timedelta(days=30)
WINDOW_24H = timedelta(hours=24)
IN_FLIGHT_WAIT = timedelta(minutes=1)


@dataclass(frozen=True)
class RetryPolicy:
    """The merchant's settings, before they are snapshotted into an invoice."""

    soft_days: tuple[int, ...] = (1, 3, 5, 7)
    retry_hour: int | None = None  # None: the local hour of the invoice's first attempt
    invalid_request_minutes: int = 15
    invalid_request_max: int = 8
    final_action: FinalAction = FinalAction.mark_unpaid
    instrument_fallback: bool = True


def parse_days(text: str) -> tuple[int, ...]:
    """ "1,3,5,7" -> (1, 3, 5, 7): increasing whole days after the first failure."""
    try:
        days = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError("must be whole days separated by commas, e.g. 1,3,5,7") from None
    if any(d < 1 or d > 60 for d in days):
        raise ValueError("each day must be 1 to 60")
    if list(days) != sorted(set(days)):
        raise ValueError("days must increase, e.g. 1,3,5,7")
    return days


def build_schedule(
    policy: RetryPolicy, first_failure: datetime, first_attempt: datetime, tz: ZoneInfo
) -> dict[str, Any]:
    """The snapshot stored in the invoice at its first failure (JSON, UTC ISO times).

    Slots are the first failure's local date + N days at the business hour (the setting, else
    the local hour of the first attempt), in the merchant zone.
    """
    hour = policy.retry_hour
    if hour is None:
        hour = first_attempt.astimezone(tz).hour
    day = first_failure.astimezone(tz).date()
    slots = [
        datetime.combine(day + timedelta(days=n), time(hour), tzinfo=tz).astimezone(
            first_failure.tzinfo
        )
        for n in policy.soft_days
    ]
    return {
        "version": 1,
        "first_failure_at": first_failure.isoformat(),
        "slots": [slot.isoformat() for slot in slots],
        "final_action": str(policy.final_action),
        "instrument_fallback": policy.instrument_fallback,
        "invalid_request_minutes": policy.invalid_request_minutes,
        "invalid_request_max": policy.invalid_request_max,
    }


def slots(schedule: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(s) for s in schedule.get("slots", [])]


def final_action(schedule: dict[str, Any]) -> FinalAction:
    return FinalAction(schedule["final_action"])


@dataclass(frozen=True)
class Decision:
    step: NextStep
    at: datetime | None = None
    why: str = ""


def next_step(
    schedule: dict[str, Any],
    decline_class: DeclineClass,
    now: datetime,
    *,
    other_card: bool,
    invalid_in_a_row: int = 0,
    retry_after: datetime | None = None,
) -> Decision:
    """What to do after a decline at `now`, from the invoice's snapshot.

    `other_card`: the customer has another active card not yet hard-declined.
    `invalid_in_a_row`: consecutive invalid_request refusals of this invoice, this one included.
    """
    if decline_class == DeclineClass.invalid_request:
        if invalid_in_a_row >= int(schedule["invalid_request_max"]):
            return Decision(NextStep.flag, why=f"{invalid_in_a_row} refusals in a row")
        at = now + timedelta(minutes=int(schedule["invalid_request_minutes"]))
        return Decision(NextStep.retry, _later(at, retry_after), "gateway refused the request")
    if not POLICY[decline_class].reuse_card:
        if other_card and schedule.get("instrument_fallback", True):
            return Decision(NextStep.fallback, _later(now, retry_after), "trying the next card")
        return Decision(NextStep.exhausted, why="card must not be charged again; no other card")
    upcoming = [slot for slot in slots(schedule) if slot > now]
    if not upcoming:
        return Decision(NextStep.exhausted, why="every scheduled retry was used")
    return Decision(NextStep.retry, _later(upcoming[0], retry_after), "scheduled retry")


def _later(at: datetime, retry_after: datetime | None) -> datetime:
    return at if retry_after is None or retry_after <= at else retry_after


@dataclass(frozen=True)
class CardHistory:
    """What the store knows about one card when an attempt is about to be written ahead."""

    hard_declined: bool
    declines_24h: int  # declined or unresolved attempts in the last 24 hours
    declines_30d: int  # the same over 30 days
    oldest_24h: datetime | None = None  # the oldest of those, to say when the cap frees
    oldest_30d: datetime | None = None
    in_flight: bool = False  # another attempt on this card is being sent right now


@dataclass(frozen=True)
class CapRefusal:
    cap: str  # hard_decline | in_flight | retry_after | 24h | 30d
    message: str
    until: datetime | None  # when the attempt could be made (None: never on this card)


def check_caps(
    history: CardHistory, now: datetime, retry_not_before: datetime | None = None
) -> CapRefusal | None:
    """None when one more attempt on this card keeps every cap; else the first cap it breaks.

    Unresolved attempts count as declines: they may still become one.
    """
    if history.hard_declined:
        return CapRefusal("hard_decline", "the card had a never-retry decline", None)
    if history.in_flight:
        # One charge of a card at a time: the next one must see this one's answer.
        return CapRefusal(
            "in_flight", "another charge of this card is in flight", now + IN_FLIGHT_WAIT
        )
    if retry_not_before is not None and now < retry_not_before:
        return CapRefusal("retry_after", "the gateway asked to retry later", retry_not_before)
    if history.declines_24h >= CAP_DECLINES_24H:
        until = history.oldest_24h + WINDOW_24H if history.oldest_24h else now + WINDOW_24H
        return CapRefusal(
            "24h", f"the card had {history.declines_24h} declines in 24 hours (cap 10)", until
        )
    if history.declines_30d >= CAP_DECLINES_30D:
        until = history.oldest_30d + WINDOW_30D if history.oldest_30d else now + WINDOW_30D
        return CapRefusal(
            "30d", f"the card had {history.declines_30d} declines in 30 days (cap 15)", until
        )
    return None
