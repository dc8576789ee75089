"""Notification settings: URLs, the webhook secret and the SMTP password (also as systemd
credentials), validated in one line and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.errors import ConfigError
from billing.notify.config import NotifyConfig
from billing.settings import MASK, describe, describe_text, load_settings

SECRET = "whsec-unit-SECRET-0123456789"
PASSWORD = "smtp-unit-PASSWORD-987"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_urls_from_the_environment_and_secrets_from_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "webhook_secret").write_text(SECRET + "\n")
    (creds / "smtp_password").write_text(PASSWORD + "\n")
    cfg = load_settings(
        environ={
            "CREDENTIALS_DIRECTORY": str(creds),
            "BILLING_WEBHOOK_URLS": "https://a.example/hook, https://b.example/hook",
            "BILLING_SMTP_HOST": "smtp.example",
            "BILLING_SMTP_USER": "billing",
            "BILLING_EMAIL_FROM": "billing@shop.example",
        }
    )
    assert cfg.webhook_urls == ["https://a.example/hook", "https://b.example/hook"]
    assert cfg.webhook_secret.get_secret_value() == SECRET
    assert cfg.smtp_password.get_secret_value() == PASSWORD
    assert cfg.origins["webhook_secret"] == "credential"
    shown = describe(cfg)
    assert shown["webhook_secret"] == {
        "env": "BILLING_WEBHOOK_SECRET",
        "value": MASK,
        "source": "credential",
    }
    text = describe_text(cfg) + repr(cfg) + repr(NotifyConfig.from_settings(cfg))
    assert SECRET not in text and PASSWORD not in text
    assert "https://a.example/hook, https://b.example/hook" in text
    notify = NotifyConfig.from_settings(cfg)
    assert notify.targets() == [
        ("webhook", "https://a.example/hook"),
        ("webhook", "https://b.example/hook"),
        ("email", "customer"),
    ]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BILLING_WEBHOOK_URLS": "https://a.example/hook"}, "BILLING_WEBHOOK_SECRET: must be"),
        (
            {"BILLING_WEBHOOK_URLS": "ftp://a.example", "BILLING_WEBHOOK_SECRET": SECRET},
            "BILLING_WEBHOOK_URLS: each must be an http:// or https:// URL",
        ),
        (
            {"BILLING_WEBHOOK_URLS": "https://u:p@a.example", "BILLING_WEBHOOK_SECRET": SECRET},
            "must not carry user:password@",
        ),
        ({"BILLING_SMTP_HOST": "smtp.example"}, "BILLING_EMAIL_FROM: is required"),
        ({"BILLING_EMAIL_LANGUAGE": "fr"}, "BILLING_EMAIL_LANGUAGE"),
    ],
)
def test_bad_notification_settings_are_one_clear_line(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_a_short_secret_is_refused_without_showing_it() -> None:
    short = "tiny-secret"
    with pytest.raises(ConfigError) as caught:
        load_settings(
            environ={"BILLING_WEBHOOK_URLS": "https://a.example", "BILLING_WEBHOOK_SECRET": short}
        )
    assert short not in str(caught.value)
