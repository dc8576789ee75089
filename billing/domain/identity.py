"""Customer identity documents: normalise the number and check its check digit where there is one.

Algorithms (cross-checked against independent public implementations; test vectors in
tests/unit/test_identity.py are verified by hand):
- CI (Uruguayan cédula de identidad): the number without its last digit, left-padded to 7 digits,
  weighted 2,9,8,7,6,3,4; check digit = (10 - sum % 10) % 10. Same rule as the `ci_uy` Ruby gem
  (github.com/picandocodigo/ci_uy, lib/ci_uy.rb), whose vectors 1.111.111-1, 111111-3 and
  5.169.170-3 we reuse.
- RUT (Uruguayan tax number, 12 digits): first 11 digits weighted 4,3,2,9,8,7,6,5,4,3,2;
  check digit = 11 - sum % 11, where 11 means 0 and 10 means no valid number. Same rule as
  python-stdnum's `stdnum.uy.rut` (`-total % 11`, a result of 10 never matching one digit),
  which cites AGESIC's data model (agesic.gub.uy .../modelo_de_datos.pdf, p. 71). We do not
  copy stdnum's component checks (prefix 01-22, "001" in digits 9-11): a new DGI range must
  not lock a real customer out; the check digit already catches typing errors.
- CPF (Brazil, 11 digits): two mod-11 check digits (weights 10..2 then 11..2; a remainder
  below 2 gives 0); numbers of one repeated digit are refused.
"""

from __future__ import annotations

import re
from enum import StrEnum

from billing.errors import InvalidInput


class DocumentType(StrEnum):
    CI = "CI"
    RUT = "RUT"
    CPF = "CPF"
    PASSPORT = "PASSPORT"
    OTHER = "OTHER"


_CI_WEIGHTS = (2, 9, 8, 7, 6, 3, 4)
_RUT_WEIGHTS = (4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
# Characters people type between digits ("1.234.567-2", "21-100342-001-7", "529.982.247-25").
_DIGIT_SEPARATORS = re.compile(r"[.\- /]")
_PASSPORT_SEPARATORS = re.compile(r"[\s-]")
_ASCII_DIGITS = re.compile(r"[0-9]*")


def ci_check_digit(body: str) -> int:
    """Check digit of a cédula body (the number without its last digit, 5-7 digits)."""
    padded = body.rjust(7, "0")
    total = sum(w * int(d) for w, d in zip(_CI_WEIGHTS, padded, strict=True))
    return (10 - total % 10) % 10


def rut_check_digit(body: str) -> int | None:
    """Check digit of a RUT's first 11 digits; None when no digit is valid (remainder 1)."""
    total = sum(w * int(d) for w, d in zip(_RUT_WEIGHTS, body, strict=True))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def cpf_check_digits(body: str) -> str:
    """The two check digits of a CPF's first 9 digits."""
    digits = [int(d) for d in body]
    for _ in range(2):
        weight = len(digits) + 1
        total = sum(d * (weight - i) for i, d in enumerate(digits))
        remainder = total % 11
        digits.append(0 if remainder < 2 else 11 - remainder)
    return f"{digits[-2]}{digits[-1]}"


def _digits(kind: DocumentType, number: str) -> str:
    """Strip separators; refuse anything else that is not an ASCII digit."""
    digits = _DIGIT_SEPARATORS.sub("", number.strip())
    if not _ASCII_DIGITS.fullmatch(digits):
        raise InvalidInput(
            f"{kind} number may contain only digits, dots, dashes, slashes and spaces"
        )
    return digits


def _normalize_ci(number: str) -> str:
    digits = _digits(DocumentType.CI, number).lstrip("0")
    if not 6 <= len(digits) <= 8:
        raise InvalidInput(
            f"CI number must have 6 to 8 digits including the check digit (got {len(digits)})"
        )
    if ci_check_digit(digits[:-1]) != int(digits[-1]):
        raise InvalidInput("CI number has a bad check digit (mistyped?)")
    return digits


def _normalize_rut(number: str) -> str:
    text = number.strip().upper()
    if text.startswith("UY"):
        text = text[2:]
    digits = _digits(DocumentType.RUT, text)
    if len(digits) != 12:
        raise InvalidInput(f"RUT number must have 12 digits (got {len(digits)})")
    expected = rut_check_digit(digits[:11])
    if expected is None:
        raise InvalidInput("RUT number is not valid: no check digit fits its first 11 digits")
    if expected != int(digits[-1]):
        raise InvalidInput("RUT number has a bad check digit (mistyped?)")
    return digits


def _normalize_cpf(number: str) -> str:
    digits = _digits(DocumentType.CPF, number)
    if len(digits) != 11:
        raise InvalidInput(f"CPF number must have 11 digits (got {len(digits)})")
    if len(set(digits)) == 1:
        raise InvalidInput("CPF number is not valid: all its digits are the same")
    if cpf_check_digits(digits[:9]) != digits[9:]:
        raise InvalidInput("CPF number has bad check digits (mistyped?)")
    return digits


def _normalize_passport(number: str) -> str:
    text = _PASSPORT_SEPARATORS.sub("", number).upper()
    if not (text.isascii() and text.isalnum()):
        raise InvalidInput("PASSPORT number may contain only letters and digits")
    if not 3 <= len(text) <= 20:
        raise InvalidInput(f"PASSPORT number must have 3 to 20 characters (got {len(text)})")
    return text


def _normalize_other(number: str) -> str:
    text = number.strip()
    if not 1 <= len(text) <= 32:
        raise InvalidInput(f"OTHER document number must have 1 to 32 characters (got {len(text)})")
    if not text.isprintable():
        raise InvalidInput("OTHER document number must contain only printable characters")
    return text


_NORMALIZERS = {
    DocumentType.CI: _normalize_ci,
    DocumentType.RUT: _normalize_rut,
    DocumentType.CPF: _normalize_cpf,
    DocumentType.PASSPORT: _normalize_passport,
    DocumentType.OTHER: _normalize_other,
}


def normalize_document(doc_type: str, number: str) -> tuple[str, str]:
    """(TYPE, normalized number) for a customer's document, or InvalidInput saying why.

    Messages name the type and the reason but never repeat the number (personal data).
    """
    try:
        kind = DocumentType(doc_type.strip().upper())
    except ValueError:
        choices = ", ".join(t.value for t in DocumentType)
        raise InvalidInput(f"unknown document type {doc_type!r}: use one of {choices}") from None
    return kind.value, _NORMALIZERS[kind](number)
