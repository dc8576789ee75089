"""Migrations build, from nothing, exactly the schema the models declare, on both backends."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from billing.store import migrate
from billing.store.db import make_engine, normalize_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


def test_empty_database_migrates_to_head_and_equals_the_models(
    empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # migrations are found from the package, not the cwd
    assert migrate.current_revision(empty_url) is None
    assert not migrate.is_at_head(empty_url)

    migrate.upgrade(empty_url)

    assert migrate.current_revision(empty_url) == migrate.head_revision()
    assert migrate.is_at_head(empty_url)
    assert migrate.schema_diff(empty_url) == []


def test_schema_diff_reports_a_missing_index(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_invoice_claimable"))
    finally:
        engine.dispose()

    diff = migrate.schema_diff(db_url)

    assert [(op[0], op[1].name) for op in diff] == [("add_index", "ix_invoice_claimable")]


@pytest.mark.postgres
def test_schema_diff_compares_column_types(pg_url: str) -> None:
    """A timestamp without time zone is not a UTCDateTime column (compare_type is on)."""
    migrate.upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE invoice ALTER COLUMN lease_until TYPE timestamp"))
    finally:
        engine.dispose()

    diff = migrate.schema_diff(pg_url)

    assert len(diff) == 1
    assert diff[0][0][0] == "modify_type"
    assert diff[0][0][2:4] == ("invoice", "lease_until")


def test_downgrade_to_base_removes_everything_and_upgrade_again(db_url: str) -> None:
    command.downgrade(migrate.alembic_config(db_url), "base")

    assert migrate.current_revision(db_url) is None
    engine = make_engine(db_url)
    try:
        assert inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()

    migrate.upgrade(db_url)
    assert migrate.schema_diff(db_url) == []


def test_sqlite_connection_settings(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()
                for name in ("busy_timeout", "journal_mode", "synchronous", "foreign_keys")
            }
    finally:
        engine.dispose()

    assert pragmas == {
        "busy_timeout": 30000,
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
    }


def test_sqlite_transactions_take_the_write_lock_up_front(sqlite_url: str) -> None:
    """Even a transaction that has only read holds the write lock (BEGIN IMMEDIATE)."""
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT count(*) FROM invoice")).scalar_one()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
        other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/billing", "postgresql+psycopg://u:p@db:5432/billing"),
        ("postgresql://u@db/billing", "postgresql+psycopg://u@db/billing"),
        ("postgresql+psycopg://u@db/billing", "postgresql+psycopg://u@db/billing"),
        ("sqlite:////var/lib/billing/billing.db", "sqlite:////var/lib/billing/billing.db"),
    ],
)
def test_database_urls_use_psycopg_3(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


def test_sqlite_file_gets_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "billing.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert path.is_file()


@pytest.mark.postgres
def test_daemons_starting_together_migrate_once(pg_url: str) -> None:
    """Two processes upgrading at once: one migrates, the other waits and finds nothing to do."""
    code = "import sys; from billing.store.migrate import upgrade; upgrade(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, pg_url], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    failures = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures.append(stderr[-2000:])

    assert failures == []
    assert migrate.is_at_head(pg_url)
