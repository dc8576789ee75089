"""Every customer email exists in Spanish and English, as text and HTML, with every value
filled in (HTML-escaped) and nothing left as a $placeholder."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from billing.domain.notifications import EMAIL_TYPES
from billing.notify.config import NotifyConfig
from billing.notify.email import LANGUAGES, build_message, render

VALUES = {
    "name": "Ana <b>",
    "invoice_number": "INV-ABC",
    "amount": "UYU 590.00",
    "update_url": "https://pay.example/checkout/1?a=1&b=2",
    "card": "visa **** 4242",
    "expires": "12/2026",
    "plan": "Mensual",
}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", sorted(EMAIL_TYPES))
def test_every_template_renders_fully(kind: str, language: str) -> None:
    subject, text, page = render(kind, language, VALUES)
    assert subject and "\n" not in subject and "$" not in subject
    assert "$" not in text and "$" not in page
    assert "Ana <b>" in text and "Ana &lt;b&gt;" in page
    if kind in ("invoice.payment_failed", "instrument.expiring"):
        assert VALUES["update_url"] in text
        assert 'href="https://pay.example/checkout/1?a=1&amp;b=2"' in page


def test_languages_differ_and_an_unknown_one_falls_back_to_spanish() -> None:
    es = render("subscription.canceled", "es", VALUES)[0]
    en = render("subscription.canceled", "en", VALUES)[0]
    assert es != en
    assert render("subscription.canceled", "fr", VALUES)[0] == es


def test_the_message_is_multipart_text_and_html() -> None:
    cfg = NotifyConfig(
        smtp_host="x", email_from="billing@shop.example", smtp_password=SecretStr("p")
    )
    message = build_message(cfg, "ana@example.com", "subscription.recovered", "en", VALUES, "evt_1")
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    assert message["X-Billing-Event-Id"] == "evt_1"
