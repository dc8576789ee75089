"""Safety bounds as pure rules (domain/bounds.py) and their settings."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing.domain.bounds import SafetyBounds, amount_breach, count_breach, local_day
from billing.errors import ConfigError
from billing.settings import describe, load_settings
from billing.wiring import safety_bounds

MVD = ZoneInfo("America/Montevideo")


def test_ceiling_is_per_currency_and_inclusive() -> None:
    bounds = SafetyBounds(ceilings={"UYU": 50000})
    assert amount_breach(bounds, 50000, "UYU", None) is None
    breach = amount_breach(bounds, 50001, "UYU", None)
    assert breach is not None and breach.reason == "ceiling"
    assert breach.detail == "500.01 UYU is above the ceiling of 500.00 UYU"
    assert amount_breach(bounds, 10**9, "USD", None) is None, "no ceiling named for USD"


def test_factor_compares_the_same_currency_only() -> None:
    bounds = SafetyBounds(max_increase_factor=Decimal("3"))
    assert amount_breach(bounds, 3000, "UYU", (1000, "UYU")) is None
    breach = amount_breach(bounds, 3001, "UYU", (1000, "UYU"))
    assert breach is not None and breach.reason == "factor"
    assert amount_breach(bounds, 3001, "UYU", (1000, "USD")) is None
    assert amount_breach(bounds, 3001, "UYU", None) is None, "a first charge has nothing to compare"
    assert amount_breach(SafetyBounds(), 10**9, "UYU", (1, "UYU")) is None, "off by default"


def test_daily_count_parks_the_charge_after_n() -> None:
    bounds = SafetyBounds(max_charges_per_day=3)
    assert count_breach(bounds, 2) is None
    breach = count_breach(bounds, 3)
    assert breach is not None and breach.reason == "daily_count"
    assert count_breach(SafetyBounds(max_charges_per_day=None), 10**6) is None


def test_the_day_is_the_merchant_zone_day() -> None:
    start, end = local_day(datetime(2026, 3, 2, 2, 30, tzinfo=UTC), MVD)  # Mar 1, 23:30 local
    assert start == datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    assert end == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def test_settings_parse_and_validate_the_bounds() -> None:
    env = {
        "BILLING_CEILING_PER_CURRENCY": "uyu=5000000, USD=100000",
        "BILLING_MAX_INCREASE_FACTOR": "3.5",
        "BILLING_MAX_CHARGES_PER_CUSTOMER_PER_DAY": "0",
        "BILLING_DATABASE_URL": "sqlite:////tmp/unused-bounds.db",
    }
    cfg = load_settings(environ=env)
    assert cfg.ceiling_per_currency == {"UYU": 5000000, "USD": 100000}
    bounds = safety_bounds(cfg)
    assert bounds.max_increase_factor == Decimal("3.5") and bounds.max_charges_per_day is None
    assert describe(cfg)["ceiling_per_currency"]["value"] == "USD=100000,UYU=5000000"
    json_env = {**env, "BILLING_CEILING_PER_CURRENCY": '{"USD": 100}'}
    assert load_settings(environ=json_env).ceiling_per_currency == {"USD": 100}
    default = load_settings(environ={"BILLING_DATABASE_URL": env["BILLING_DATABASE_URL"]})
    assert safety_bounds(default) == SafetyBounds()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("EUR=100", "unknown currency 'EUR'"),
        ("UYU=0", "must be a positive whole number"),
        ("UYU=12.5", "CURRENCY=MINOR_UNITS"),
        ("{bad json", "must be JSON"),
        ('{"UYU": -1}', "must be a positive whole number"),
    ],
)
def test_bad_ceilings_are_one_named_refusal(value: str, message: str) -> None:
    env = {
        "BILLING_CEILING_PER_CURRENCY": value,
        "BILLING_DATABASE_URL": "sqlite:////tmp/unused-bounds.db",
    }
    with pytest.raises(ConfigError, match="BILLING_CEILING_PER_CURRENCY") as refused:
        load_settings(environ=env)
    assert message in str(refused.value) and "\n" not in str(refused.value)
