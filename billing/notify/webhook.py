"""One signed webhook POST. The body and signature are documented in README "Webhooks"."""

from __future__ import annotations

import json
from datetime import datetime

import httpx

from billing.domain.notifications import EVENT_ID_HEADER, SIGNATURE_HEADER, sign
from billing.store.models import OutboxEvent


class DeliveryFailed(Exception):
    """A try that did not deliver; `reason` is a bounded metric label, str() a safe message
    (never a body, a URL's secrets or a credential)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def webhook_body(event: OutboxEvent) -> bytes:
    """{id, type, created_at, data}: the same bytes for every redelivery of the event."""
    document = {
        "id": event.event_id,
        "type": event.type,
        "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": event.payload,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def post_webhook(
    client: httpx.Client, url: str, event: OutboxEvent, secret: str, now: datetime
) -> None:
    """POST the event to `url`; any 2xx is delivered, anything else raises DeliveryFailed."""
    body = webhook_body(event)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "plexo-billing-webhooks",
        SIGNATURE_HEADER: sign(secret, int(now.timestamp()), body),
        EVENT_ID_HEADER: event.event_id,
    }
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        raise DeliveryFailed("timeout", "timed out") from None
    except httpx.TransportError as exc:
        raise DeliveryFailed("connect", f"connection failed ({type(exc).__name__})") from None
    if not 200 <= response.status_code < 300:
        status = response.status_code
        raise DeliveryFailed(f"http_{status // 100}xx", f"HTTP {status}")
