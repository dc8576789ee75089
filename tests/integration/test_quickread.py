"""`customers list` through the driver (engine/quickread.py) shows what the ORM path shows.

Item 17 gave the listing a read path without SQLAlchemy; these tests hold it to the same
answer, the same store rules and the same one-line failures, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from billing.cli.common import GLOBALS
from billing.cli.customer_list import customer_fields, quick_customer_rows
from billing.clock import TestClock
from billing.engine.context import BillingContext
from billing.engine.customers import list_customers
from billing.engine.quickread import open_reader, postgres_conninfo, sqlite_path
from billing.errors import ConfigError
from billing.store.db import session
from billing.store.meta import TIMEZONE, record_first
from billing.store.models import Customer

ZONE = "America/Montevideo"
NOW = datetime(2026, 3, 1, 12, 0, 30, 123456, tzinfo=UTC)


@pytest.fixture
def store(db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BILLING_DATABASE_URL", db_url)
    monkeypatch.setenv("BILLING_TIMEZONE", ZONE)
    monkeypatch.setattr(GLOBALS, "config_path", None)
    with session(engine) as s:
        s.add(
            Customer(
                reference_id="cus-full",
                plexo_id="b6f1c0de-0000-4000-8000-000000000001",
                email="ana@example.com",
                first_name="Ána",
                last_name="Pérez",
                phone="+59899123456",
                document_type="CI",
                document_number="12345672",
                address={"line1": "Rambla 1", "city": "Montevideo", "country": "UY"},
                birthdate=date(1990, 2, 28),
                attributes={"plan": "gold", "ñ": "sí"},
                created_at=NOW,
                updated_at=NOW,
            )
        )
        s.add(
            Customer(reference_id="cus-bare", email="b@example.com", created_at=NOW, updated_at=NOW)
        )
        s.add(
            Customer(
                reference_id="cus-gone",
                email="c@example.com",
                status="deleted",
                created_at=NOW,
                updated_at=NOW,
                deleted_at=NOW,
            )
        )
    return db_url


def orm_views(engine: Engine, include_deleted: bool) -> list[dict[str, object]]:
    ctx = BillingContext(
        engine=engine, plexo=None, clock=TestClock(NOW), tz=ZoneInfo(ZONE), node="t", actor="t"
    )  # type: ignore[arg-type]
    return [
        customer_fields(c.model_dump())
        for c in list_customers(ctx, include_deleted=include_deleted)
    ]


@pytest.mark.parametrize("include_deleted", [False, True])
def test_the_driver_reads_what_the_orm_reads(
    store: str, engine: Engine, include_deleted: bool
) -> None:
    record_first(engine, TIMEZONE, ZONE, NOW)
    rows = quick_customer_rows(include_deleted)
    assert rows is not None  # the quick path was taken
    quick = [customer_fields(r) for r in rows]
    assert quick == orm_views(engine, include_deleted)
    assert [v["reference_id"] for v in quick][:2] == ["cus-full", "cus-bare"]
    assert quick[0]["created_at"] == NOW and quick[0]["birthdate"] == date(1990, 2, 28)


def test_a_store_without_a_recorded_zone_takes_the_normal_path(store: str) -> None:
    assert quick_customer_rows(False) is None  # the normal path records the first use


def test_another_zone_and_a_schema_behind_are_refused_like_the_normal_path(
    store: str, engine: Engine
) -> None:
    record_first(engine, TIMEZONE, "UTC", NOW)
    with (
        pytest.raises(ConfigError, match="BILLING_TIMEZONE is America/Montevideo"),
        open_reader(store, ZONE),
    ):
        pass
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ec230408422c'")
    with pytest.raises(ConfigError, match="billing db upgrade"), open_reader(store, "UTC"):
        pass


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:x?mode=ro&uri=true",
        "sqlite:///b%20c.db",
        "mysql://u@h/db",
        "postgresql+asyncpg://u@h/db",
    ],
)
def test_urls_it_does_not_take_go_the_normal_way(url: str) -> None:
    assert sqlite_path(url) is None and postgres_conninfo(url) is None


def test_plain_urls_are_taken() -> None:
    assert str(sqlite_path("sqlite:////var/lib/billing/b.db")) == "/var/lib/billing/b.db"
    assert str(sqlite_path("sqlite:///.state/b.db")) == ".state/b.db"
    assert (
        postgres_conninfo("postgresql+psycopg://u:p%40ss@h:5433/db?sslmode=require")
        == "postgresql://u:p%40ss@h:5433/db?sslmode=require"
    )
