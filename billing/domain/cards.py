"""Keep card numbers out: we store Plexo tokens, never a PAN (and never echo one back)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from billing.errors import InvalidInput

# A digit run where single spaces or dashes may separate digits ("4444 3333-2222 1111").
_DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ .-]?\d)*(?!\d)")
_SEPARATORS = re.compile(r"[ .-]")
_MIN_PAN, _MAX_PAN = 13, 19
# Plexo's documented test cards (plexo-api.md 3.2). Two of them fail Luhn, yet they are card
# numbers someone may paste from the docs, so they are refused by name.
_KNOWN_TEST_PANS = frozenset({"5555444433332222", "5588220000000006"})


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


def looks_like_card_number(value: str) -> bool:
    """True if `value` holds 13-19 digits (spaces/dashes allowed between them) passing Luhn,
    or one of Plexo's documented test cards.

    The run may be embedded in longer text ("card 4444 3333 2222 1111 thanks"). A separated run
    is also checked group by group, so a number written next to other digits ("4444 3333 2222
    1111 12/27") is caught; an unbroken run of 20+ digits is some other identifier.
    """
    for match in _DIGIT_RUN.finditer(value):
        run = match.group()
        digits = _SEPARATORS.sub("", run)
        if _is_pan(digits):
            return True
        groups = _SEPARATORS.split(run)
        if len(groups) > 1 and _any_grouped_pan(groups):
            return True
    return False


def _any_grouped_pan(groups: list[str]) -> bool:
    """Whether consecutive separator-delimited groups join into a Luhn-valid 13-19 digit number."""
    for first in range(len(groups)):
        joined = ""
        for group in groups[first:]:
            joined += group
            if len(joined) > _MAX_PAN:
                break
            if _is_pan(joined):
                return True
    return False


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
    digits = _SEPARATORS.sub("", value.strip())
    if digits.isdigit() and _is_pan(digits):
        raise InvalidInput(
            f"{field} looks like a card number; store a Plexo token, never a card number"
        )
