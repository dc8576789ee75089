"""The webhook signature: our sender's header verifies with the README's recipe (run as it is
written there) and with an independent implementation of the documented rule."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from billing.domain.notifications import notification_type, sign
from billing.notify.webhook import webhook_body
from billing.store.models import OutboxEvent

README = Path(__file__).resolve().parents[2] / "README.md"
SECRET = "whsec-test-0123456789abcdef"


def readme_verify() -> Any:
    """The `verify` function of README's Python block under "Notifications"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Notifications") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "README lost its verification recipe"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    return namespace["verify"]


def independent_verify(secret: str, header: str, body: bytes, now: float) -> bool:
    """Written from the README's prose only: t=..,v1=..; HMAC-SHA256 over '<t>.<body>'."""
    fields = {}
    for piece in header.split(","):
        key, _, value = piece.strip().partition("=")
        fields[key] = value
    if abs(now - int(fields["t"])) > 300:
        return False
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
    mac.update(fields["t"].encode("ascii"))
    mac.update(b".")
    mac.update(body)
    return hmac.compare_digest(mac.hexdigest(), fields["v1"])


def event() -> OutboxEvent:
    return OutboxEvent(
        event_id="evt_" + "ab" * 16,
        type="invoice.payment_failed",
        created_at=datetime(2026, 3, 1, 12, tzinfo=UTC),
        entity_type="invoice",
        entity_id=12,
        payload={"invoice_id": 12, "customer_reference": "cus-1"},
    )


def test_signature_verifies_with_the_readme_recipe_and_independently() -> None:
    body = webhook_body(event())
    now = int(time.time())
    header = sign(SECRET, now, body)
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    verify = readme_verify()
    assert verify(SECRET, header, body) is True
    assert independent_verify(SECRET, header, body, time.time()) is True
    # A changed body, another secret, or an old timestamp (a replay) is refused.
    assert verify(SECRET, header, body.replace(b"12", b"13")) is False
    assert verify("another-secret-0123456", header, body) is False
    old = sign(SECRET, now - 3600, body)
    assert verify(SECRET, old, body) is False
    assert independent_verify(SECRET, old, body, time.time()) is False


def test_body_is_the_documented_shape_with_ids_only() -> None:
    document = json.loads(webhook_body(event()))
    assert set(document) == {"id", "type", "created_at", "data"}
    assert document["created_at"] == "2026-03-01T12:00:00Z"
    assert document["data"] == {"invoice_id": 12, "customer_reference": "cus-1"}
    assert webhook_body(event()) == webhook_body(event())  # same bytes on every redelivery


@pytest.mark.parametrize(
    ("event_name", "kind"),
    [
        ("invoice.declined", "invoice.payment_failed"),
        ("invoice.paid", "invoice.paid"),
        ("subscription.past_due", "subscription.past_due"),
        ("instrument.expiring", "instrument.expiring"),
        ("subscription.active", None),
        ("attempt.sending", None),
    ],
)
def test_which_events_are_notifications(event_name: str, kind: str | None) -> None:
    assert notification_type(event_name) == kind
