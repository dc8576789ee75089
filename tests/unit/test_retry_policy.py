"""The retry policy table and the card-network caps (domain/retry.py), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.domain.declines import DeclineClass
from billing.domain.retry import (
    CardHistory,
    FinalAction,
    NextStep,
    RetryPolicy,
    build_schedule,
    check_caps,
    final_action,
    next_step,
    parse_days,
    slots,
)

MVD = ZoneInfo("America/Montevideo")
FIRST = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)  # 20:30 local, still March 10th


def test_slots_are_local_days_after_the_first_failure_at_the_first_attempts_hour() -> None:
    schedule = build_schedule(RetryPolicy(), FIRST, FIRST, MVD)
    local = [s.astimezone(MVD) for s in slots(schedule)]
    assert [(d.day, d.hour, d.minute) for d in local] == [
        (11, 20, 0),
        (13, 20, 0),
        (15, 20, 0),
        (17, 20, 0),
    ]
    assert final_action(schedule) == FinalAction.mark_unpaid


def test_retry_hour_setting_wins() -> None:
    schedule = build_schedule(RetryPolicy(soft_days=(2,), retry_hour=9), FIRST, FIRST, MVD)
    [slot] = slots(schedule)
    assert slot == datetime(2026, 3, 12, 9, 0, tzinfo=MVD)


@pytest.mark.parametrize("text", ["", "1,x", "0,1", "3,1", "1,1", "61"])
def test_bad_day_lists_are_refused(text: str) -> None:
    if text == "":
        assert parse_days(text) == ()
        return
    with pytest.raises(ValueError):
        parse_days(text)


def test_next_step_by_class() -> None:
    schedule = build_schedule(RetryPolicy(), FIRST, FIRST, MVD)
    first_slot = slots(schedule)[0]
    soft = next_step(schedule, DeclineClass.soft, FIRST, other_card=False)
    assert (soft.step, soft.at) == (NextStep.retry, first_slot)
    last = next_step(schedule, DeclineClass.soft, slots(schedule)[-1], other_card=True)
    assert last.step == NextStep.exhausted
    hard = next_step(schedule, DeclineClass.hard, FIRST, other_card=True)
    assert (hard.step, hard.at) == (NextStep.fallback, FIRST)
    alone = next_step(schedule, DeclineClass.hard, FIRST, other_card=False)
    assert alone.step == NextStep.exhausted
    no_fallback = {**schedule, "instrument_fallback": False}
    assert (
        next_step(no_fallback, DeclineClass.hard, FIRST, other_card=True).step == NextStep.exhausted
    )
    invalid = next_step(
        schedule, DeclineClass.invalid_request, FIRST, other_card=False, invalid_in_a_row=1
    )
    assert (invalid.step, invalid.at) == (NextStep.retry, FIRST + timedelta(minutes=15))
    capped = next_step(
        schedule, DeclineClass.invalid_request, FIRST, other_card=False, invalid_in_a_row=8
    )
    assert capped.step == NextStep.flag


def test_retry_after_advice_moves_the_next_attempt_later_only() -> None:
    schedule = build_schedule(RetryPolicy(), FIRST, FIRST, MVD)
    later = slots(schedule)[0] + timedelta(hours=5)
    assert (
        next_step(schedule, DeclineClass.soft, FIRST, other_card=False, retry_after=later).at
        == later
    )
    sooner = FIRST + timedelta(minutes=1)
    assert (
        next_step(schedule, DeclineClass.soft, FIRST, other_card=False, retry_after=sooner).at
        == slots(schedule)[0]
    )


NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("history", "advice", "cap"),
    [
        (CardHistory(False, 0, 0), None, None),
        (CardHistory(True, 0, 0), None, "hard_decline"),
        (CardHistory(False, 0, 0, in_flight=True), None, "in_flight"),
        (CardHistory(False, 0, 0), NOW + timedelta(hours=1), "retry_after"),
        (CardHistory(False, 0, 0), NOW, None),
        (CardHistory(False, 9, 9), None, None),
        (CardHistory(False, 10, 10, NOW - timedelta(hours=3)), None, "24h"),
        (CardHistory(False, 3, 14), None, None),
        (CardHistory(False, 3, 15, None, NOW - timedelta(days=29)), None, "30d"),
    ],
)
def test_caps(history: CardHistory, advice: datetime | None, cap: str | None) -> None:
    refused = check_caps(history, NOW, advice)
    assert (refused.cap if refused else None) == cap


def test_a_cap_says_when_it_frees() -> None:
    day = check_caps(CardHistory(False, 10, 10, NOW - timedelta(hours=3)), NOW)
    assert day is not None and day.until == NOW + timedelta(hours=21)
    month = check_caps(CardHistory(False, 1, 15, None, NOW - timedelta(days=29)), NOW)
    assert month is not None and month.until == NOW + timedelta(days=1)
    hard = check_caps(CardHistory(True, 0, 0), NOW)
    assert hard is not None and hard.until is None  # never on this card


def test_settings_feed_the_policy_and_refuse_bad_values(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing.errors import ConfigError
    from billing.settings import load_settings
    from billing.wiring import retry_policy

    monkeypatch.chdir(str(tmp_path))
    cfg = load_settings(
        environ={
            "BILLING_RETRY_SOFT_DAYS": "2,4",
            "BILLING_RETRY_HOUR": "10",
            "BILLING_DUNNING_FINAL_ACTION": "pause",
            "BILLING_INSTRUMENT_FALLBACK": "false",
        }
    )
    policy = retry_policy(cfg)
    assert policy == RetryPolicy(
        soft_days=(2, 4), retry_hour=10, final_action=FinalAction.pause, instrument_fallback=False
    )
    assert retry_policy(load_settings(environ={})) == RetryPolicy()
    for name, value in [
        ("BILLING_RETRY_SOFT_DAYS", "3,1"),
        ("BILLING_RETRY_HOUR", "24"),
        ("BILLING_DUNNING_FINAL_ACTION", "shrug"),
        ("BILLING_PENDING_MAX_DAYS", "0"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={name: value})
        assert name in str(caught.value) and "\n" not in str(caught.value)
