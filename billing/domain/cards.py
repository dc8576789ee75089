"""Keep card numbers out: we store Plexo tokens, never a PAN (and never echo one back).

A card number hides in free text in many spellings: grouped by spaces, dashes, slashes, tabs or
newlines, in full-width or other non-ASCII digits. Text is read the way a person would read it:
NFKC-normalised, every decimal digit taken as its ASCII value, and any run of characters that
are neither digits nor letters counted as a separator. Any 13-19 digits of such a run (whole
groups, so "4444 3333 2222 1111 12/27" is caught) that pass Luhn are a card number.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from billing.errors import InvalidInput

_MIN_PAN, _MAX_PAN = 13, 19
# Plexo's documented test cards (plexo-api.md 3.2). Two of them fail Luhn, yet they are card
# numbers someone may paste from the docs, so they are refused by name.
_KNOWN_TEST_PANS = frozenset({"5555444433332222", "5588220000000006"})
MASK = "[card number removed]"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every card number passes; False for anything but ASCII digits."""
    if not digits or not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _is_pan(digits: str) -> bool:
    return digits in _KNOWN_TEST_PANS or (
        _MIN_PAN <= len(digits) <= _MAX_PAN and luhn_valid(digits)
    )


@dataclass(frozen=True, slots=True)
class _Group:
    """A run of digits, as ASCII, with where it sits in the original text."""

    digits: str
    start: int  # index of its first character in the original text
    end: int  # index after its last character


def _classify(value: str) -> Iterator[tuple[str, int]]:
    """(kind, index in `value`) per normalised character: kind is a digit, "L" or " "."""
    for index, original in enumerate(value):
        # Per character, so that every normalised character keeps its place in the original.
        for char in unicodedata.normalize("NFKC", original):
            digit = unicodedata.decimal(char, None)
            if digit is not None:
                yield str(digit), index
            elif unicodedata.category(char).startswith("L"):
                yield "L", index
            else:
                yield " ", index


def _runs(value: str) -> Iterator[list[_Group]]:
    """The digit groups of each run of digits and separators (a letter ends a run)."""
    run: list[_Group] = []
    digits: list[str] = []
    start = end = 0
    for kind, index in _classify(value):
        if kind.isdigit():
            if not digits:
                start = index
            digits.append(kind)
            end = index + 1
            continue
        if digits:
            run.append(_Group("".join(digits), start, end))
            digits = []
        if kind == "L" and run:
            yield run
            run = []
    if digits:
        run.append(_Group("".join(digits), start, end))
    if run:
        yield run


def _card_spans(value: str) -> Iterator[tuple[int, int]]:
    """(start, end) in `value` of every card number: consecutive whole groups of one run.

    A single group of 20 or more digits is some other identifier and is left alone.
    """
    if _is_timestamp(value):
        return
    for run in _runs(value):
        for first in range(len(run)):
            joined = ""
            for last in range(first, len(run)):
                joined += run[last].digits
                if len(joined) > _MAX_PAN:
                    break
                if _is_pan(joined):
                    yield run[first].start, run[last].end
                    break


def _is_timestamp(value: str) -> bool:
    """A value that is exactly an ISO date or date-time ("2025-07-01 10:00:00") is not a card.

    Its 14 or more digits would pass Luhn one time in ten. The major networks issue no numbers
    starting with 19 or 20 (Mastercard's 2-series starts at 2221), and a card number would have
    to be written as a real calendar date and time to pass here.
    """
    text = value.strip()
    if not 10 <= len(text) <= 40 or not text.isascii() or text[4:5] + text[7:8] != "--":
        return False
    try:
        parsed = datetime.fromisoformat(text) if len(text) > 10 else date.fromisoformat(text)
    except ValueError:
        return False
    return 1900 <= parsed.year <= 2099


def looks_like_card_number(value: str) -> bool:
    """True if `value` holds 13-19 digits across any separators that pass Luhn, or one of
    Plexo's documented test cards, anywhere in the text."""
    return next(_card_spans(value), None) is not None


def mask_card_numbers(value: str) -> str:
    """`value` with every card number in it replaced by MASK: for text the gateway sends us."""
    merged: list[list[int]] = []
    for start, end in sorted(_card_spans(value)):
        if merged and start <= merged[-1][1]:  # overlaps the one before: mask them as one
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts: list[str] = []
    cursor = 0
    for start, end in merged:
        parts += [value[cursor:start], MASK]
        cursor = end
    parts.append(value[cursor:])
    return "".join(parts)


def refuse_card_numbers(value: object, field: str) -> None:
    """Raise InvalidInput if any string, number or key inside `value` looks like a card number.

    Walks dicts (keys and values), lists and tuples. The message names the field, never the data.
    """
    if isinstance(value, str):
        if looks_like_card_number(value):
            raise InvalidInput(
                f"{field} looks like a card number; store a Plexo token, never a card number"
            )
    elif isinstance(value, int) and not isinstance(value, bool):
        refuse_card_numbers(str(value), field)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            refuse_card_numbers(key, field)
            refuse_card_numbers(item, field)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            refuse_card_numbers(item, field)


def refuse_card_number_as_token(value: str, field: str) -> None:
    """Refuse a token (or instrument id) that is a whole card number.

    Plexo tokens are 32 hex characters, so a digit run inside one is part of the token, not a
    card; only a value that is nothing but a card number (separators allowed) is refused.
    """
    runs = list(_runs(value))
    if len(runs) != 1 or any(kind == "L" for kind, _ in _classify(value)):
        return
    digits = "".join(group.digits for group in runs[0])
    if _is_pan(digits):
        raise InvalidInput(
            f"{field} looks like a card number; store a Plexo token, never a card number"
        )
