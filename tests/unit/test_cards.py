"""Card numbers are refused wherever they hide, and never echoed back."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from billing.domain.cards import (
    MASK,
    _is_timestamp,
    looks_like_card_number,
    luhn_valid,
    mask_card_numbers,
    refuse_card_number_as_token,
    refuse_card_numbers,
)
from billing.errors import InvalidInput


def fullwidth(text: str) -> str:
    """ASCII digits as full-width ones (U+FF10..), which NFKC maps back."""
    return text.translate({48 + d: 0xFF10 + d for d in range(10)})


def arabic_indic(text: str) -> str:
    """ASCII digits as Arabic-Indic ones (U+0660..): decimal digits NFKC leaves alone."""
    return text.translate({48 + d: 0x0660 + d for d in range(10)})


# Plexo's documented Luhn-valid test cards (plexo-api.md 3.2), a 13- and a 19-digit number.
TEST_CARDS = [
    "4444333322221111",
    "4507990000004905",
    "4000000000000002",
    "4000000000000010",
    "4222222222222",
    "6011000000000000001",
]
# Documented Plexo test cards that fail Luhn (checked by hand: 5555444433332222 sums to 66).
NON_LUHN_TEST_CARDS = ["5555444433332222", "5588220000000006"]


def luhn_check_digit(body: str) -> str:
    """Independent Luhn: the digit that makes body+digit valid."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the check digit's left neighbour
            d = sum(divmod(d * 2, 10))
        total += d
    return str((10 - total % 10) % 10)


@pytest.mark.parametrize("number", TEST_CARDS)
def test_known_cards_pass_luhn(number: str) -> None:
    assert luhn_valid(number)
    assert looks_like_card_number(number)


@pytest.mark.parametrize(
    "value", ["", "abc", "4444333322221112", "\u0661\u0662\u0663", "4444 3333"]
)
def test_luhn_rejects(value: str) -> None:
    assert not luhn_valid(value)


@pytest.mark.parametrize("number", NON_LUHN_TEST_CARDS)
def test_documented_test_cards_are_refused_despite_failing_luhn(number: str) -> None:
    assert not luhn_valid(number)
    assert looks_like_card_number(f"use {number[:4]} {number[4:8]} {number[8:12]} {number[12:]}")


@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_luhn_accepts_exactly_one_check_digit(body: str) -> None:
    good = luhn_check_digit(body)
    for digit in "0123456789":
        assert luhn_valid(body + digit) == (digit == good)
    assert looks_like_card_number(body + good)


@pytest.mark.parametrize(
    "text",
    [
        "4444 3333 2222 1111",
        "4444-3333-2222-1111",
        "card 4444 3333 2222 1111 thanks",
        "pan:4507990000004905.",
        "4444 3333 2222 1111 12/27",  # followed by more digits in the same run
        "99 4444 3333 2222 1111",
        "ids 4444333322221111 5555444433332222",
        # Item 10: any separators, any digits (these all passed before).
        "4444  3333  2222  1111",
        "4444\t3333\t2222\t1111",
        "4444\n3333\n2222\n1111",
        "4444/3333/2222/1111",
        "4444_3333_2222_1111",
        "4444,3333,2222,1111",
        "4444 - 3333 - 2222 - 1111",
        fullwidth("4444 3333 2222 1111"),  # full-width digits
        fullwidth("4444333322221111"),
        arabic_indic("4444333322221111"),  # Arabic-Indic digits
        "4444\u30003333\u30002222\u30001111",  # ideographic spaces
        "4444\u200b3333\u200b2222\u200b1111",  # zero-width spaces
        "pan: (4507) [9900] {0000} <4905>",
        "4-4-4-4-3-3-3-3-2-2-2-2-1-1-1-1",
        "2025-07-01 10:00:00 4444333322221111",  # a timestamp does not hide what follows
    ],
)
def test_embedded_and_formatted_numbers_are_found(text: str) -> None:
    assert looks_like_card_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "4444 3333 2222",  # 12 digits
        "4444333322221112",  # Luhn fails
        "+598 99 123 456",  # a phone number
        "sub-42-2025-07-a1",
        "2025-07-01T10:00:00Z",
        "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",  # a Plexo token
        "12345678901234567890123",  # one unbroken 23-digit identifier
        "4444333322221113",  # a 16-digit reference that fails Luhn
        "1.234.567-2",  # a CI
        "21-100342-001-7",  # a RUT
        "529.982.247-25",  # a CPF
        "+598 2 915 1234 int. 56",
        "Av. 18 de Julio 1234, apto 501, CP 11100",
        "2025-07-01 10:00:00",  # 14 digits, Luhn-valid, but a timestamp
        "2025-07-01T10:00:00.123456+00:00",
        "550e8400-e29b-41d4-a716-446655440000",
        "INV-1A2B3C4D5E6F-1",
    ],
)
def test_ordinary_values_pass(text: str) -> None:
    assert not looks_like_card_number(text)


