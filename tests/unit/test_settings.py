"""Settings: layering (env > file > credential > default), validation messages, masking."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr, ValidationError

from billing.errors import ConfigError
from billing.settings import (
    FIELDS,
    MASK,
    Settings,
    describe,
    describe_text,
    load_settings,
    state_directory,
)

SECRET = "sk_test_SECRET123"
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "billing.example.toml"
PRODUCTION_OK = {
    "BILLING_PLEXO_ENVIRONMENT": "production",
    "BILLING_PLEXO_BASE_URL": "https://api.plexo.com.uy",
    "BILLING_PLEXO_CLIENT_ID": "4711",
    "BILLING_PLEXO_API_KEY": SECRET,
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so the ./.state default never touches the checkout."""
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)  # type: ignore[arg-type]
    # A chained ValidationError would print raw inputs (maybe the API key) in a traceback.
    error = caught.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return str(caught.value)


# --- defaults and state directory ----------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    assert settings.database_url == f"sqlite:///{tmp_path}/.state/billing.sqlite3"
    assert (tmp_path / ".state").is_dir()  # created when the default is used
    assert settings.plexo_base_url is None
    assert settings.sandbox_builtin
    assert not settings.is_production
    assert settings.plexo_client_id == "sandbox-client"
    assert settings.plexo_api_key.get_secret_value() == "sandbox-key"
    assert settings.plexo_merchant_id == 1
    assert settings.plexo_environment == "sandbox"
    assert settings.tz == ZoneInfo("America/Montevideo")
    assert settings.concurrency == 4
    assert settings.plexo_timeout_seconds == 30
    assert (settings.lease_seconds, settings.tick_seconds) == (300, 60)
    assert (settings.reconcile_seconds, settings.reaper_seconds) == (60, 60)
    assert settings.resend_grace_seconds == 120
    assert settings.stop_budget_seconds == 30
    assert settings.node_name == f"{socket.gethostname()}-{os.getpid()}"
    assert (settings.metrics_address, settings.metrics_port) == ("127.0.0.1", 9464)
    assert settings.metrics_enabled
    assert settings.log_format == "json"
    assert set(settings.origins.values()) == {"default"}


def test_state_directory_is_computed_without_creating_it(tmp_path: Path) -> None:
    assert state_directory({}) == tmp_path / ".state"
    assert not (tmp_path / ".state").exists()


