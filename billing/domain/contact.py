"""Customer contact data: pragmatic checks that catch typos before Plexo refuses the customer.

Deliberately not RFC 5322 or full E.164: these catch the mistakes people make at a keyboard and
leave the rest to the gateway, which needs an email on every customer (plexo-api.md 2.1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from billing.domain.cards import refuse_card_numbers
from billing.domain.text import checked_text, refuse_too_long, refuse_unsafe
from billing.errors import InvalidInput

MAX_EMAIL = 254  # RFC 5321 path limit
MAX_EMAIL_LOCAL = 64
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500
# Keys plus values, in characters: what one customer may carry in its JSON column and at Plexo.
MAX_METADATA_CHARS = 8_000
# The address is a JSON column (no VARCHAR length): its limits live here.
ADDRESS_LIMITS = {
    "line1": 200,
    "line2": 200,
    "city": 100,
    "state": 100,
    "postal_code": 20,
    "country": 100,
}
EARLIEST_BIRTHDATE = date(1900, 1, 1)

_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# Characters that only appear in a mis-pasted address ("Name <a@b.com>", "a@b.com, c@d.com").
_EMAIL_FORBIDDEN = re.compile(r'[<>(),;:"\[\]\\]')
_PHONE_SEPARATORS = re.compile(r"[\s\-()]")
_PHONE_DIGITS = re.compile(r"[0-9]{7,15}")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def normalize_email(s: str) -> str:
    """The address with its domain lower-cased; the local part is kept as typed."""
    text = s.strip()
    if not text:
        raise InvalidInput("email is empty")
    if len(text) > MAX_EMAIL:
        raise InvalidInput(f"email is longer than {MAX_EMAIL} characters")
    if any(ch.isspace() for ch in text):
        raise InvalidInput("email must not contain spaces")
    if text.count("@") != 1:
        raise InvalidInput("email must contain exactly one @")
    local, domain = text.split("@")
    if not local:
        raise InvalidInput("email has nothing before the @")
    if len(local) > MAX_EMAIL_LOCAL:
        raise InvalidInput(f"email's part before the @ is longer than {MAX_EMAIL_LOCAL} characters")
    if _EMAIL_FORBIDDEN.search(local):
        raise InvalidInput("email has a character that does not belong before the @")
    domain = domain.lower()
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidInput("email domain must contain a dot (e.g. example.com)")
    # Internationalised domains are accepted as typed (non-ASCII labels), only ASCII is checked.
    if any(not label for label in labels):
        raise InvalidInput("email domain has an empty part (two dots in a row?)")
    if any(label.isascii() and not _DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise InvalidInput("email domain may contain only letters, digits, dots and inner dashes")
    return f"{local}@{domain}"


def normalize_phone(s: str) -> str:
    """Digits with an optional leading +, separators (spaces, dashes, parentheses) removed."""
    text = _PHONE_SEPARATORS.sub("", s)
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not digits:
        raise InvalidInput("phone is empty")
    if not digits.isascii() or not digits.isdigit():
        raise InvalidInput(
            "phone may contain only digits, an optional leading +, spaces, dashes and parentheses"
        )
    if not _PHONE_DIGITS.fullmatch(digits):
        raise InvalidInput(f"phone must have 7 to 15 digits (got {len(digits)})")
    return f"+{digits}" if plus else digits


def parse_birthdate(s: str, today: date) -> date:
    """An ISO date (YYYY-MM-DD), not after `today` and not before 1900."""
    text = s.strip()
    if not _ISO_DATE.fullmatch(text):
        raise InvalidInput("birthdate must be an ISO date (YYYY-MM-DD)")
    try:
        value = date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"birthdate {text} is not a real calendar date") from None
    if value > today:
        raise InvalidInput(f"birthdate {text} is in the future")
    if value < EARLIEST_BIRTHDATE:
        raise InvalidInput(f"birthdate {text} is before {EARLIEST_BIRTHDATE.isoformat()}")
    return value


def normalize_address(d: Mapping[Any, Any]) -> dict[str, str]:
    """The given address fields (empty ones dropped), each checked as `address_<field>`."""
    if not isinstance(d, Mapping):
        raise InvalidInput("address must be an object of address fields")
    unknown = sorted(str(k) for k in d if k not in ADDRESS_LIMITS)
    if unknown:
        refuse_unsafe(" ".join(unknown), "address field name")
        raise InvalidInput(f"unknown address field(s) {unknown}; use {list(ADDRESS_LIMITS)}")
    result: dict[str, str] = {}
    for key, value in d.items():
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) else str(value)
        text = checked_text(text, f"address_{key}", ADDRESS_LIMITS[key])
        if text:
            result[key] = text
    return result


def normalize_metadata(d: Mapping[Any, Any]) -> dict[str, str]:
    """String-to-string metadata within Plexo-friendly limits, with no card numbers inside.

    Integers are accepted as values and turned into text (JSON input often carries them);
    anything else that is not a string is refused rather than guessed at. A key is only ever
    named in a message once it is known to be safe to show (no control character, no card).
    """
    if not isinstance(d, Mapping):
        raise InvalidInput("metadata must be an object of string keys and string values")
    if len(d) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata has {len(d)} keys; at most {MAX_METADATA_KEYS} are allowed")
    result: dict[str, str] = {}
    total = 0
    for key, value in d.items():
        if not isinstance(key, str) or not key.strip():
            raise InvalidInput("metadata keys must be non-empty strings")
        refuse_unsafe(key, "metadata key")
        refuse_too_long(key, "metadata key", MAX_METADATA_KEY)
        refuse_card_numbers(key, "metadata")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidInput(f"metadata value for {key!r} must be a string")
        text = str(value)
        field = f"metadata value for {key!r}"
        refuse_unsafe(text, field)
        refuse_too_long(text, field, MAX_METADATA_VALUE)
        refuse_card_numbers(text, "metadata")
        total += len(key) + len(text)
        if total > MAX_METADATA_CHARS:
            raise InvalidInput(
                f"metadata keys and values must be at most {MAX_METADATA_CHARS} characters in all"
            )
        result[key] = text
    return result
