"""State machines: every (old, new) pair checked against the agreed transitions."""

from __future__ import annotations

from enum import StrEnum
from itertools import product

import pytest

from billing.domain.lifecycle import (
    ATTEMPT_TRANSITIONS,
    INVOICE_TRANSITIONS,
    SUBSCRIPTION_TRANSITIONS,
    AttemptState,
    InvalidTransition,
    InvoiceStatus,
    SubscriptionStatus,
    can_transition,
    check_transition,
)
from billing.errors import Conflict

# The agreed transitions, spelled as text so a typo in the tables cannot hide here.
AGREED: dict[str, dict[str, set[str]]] = {
    "subscription": {
        "trialing": {"active", "past_due", "canceled", "paused"},
        "active": {"past_due", "paused", "canceled", "active"},
        "past_due": {"active", "unpaid", "canceled", "paused"},
        "incomplete": {"active", "canceled", "past_due"},
        "paused": {"active", "past_due", "canceled"},
        "unpaid": {"active", "canceled"},
        "canceled": set(),
    },
    "attempt": {
        "sending": {"approved", "declined", "pending", "unknown"},
        "unknown": {"approved", "declined", "pending", "unknown", "sending"},
        "pending": {"approved", "declined", "pending", "unknown"},
        "approved": set(),
        "declined": set(),
    },
    "invoice": {
        "open": {"charging", "void", "paid", "uncollectible", "parked"},
        "charging": {"paid", "open", "charging", "uncollectible"},
        "parked": {"open", "void"},
        "paid": set(),
        "void": set(),
        "uncollectible": {"paid", "void"},
    },
}
ENUMS: dict[str, type[StrEnum]] = {
    "subscription": SubscriptionStatus,
    "attempt": AttemptState,
    "invoice": InvoiceStatus,
}
PAIRS = [
    (kind, old, new)
    for kind, states in ENUMS.items()
    for old, new in product(list(states), list(states))
]


def test_enums_hold_exactly_the_agreed_states() -> None:
    for kind, states in ENUMS.items():
        assert {s.value for s in states} == set(AGREED[kind])


def test_every_state_has_a_row() -> None:
    assert set(SUBSCRIPTION_TRANSITIONS) == set(SubscriptionStatus)
    assert set(ATTEMPT_TRANSITIONS) == set(AttemptState)
    assert set(INVOICE_TRANSITIONS) == set(InvoiceStatus)


@pytest.mark.parametrize(("kind", "old", "new"), PAIRS)
def test_transition_matrix(kind: str, old: StrEnum, new: StrEnum) -> None:
    expected = new.value in AGREED[kind][old.value]
    assert can_transition(kind, old, new) is expected
    assert can_transition(kind, old.value, new.value) is expected  # plain strings from rows
    if expected:
        check_transition(kind, old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(kind, old, new)


def test_error_messages_are_clear() -> None:
    with pytest.raises(
        InvalidTransition,
        match=r"^subscription cannot go from unpaid to paused \(allowed: active, canceled\)$",
    ):
        check_transition("subscription", SubscriptionStatus.unpaid, SubscriptionStatus.paused)
    with pytest.raises(
        InvalidTransition, match=r"^attempt is approved, a final state: it cannot become declined$"
    ):
        check_transition("attempt", "approved", "declined")


def test_invalid_transition_is_a_conflict() -> None:
    assert issubclass(InvalidTransition, Conflict)


def test_unknown_state_and_kind() -> None:
    with pytest.raises(InvalidTransition, match="'refunded' is not a valid invoice state"):
        check_transition("invoice", "refunded", "paid")
    with pytest.raises(InvalidTransition, match="'open' is not a valid subscription state"):
        check_transition("subscription", "active", InvoiceStatus.open)
    with pytest.raises(ValueError, match="unknown state machine 'plan'"):
        check_transition("plan", "a", "b")


def test_terminal_states() -> None:
    assert [s for s, nxt in SUBSCRIPTION_TRANSITIONS.items() if not nxt] == ["canceled"]
    assert {s for s, nxt in ATTEMPT_TRANSITIONS.items() if not nxt} == {"approved", "declined"}
    assert {s for s, nxt in INVOICE_TRANSITIONS.items() if not nxt} == {"paid", "void"}
