"""Money: integer minor units plus an ISO-4217 code. The only place amounts change shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from billing.errors import InvalidInput

# ISO-4217 minor digits of the currencies Plexo settles.
CURRENCY_DIGITS: dict[str, int] = {"UYU": 2, "USD": 2}
# Largest amount accepted, in minor units: far above any real charge, far below the 28 digits
# of Decimal's default context, so no arithmetic here ever rounds.
MAX_MINOR = 10**15
# What a person types for an amount: digits, optionally a point and decimals (no exponent,
# no grouping); the sign is allowed here only to give "must be greater than zero" below.
_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]{1,20}(\.[0-9]{1,20})?")


def check_currency(code: str) -> str:
    """Return the upper-cased code, or refuse a currency Plexo does not settle."""
    normalized = code.strip().upper()
    if normalized not in CURRENCY_DIGITS:
        supported = ", ".join(sorted(CURRENCY_DIGITS))
        raise InvalidInput(f"unsupported currency {code!r}: use one of {supported}")
    return normalized


@dataclass(frozen=True, slots=True)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.minor) is not int:
            raise TypeError("Money.minor must be an int (minor units)")
        object.__setattr__(self, "currency", check_currency(self.currency))

    def major(self) -> Decimal:
        return to_major(self.minor, self.currency)

    def __str__(self) -> str:
        return f"{self.major()} {self.currency}"


def parse_amount(text: str | Decimal | int, currency: str) -> int:
    """Parse a major-unit amount ("590", "590.5", "590.50") into minor units.

    Refuses floats, non-numbers, non-positive amounts and more decimals than the currency has.
    """
    currency = check_currency(currency)
    if isinstance(text, float):
        raise InvalidInput("amount must be given as text or Decimal, never a float")
    raw = str(text).strip()
    if len(raw) > 40:
        raise InvalidInput("amount is too long to be a price")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InvalidInput(f"amount {text!r} is not a number") from None
    if not value.is_finite():
        raise InvalidInput(f"amount {text!r} is not a finite number")
    if isinstance(text, str) and not _PLAIN_DECIMAL.fullmatch(raw):
        raise InvalidInput(
            f"amount {text!r}: write plain digits with '.' for decimals (e.g. 590.00)"
        )
    digits = CURRENCY_DIGITS[currency]
    if abs(value) >= Decimal(MAX_MINOR).scaleb(-digits):
        raise InvalidInput(f"amount {text} is too large")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > digits and value != value.quantize(Decimal(1).scaleb(-digits)):
        raise InvalidInput(
            f"amount {text} has more than {digits} decimal places, which {currency} does not allow"
        )
    if value <= 0:
        raise InvalidInput(f"amount {text} must be greater than zero")
    return int(value.scaleb(digits))


def to_major(minor: int, currency: str) -> Decimal:
    """Minor units to a Decimal in major units with exactly the currency's decimals."""
    digits = CURRENCY_DIGITS[check_currency(currency)]
    if abs(minor) >= MAX_MINOR:
        raise InvalidInput(f"amount of {minor} minor units is too large")
    return Decimal(minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits))


def from_major(value: Decimal, currency: str) -> int:
    """A Decimal in major units (e.g. from a gateway body) to minor units; refuses sub-minor."""
    digits = CURRENCY_DIGITS[check_currency(currency)]
    if not value.is_finite():
        raise InvalidInput(f"amount {value} is not a finite number")
    if abs(value) >= Decimal(MAX_MINOR).scaleb(-digits):
        raise InvalidInput(f"amount {value} is too large")
    scaled = value.scaleb(digits)
    if scaled != scaled.to_integral_value():
        raise InvalidInput(f"amount {value} has more than {digits} decimals for {currency}")
    return int(scaled)
