"""Sandbox test cards: what a card number tokenized in the simulator does when charged.

The full number is only looked at here, at tokenization time; the simulator keeps the outcome,
the BIN (6 digits) and the last four digits, never the number itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from billing.errors import InvalidInput

PaymentStatus = Literal["approved", "denied", "pending"]


@dataclass(frozen=True, slots=True)
class CardOutcome:
    """How a charge on a card ends: the payment status and the processor's codes."""

    status: PaymentStatus
    result_code: str | None  # processor code as a string ("0" approved); None while pending
    decline_code: str | None  # snake_case word for declines (error envelope's declineCode)
    message: str
    settles_to: CardOutcome | None = None  # for "pending": the state it settles into
    # Declined this way on the first N charges of a token, approved from then on.
    approve_after: int = 0
    # "pending" waiting for the customer (3-D Secure): the payment lists an approval_url action
    # and polling never settles it (plexo-api.md 6).
    action_required: bool = False


APPROVED = CardOutcome("approved", "0", None, "Approved")
PROCESSING_ERROR = CardOutcome("denied", "96", "processing_error", "processing_error")


def _declined(code: str, word: str) -> CardOutcome:
    return CardOutcome("denied", code, word, word)


def _pending(settles_to: CardOutcome) -> CardOutcome:
    return CardOutcome("pending", None, None, "pending", settles_to)


INSUFFICIENT_FUNDS = _declined("51", "insufficient_funds")
INVALID_CARD = _declined("14", "invalid_card")  # unknown or deleted token
EXPIRED_CARD = _declined("54", "expired_card")


@dataclass(frozen=True, slots=True)
class TestCard:
    """One row of the sandbox's test-card table."""

    __test__ = False  # not a pytest test class

    number: str
    brand: str
    card_type: str  # credit | debit
    issuer: str
    outcome: CardOutcome
    note: str


TEST_CARDS: dict[str, TestCard] = {
    card.number: card
    for card in (
        TestCard("4444333322221111", "visa", "credit", "Sandbox Bank", APPROVED, "approved"),
        TestCard("5555444433332222", "mastercard", "credit", "Sandbox Bank", APPROVED, "approved"),
        TestCard(
            "4507990000004905", "visa", "debit", "Banco Sandbox UY", APPROVED, "approved (UY)"
        ),
        TestCard(
            "5588220000000006",
            "mastercard",
            "credit",
            "Banco Sandbox UY",
            APPROVED,
            "approved (UY)",
        ),
        TestCard(
            "4000000000000010",
            "visa",
            "credit",
            "Sandbox Bank",
            INSUFFICIENT_FUNDS,
            "soft decline 51 insufficient_funds",
        ),
        TestCard(
            "4000000000000002",
            "visa",
            "credit",
            "Sandbox Bank",
            _declined("05", "card_declined"),
            "decline 05 card_declined (do not honor)",
        ),
        TestCard(
            "4000000000000069",
            "visa",
            "credit",
            "Sandbox Bank",
            EXPIRED_CARD,
            "hard decline 54 expired_card",
        ),
        TestCard(
            "4000000000000119",
            "visa",
            "credit",
            "Sandbox Bank",
            _declined("43", "stolen_card"),
            "hard decline 43 stolen_card",
        ),
        TestCard(
            "4000000000000259",
            "visa",
            "credit",
            "Sandbox Bank",
            _pending(APPROVED),
            "pending, settles approved after pending_polls GETs",
        ),
        TestCard(
            "4000000000000267",
            "visa",
            "credit",
            "Sandbox Bank",
            _pending(INSUFFICIENT_FUNDS),
            "pending, settles denied 51 after pending_polls GETs",
        ),
        TestCard(
            "4000000000000028",
            "visa",
            "credit",
            "Sandbox Bank",
            PROCESSING_ERROR,
            "soft decline 96 processing_error",
        ),
        TestCard(
            "4000000000000036",
            "visa",
            "credit",
            "Sandbox Bank",
            _declined("91", "issuer_unavailable"),
            "soft decline 91 issuer_unavailable",
        ),
        TestCard(
            "4000000000000127",
            "visa",
            "credit",
            "Sandbox Bank",
            _declined("41", "lost_card"),
            "hard decline 41 lost_card",
        ),
        TestCard(
            "4000000000000143",
            "visa",
            "credit",
            "Sandbox Bank",
            _declined("04", "pickup_card"),
            "hard decline 04 pickup_card",
        ),
        TestCard(
            "4000000000000150",
            "visa",
            "credit",
            "Sandbox Bank",
            _declined("62", "restricted_card"),
            "hard decline 62 restricted_card",
        ),
        TestCard(
            "4000000000000168",
            "visa",
            "credit",
            "Sandbox Bank",
            _declined("R1", "stop_recurring"),
            "hard decline R1 stop_recurring",
        ),
        TestCard(
            "4000000000000341",
            "visa",
            "credit",
            "Sandbox Bank",
            CardOutcome("denied", "51", "insufficient_funds", "insufficient_funds", None, 2),
            "soft decline 51 on the first two charges of a token, then approved",
        ),
        TestCard(
            "4000000000003220",
            "visa",
            "credit",
            "Sandbox Bank",
            CardOutcome("pending", None, None, "pending", None, 0, True),
            "pending, 3-D Secure approval_url action: never settles by polling",
        ),
        TestCard(
            "5555555555554445",
            "mastercard",
            "credit",
            "Sandbox Bank",
            PROCESSING_ERROR,
            "decline 96 (ActiveMerchant's remote-test card)",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class CardProfile:
    """What the simulator keeps about a tokenized card (no full number)."""

    bin: str
    last4: str
    masked: str
    brand: str
    card_type: str
    issuer: str
    outcome: CardOutcome


def luhn_valid(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number[:2] in {"36", "38"}:
        return "diners"
    return "unknown"


def profile_card(card_number: str) -> CardProfile:
    """Classify a card number typed on the hosted page; refuse one that is not a card.

    Table cards behave as listed; any other Luhn-valid number of 13-19 digits approves.
    Error messages never echo the number.
    """
    number = card_number.replace(" ", "").replace("-", "")
    if not number.isdigit() or not 13 <= len(number) <= 19:
        raise InvalidInput("card number must be 13 to 19 digits")
    known = TEST_CARDS.get(number)
    if known is None and not luhn_valid(number):
        raise InvalidInput("card number fails the Luhn check")
    bin6, last4 = number[:6], number[-4:]
    masked = bin6 + "X" * (len(number) - 10) + last4
    if known is not None:
        return CardProfile(
            bin6, last4, masked, known.brand, known.card_type, known.issuer, known.outcome
        )
    return CardProfile(bin6, last4, masked, _brand_of(number), "credit", "Sandbox Bank", APPROVED)