def test_state_directory_from_systemd(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    settings = load_settings(environ={"STATE_DIRECTORY": f"{first}:{second}"})
    assert settings.database_url == f"sqlite:///{first}/billing.sqlite3"
    assert first.is_dir()
    assert not second.exists()


def test_explicit_database_url_creates_no_state_directory(tmp_path: Path) -> None:
    settings = load_settings(environ={"BILLING_DATABASE_URL": "postgresql+psycopg://db/billing"})
    assert settings.database_url == "postgresql+psycopg://db/billing"
    assert not (tmp_path / ".state").exists()


# --- environment and file ------------------------------------------------------------------


def test_environment_overrides() -> None:
    settings = load_settings(
        environ={
            "BILLING_CONCURRENCY": "8",
            "BILLING_PLEXO_BASE_URL": "http://127.0.0.1:8080/",
            "BILLING_PLEXO_MERCHANT_ID": "12345",
            "BILLING_PLEXO_ENVIRONMENT": "testing",
            "BILLING_TIMEZONE": "UTC",
            "BILLING_PLEXO_TIMEOUT_SECONDS": "12.5",
            "BILLING_METRICS_PORT": "0",
            "BILLING_LOG_FORMAT": "logfmt",
            "BILLING_NODE_NAME": "node-a",
            "PATH": "/usr/bin",  # not ours: ignored
        }
    )
    assert settings.concurrency == 8
    assert settings.plexo_base_url == "http://127.0.0.1:8080"
    assert not settings.sandbox_builtin
    assert settings.plexo_merchant_id == 12345
    assert settings.plexo_environment == "testing"
    assert settings.tz == ZoneInfo("UTC")
    assert settings.plexo_timeout_seconds == 12.5
    assert not settings.metrics_enabled
    assert settings.log_format == "logfmt"
    assert settings.node_name == "node-a"
    assert settings.origins["concurrency"] == "env"
    assert settings.origins["reaper_seconds"] == "default"


def test_empty_base_url_means_builtin_sandbox() -> None:
    assert load_settings(environ={"BILLING_PLEXO_BASE_URL": ""}).sandbox_builtin


def test_load_settings_ignores_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_CONCURRENCY", "9")
    monkeypatch.setenv("BILLING_TYPO", "1")
    assert load_settings(environ={}).concurrency == 4


def test_load_settings_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.upper().startswith("BILLING_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("BILLING_CONCURRENCY", "9")
    assert load_settings().concurrency == 9


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "billing.toml",
        'database_url = "sqlite:////srv/b.sqlite3"\n'
        'plexo_api_key = "from-file"\n'
        'timezone = "UTC"\n'
        "concurrency = 2\n"
        "plexo_timeout_seconds = 5\n",
    )
    settings = load_settings(path, environ={})
    assert settings.database_url == "sqlite:////srv/b.sqlite3"
    assert settings.plexo_api_key.get_secret_value() == "from-file"
    assert settings.timezone == "UTC"
    assert settings.concurrency == 2
    assert settings.plexo_timeout_seconds == 5.0
    assert settings.origins["concurrency"] == "file"


def test_toml_file_named_by_billing_config(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "concurrency = 3\n")
    assert load_settings(environ={"BILLING_CONFIG": str(path)}).concurrency == 3


def test_config_argument_wins_over_billing_config(tmp_path: Path) -> None:
    chosen = write(tmp_path / "chosen.toml", "concurrency = 5\n")
    other = write(tmp_path / "other.toml", "concurrency = 6\n")
    assert load_settings(chosen, environ={"BILLING_CONFIG": str(other)}).concurrency == 5


def test_missing_named_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert f"config file {missing} does not exist" in config_error(config_path=missing, environ={})
    message = config_error(environ={"BILLING_CONFIG": str(missing)})
    assert str(missing) in message


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "concurrency = \n")
    assert "not valid TOML" in config_error(config_path=path, environ={})


# --- precedence ----------------------------------------------------------------------------


def credentials(tmp_path: Path, key: str = "from-credential\n") -> dict[str, str]:
    directory = tmp_path / "creds"
    directory.mkdir()
    write(directory / "plexo_api_key", key)
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def test_credential_file_wins_over_default(tmp_path: Path) -> None:
    settings = load_settings(environ=credentials(tmp_path))
    assert settings.plexo_api_key.get_secret_value() == "from-credential"  # newline stripped
    assert settings.origins["plexo_api_key"] == "credential"


