"""Money: integer minor units, Decimal major units, exact round-trips, no floats."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.money import (
    CURRENCY_DIGITS,
    Money,
    check_currency,
    from_major,
    parse_amount,
    to_major,
)
from billing.errors import InvalidInput

currencies = st.sampled_from(sorted(CURRENCY_DIGITS))
# Up to ten trillion major units: far beyond any subscription, well inside Decimal precision.
minors = st.integers(min_value=1, max_value=10**15 - 1)


@given(minors, currencies)
def test_minor_to_major_and_back(minor: int, currency: str) -> None:
    major = to_major(minor, currency)
    assert major.as_tuple().exponent == -CURRENCY_DIGITS[currency]
    assert from_major(major, currency) == minor
    assert parse_amount(str(major), currency) == minor
    assert parse_amount(major, currency) == minor
    assert Money(minor, currency).major() == major
    assert str(Money(minor, currency)) == f"{major} {currency}"


@given(st.integers(min_value=1, max_value=10**12), currencies)
def test_whole_major_amounts(units: int, currency: str) -> None:
    scale = 10 ** CURRENCY_DIGITS[currency]
    assert parse_amount(str(units), currency) == units * scale
    assert parse_amount(units, currency) == units * scale


@given(minors, st.integers(min_value=1, max_value=9), currencies)
def test_sub_minor_amounts_are_refused(minor: int, extra: int, currency: str) -> None:
    text = f"{to_major(minor, currency)}{extra}"  # one more, non-zero decimal
    with pytest.raises(InvalidInput, match="more than 2 decimal places"):
        parse_amount(text, currency)
    with pytest.raises(InvalidInput, match="more than 2 decimals"):
        from_major(Decimal(text), currency)


@given(minors, currencies)
def test_trailing_zero_decimals_are_accepted(minor: int, currency: str) -> None:
    assert parse_amount(f"{to_major(minor, currency)}000", currency) == minor


@pytest.mark.parametrize(
    ("text", "minor"),
    [("590", 59000), ("590.5", 59050), ("590.50", 59050), (" 0.01 ", 1)],
)
def test_parse_examples(text: str, minor: int) -> None:
    assert parse_amount(text, "UYU") == minor


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "greater than zero"),
        ("-0", "greater than zero"),
        ("-5.00", "greater than zero"),
        ("0.00", "greater than zero"),
        ("590,00", "is not a number"),
        ("abc", "is not a number"),
        ("", "is not a number"),
        ("NaN", "not a finite number"),
        ("Infinity", "not a finite number"),
        ("0.001", "more than 2 decimal places"),
        ("1E+2", "plain digits"),
        ("1_000", "plain digits"),
        ("\uff11\uff12", "plain digits"),  # full-width digits
    ],
)
def test_parse_refusals(value: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_amount(value, "USD")


def test_floats_are_refused() -> None:
    with pytest.raises(InvalidInput, match="never a float"):
        parse_amount(590.5, "UYU")  # type: ignore[arg-type]


def test_currency_checks() -> None:
    assert check_currency(" usd ") == "USD"
    with pytest.raises(InvalidInput, match="unsupported currency 'EUR': use one of USD, UYU"):
        check_currency("EUR")
    with pytest.raises(InvalidInput, match="unsupported currency"):
        parse_amount("1", "BRL")
    with pytest.raises(InvalidInput, match="unsupported currency"):
        Money(100, "ARS")


def test_money_minor_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        Money(Decimal("1.00"), "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "USD")
    with pytest.raises(TypeError):
        Money(1.0, "USD")  # type: ignore[arg-type]


def test_to_major_formats_negative_and_zero() -> None:
    assert str(to_major(0, "UYU")) == "0.00"
    assert str(to_major(-5, "USD")) == "-0.05"  # a refund/credit line keeps its sign
    assert from_major(Decimal("-1.00"), "USD") == -100


# --- edge cases: case, size and non-finite values ------------------------------------------


def test_money_normalises_currency_case() -> None:
    assert Money(100, "usd") == Money(100, "USD")


def test_huge_amounts_are_refused_not_rounded() -> None:
    with pytest.raises(InvalidInput):
        parse_amount("12345678901234567890123456789012", "UYU")  # silently rounds today


def test_from_major_refuses_huge_sub_minor_value() -> None:
    with pytest.raises(InvalidInput):
        from_major(Decimal("123456789012345678901234567890.5"), "USD")


@pytest.mark.parametrize("value", ["Infinity", "sNaN"])
def test_from_major_refuses_non_finite_with_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput):
        from_major(Decimal(value), "USD")
