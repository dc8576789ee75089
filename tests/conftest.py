"""Shared fixtures: database URLs (SQLite file, fresh PostgreSQL database) and a checked engine.

`db_url` / `engine` run one storage suite on both backends. PostgreSQL tests skip with the reason
when no server is reachable, but fail under CI=true (CI must not go green by skipping them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from billing.store.db import make_engine
from billing.store.migrate import upgrade

# Timing is for benchmarks, not tests: no per-example deadline on a loaded 2-core CI machine.
hypothesis_settings.register_profile("billing", deadline=None)
hypothesis_settings.load_profile("billing")

PG_ADMIN_URL_ENV = "BILLING_TEST_PG_URL"
PG_ADMIN_URL_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that asks for `pg_url` carries the `postgres` marker (-m 'not postgres')."""
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _libpq_url(url: str) -> str:
    """psycopg.connect wants postgresql://, not SQLAlchemy's postgresql+psycopg://."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A URL of the local PostgreSQL server for creating and dropping test databases."""
    url = _libpq_url(os.environ.get(PG_ADMIN_URL_ENV, PG_ADMIN_URL_DEFAULT))
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = f"PostgreSQL not reachable at {shown}: {' '.join(str(exc).split())}"
        if _in_ci():
            pytest.fail(reason + f" (CI=true: set {PG_ADMIN_URL_ENV} or start the server)")
        pytest.skip(reason)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An empty (not migrated) SQLite database file in the test's tmp dir."""
    return f"sqlite:///{tmp_path / 'billing.db'}"


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """An empty (not migrated) PostgreSQL database of its own, dropped after the test."""
    name = f"billing_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A database migrated to head, once per backend."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the migrated database; the test fails if it leaves a connection checked out."""
    eng = make_engine(db_url)
    try:
        yield eng
        pool = eng.pool
        if isinstance(pool, QueuePool):
            assert pool.checkedout() == 0, f"{pool.checkedout()} connection(s) leaked"
    finally:
        eng.dispose()
