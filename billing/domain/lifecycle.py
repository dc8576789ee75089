"""The state machines of subscriptions, charge attempts and invoices, as tables.

Each table maps a state to the states it may move to; a state mapped to the empty set is
terminal. Moving to the same state is allowed only where the table lists it (e.g. a pending
attempt polled again stays pending). `check_transition` is the one gate every status change
goes through, so an impossible move fails loudly instead of corrupting a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from billing.errors import Conflict


class SubscriptionStatus(StrEnum):
    incomplete = "incomplete"  # first charge never succeeded yet
    trialing = "trialing"
    active = "active"
    past_due = "past_due"  # a charge failed; retries/dunning running
    unpaid = "unpaid"  # retries exhausted, final action "mark unpaid"
    paused = "paused"
    canceled = "canceled"


class AttemptState(StrEnum):
    sending = "sending"  # written ahead, before Plexo is called
    approved = "approved"
    declined = "declined"
    pending = "pending"  # Plexo said pending/created: poll it
    unknown = "unknown"  # timeout, 5xx, dropped connection: ask Plexo before anything else


class InvoiceStatus(StrEnum):
    open = "open"
    charging = "charging"  # an attempt is in flight or unresolved
    parked = "parked"  # over a safety bound (domain/bounds.py): not charged until released
    paid = "paid"
    void = "void"
    uncollectible = "uncollectible"


class InvalidTransition(Conflict):
    """A status change the state machine does not allow."""


_S = SubscriptionStatus
_A = AttemptState
_I = InvoiceStatus

# fmt: off
SUBSCRIPTION_TRANSITIONS: dict[SubscriptionStatus, frozenset[SubscriptionStatus]] = {
    _S.incomplete: frozenset({_S.active, _S.canceled, _S.past_due}),
    _S.trialing:   frozenset({_S.active, _S.past_due, _S.canceled, _S.paused}),
    _S.active:     frozenset({_S.active, _S.past_due, _S.paused, _S.canceled}),
    _S.past_due:   frozenset({_S.active, _S.unpaid, _S.canceled, _S.paused}),
    _S.unpaid:     frozenset({_S.active, _S.canceled}),
    _S.paused:     frozenset({_S.active, _S.past_due, _S.canceled}),
    _S.canceled:   frozenset(),
}

ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    _A.sending:  frozenset({_A.approved, _A.declined, _A.pending, _A.unknown}),
    # `unknown -> sending`: resend the same referenceId, only after Plexo proved no payment.
    _A.unknown:  frozenset({_A.approved, _A.declined, _A.pending, _A.unknown, _A.sending}),
    _A.pending:  frozenset({_A.approved, _A.declined, _A.pending, _A.unknown}),
    _A.approved: frozenset(),
    _A.declined: frozenset(),
}

INVOICE_TRANSITIONS: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    # open -> uncollectible: the retry chain ended (dunning's final action) or a person said so.
    # open -> parked: over a safety bound at the write-ahead, nothing sent.
    _I.open:          frozenset({_I.charging, _I.void, _I.paid, _I.uncollectible, _I.parked}),
    # charging -> open: the attempt was declined and a retry is scheduled.
    _I.charging:      frozenset({_I.paid, _I.open, _I.charging, _I.uncollectible}),
    # parked -> open: `invoices release` (a person's one-time permission); -> void by hand.
    _I.parked:        frozenset({_I.open, _I.void}),
    _I.paid:          frozenset(),
    _I.void:          frozenset(),
    # A late payment (or one found by the reconciler) still pays an uncollectible invoice.
    _I.uncollectible: frozenset({_I.paid, _I.void}),
}
# fmt: on

TRANSITIONS: dict[str, Mapping[Any, frozenset[Any]]] = {
    "subscription": SUBSCRIPTION_TRANSITIONS,
    "attempt": ATTEMPT_TRANSITIONS,
    "invoice": INVOICE_TRANSITIONS,
}
_STATES: dict[str, type[StrEnum]] = {
    "subscription": SubscriptionStatus,
    "attempt": AttemptState,
    "invoice": InvoiceStatus,
}


def can_transition(kind: str, old: str, new: str) -> bool:
    """Whether `kind` ("subscription", "attempt", "invoice") may move from `old` to `new`."""
    before, after = _state(kind, old), _state(kind, new)
    return after in TRANSITIONS[kind][before]


def check_transition(kind: str, old: str, new: str) -> None:
    """Raise InvalidTransition unless the `kind` state machine allows `old` -> `new`.

    States may be given as enum members or as the plain strings stored in rows.
    """
    before, after = _state(kind, old), _state(kind, new)
    allowed = TRANSITIONS[kind][before]
    if after in allowed:
        return
    if not allowed:
        raise InvalidTransition(f"{kind} is {before}, a final state: it cannot become {after}")
    options = ", ".join(sorted(allowed))
    raise InvalidTransition(f"{kind} cannot go from {before} to {after} (allowed: {options})")


def _state(kind: str, value: str) -> StrEnum:
    try:
        states = _STATES[kind]
    except KeyError:
        raise ValueError(f"unknown state machine {kind!r}; use one of {list(_STATES)}") from None
    try:
        return states(value)
    except ValueError:
        choices = ", ".join(states)
        raise InvalidTransition(f"{str(value)!r} is not a valid {kind} state ({choices})") from None