def test_credentials_directory_without_the_file_keeps_default(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    settings = load_settings(environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")})
    assert settings.plexo_api_key.get_secret_value() == "sandbox-key"


def test_empty_credential_file_is_an_error(tmp_path: Path) -> None:
    message = config_error(environ=credentials(tmp_path, key="\n"))
    assert message.startswith("credential plexo_api_key (")
    assert "must not be empty" in message


def test_precedence_env_over_file_over_credential_over_default(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", 'plexo_api_key = "from-file"\nconcurrency = 2\n')
    env = credentials(tmp_path) | {"BILLING_PLEXO_API_KEY": "from-env"}

    settings = load_settings(path, environ=env)
    assert settings.plexo_api_key.get_secret_value() == "from-env"
    assert settings.concurrency == 2
    assert settings.origins["plexo_api_key"] == "env"
    assert settings.origins["concurrency"] == "file"
    assert settings.origins["tick_seconds"] == "default"

    without_env = {k: v for k, v in env.items() if k != "BILLING_PLEXO_API_KEY"}
    settings = load_settings(path, environ=without_env)
    assert settings.plexo_api_key.get_secret_value() == "from-file"
    assert load_settings(environ=without_env).plexo_api_key.get_secret_value() == (
        "from-credential"
    )


# --- unknown keys --------------------------------------------------------------------------


def test_unknown_env_var_is_refused_with_suggestion() -> None:
    message = config_error(environ={"BILLING_CONCURENCY": "3"})
    assert message == "BILLING_CONCURENCY: unknown setting; did you mean BILLING_CONCURRENCY?"


def test_unknown_env_var_without_close_match() -> None:
    message = config_error(environ={"BILLING_XYZZY": "1"})
    assert message == "BILLING_XYZZY: unknown setting"


def test_billing_config_is_not_an_unknown_setting(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "")
    assert load_settings(environ={"BILLING_CONFIG": str(path)}).concurrency == 4


def test_variables_other_parts_read_are_not_unknown_settings() -> None:
    env = {"BILLING_TEST_PG_URL": "postgresql://pg/x", "BILLING_PROGRESS": "1"}
    assert load_settings(environ=env).concurrency == 4


def test_unknown_toml_key_is_refused_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "timezon = 'UTC'\n")
    message = config_error(config_path=path, environ={})
    assert message == f"timezon: unknown key in {path}; did you mean timezone?"


def test_billing_table_gets_a_layout_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "[billing]\nconcurrency = 2\n")
    assert "top level" in config_error(config_path=path, environ={})


# --- bad values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BILLING_CONCURRENCY": "0"}, "BILLING_CONCURRENCY: must be between 1 and 64 (got 0)"),
        ({"BILLING_CONCURRENCY": "65"}, "BILLING_CONCURRENCY: must be between 1 and 64 (got 65)"),
        (
            {"BILLING_TIMEZONE": "Mars/Olympus"},
            "BILLING_TIMEZONE: is not a known IANA time zone such as America/Montevideo or UTC "
            "(got Mars/Olympus)",
        ),
        (
            {"BILLING_PLEXO_ENVIRONMENT": "prod"},
            "BILLING_PLEXO_ENVIRONMENT: must be 'sandbox', 'testing' or 'production'; "
            "did you mean 'production'? (got prod)",
        ),
        (
            {"BILLING_PLEXO_MERCHANT_ID": "abc"},
            "BILLING_PLEXO_MERCHANT_ID: must be a whole number (got abc)",
        ),
        (
            {"BILLING_PLEXO_MERCHANT_ID": "0"},
            "BILLING_PLEXO_MERCHANT_ID: must be greater than 0 (got 0)",
        ),
        (
            {"BILLING_PLEXO_TIMEOUT_SECONDS": "soon"},
            "BILLING_PLEXO_TIMEOUT_SECONDS: must be a number (got soon)",
        ),
        (
            {"BILLING_PLEXO_BASE_URL": "ftp://example.com"},
            "BILLING_PLEXO_BASE_URL: must be an http:// or https:// URL (got ftp://example.com)",
        ),
        (
            {"BILLING_METRICS_PORT": "70000"},
            "BILLING_METRICS_PORT: must be between 0 and 65535 (got 70000)",
        ),
        (
            {"BILLING_LOG_FORMAT": "text"},
            "BILLING_LOG_FORMAT: must be 'json' or 'logfmt' (got text)",
        ),
        (
            {"BILLING_METRICS_ADDRESS": "not a host"},
            "BILLING_METRICS_ADDRESS: must be an IP address or a host name such as 127.0.0.1 "
            "(got not a host)",
        ),
        (
            {"BILLING_DATABASE_URL": "billing.sqlite3"},
            "BILLING_DATABASE_URL: must be a database URL",
        ),
        ({"BILLING_CONCURRENCY": ""}, "BILLING_CONCURRENCY: must be a whole number (got '')"),
    ],
)
def test_bad_values_name_the_variable_and_reason(env: dict[str, str], expected: str) -> None:
    assert config_error(environ=env).startswith(expected)


