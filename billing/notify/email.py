"""Customer email: file templates (string.Template), Spanish or English, text plus HTML.

Templates live in billing/notify/templates/<language>/<type>.{txt,html}; the first line of
the .txt is ``Subject: ...``. Values are escaped for HTML; a missing one renders empty.
"""

from __future__ import annotations

import html
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import make_msgid
from importlib import resources
from string import Template

from billing.notify.config import NotifyConfig
from billing.notify.webhook import DeliveryFailed

LANGUAGES = ("es", "en")
SMTP_TIMEOUT_SECONDS = 30.0


def _template(language: str, kind: str, suffix: str) -> Template:
    path = resources.files("billing.notify").joinpath("templates", language, f"{kind}.{suffix}")
    return Template(path.read_text(encoding="utf-8"))


def render(kind: str, language: str, values: Mapping[str, str]) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of notification `kind` in `language`."""
    language = language if language in LANGUAGES else LANGUAGES[0]
    text = _template(language, kind, "txt").safe_substitute(values)
    first, _, body = text.partition("\n")
    subject = first.removeprefix("Subject:").strip()
    escaped = {key: html.escape(value) for key, value in values.items()}
    page = _template(language, kind, "html").safe_substitute(escaped)
    return subject, body.lstrip("\n"), page


def build_message(
    cfg: NotifyConfig, to: str, kind: str, language: str, values: Mapping[str, str], event_id: str
) -> EmailMessage:
    subject, text, page = render(kind, language, values)
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = cfg.email_from or ""
    message["To"] = to
    message["Message-ID"] = make_msgid(idstring=event_id)
    message["X-Billing-Event-Id"] = event_id  # receivers (and support) can dedupe on it
    message.set_content(text)
    message.add_alternative(page, subtype="html")
    return message


def send_message(cfg: NotifyConfig, message: EmailMessage) -> None:
    """Hand the message to the SMTP server (STARTTLS, then login when configured)."""
    assert cfg.smtp_host is not None
    try:
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=SMTP_TIMEOUT_SECONDS) as smtp:
            if cfg.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.smtp_user:
                smtp.login(cfg.smtp_user, cfg.smtp_password.get_secret_value())
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        # The code only: the server's text may echo what we sent.
        raise DeliveryFailed("smtp", f"SMTP {exc.smtp_code}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryFailed("smtp", f"SMTP failed ({type(exc).__name__})") from None
