"""Settings of the daemon and the CLI: environment, an optional TOML file, systemd credentials.

Precedence, highest first:

1. a ``BILLING_*`` environment variable (``BILLING_CONCURRENCY=8``);
2. the TOML file named by ``load_settings(config_path=...)`` or ``$BILLING_CONFIG``
   (flat keys, the field names: ``concurrency = 8``; see config/billing.example.toml);
3. a systemd credential, ``$CREDENTIALS_DIRECTORY/plexo_api_key`` (``LoadCredential=``);
4. the built-in default.

``load_settings`` is the entry point for the daemon and the CLI: it applies that order, refuses
unknown keys and variables (a typo must not fall back to a default silently) and turns every
validation error into one ``ConfigError`` that names the variable or key, never a secret value.
``Settings()`` on its own is plain pydantic-settings (arguments > environment > credential >
default, no file), for code that needs nothing more.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from billing.domain.retry import parse_days
from billing.errors import ConfigError

ENV_PREFIX = "BILLING_"
CONFIG_ENV = "BILLING_CONFIG"
NOT_SETTINGS = frozenset(
    {
        CONFIG_ENV,  # names the TOML file
        "BILLING_PROGRESS",  # CLI: force progress output (billing/cli/common.py)
        "BILLING_DEMO_DIR",  # `billing demo` working directory (billing/cli/demo.py)
        "BILLING_TEST_PG_URL",  # the tests' PostgreSQL server (tests/conftest.py)
    }
)
"""BILLING_* variables that other parts read; the unknown-variable check leaves them alone."""
SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_API_KEY = "sandbox-key"
CREDENTIAL_FIELDS = (
    "plexo_api_key",
    "database_url",
    "callback_token",
    "webhook_secret",
    "smtp_password",
)
"""Settings that systemd may hand over as ``$CREDENTIALS_DIRECTORY/<name>``."""
MASK = "********"

PlexoEnvironment = Literal["sandbox", "testing", "production"]
LogFormat = Literal["json", "logfmt"]
FinalActionName = Literal["cancel_now", "cancel_at_period_end", "mark_unpaid", "pause"]
Origin = Literal["default", "env", "file", "credential", "explicit"]
"""Where a value came from; "explicit" = passed to ``Settings()`` directly (env or argument)."""

# Set while load_settings builds the model from layers it has already merged, so that no
# pydantic-settings source reads os.environ behind the environ it was given.
_LAYERED: ContextVar[bool] = ContextVar("billing_settings_layered", default=False)

_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


CALLBACK_PATH = "/plexo/callbacks"
CALLBACK_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")


def parse_warn_days(text: str) -> tuple[int, ...]:
    """ "30,7" -> (30, 7), largest first; "" -> no warnings. ConfigError-shaped refusal."""
    days: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isascii() or not part.isdigit() or not 1 <= int(part) <= 365:
            raise _invalid('must be comma-separated whole days from 1 to 365, e.g. "30,7"')
        days.add(int(part))
    return tuple(sorted(days, reverse=True))


_DURATION = re.compile(r"([0-9]{1,6})([mhd])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """ "90m", "24h", "2d" -> a timedelta of 1 minute to 365 days; ConfigError-shaped refusal."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or not text.isascii():
        raise _invalid('must be a whole number and a unit m, h or d, e.g. "24h" or "90m"')
    value = timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})
    if not timedelta(minutes=1) <= value <= timedelta(days=365):
        raise _invalid("must be between 1 minute and 365 days")
    return value


def parse_ceilings(text: str) -> dict[str, object]:
    """ "UYU=5000000,USD=100000" or a JSON object -> {"UYU": 5000000, ...}; "" -> {}."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            raise _invalid('must be JSON such as {"UYU": 5000000} or UYU=5000000') from None
        if not isinstance(parsed, dict):
            raise _invalid('must be JSON such as {"UYU": 5000000} or UYU=5000000')
        return parsed
    found: dict[str, object] = {}
    for part in stripped.split(","):
        if not part.strip():
            continue
        code, sep, amount = part.partition("=")
        amount = amount.strip()
        if not sep or not amount.isascii() or not amount.isdigit():
            raise _invalid(
                "must be CURRENCY=MINOR_UNITS pairs such as UYU=5000000,USD=100000 (cents)"
            )
        found[code.strip()] = int(amount)
    return found


def env_name(field: str) -> str:
    """The environment variable of a setting: ``concurrency`` -> ``BILLING_CONCURRENCY``."""
    return ENV_PREFIX + field.upper()


def state_directory(environ: Mapping[str, str] | None = None) -> Path:
    """Where the embedded database lives: systemd's StateDirectory, else ./.state (not created)."""
    env = os.environ if environ is None else environ
    # systemd joins several StateDirectory= entries with ':'; the first one is ours.
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else Path.cwd() / ".state"


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """The SQLite file in the state directory (computed only: see ensure_state_directory)."""
    return f"sqlite:///{state_directory(environ) / 'billing.sqlite3'}"