def test_lease_must_outlive_a_gateway_call() -> None:
    message = config_error(
        environ={"BILLING_LEASE_SECONDS": "20", "BILLING_PLEXO_TIMEOUT_SECONDS": "30"}
    )
    assert message.startswith("BILLING_LEASE_SECONDS: must be longer than")
    assert "(got 20)" in message


def test_every_bad_value_is_reported_at_once() -> None:
    message = config_error(environ={"BILLING_CONCURRENCY": "0", "BILLING_TIMEZONE": "Nowhere"})
    assert message.count("\n") == 1
    assert "BILLING_CONCURRENCY" in message
    assert "BILLING_TIMEZONE" in message


def test_bad_value_in_file_names_the_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "concurrency = 0\n")
    message = config_error(config_path=path, environ={})
    assert message == f"concurrency (in {path}): must be between 1 and 64 (got 0)"


def test_database_password_is_masked_in_errors_and_description() -> None:
    url = "postgresql+psycopg://billing:hunter2@db/billing"
    settings = load_settings(environ={"BILLING_DATABASE_URL": url})
    assert settings.database_url == url
    assert "hunter2" not in describe_text(settings)
    assert "billing:" not in describe_text(settings)  # the user name is hidden too
    assert "hunter2" not in repr(settings)
    assert describe(settings)["database_url"] == {
        "env": "BILLING_DATABASE_URL",
        "value": f"postgresql+psycopg://{MASK}@db/billing",
        "source": "env",
    }


# --- production ----------------------------------------------------------------------------


def test_production_with_real_credentials_is_accepted() -> None:
    settings = load_settings(environ=PRODUCTION_OK)
    assert settings.is_production
    assert settings.plexo_base_url == "https://api.plexo.com.uy"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"BILLING_PLEXO_BASE_URL": None}, "BILLING_PLEXO_BASE_URL: production needs the real"),
        ({"BILLING_PLEXO_BASE_URL": "http://api.plexo.com.uy"}, "production requires https"),
        ({"BILLING_PLEXO_API_KEY": "sandbox-key"}, "BILLING_PLEXO_API_KEY: is the sandbox"),
        ({"BILLING_PLEXO_CLIENT_ID": None}, "BILLING_PLEXO_CLIENT_ID: is the sandbox"),
    ],
)
def test_production_refuses_sandbox_settings(
    override: dict[str, str | None], expected: str
) -> None:
    """None in the override removes the variable, so the default applies."""
    merged = PRODUCTION_OK | override
    message = config_error(environ={k: v for k, v in merged.items() if v is not None})
    assert expected in message
    assert "\n" not in message  # only the refused setting is reported


def test_production_refuses_all_sandbox_defaults_at_once() -> None:
    message = config_error(environ={"BILLING_PLEXO_ENVIRONMENT": "production"})
    lines = message.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "BILLING_PLEXO_BASE_URL",
        "BILLING_PLEXO_CLIENT_ID",
        "BILLING_PLEXO_API_KEY",
    ]


def test_sandbox_may_use_plain_http() -> None:
    settings = load_settings(environ={"BILLING_PLEXO_BASE_URL": "http://localhost:9000"})
    assert settings.plexo_base_url == "http://localhost:9000"


# --- secrets never shown -------------------------------------------------------------------


def test_describe_masks_the_api_key_and_reports_sources(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "concurrency = 2\n")
    settings = load_settings(path, environ={"BILLING_PLEXO_API_KEY": SECRET})
    described = describe(settings)
    assert list(described) == list(FIELDS)
    assert described["plexo_api_key"] == {
        "env": "BILLING_PLEXO_API_KEY",
        "value": MASK,
        "source": "env",
    }
    assert described["concurrency"] == {"env": "BILLING_CONCURRENCY", "value": 2, "source": "file"}
    assert described["plexo_base_url"] == {
        "env": "BILLING_PLEXO_BASE_URL",
        "value": None,
        "source": "default",
    }
    assert SECRET not in str(described)
    assert SECRET not in repr(settings)


