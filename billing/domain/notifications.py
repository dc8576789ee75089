"""Which event-log entries are notifications, and what a receiver may see of them (pure).

A notification's payload carries identifiers only: never card data, amounts of a card, tokens
or secrets. The webhook signature recipe lives here too so that the sender and the tests (and the
README's recipe) agree on one definition.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

NOTIFICATION_TYPES = frozenset(
    {
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "invoice.uncollectible",
        "subscription.past_due",
        "subscription.recovered",
        "subscription.canceled",
        "subscription.unpaid",
        "subscription.paused",
        "instrument.expiring",
    }
)
ALIASES = {"invoice.declined": "invoice.payment_failed"}
"""Event-log names that announce a notification under another name."""

EMAIL_TYPES = frozenset(
    {
        "invoice.payment_failed",
        "subscription.recovered",
        "instrument.expiring",
        "subscription.canceled",
    }
)
"""The notifications the customer also gets by email (templates in billing/notify/templates)."""

SIGNATURE_HEADER = "Billing-Signature"
EVENT_ID_HEADER = "Billing-Event-Id"


def notification_type(event: str) -> str | None:
    """The notification an event-log entry announces, or None."""
    name = ALIASES.get(event, event)
    return name if name in NOTIFICATION_TYPES else None


def id_fields(data: Mapping[str, Any]) -> dict[str, int | str]:
    """Only the identifiers of an event's data (keys ending in ``_id``, plain int or str)."""
    return {
        key: value
        for key, value in data.items()
        if key.endswith("_id") and isinstance(value, int | str) and not isinstance(value, bool)
    }


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Billing-Signature`` header value: HMAC-SHA256 over ``"<timestamp>.<body>"``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def backoff(attempts: int, base_seconds: int, cap: timedelta = timedelta(hours=6)) -> timedelta:
    """Delay before the next delivery try after `attempts` failures: base * 2^(n-1), capped."""
    exponent = min(max(attempts - 1, 0), 30)
    return min(timedelta(seconds=base_seconds * 2**exponent), cap)
