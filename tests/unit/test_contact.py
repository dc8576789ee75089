"""Contact data: each refusal has its own message; normal input comes back normalised."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.contact import (
    normalize_email,
    normalize_metadata,
    normalize_phone,
    parse_birthdate,
)
from billing.errors import InvalidInput
from tests.unit.test_cards import fullwidth

TODAY = date(2025, 7, 1)

# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("ana@example.com", "ana@example.com"),
        ("  Ana.Perez+billing@Example.COM.UY ", "Ana.Perez+billing@example.com.uy"),
        ("o'brien@mail-server.example.org", "o'brien@mail-server.example.org"),
        ("x@ñandú.uy", "x@ñandú.uy"),
    ],
)
def test_email_valid(typed: str, normalized: str) -> None:
    assert normalize_email(typed) == normalized


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "email is empty"),
        ("   ", "email is empty"),
        ("ana example@x.com", "must not contain spaces"),
        ("ana.example.com", "exactly one @"),
        ("a@b@example.com", "exactly one @"),
        ("@example.com", "nothing before the @"),
        ("ana@localhost", "must contain a dot"),
        ("ana@example..com", "empty part"),
        ("ana@example.com.", "empty part"),
        ("ana@.example.com", "empty part"),
        ("ana@-example.com", "letters, digits, dots and inner dashes"),
        ("ana@exa_mple.com", "letters, digits, dots and inner dashes"),
        ("Ana <ana@example.com>", "must not contain spaces"),
        ("<ana@example.com>", "does not belong before the @"),
        ("ana@example.com,bob@example.com", "exactly one @"),
        ("a" * 65 + "@example.com", "longer than 64"),
        ("a@" + "b" * 250 + ".com", "longer than 254"),
    ],
)
def test_email_invalid(typed: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        normalize_email(typed)


@given(
    st.from_regex(r"[A-Za-z0-9._%+-]{1,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9]{1,10}(\.[A-Za-z]{2,6}){1,2}", fullmatch=True),
)
def test_email_normalisation_is_idempotent(local: str, domain: str) -> None:
    once = normalize_email(f"{local}@{domain}")
    assert once == f"{local}@{domain.lower()}"
    assert normalize_email(once) == once


# --- phone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("+59899123456", "+59899123456"),
        ("+598 99 123 456", "+59899123456"),
        ("(099) 123-456", "099123456"),
        ("2901 1234", "29011234"),
        ("1234567", "1234567"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_phone_valid(typed: str, normalized: str) -> None:
    assert normalize_phone(typed) == normalized


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "phone is empty"),
        ("+", "phone is empty"),
        ("123456", "7 to 15 digits"),
        ("+1234567890123456", "7 to 15 digits"),
        ("099 123 456 ext 2", "only digits"),
        ("++59899123456", "only digits"),
        ("0991.23456", "only digits"),
        ("\uff10\uff19\uff19" + "1234567", "only digits"),  # full-width digits are not ASCII
    ],
)
def test_phone_invalid(typed: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        normalize_phone(typed)


# --- birthdate -----------------------------------------------------------------------------


def test_birthdate_bounds() -> None:
    assert parse_birthdate("1990-02-28", TODAY) == date(1990, 2, 28)
    assert parse_birthdate(" 2025-07-01 ", TODAY) == TODAY  # today is not in the future
    assert parse_birthdate("1900-01-01", TODAY) == date(1900, 1, 1)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("2025-07-02", "in the future"),
        ("1899-12-31", "before 1900-01-01"),
        ("1990-02-30", "not a real calendar date"),
        ("01/02/1990", "ISO date"),
        ("19900201", "ISO date"),
        ("1990-2-1", "ISO date"),
        ("", "ISO date"),
    ],
)
def test_birthdate_invalid(typed: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_birthdate(typed, TODAY)


# --- metadata ------------------------------------------------------------------------------


def test_metadata_normalised() -> None:
    assert normalize_metadata({}) == {}
    assert normalize_metadata({"plan": "gold", "seats": 3}) == {"plan": "gold", "seats": "3"}
    many = {f"k{i:02d}": "v" * 100 for i in range(49)} | {"k" * 40: "x"}
    assert normalize_metadata(many) == many
    # Item 12: 8,000 characters of keys and values in all (16 x (3 + 497)).
    largest = {f"k{i:02d}": "v" * 497 for i in range(15)} | {"k15": "v" * 497}
    assert normalize_metadata(largest) == largest


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({f"k{i}": "v" for i in range(51)}, "51 keys; at most 50"),
        ({"k" * 41: "v"}, "metadata key must be at most 40 characters"),
        ({"k": "v" * 501}, "value for 'k' must be at most 500 characters"),
        ({f"k{i:02d}": "v" * 497 for i in range(16)} | {"x": "y"}, "at most 8000 characters"),
        ({"k\n": "v"}, r"metadata key contains a control character \(U\+000A\) at character 2"),
        ({"k": "paid\u202e"}, r"value for 'k' contains a bidirectional-text control"),
        ({"k": "a\x1b[2J"}, r"value for 'k' contains a control character \(U\+001B\)"),
        ({"note": "4444/3333_2222,1111"}, "metadata looks like a card number"),
        (
            {fullwidth("4444333322221111"): "x"},
            "metadata looks like a card number",
        ),
        ({"": "v"}, "keys must be non-empty strings"),
        ({"  ": "v"}, "keys must be non-empty strings"),
        ({1: "v"}, "keys must be non-empty strings"),
        ({"k": None}, "value for 'k' must be a string"),
        ({"k": True}, "value for 'k' must be a string"),
        ({"k": 1.5}, "value for 'k' must be a string"),
        ({"k": {"nested": "x"}}, "value for 'k' must be a string"),
        ({"note": "card 4444 3333 2222 1111"}, "metadata looks like a card number"),
        ({"4444333322221111": "x"}, "metadata looks like a card number"),
        ({"n": 4444333322221111}, "metadata looks like a card number"),
        (["not", "a", "dict"], "must be an object"),
    ],
)
def test_metadata_invalid(value: object, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as caught:
        normalize_metadata(value)  # type: ignore[arg-type]
    assert "4444" not in str(caught.value)
