"""Decline classes: what a refused charge means for the next attempt (plexo-api.md 3.2).

Plexo publishes no decline table. A code reaches us as an ISO-8583 processor code ("51", "05",
"R1") in `transactions[].resultCode`, as a snake_case word ("insufficient_funds") in the
envelope's `declineCode`, as an error-envelope `code` ("request-validation-errors"), as a
legacy result name ("ExpiredCard"), or as the payment status itself ("denied") when nothing
more specific was sent. All spellings are folded to one form before the lookup.

- soft: the issuer may approve later; retried on a day scale by the retry policy.
- hard: this card will never be approved (Visa decline category 1, lost/stolen, expired, stop
  recurring); never retry the card, ask the customer for another.
- technical: the gateway or processor failed, or a payment may already exist; resolved by
  asking Plexo before anything is resent.
- invalid_request: Plexo refused our request (validation, credentials, merchant) before any
  processor saw it; not the customer's fault.

An unknown code is soft: an unrecognised processor code is far more often a transient issuer
answer than a dead card, and the retry policy (a later issue) bounds soft retries and the
card-network caps (15 declines per card per 30 days on Visa, 10 per 24 h on Mastercard), so
guessing "soft" costs a few bounded retries while guessing "hard" would stop a good customer.
"""

from __future__ import annotations

import re
from enum import StrEnum


class DeclineClass(StrEnum):
    soft = "soft"
    hard = "hard"
    technical = "technical"
    invalid_request = "invalid_request"


_SOFT = frozenset(
    {
        "51", "insufficient_funds",
        "61", "65", "exceeds_limit",  # amount / frequency limit exceeded
        "91", "issuer_unavailable",
        "96", "processing_error",  # system malfunction at the processor
        "19", "try_again",  # re-enter transaction
        "05", "do_not_honor", "card_declined",  # "05" in words; retry only a few times
        "generic_decline",
        "denied",  # the payment status, sent when no code came with it
        "payment_required",  # HTTP 402 without a code
    }
)  # fmt: skip

_HARD = frozenset(
    {
        "04", "pick_up_card",
        "07",  # pick up, special conditions (fraud)
        "12",  # invalid transaction (Visa category 1)
        "41", "lost_card",
        "43", "stolen_card",
        "46", "closed_account",  # Visa category 1
        "14", "incorrect_number", "invalid_card", "invalid_account_number",
        "15", "no_such_issuer",
        "54", "expired_card",
        "57", "62", "restricted_card", "transaction_not_permitted",
        "r0", "r1", "r3", "stop_recurring", "revocation_of_authorization",
        # Legacy Plexo result names and a token that no longer exists (plexo-api.md 3.2).
        "disabled_card",
        "invalid_payment_instrument", "missing_payment_instrument",
        "token_expired", "token_not_found", "invalid_token",
        "currency_not_supported_by_instrument",
    }
)  # fmt: skip

_TECHNICAL = frozenset(
    {
        "failed",  # payment status: technical or processing failure
        "internal_error", "api_error", "system_error", "client_server_error",
        "timeout", "service_unavailable", "rate_limited", "too_many_requests",
        # A payment with this reference may exist: reconcile, never resend blindly.
        "duplicate_reference_id", "duplicate_transaction", "already_exists",
    }
)  # fmt: skip

_INVALID_REQUEST = frozenset(
    {
        "request_validation_errors", "invalid_request_error", "missing_fields",
        "argument_error", "invalid_currency",
        "unauthorized", "authentication_error", "forbidden",
        "merchant_not_found", "customer_not_found", "not_found",
        "pci_certification_required",
        # Legacy signed-API envelope failures.
        "invalid_session", "session_expired", "invalid_signature", "invalid_fingerprint",
        "message_expired",
    }
)  # fmt: skip

DECLINE_CLASSES: dict[DeclineClass, frozenset[str]] = {
    DeclineClass.soft: _SOFT,
    DeclineClass.hard: _HARD,
    DeclineClass.technical: _TECHNICAL,
    DeclineClass.invalid_request: _INVALID_REQUEST,
}
_BY_CODE = {code: kind for kind, codes in DECLINE_CLASSES.items() for code in codes}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD_SEPARATORS = re.compile(r"[\s\-.]+")


def normalize_decline_code(code: str) -> str:
    """Fold the spellings of one code together: "ExpiredCard", "expired-card" -> "expired_card".

    A one-digit processor code is padded ("5" -> "05"): ISO-8583 response codes are two
    characters, and some processors drop the leading zero.
    """
    text = _CAMEL_BOUNDARY.sub("_", code.strip())
    text = _WORD_SEPARATORS.sub("_", text).lower()
    if len(text) == 1 and text.isdigit():
        text = "0" + text
    return text


def classify_decline(code: str | None) -> DeclineClass:
    """The decline class of a code; unknown or missing codes are soft (see module docstring)."""
    if code is None:
        return DeclineClass.soft
    return _BY_CODE.get(normalize_decline_code(code), DeclineClass.soft)


# When a decline carries two codes (the processor's resultCode and the envelope's declineCode)
# that disagree, the more cautious class wins: a "stolen_card" is never retried because its
# number said "05".
_PRECEDENCE = (
    DeclineClass.hard,
    DeclineClass.technical,
    DeclineClass.invalid_request,
    DeclineClass.soft,
)


def classify_decline_codes(*codes: str | None) -> DeclineClass:
    """The class of a decline from all the codes it came with; the most cautious known one."""
    known = {
        _BY_CODE[normalize_decline_code(c)]
        for c in codes
        if c and normalize_decline_code(c) in _BY_CODE
    }
    return next((k for k in _PRECEDENCE if k in known), DeclineClass.soft)


def is_never_retry(code: str | None) -> bool:
    """True for hard declines: the card must not be charged again."""
    return classify_decline(code) is DeclineClass.hard
