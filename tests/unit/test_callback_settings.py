"""Issue 6 items 6 and 8: the pre-dunning and callback-receiver settings, and the callbackUrl
billing sends with each payment."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.errors import ConfigError
from billing.plexo.models import PaymentRequest
from billing.settings import describe_text, load_settings

BASE = {"BILLING_DATABASE_URL": "sqlite:///x"}
TOKEN = "Zx9" * 12
PRODUCTION = {
    "BILLING_PLEXO_ENVIRONMENT": "production",
    "BILLING_PLEXO_BASE_URL": "https://api.plexo.com.uy",
    "BILLING_PLEXO_CLIENT_ID": "4711",
    "BILLING_PLEXO_API_KEY": "k" * 40,
}


def refused(**environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={**BASE, **environ})
    return str(caught.value)


def test_the_receiver_is_off_by_default_and_sends_no_callback_url() -> None:
    cfg = load_settings(environ=BASE)
    assert cfg.callback_enabled is False and cfg.callback_url is None
    assert cfg.expiry_warn_days_list == (30, 7)


def test_the_callback_url_carries_the_token_and_config_show_hides_it() -> None:
    cfg = load_settings(
        environ={**BASE, "BILLING_CALLBACK_ENABLED": "true", "BILLING_CALLBACK_TOKEN": TOKEN}
    )
    assert cfg.callback_url == f"http://127.0.0.1:9465/plexo/callbacks/{TOKEN}"
    assert TOKEN not in describe_text(cfg) and TOKEN not in repr(cfg)
    proxied = load_settings(
        environ={
            **BASE,
            "BILLING_CALLBACK_ENABLED": "true",
            "BILLING_CALLBACK_TOKEN": TOKEN,
            "BILLING_CALLBACK_PUBLIC_URL": "https://billing.example.com/",
        }
    )
    assert proxied.callback_url == f"https://billing.example.com/plexo/callbacks/{TOKEN}"


def test_production_takes_an_https_public_url() -> None:
    cfg = load_settings(
        environ={
            **BASE,
            **PRODUCTION,
            "BILLING_CALLBACK_ENABLED": "true",
            "BILLING_CALLBACK_TOKEN": TOKEN,
            "BILLING_CALLBACK_PUBLIC_URL": "https://billing.example.com",
        }
    )
    assert cfg.callback_url == f"https://billing.example.com/plexo/callbacks/{TOKEN}"


def test_the_token_may_come_from_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "callback_token").write_text(TOKEN + "\n", encoding="utf-8")
    cfg = load_settings(
        environ={**BASE, "BILLING_CALLBACK_ENABLED": "true", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert cfg.callback_token.get_secret_value() == TOKEN
    assert cfg.origins["callback_token"] == "credential"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BILLING_CALLBACK_ENABLED": "true"}, "BILLING_CALLBACK_TOKEN: is required"),
        ({"BILLING_CALLBACK_TOKEN": "short"}, "BILLING_CALLBACK_TOKEN: must be 32 to 128"),
        ({"BILLING_CALLBACK_TOKEN": TOKEN + "/x"}, "BILLING_CALLBACK_TOKEN: must be 32 to 128"),
        ({"BILLING_CALLBACK_ADDRESS": "0.0.0.0"}, "BILLING_CALLBACK_ADDRESS: must be a loopback"),
        ({"BILLING_CALLBACK_PUBLIC_URL": "ftp://x"}, "BILLING_CALLBACK_PUBLIC_URL: must be"),
        ({"BILLING_CALLBACK_PUBLIC_URL": "https://u:p@x"}, "without user:password@"),
        (
            {**PRODUCTION, "BILLING_CALLBACK_ENABLED": "true", "BILLING_CALLBACK_TOKEN": TOKEN},
            "BILLING_CALLBACK_PUBLIC_URL: is required in production",
        ),
        (
            {**PRODUCTION, "BILLING_CALLBACK_PUBLIC_URL": "http://billing.example.com"},
            "BILLING_CALLBACK_PUBLIC_URL: must be https:// in production",
        ),
        ({"BILLING_EXPIRY_WARN_DAYS": "30,seven"}, "BILLING_EXPIRY_WARN_DAYS: must be"),
        ({"BILLING_EXPIRY_WARN_DAYS": "0"}, "BILLING_EXPIRY_WARN_DAYS: must be"),
        ({"BILLING_EXPIRY_WARN_DAYS": "400"}, "BILLING_EXPIRY_WARN_DAYS: must be"),
    ],
)
def test_bad_values_are_refused_in_one_line(environ: dict[str, str], message: str) -> None:
    text = refused(**environ)
    assert message in text and "\n" not in text
    assert "short" not in text and TOKEN not in text  # a secret is never echoed


def test_warn_days_are_parsed_largest_first_and_empty_is_off() -> None:
    cfg = load_settings(environ={**BASE, "BILLING_EXPIRY_WARN_DAYS": " 7, 30,14,7 "})
    assert cfg.expiry_warn_days_list == (30, 14, 7)
    assert (
        load_settings(environ={**BASE, "BILLING_EXPIRY_WARN_DAYS": ""}).expiry_warn_days_list == ()
    )


def test_the_payment_body_carries_the_callback_url_only_when_set() -> None:
    fields: dict[str, object] = {
        "reference_id": "INV-1-1",
        "invoice_number": "INV-1",
        "customer_id": None,
        "amount_minor": 59000,
        "currency": "UYU",
        "token": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
    }
    assert "callbackUrl" not in PaymentRequest(**fields).to_body(1)  # type: ignore[arg-type]
    hook = f"https://billing.example.com/plexo/callbacks/{TOKEN}"
    request = PaymentRequest(**fields, callback_url=hook)  # type: ignore[arg-type]
    assert request.to_body(1)["callbackUrl"] == hook
    assert TOKEN not in repr(request)
