"""Text that goes into the store, and text that comes out onto a terminal or a log line.

In: every text input is refused when it holds a control character (C0 with no exception, DEL,
C1), a bidirectional-formatting character (which can make "paid" read as "diap"), an invisible
zero-width character, a line or paragraph separator, or a lone surrogate (which PostgreSQL
cannot store); when it is longer than its column allows (the same limit on SQLite, which does
not enforce VARCHAR lengths, and on PostgreSQL, which fails); and when it looks like a card
number. The message names the field and the rule, never the data.

Out: `escape` makes any text one safe line (rows may predate these checks, and the gateway
sends what it likes): each character above is shown as a Python-style escape (\\n, \\x1b,
\\u202e), so no value can move the cursor, recolour the screen or split a line.
"""

from __future__ import annotations

import re

from billing.domain.cards import mask_card_numbers, refuse_card_numbers
from billing.errors import InvalidInput

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_INVISIBLE = "\u200b\u2060-\u2064\ufeff"
_UNSAFE = re.compile(
    f"[\x00-\x1f\x7f-\x9f{_BIDI}{_INVISIBLE}\u2028\u2029\ud800-\udfff\ufffe\uffff]"
)
_UNSAFE_BUT_NEWLINE = re.compile(_UNSAFE.pattern.replace("\x00-\x1f", "\x00-\x09\x0b-\x1f"))
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _kind(char: str) -> str:
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return "a control character"
    if re.fullmatch(f"[{_BIDI}]", char):
        return "a bidirectional-text control character"
    if char in "\u2028\u2029":
        return "a line separator"
    if 0xD800 <= code <= 0xDFFF:
        return "a lone surrogate (broken Unicode)"
    if char in "\ufffe\uffff":
        return "a noncharacter"
    return "an invisible character"


def refuse_unsafe(value: str, field: str) -> None:
    """Raise InvalidInput naming the field, the kind of character and where it is."""
    found = _UNSAFE.search(value)
    if found is not None:
        char = found.group()
        raise InvalidInput(
            f"{field} contains {_kind(char)} (U+{ord(char):04X}) at character "
            f"{found.start() + 1}; remove it"
        )


def refuse_too_long(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidInput(f"{field} must be at most {limit} characters (got {len(value)})")


def checked_text(value: object, field: str, limit: int, *, cards: bool = True) -> str:
    """`value` stripped, if it is text fit to store: no unsafe character (even at its ends), at
    most `limit` characters, no card number. Lengths count characters, as PostgreSQL's
    VARCHAR(n) does; the length check comes first so that no scan runs over huge input."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text")
    refuse_unsafe(value, field)
    text = value.strip()
    refuse_too_long(text, field, limit)
    if cards:
        refuse_card_numbers(text, field)
    return text


def escape(text: str) -> str:
    """One safe line: every unsafe character (newlines included) shown as an escape."""
    return _UNSAFE.sub(_escape_char, text)


def escape_keeping_newlines(text: str) -> str:
    """For output that is several lines on purpose (tables): only its newlines are kept.

    Values inside such output are escaped one by one with `escape` first, so a newline that
    is left can only be one the output itself put there.
    """
    return _UNSAFE_BUT_NEWLINE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def gateway_text(value: str | None, limit: int) -> str | None:
    """Display text the gateway sent (a brand, a card type, a message), made fit to store: card
    numbers masked, unsafe characters escaped (PostgreSQL refuses NUL; a terminal obeys ESC),
    cut to the column's length. The gateway is not refused for this: a bad label is no reason
    to lose the card or the outcome it comes with."""
    if value is None:
        return None
    text = escape(mask_card_numbers(value)).strip()
    return text[:limit] or None