def ensure_state_directory(environ: Mapping[str, str] | None = None) -> Path:
    """Create the state directory (0700) once the settings that use it were accepted."""
    directory = state_directory(environ)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the state directory {directory}: {exc.strerror}"
        ) from None
    return directory


NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A lease owner name: shown in tables and logs, compared in SQL; nothing else gets in."""


def default_node_name() -> str:
    """Lease owner name: unique per process, readable in the invoice table."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-") or "node"
    suffix = f"-{os.getpid()}"
    return host[: 64 - len(suffix)] + suffix


def read_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """Secrets from systemd ``LoadCredential=``: one file per setting, named like the TOML key."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return {}
    found: dict[str, str] = {}
    for name in CREDENTIAL_FIELDS:
        path = Path(directory) / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"credential {name}: cannot read {path} ({reason})") from None
        # `echo key > file` and editors leave a trailing newline that is not part of the key.
        found[name] = text.strip()
    return found


def _invalid(reason: str) -> PydanticCustomError:
    """A validation error whose message is the reason alone (load_settings adds the name)."""
    return PydanticCustomError("billing_setting", reason)


def _is_production(info: ValidationInfo) -> bool:
    return info.data.get("plexo_environment") == "production"


PLEXO_TESTING_HOST = "api.testing.plexo.com.uy"
DATABASE_SCHEMES = frozenset(
    {"sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"}
)
"""The backends and drivers this package ships with (psycopg 3; the stdlib's sqlite3)."""


def is_loopback_host(host: str) -> bool:
    """True for localhost names and loopback addresses (127/8, ::1, IPv4-mapped 127/8).

    Decided from the text alone: no DNS lookup, so a name that merely resolves to loopback
    is not caught here.
    """
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _is_plexo_testing_host(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == PLEXO_TESTING_HOST or name.endswith(".testing.plexo.com.uy")


class Settings(BaseSettings):
    """Every knob of the daemon and the CLI; config/billing.example.toml explains each one.

    Field order matters: the Plexo checks read ``plexo_environment`` and the lease check reads
    ``plexo_timeout_seconds`` from the fields validated before them.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,  # the production checks must see the sandbox defaults too
        hide_input_in_errors=True,  # str(ValidationError) could otherwise print the API key
    )

    # repr=False: a PostgreSQL URL may carry a password; describe() shows it masked.
    database_url: str = Field(default_factory=default_database_url, repr=False)
    plexo_environment: PlexoEnvironment = "sandbox"
    plexo_base_url_allow_proxy: bool = False
    """Production only: accept a loopback or Plexo-testing base URL (a proxy in front of Plexo)."""
    plexo_base_url: str | None = None
    """None means the built-in sandbox (in-process simulator), refused in production."""
    plexo_client_id: str = SANDBOX_CLIENT_ID
    plexo_api_key: SecretStr = SecretStr(SANDBOX_API_KEY)
    plexo_merchant_id: int = Field(default=1, gt=0)
    plexo_timeout_seconds: float = Field(default=30.0, gt=0)
    timezone: str = "America/Montevideo"
    concurrency: int = Field(default=4, ge=1, le=64)
    lease_seconds: int = Field(default=300, gt=0)
    tick_seconds: int = Field(default=60, gt=0)
    reconcile_seconds: int = Field(default=60, gt=0)
    reaper_seconds: int = Field(default=60, gt=0)
    resend_grace_seconds: int = Field(default=120, gt=0)
    stop_budget_seconds: int = Field(default=30, gt=0)
    catchup_max_periods: int = Field(default=12, ge=1, le=10000)
    """A subscription with more due, uninvoiced periods than this in one pass is held."""
    ceiling_per_currency: dict[str, int] = Field(default_factory=dict)
    """Safety bound: an invoice above this many minor units of its currency is parked
    ({"UYU": 5000000} is 50,000.00 UYU); a currency not named has no ceiling."""
    max_increase_factor: float = Field(default=0.0, ge=0, le=1000)
    """Safety bound: an invoice more than this times the subscription's previous approved
    charge (same currency) is parked; 0 = off."""
    max_charges_per_customer_per_day: int = Field(default=15, ge=0, le=10000)
    """Safety bound: one customer's approved and in-flight charges per merchant-zone day; the
    next one is parked; 0 = off."""
    expiry_warn_days: str = "30,7"
    """Pre-dunning: warn (event instrument.expiring) this many days before a card expires."""
    expiry_check_seconds: int = Field(default=3600, gt=0)
    callback_enabled: bool = False
    """Serve Plexo payment callbacks (hints, confirmed with a GET) on a loopback port."""
    callback_address: str = "127.0.0.1"
    callback_port: int = Field(default=9465, ge=1, le=65535)
    callback_token: SecretStr = SecretStr("")
    """The unguessable path segment of the callback URL; also a systemd credential."""
    callback_public_url: str | None = None
    """The base URL Plexo reaches the receiver at (a reverse proxy); default its own address."""
    # Retries and dunning (domain/retry.py): snapshotted into an invoice at its first failure.
    retry_soft_days: str = "1,3,5,7"
    """Soft declines retry this many days after the first failure (increasing, 1-60)."""
    retry_hour: int | None = Field(default=None, ge=0, le=23)
    """Local business hour of retries; unset: the local hour of the invoice's first attempt."""
    retry_invalid_request_minutes: int = Field(default=15, ge=1, le=1440)
    retry_invalid_request_max: int = Field(default=8, ge=1, le=100)
    dunning_final_action: FinalActionName = "mark_unpaid"
    instrument_fallback: bool = True
    pending_max_days: int = Field(default=3, ge=1, le=60)
    """A payment pending longer than this stops being polled and is flagged for a person."""
    ledger_reconcile_enabled: bool = False
    """The daemon runs `billing reconcile` (the ledger against Plexo's payments) once a day."""
    ledger_reconcile_hour: int = Field(default=6, ge=0, le=23)
    """Local hour (merchant zone) after which the daily ledger check runs."""
    ledger_reconcile_days: int = Field(default=3, ge=1, le=31)
    """How many whole business days before today the daily check covers (overlapping runs
    update the same findings, and a charge settled late is still compared)."""
    approval_required: bool = False
    """Approval gate: each pass freezes a plan; nothing is charged until `runs approve`."""
    approval_expires_after: str = "24h"
    """A plan not approved within this long expires unused (e.g. 90m, 24h, 2d)."""
    node_name: str = Field(default_factory=default_node_name)  # lease_owner column
    metrics_address: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    log_format: LogFormat = "json"
    # --- notifications (billing/notify/) ---
    notify_seconds: int = Field(default=10, gt=0)
    notify_max_attempts: int = Field(default=12, ge=1, le=100)
    """Deliveries failing this often are dead-lettered (`billing notifications redeliver`)."""
    notify_backoff_seconds: int = Field(default=30, gt=0)
    """First retry delay; doubled after each failure, capped at 6 hours."""
    webhook_urls: list[str] = Field(default_factory=list)
    webhook_secret: SecretStr = SecretStr("")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    smtp_host: str | None = None
    """None: no email to customers."""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = True
    smtp_user: str | None = None
    smtp_password: SecretStr = SecretStr("")
    email_from: str | None = None
    email_language: Literal["es", "en"] = "es"
    """Language of customer emails unless the customer's metadata says "language"."""

    _origins: dict[str, Origin] | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Direct use reads env and credentials; load_settings passes everything as arguments."""
        if _LAYERED.get():
            return (init_settings,)
        return (init_settings, env_settings, _CredentialSource(settings_cls))

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        # pydantic reads True as 1 (and 1 as True); in a config file that is always a slip.
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if annotation in (int, float) and isinstance(value, bool):
            raise _invalid("must be a number, not true/false")
        if annotation is bool and isinstance(value, int | float) and not isinstance(value, bool):
            raise _invalid("must be true or false, not a number")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        example = (
            "must be a database URL such as sqlite:////var/lib/billing/billing.sqlite3 "
            "or postgresql://user@host/billing"
        )
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError:
            raise _invalid(example) from None
        if not parts.scheme or "://" not in value:
            raise _invalid(example)
        scheme = parts.scheme.lower()
        backend, _, driver = scheme.partition("+")
        if backend not in ("sqlite", "postgresql", "postgres"):
            raise _invalid(f"unsupported database {backend!r}: use sqlite or postgresql")
        if scheme not in DATABASE_SCHEMES:
            raise _invalid(
                f"unsupported driver {driver!r} for {backend}: leave it out "
                f"({backend}://...) to use the one this package ships with"
            )
        if backend == "sqlite" and parts.path in ("", "/"):
            raise _invalid("sqlite needs a file, e.g. sqlite:////var/lib/billing/billing.sqlite3")
        return value

    @field_validator("plexo_base_url", mode="before")
    @classmethod
    def _blank_base_url_means_sandbox(cls, value: object) -> object:
        # `BILLING_PLEXO_BASE_URL=` in a unit file reads as "no URL", i.e. the built-in sandbox.
        return None if value == "" else value

    @field_validator("plexo_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if _is_production(info):
                raise _invalid(
                    "production needs the real Plexo API (https://api.plexo.com.uy); "
                    "the built-in sandbox is for sandbox and testing only"
                )
            return None
        try:
            parts = urlsplit(value)
        except ValueError:
            raise _invalid("must be an http:// or https:// URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid("must be an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise _invalid("must not carry a query or a fragment")
        if "@" in parts.netloc:
            raise _invalid(
                "must not carry user:password@ (the credentials are BILLING_PLEXO_CLIENT_ID "
                "and BILLING_PLEXO_API_KEY)"
            )
        if _is_production(info):
            if parts.scheme != "https":
                raise _invalid("production requires https")
            proxy_ok = info.data.get("plexo_base_url_allow_proxy") is True
            if not proxy_ok and is_loopback_host(parts.hostname):
                raise _invalid(
                    "is a loopback address, refused in production; set "
                    "BILLING_PLEXO_BASE_URL_ALLOW_PROXY=true if it is your proxy to Plexo"
                )
            if not proxy_ok and _is_plexo_testing_host(parts.hostname):
                raise _invalid(
                    f"is Plexo's testing host ({PLEXO_TESTING_HOST}), refused in production; "
                    "use https://api.plexo.com.uy"
                )
        return value.rstrip("/")  # the client appends /v1/...

    @field_validator("plexo_client_id")
    @classmethod
    def _check_client_id(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise _invalid("must not be empty")
        if value == SANDBOX_CLIENT_ID and _is_production(info):
            raise _invalid(
                f"is the sandbox default {SANDBOX_CLIENT_ID!r}; production needs the client id "
                "Plexo issued"
            )
        return value

    @field_validator("plexo_api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        key = value.get_secret_value()
        if not key:
            raise _invalid("must not be empty")
        if any(char.isspace() for char in key):
            raise _invalid("must not contain whitespace (a stray space or newline?)")
        if key == SANDBOX_API_KEY and _is_production(info):
            raise _invalid(
                "is the sandbox default; production needs the key Plexo issued (environment, "
                "config file or the plexo_api_key credential)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise _invalid(
                "is not a known IANA time zone such as America/Montevideo or UTC"
            ) from None
        return value

    @field_validator("lease_seconds")
    @classmethod
    def _check_lease(cls, value: int, info: ValidationInfo) -> int:
        timeout = info.data.get("plexo_timeout_seconds")
        if timeout is not None and value <= timeout:
            # Otherwise another node may reclaim an invoice while its charge is still in flight.
            raise _invalid(
                f"must be longer than BILLING_PLEXO_TIMEOUT_SECONDS ({timeout:g} s) so that "
                "no other node takes over a charge still in flight"
            )
        return value

    @field_validator("ceiling_per_currency", mode="before")
    @classmethod
    def _parse_ceilings(cls, value: object) -> object:
        # The environment gives one string: JSON ({"UYU": 5000000}) or "UYU=5000000,USD=100000".
        if not isinstance(value, str):
            return value
        return parse_ceilings(value)

    @field_validator("ceiling_per_currency")
    @classmethod
    def _check_ceilings(cls, value: dict[str, int]) -> dict[str, int]:
        from billing.domain.money import CURRENCY_DIGITS, MAX_MINOR

        checked: dict[str, int] = {}
        for code, minor in value.items():
            currency = code.strip().upper()
            if currency not in CURRENCY_DIGITS:
                known = ", ".join(sorted(CURRENCY_DIGITS))
                raise _invalid(f"unknown currency {code!r}: use {known}")
            if isinstance(minor, bool) or not 0 < minor < MAX_MINOR:
                raise _invalid(
                    f"the ceiling of {currency} must be a positive whole number of "
                    "minor units (cents), e.g. 5000000 for 50,000.00"
                )
            checked[currency] = minor
        return checked

    @field_validator("expiry_warn_days")
    @classmethod
    def _check_expiry_warn_days(cls, value: str) -> str:
        parse_warn_days(value)
        return value

    @field_validator("callback_address")
    @classmethod
    def _check_callback_address(cls, value: str) -> str:
        if not is_loopback_host(value):
            # Unsigned callbacks are hints, but the receiver still costs a GET each: keep it
            # behind a reverse proxy on this host.
            raise _invalid("must be a loopback address such as 127.0.0.1 (put a proxy in front)")
        return value

    @field_validator("callback_token")
    @classmethod
    def _check_callback_token(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        token = value.get_secret_value()
        if not token and info.data.get("callback_enabled"):
            raise _invalid("is required when BILLING_CALLBACK_ENABLED is true (the URL's secret)")
        if token and not CALLBACK_TOKEN.fullmatch(token):
            raise _invalid(
                "must be 32 to 128 of the characters A-Z a-z 0-9 _ - (e.g. from "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value

    @field_validator("callback_public_url")
    @classmethod
    def _check_callback_public_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        production = info.data.get("plexo_environment") == "production"
        if not value:
            if production and info.data.get("callback_enabled"):
                # Plexo cannot reach a loopback default, and must not carry the token in clear.
                raise _invalid("is required in production when the receiver is on (https://)")
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise _invalid("must be an http:// or https:// URL without user:password@")
        if parts.query or parts.fragment:
            raise _invalid("must not have a query or a fragment")
        if production and parts.scheme != "https":
            raise _invalid("must be https:// in production (the URL carries the secret token)")
        return value.rstrip("/")

    @field_validator("retry_soft_days")
    @classmethod
    def _check_soft_days(cls, value: str) -> str:
        try:
            parse_days(value)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        return value

    @field_validator("node_name")
    @classmethod
    def _check_node_name(cls, value: str) -> str:
        if not NODE_NAME.fullmatch(value):
            raise _invalid("must be 1 to 64 of the characters A-Z a-z 0-9 . _ -")
        return value

    @field_validator("approval_expires_after")
    @classmethod
    def _check_approval_expires_after(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("metrics_address")
    @classmethod
    def _check_metrics_address(cls, value: str) -> str:
        try:
            ip_address(value)
        except ValueError:
            if not _HOSTNAME.match(value):
                raise _invalid("must be an IP address or a host name such as 127.0.0.1") from None
        return value

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_webhook_urls(cls, value: object) -> object:
        # The environment gives one string: URLs separated by commas or spaces.
        if isinstance(value, str):
            return [part for part in re.split(r"[,\s]+", value) if part]
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _check_webhook_urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for url in value:
            try:
                parts = urlsplit(url)
            except ValueError:
                raise _invalid("each must be an http:// or https:// URL") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _invalid("each must be an http:// or https:// URL")
            if "@" in parts.netloc:
                raise _invalid("must not carry user:password@ (requests are signed instead)")
            if _is_production(info) and parts.scheme != "https":
                raise _invalid("production requires https")
            if len(url) > 500:
                raise _invalid("each must be at most 500 characters")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        secret = value.get_secret_value()
        if info.data.get("webhook_urls") and len(secret) < 16:
            raise _invalid(
                "must be at least 16 characters when BILLING_WEBHOOK_URLS is set "
                "(environment, config file or the webhook_secret credential)"
            )
        return value

    @field_validator("email_from")
    @classmethod
    def _check_email_from(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("smtp_host"):
                raise _invalid("is required when BILLING_SMTP_HOST is set")
            return None
        if "@" not in value or any(c.isspace() or not c.isprintable() for c in value):
            raise _invalid("must be an email address such as billing@example.com")
        return value

    @property
    def approval_expires_after_delta(self) -> timedelta:
        return parse_duration(self.approval_expires_after)

    @property
    def expiry_warn_days_list(self) -> tuple[int, ...]:
        return parse_warn_days(self.expiry_warn_days)

    @property
    def callback_url(self) -> str | None:
        """The callbackUrl sent with every payment, or None when the receiver is off."""
        if not self.callback_enabled:
            return None
        base = self.callback_public_url or f"http://{self.callback_address}:{self.callback_port}"
        return f"{base}{CALLBACK_PATH}/{self.callback_token.get_secret_value()}"

    @property
    def is_production(self) -> bool:
        return self.plexo_environment == "production"

    @property
    def sandbox_builtin(self) -> bool:
        """True when no base URL is set: the client talks to the in-process sandbox."""
        return self.plexo_base_url is None

    @property
    def tz(self) -> ZoneInfo:
        """The merchant's time zone, in which business dates are computed."""
        return ZoneInfo(self.timezone)

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port != 0

    @property
    def origins(self) -> dict[str, Origin]:
        """Where each value came from; load_settings tracks it, direct use knows only set/unset."""
        if self._origins is not None:
            return dict(self._origins)
        return {
            field: "explicit" if field in self.model_fields_set else "default"
            for field in type(self).model_fields
        }


class _CredentialSource(PydanticBaseSettingsSource):
    """systemd credentials for direct ``Settings()`` use (load_settings reads them itself)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns every credential at once

    def __call__(self) -> dict[str, Any]:
        return dict(read_credentials(os.environ))


FIELDS = tuple(Settings.model_fields)
SECRET_FIELDS = frozenset(
    name for name, info in Settings.model_fields.items() if info.annotation is SecretStr
)


def load_settings(
    config_path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from env > TOML file > credential > default; ConfigError on any problem.

    ``environ`` defaults to ``os.environ``; tests pass their own so the real one never leaks in.
    """
    env = os.environ if environ is None else environ
    env_values = _env_values(env)
    named = config_path if config_path is not None else env.get(CONFIG_ENV)
    path = Path(named) if named else None
    file_values = _file_values(path) if path is not None else {}

    values: dict[str, Any] = {}
    origins: dict[str, Origin] = dict.fromkeys(FIELDS, "default")
    layers: tuple[tuple[Origin, Mapping[str, object]], ...] = (
        ("credential", read_credentials(env)),
        ("file", file_values),
        ("env", env_values),
    )
    for origin, layer in layers:  # lowest precedence first: each later layer overwrites
        for field, value in layer.items():
            values[field] = value
            origins[field] = origin
    if "database_url" not in values:  # from `env`, not from the os.environ a factory would read
        values["database_url"] = default_database_url(env)

    token = _LAYERED.set(True)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        # from None: the chained ValidationError would carry the raw (maybe secret) inputs.
        raise ConfigError(_explain(exc, origins, path, env)) from None
    finally:
        _LAYERED.reset(token)
    if origins["database_url"] == "default":  # only now: a refused config creates nothing
        ensure_state_directory(env)
    settings._origins = origins
    return settings


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    """BILLING_* variables by field name (case-insensitive, like pydantic-settings)."""
    values: dict[str, str] = {}
    unknown: list[str] = []
    for key, raw in environ.items():
        name = key.upper()
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        field = name.removeprefix(ENV_PREFIX).lower()
        if field in Settings.model_fields:
            values[field] = raw
        else:
            close = difflib.get_close_matches(field, FIELDS, n=1)
            hint = f"; did you mean {env_name(close[0])}?" if close else ""
            unknown.append(f"{name}: unknown setting{hint}")
    if unknown:
        raise ConfigError("\n".join(sorted(unknown)))
    return values


def _file_values(path: Path) -> dict[str, object]:
    """The TOML file's keys, refusing unknown ones; a file that was named must exist."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition
        raise ConfigError(
            f"config file {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    problems: list[str] = []
    for key, value in data.items():
        if key in Settings.model_fields:
            continue
        if key == "billing" and isinstance(value, dict):
            problems.append(
                f"billing (in {path}): put the keys at the top level of the file, "
                "not under a [billing] table"
            )
        else:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{key}: unknown key in {path}{hint}")
    if problems:
        raise ConfigError("\n".join(problems))
    return data


def _explain(
    exc: ValidationError,
    origins: Mapping[str, Origin],
    path: Path | None,
    environ: Mapping[str, str],
) -> str:
    """One line per bad value: who set it (variable, key or credential), why, and what it was."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        origin = origins.get(field, "default")
        if origin == "file":
            label = f"{field} (in {path})"
        elif origin == "credential":
            label = f"credential {field} ({Path(environ['CREDENTIALS_DIRECTORY']) / field})"
        else:
            label = env_name(field) if field else "settings"
        line = f"{label}: {_reason(error, field)}"
        if field not in SECRET_FIELDS and error.get("input") is not None:
            line += f" (got {_shown(field, error['input'])})"
        lines.append(line)
    return "\n".join(lines)


def _reason(error: Any, field: str) -> str:
    kind = error["type"]
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return "must be a number"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        low, high = _bounds(Settings.model_fields[field])
        if low is not None and high is not None:
            return f"must be between {low} and {high}"
    message = re.sub(r"^(Input|String) should", "must", str(error["msg"]))
    if kind == "literal_error" and isinstance(error["input"], str):
        given = error["input"].strip().lower()
        choices = [str(c) for c in get_args(Settings.model_fields[field].annotation)]
        close = [c for c in choices if given and c.startswith(given)]
        close = close or difflib.get_close_matches(given, choices, n=1)
        message += f"; did you mean {close[0]!r}?" if close else ""
    return message


def _bounds(info: FieldInfo) -> tuple[object | None, object | None]:
    """Inclusive bounds of a field (``ge``/``le``), to say "between 1 and 64" in one go."""
    low = high = None
    for item in info.metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


def _shown(field: str, value: object) -> str:
    if field in URL_FIELDS and isinstance(value, str):
        value = redact_url(value)
    text = value if isinstance(value, str) and value and value == value.strip() else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


URL_FIELDS = frozenset({"database_url", "plexo_base_url", "webhook_urls"})


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^:/@]*(?::.*)?@")
"""``user[:password]@`` as SQLAlchemy reads it: the password may hold ``/`` (urlsplit would
then see no userinfo at all), so everything up to the last ``@`` counts as userinfo."""


def redact_url(url: str) -> str:
    """The URL with its whole userinfo (user and password) replaced by the mask, for display
    and messages: a user name is half a credential, and some put a token there."""
    match = _USERINFO.match(url)
    if match:
        return f"{match['scheme']}{MASK}@{url[match.end() :]}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL hidden)"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


class SettingView(TypedDict):
    """One line of ``billing config show``."""

    env: str
    value: str | int | float | None
    source: Origin


def describe(settings: Settings) -> dict[str, object]:
    """Every setting by TOML key: env name, display value (secrets masked) and origin."""
    return dict(_views(settings))


def describe_text(settings: Settings) -> str:
    """``BILLING_X = value  (source)`` lines, aligned, for humans."""
    rows = [
        (view["env"], _text(field, view["value"]), view["source"])
        for field, view in _views(settings).items()
    ]
    env_width = max(len(env) for env, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    return "\n".join(
        f"{env:<{env_width}} = {value:<{value_width}}  ({source})" for env, value, source in rows
    )


def _views(settings: Settings) -> dict[str, SettingView]:
    origins = settings.origins
    return {
        field: {
            "env": env_name(field),
            "value": _display(settings, field),
            "source": origins[field],
        }
        for field in FIELDS
    }


def _display(settings: Settings, field: str) -> str | int | float | None:
    value = getattr(settings, field)
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else "(unset)"
    if field in URL_FIELDS and isinstance(value, str):
        return redact_url(value)
    if isinstance(value, list):
        return ", ".join(redact_url(str(item)) for item in value)
    if isinstance(value, dict):  # ceiling_per_currency, in the form the environment takes
        return ",".join(f"{key}={item}" for key, item in sorted(value.items())) or None
    plain: str | int | float | None = value  # every other setting is one of these
    return plain


def _text(field: str, value: str | int | float | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as the file and the environment spell it
    if value is None:
        return "(built-in sandbox)" if field == "plexo_base_url" else "(none)"
    return str(value)
