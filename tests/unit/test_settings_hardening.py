"""Config refusals of issue 5 item 14: production base URLs, booleans vs numbers, nothing created
by a refused config, URLs shown without userinfo, node names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from billing.errors import ConfigError
from billing.settings import (
    MASK,
    default_node_name,
    describe,
    describe_text,
    is_loopback_host,
    load_settings,
    redact_url,
)

SECRET = "sk_live_SECRET123"
PRODUCTION = {
    "BILLING_PLEXO_ENVIRONMENT": "production",
    "BILLING_PLEXO_BASE_URL": "https://api.plexo.com.uy",
    "BILLING_PLEXO_CLIENT_ID": "4711",
    "BILLING_PLEXO_API_KEY": SECRET,
    "BILLING_DATABASE_URL": "postgresql://db/billing",
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def refused(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# --- production base URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1",
        "https://127.1.2.3:8443",
        "https://localhost:8443/",
        "https://LOCALHOST.",
        "https://api.localhost",
        "https://[::1]:8443",
        "https://[::ffff:127.0.0.1]",
    ],
)
def test_production_refuses_a_loopback_base_url(url: str) -> None:
    message = refused(environ=PRODUCTION | {"BILLING_PLEXO_BASE_URL": url})
    assert message.startswith("BILLING_PLEXO_BASE_URL: is a loopback address")
    assert "BILLING_PLEXO_BASE_URL_ALLOW_PROXY" in message


@pytest.mark.parametrize(
    "url", ["https://api.testing.plexo.com.uy", "https://API.Testing.Plexo.com.uy./"]
)
def test_production_refuses_plexos_testing_host(url: str) -> None:
    message = refused(environ=PRODUCTION | {"BILLING_PLEXO_BASE_URL": url})
    assert "is Plexo's testing host" in message


def test_the_proxy_override_allows_loopback_and_testing_in_production(tmp_path: Path) -> None:
    for url in ("https://127.0.0.1:8443", "https://api.testing.plexo.com.uy"):
        cfg = load_settings(
            environ=PRODUCTION
            | {"BILLING_PLEXO_BASE_URL": url, "BILLING_PLEXO_BASE_URL_ALLOW_PROXY": "true"}
        )
        assert cfg.plexo_base_url == url and cfg.plexo_base_url_allow_proxy is True
    # The override does not lift https.
    message = refused(
        environ=PRODUCTION
        | {
            "BILLING_PLEXO_BASE_URL": "http://127.0.0.1:8080",
            "BILLING_PLEXO_BASE_URL_ALLOW_PROXY": "true",
        }
    )
    assert "production requires https" in message


def test_outside_production_loopback_and_testing_are_fine() -> None:
    for url in ("http://127.0.0.1:8765", "https://api.testing.plexo.com.uy"):
        cfg = load_settings(
            environ={"BILLING_PLEXO_ENVIRONMENT": "testing", "BILLING_PLEXO_BASE_URL": url}
        )
        assert cfg.plexo_base_url == url


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# --- booleans are not numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "concurrency = true",
        "plexo_merchant_id = true",
        "metrics_port = false",
        "plexo_timeout_seconds = true",
        "lease_seconds = true",
    ],
)
def test_a_toml_boolean_is_not_a_number(tmp_path: Path, line: str) -> None:
    path = tmp_path / "b.toml"
    path.write_text(line + "\n", encoding="utf-8")
    key = line.split()[0]
    message = refused(config_path=path, environ={"BILLING_DATABASE_URL": "sqlite:///x.db"})
    assert message.startswith(f"{key} (in {path}): must be a number, not true/false")


def test_a_toml_number_is_not_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text("plexo_base_url_allow_proxy = 1\n", encoding="utf-8")
    message = refused(config_path=path, environ={})
    assert "must be true or false, not a number" in message


def test_numbers_from_the_environment_still_parse() -> None:
    cfg = load_settings(
        environ={
            "BILLING_CONCURRENCY": "8",
            "BILLING_PLEXO_MERCHANT_ID": "42",
            "BILLING_PLEXO_BASE_URL_ALLOW_PROXY": "false",
            "BILLING_DATABASE_URL": "sqlite:///x.db",
        }
    )
    assert (cfg.concurrency, cfg.plexo_merchant_id) == (8, 42)
    assert cfg.plexo_base_url_allow_proxy is False


# --- a refused config creates nothing --------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {"BILLING_CONCURRENCY": "0"},
        {"BILLING_NODE_NAME": "a b"},
        {"BILLING_PLEXO_ENVIRONMENT": "production"},
        {"BILLING_CONCURENCY": "4"},  # unknown variable
    ],
)
def test_a_refused_config_creates_no_state_directory(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    refused(environ=environ)
    assert not (tmp_path / ".state").exists()
    refused(environ=environ | {"STATE_DIRECTORY": str(tmp_path / "systemd")})
    assert list(tmp_path.iterdir()) == []


def test_an_accepted_default_config_creates_the_state_directory(tmp_path: Path) -> None:
    load_settings(environ={})
    assert (tmp_path / ".state").is_dir()
    assert (tmp_path / ".state").stat().st_mode & 0o777 == 0o700


# --- URLs without userinfo ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://billing:hunter2@db:5432/billing", f"postgresql://{MASK}@db:5432/billing"),
        ("postgresql://billing@db/billing", f"postgresql://{MASK}@db/billing"),
        ("postgresql://:p%40ss@db/billing", f"postgresql://{MASK}@db/billing"),
        ("postgresql://u:p@ss@db/billing", f"postgresql://{MASK}@db/billing"),
        ("postgresql://u:p/x@db/billing", f"postgresql://{MASK}@db/billing"),
        ("postgresql+psycopg://u:p@db/billing", f"postgresql+psycopg://{MASK}@db/billing"),
        ("postgresql://db/billing", "postgresql://db/billing"),
        (
            "postgresql://db/billing?application_name=a@b",
            "postgresql://db/billing?application_name=a@b",
        ),
        ("sqlite:////tmp/a@b/billing.sqlite3", "sqlite:////tmp/a@b/billing.sqlite3"),
        ("sqlite:////var/lib/billing.sqlite3", "sqlite:////var/lib/billing.sqlite3"),
    ],
)
def test_redact_url_drops_the_whole_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_config_show_and_errors_hide_the_database_user() -> None:
    url = "postgresql://billing_admin:hunter2@db/billing"
    cfg = load_settings(environ={"BILLING_DATABASE_URL": url})
    assert "billing_admin" not in describe_text(cfg)
    assert "billing_admin" not in str(describe(cfg))
    message = refused(
        environ={"BILLING_DATABASE_URL": "postgresql+asyncpg://billing_admin:hunter2@db/b"}
    )
    assert "billing_admin" not in message and "hunter2" not in message
    assert f"(got postgresql+asyncpg://{MASK}@db/b)" in message


def test_a_base_url_with_userinfo_is_refused_and_not_echoed() -> None:
    message = refused(
        environ={"BILLING_PLEXO_BASE_URL": "https://merchant:s3cret@api.plexo.com.uy"}
    )
    assert "must not carry user:password@" in message
    assert "merchant" not in message and "s3cret" not in message


# --- node name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a b", "", "x" * 65, "node\n2", "nodé", "a;drop", "../x/y", "a\u202eb"]
)
def test_node_name_must_be_a_safe_identifier(name: str) -> None:
    message = refused(environ={"BILLING_NODE_NAME": name, "BILLING_DATABASE_URL": "sqlite:///x"})
    assert message.startswith("BILLING_NODE_NAME: must be 1 to 64 of the characters")


@pytest.mark.parametrize("name", ["billing-1", "host.example.com-123", "A_b.c-9", "x" * 64])
def test_node_name_accepts_identifiers(name: str) -> None:
    cfg = load_settings(environ={"BILLING_NODE_NAME": name, "BILLING_DATABASE_URL": "sqlite:///x"})
    assert cfg.node_name == name


def test_the_default_node_name_is_safe_whatever_the_host_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "my host (büro)" + "x" * 80)
    name = default_node_name()
    assert name.endswith(f"-{os.getpid()}") and len(name) <= 64
    cfg = load_settings(environ={"BILLING_DATABASE_URL": "sqlite:///x"})
    assert cfg.node_name == name
