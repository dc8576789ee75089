"""Identity documents: hand-checked vectors for CI, RUT and CPF, plus format rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.identity import (
    ci_check_digit,
    cpf_check_digits,
    normalize_document,
    rut_check_digit,
)
from billing.errors import InvalidInput

# --- CI: weights 2,9,8,7,6,3,4 on the body left-padded to 7; dv = (10 - sum % 10) % 10 ------


def test_ci_check_digits_worked_by_hand() -> None:
    assert ci_check_digit("1234567") == 2  # 2+18+24+28+30+18+28 = 148 -> 10-8
    assert ci_check_digit("4907760") == 2  # 8+81+0+49+42+18+0 = 198
    assert ci_check_digit("9999999") == 9  # 9*39 = 351
    assert ci_check_digit("5169170") == 3  # 10+9+48+63+6+21+0 = 157 (ci_uy gem vector)
    assert ci_check_digit("111111") == 3  # 0+9+8+7+6+3+4 = 37 (ci_uy gem vector)
    assert ci_check_digit("123456") == 1  # 0+9+16+21+24+15+24 = 109
    assert ci_check_digit("12345") == 8  # 0+0+8+14+18+12+20 = 72
    assert ci_check_digit("5000000") == 0  # 10: a multiple of 10 gives 0, not 10


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("1.234.567-2", "12345672"),
        ("4.907.760-2", "49077602"),
        ("9.999.999-9", "99999999"),
        ("51691703", "51691703"),
        ("1.111.111-1", "11111111"),
        ("111111-3", "1111113"),
        ("12345-8", "123458"),
        (" 1 234 567 2 ", "12345672"),
        ("0.123.456-1", "1234561"),
        ("50000000", "50000000"),
    ],
)
def test_ci_valid(typed: str, normalized: str) -> None:
    assert normalize_document("ci", typed) == ("CI", normalized)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("1.234.567-3", "CI number has a bad check digit"),
        ("9.999.999-6", "CI number has a bad check digit"),
        ("4.907.760-5", "CI number has a bad check digit"),
        ("12345", "CI number must have 6 to 8 digits"),
        ("123.456.789", "CI number must have 6 to 8 digits"),
        ("1.234.567-K", "CI number may contain only digits"),
        ("", "CI number must have 6 to 8 digits"),
    ],
)
def test_ci_invalid(typed: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as caught:
        normalize_document("CI", typed)
    assert "1234567" not in str(caught.value)  # the number is never echoed


@given(st.integers(min_value=10_000, max_value=9_999_999))
def test_ci_exactly_one_check_digit_fits(body: int) -> None:
    valid = [d for d in range(10) if _ci_ok(f"{body}{d}")]
    assert valid == [ci_check_digit(str(body))]


def _ci_ok(number: str) -> bool:
    try:
        normalize_document("CI", number)
    except InvalidInput:
        return False
    return True


# --- RUT: weights 4,3,2,9,8,7,6,5,4,3,2; dv = 11 - sum % 11; 11 -> 0; 10 -> invalid --------


def test_rut_check_digits_worked_by_hand() -> None:
    # 2,1,1,0,0,3,4,2,0,0,1: 8+3+2+0+0+21+24+10+0+0+2 = 70; 70 % 11 = 4 -> 7
    assert rut_check_digit("21100342001") == 7
    # 2,1,1,4,0,6,3,4,0,0,1: 8+3+2+36+0+42+18+20+0+0+2 = 131; 131 % 11 = 10 -> 1
    assert rut_check_digit("21140634001") == 1
    # 2,1,0,3,0,3,6,7,0,0,1: 8+3+0+27+0+21+36+35+0+0+2 = 132; 132 % 11 = 0 -> 11 -> 0
    assert rut_check_digit("21030367001") == 0
    # 2,1,1,7,0,3,4,2,0,0,1: 70 + 9*7 = 133; 133 % 11 = 1 -> 10 -> no valid digit
    assert rut_check_digit("21170342001") is None


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("21-100342-001-7", "211003420017"),  # python-stdnum doctest vector
        ("UY 21 140634 001 1", "211406340011"),  # python-stdnum doctest vector
        ("210303670010", "210303670010"),
        ("21.100.342.001.7", "211003420017"),
    ],
)
def test_rut_valid(typed: str, normalized: str) -> None:
    assert normalize_document("rut", typed) == ("RUT", normalized)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("210303670014", "RUT number has a bad check digit"),  # stdnum's invalid vector
        ("211003420018", "RUT number has a bad check digit"),
        ("211703420010", "no check digit fits"),
        ("12345678", "RUT number must have 12 digits"),
        ("2110034200171", "RUT number must have 12 digits"),
        ("21-100342-OO1-7", "RUT number may contain only digits"),
    ],
)
def test_rut_invalid(typed: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        normalize_document("RUT", typed)


# --- CPF -----------------------------------------------------------------------------------


def test_cpf_check_digits_worked_by_hand() -> None:
    # 5,2,9,9,8,2,2,4,7 x 10..2 = 295; 295 % 11 = 9 -> 2;
    # 5,2,9,9,8,2,2,4,7,2 x 11..2 = 347; 347 % 11 = 6 -> 5
    assert cpf_check_digits("529982247") == "25"
    # 1..9 x 10..2 = 210; 210 % 11 = 1 (< 2) -> 0; then x 11..2 = 255; 255 % 11 = 2 -> 9
    assert cpf_check_digits("123456789") == "09"


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [("529.982.247-25", "52998224725"), ("12345678909", "12345678909")],
)
def test_cpf_valid(typed: str, normalized: str) -> None:
    assert normalize_document("Cpf", typed) == ("CPF", normalized)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("529.982.247-26", "CPF number has bad check digits"),
        ("529.982.247-15", "CPF number has bad check digits"),
        ("111.111.111-11", "all its digits are the same"),
        ("000.000.000-00", "all its digits are the same"),
        ("5299822472", "CPF number must have 11 digits"),
    ],
)
def test_cpf_invalid(typed: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        normalize_document("CPF", typed)


# --- PASSPORT, OTHER, types -------------------------------------------------------------------


def test_passport_is_upper_cased_alphanumeric() -> None:
    assert normalize_document("passport", " ab 123-456 ") == ("PASSPORT", "AB123456")
    with pytest.raises(InvalidInput, match="PASSPORT number must have 3 to 20"):
        normalize_document("PASSPORT", "A1")
    with pytest.raises(InvalidInput, match="PASSPORT number must have 3 to 20"):
        normalize_document("PASSPORT", "A" * 21)
    with pytest.raises(InvalidInput, match="PASSPORT number may contain only letters"):
        normalize_document("PASSPORT", "AB#12345")
    with pytest.raises(InvalidInput, match="PASSPORT number may contain only letters"):
        normalize_document("PASSPORT", "ÑB12345")


def test_other_is_printable_up_to_32() -> None:
    assert normalize_document("other", "  DNI 30.123.456 ") == ("OTHER", "DNI 30.123.456")
    with pytest.raises(InvalidInput, match="OTHER document number must have 1 to 32"):
        normalize_document("OTHER", "   ")
    with pytest.raises(InvalidInput, match="OTHER document number must have 1 to 32"):
        normalize_document("OTHER", "x" * 33)
    with pytest.raises(InvalidInput, match="printable"):
        normalize_document("OTHER", "abc\x00def")


def test_unknown_type() -> None:
    with pytest.raises(InvalidInput, match=r"unknown document type 'DNI'.*CI, RUT, CPF"):
        normalize_document("DNI", "123")
