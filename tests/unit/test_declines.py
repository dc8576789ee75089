"""Decline classes: every code in plexo-api.md 3.2 lands in its class, whatever its spelling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.declines import (
    DECLINE_CLASSES,
    DeclineClass,
    classify_decline,
    is_never_retry,
    normalize_decline_code,
)

SOFT = ["51", "insufficient_funds", "61", "65", "91", "96", "processing_error", "19", "05"]
SOFT += ["do_not_honor", "card_declined", "denied", "payment-required"]
HARD = ["04", "07", "41", "43", "14", "incorrect_number", "invalid_card", "15", "54"]
HARD += ["expired_card", "57", "62", "R0", "R1", "lost_card", "stolen_card", "pick_up_card"]
HARD += ["restricted_card", "stop_recurring", "R3", "46", "12"]
HARD += ["ExpiredCard", "DisabledCard", "InvalidCard", "InvalidPaymentInstrument"]
INVALID = ["request-validation-errors", "unauthorized", "merchant-not-found", "forbidden"]
INVALID += ["not-found", "pci-certification-required", "invalid-request-error", "MissingFields"]
TECHNICAL = ["failed", "internal-error", "api-error", "SystemError", "duplicate-reference-id"]
TECHNICAL += ["DuplicateTransaction", "AlreadyExists"]


@pytest.mark.parametrize("code", SOFT)
def test_soft(code: str) -> None:
    assert classify_decline(code) is DeclineClass.soft
    assert not is_never_retry(code)


@pytest.mark.parametrize("code", HARD)
def test_hard_is_never_retried(code: str) -> None:
    assert classify_decline(code) is DeclineClass.hard
    assert is_never_retry(code)


@pytest.mark.parametrize("code", INVALID)
def test_invalid_request(code: str) -> None:
    assert classify_decline(code) is DeclineClass.invalid_request
    assert not is_never_retry(code)


@pytest.mark.parametrize("code", TECHNICAL)
def test_technical(code: str) -> None:
    assert classify_decline(code) is DeclineClass.technical


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("ExpiredCard", "expired_card"),
        ("expired-card", "expired_card"),
        (" Expired Card ", "expired_card"),
        ("DoNotHonor", "do_not_honor"),
        ("PCICertificationRequired", "pci_certification_required"),
        ("request-validation-errors", "request_validation_errors"),
        ("r1", "r1"),
        ("R1", "r1"),
        ("5", "05"),
        ("51", "51"),
    ],
)
def test_spellings_fold_together(raw: str, folded: str) -> None:
    assert normalize_decline_code(raw) == folded


def test_single_digit_codes_are_padded() -> None:
    assert classify_decline("5") is DeclineClass.soft
    assert classify_decline("4") is DeclineClass.hard
    assert classify_decline("7") is DeclineClass.hard


@pytest.mark.parametrize("code", [None, "", "   ", "99", "zz_new_code", "0"])
def test_unknown_or_missing_is_soft(code: str | None) -> None:
    assert classify_decline(code) is DeclineClass.soft
    assert not is_never_retry(code)


def test_tables_do_not_overlap_and_are_normalised() -> None:
    seen: dict[str, DeclineClass] = {}
    for kind, codes in DECLINE_CLASSES.items():
        for code in codes:
            assert normalize_decline_code(code) == code, code
            assert code not in seen, f"{code} is both {seen[code]} and {kind}"
            seen[code] = kind


@given(st.text(max_size=40))
def test_any_text_gets_a_class(code: str) -> None:
    assert classify_decline(code) in set(DeclineClass)