def test_refuse_walks_nested_structures_without_echoing() -> None:
    payload = {"plan": "gold", "notes": ["ok", {"deep": ("x", "4444 3333 2222 1111")}]}
    with pytest.raises(InvalidInput) as caught:
        refuse_card_numbers(payload, "metadata")
    message = str(caught.value)
    assert message == (
        "metadata looks like a card number; store a Plexo token, never a card number"
    )
    assert "4444" not in message and "1111" not in message


@pytest.mark.parametrize(
    "value",
    [
        {"4444333322221111": "x"},  # a key
        4444333322221111,  # a JSON number
        ["a", "b", "4507-9900-0000-4905"],
    ],
)
def test_refuse_finds_keys_numbers_and_lists(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"^note looks like a card number"):
        refuse_card_numbers(value, "note")


@pytest.mark.parametrize(
    "value",
    [None, True, 3, "hello", {"a": "b", "n": 5}, ["x", ("y",)], "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"],
)
def test_refuse_lets_clean_values_through(value: object) -> None:
    refuse_card_numbers(value, "field")


def test_a_hex_token_with_a_luhn_digit_run_is_a_token_not_a_card() -> None:
    token = "ab4444333322221111cdef0123456789"
    assert looks_like_card_number(token)  # as free text it would be refused...
    refuse_card_number_as_token(token, "token")  # ...but as a token it is fine


@pytest.mark.parametrize(
    "value", ["4444333322221111", "4444 3333 2222 1111", "4444-3333-2222-1111"]
)
def test_a_whole_card_number_where_a_token_belongs_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="looks like a card number") as raised:
        refuse_card_number_as_token(value, "instrument")
    assert "4444" not in str(raised.value)


# Characters people (or a careless export) put between digits: neither digits nor letters.
SEPARATORS = [
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "/",
    "_",
    ",",
    "-",
    ".",
    ":",
    " - ",
    "\u3000",
    "|",
    "·",
]
# Per digit: ASCII, full-width (NFKC maps it) or another script's decimal digit.
DIGIT_FORMS = [lambda d: d, lambda d: chr(0xFF10 + int(d)), lambda d: chr(0x0660 + int(d))]


@st.composite
def written_pans(draw: st.DrawFn) -> tuple[str, str]:
    """(a Luhn-valid 13-19 digit PAN, that PAN written with random separators and digits,
    maybe inside other words)."""
    body = draw(st.text(alphabet="0123456789", min_size=12, max_size=18))
    pan = body + luhn_check_digit(body)
    parts: list[str] = []
    for index, digit in enumerate(pan):
        if index and draw(st.booleans()):
            parts.append(draw(st.sampled_from(SEPARATORS)))
        parts.append(draw(st.sampled_from(DIGIT_FORMS))(digit))
    words = st.text(alphabet="abcxyzÁé ", max_size=6)
    before = draw(words) + draw(st.sampled_from(["", " ", "card:", "nº "]))
    after = draw(st.sampled_from(["", " ", ".", " exp 12/27"])) + draw(words)
    return pan, before + "".join(parts) + after


@given(written_pans())
def test_any_written_pan_is_caught_and_masked(case: tuple[str, str]) -> None:
    pan, text = case
    # The one documented exemption: a value that is nothing but an ISO date-time.
    assume(not _is_timestamp(text))
    assert looks_like_card_number(text), repr(text)
    with pytest.raises(InvalidInput, match="looks like a card number"):
        refuse_card_numbers({"note": text}, "metadata")
    masked = mask_card_numbers(text)
    assert MASK in masked
    assert not looks_like_card_number(masked), repr(masked)
    left = "".join(
        str(unicodedata.decimal(c)) for c in masked if unicodedata.decimal(c, None) is not None
    )
    assert pan not in left


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("VISA 4444 3333 2222 1111", f"VISA {MASK}"),
        (
            fullwidth("4507990000004905") + " credit",
            f"{MASK} credit",
        ),
        ("card 4444 3333 2222 1111 12/27 ok", f"card {MASK}/27 ok"),
        ("Visa Gold", "Visa Gold"),
        ("", ""),
    ],
)
def test_mask_replaces_only_the_number(text: str, masked: str) -> None:
    assert mask_card_numbers(text) == masked


@pytest.mark.parametrize(
    "value",
    [
        "4444\t3333\t2222\t1111",
        fullwidth("4444333322221111"),
        "4444/3333/2222/1111",
    ],
)
def test_a_card_number_spelt_oddly_where_a_token_belongs_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="looks like a card number"):
        refuse_card_number_as_token(value, "instrument")