def test_describe_text_is_aligned_and_masked() -> None:
    settings = load_settings(environ={"BILLING_PLEXO_API_KEY": SECRET})
    text = describe_text(settings)
    assert SECRET not in text
    lines = text.splitlines()
    assert len(lines) == len(FIELDS)
    assert len({line.index(" = ") for line in lines}) == 1
    assert len({line.rindex("  (") for line in lines}) == 1
    assert re.fullmatch(
        r"BILLING_PLEXO_API_KEY +=  ?\*{8} +\(env\)", lines[FIELDS.index("plexo_api_key")]
    )
    assert "BILLING_PLEXO_BASE_URL" in text and "(built-in sandbox)" in text


def test_errors_never_echo_the_api_key(tmp_path: Path) -> None:
    env = {"BILLING_PLEXO_API_KEY": SECRET + " ", "BILLING_CONCURRENCY": SECRET}
    message = config_error(environ=env)
    assert "BILLING_PLEXO_API_KEY: must not contain whitespace" in message
    assert message.count(SECRET) == 1  # only the concurrency value, which is not a secret field

    path = write(tmp_path / "b.toml", f'plexo_api_key = "{SECRET}\\n"\n')
    message = config_error(config_path=path, environ={})
    assert message.startswith(f"plexo_api_key (in {path}): must not contain whitespace")
    assert SECRET not in message


def test_direct_validation_error_hides_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_PLEXO_API_KEY", SECRET + "\n")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert SECRET not in str(caught.value)


# --- direct Settings() (plain pydantic-settings) -------------------------------------------


def test_direct_settings_reads_environment_and_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.upper().startswith("BILLING_")]:
        monkeypatch.delenv(key)
    for key, value in credentials(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BILLING_CONCURRENCY", "7")
    settings = Settings()
    assert settings.concurrency == 7
    assert settings.plexo_api_key.get_secret_value() == "from-credential"
    assert settings.origins["concurrency"] == "explicit"
    assert settings.origins["tick_seconds"] == "default"
    assert Settings(concurrency=2, plexo_api_key=SecretStr("k")).concurrency == 2


# --- the example file ----------------------------------------------------------------------


def test_example_file_documents_every_key_and_loads(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assignment = re.compile(r"^# ([a-z_]+) = (.+)$")
    lines = text.splitlines()
    keys = []
    for number, line in enumerate(lines):
        if match := assignment.match(line):
            keys.append(match.group(1))
            comments = []  # the comment block right above this key must say something
            for above in reversed(lines[:number]):
                if not above.startswith("#"):
                    break
                comments.append(above)
            assert any(not assignment.match(c) and len(c) > 10 for c in comments), line
    assert sorted(keys) == sorted(FIELDS)

    # As shipped (all commented out) it changes nothing; uncommented, every example is valid.
    assert load_settings(EXAMPLE, environ={}).origins == dict.fromkeys(FIELDS, "default")
    active = "\n".join(m.group(0)[2:] for line in lines if (m := assignment.match(line)))
    settings = load_settings(write(tmp_path / "active.toml", active + "\n"), environ={})
    assert set(settings.origins.values()) == {"file"}


def test_database_url_credential_for_a_password_that_must_not_sit_in_a_file(
    tmp_path: Path,
) -> None:
    """billing@.service hands the PostgreSQL URL over as a systemd credential."""
    environ = credentials(tmp_path)
    url = "postgresql://billing:s3cret@db.internal/billing"
    write(Path(environ["CREDENTIALS_DIRECTORY"]) / "database_url", url + "\n")
    settings = load_settings(environ=environ)
    assert settings.database_url == url
    assert settings.origins["database_url"] == "credential"
    assert "s3cret" not in describe_text(settings)
