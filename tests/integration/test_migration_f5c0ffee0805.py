"""Migration f5c0ffee0805 (subscription status counts) on a store that already holds
subscriptions: the upgrade backfills the counts exactly, the triggers keep them from then on,
and the downgrade removes the table, the triggers and the indexes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from billing.store import migrate
from billing.store.db import make_engine
from billing.testing import plant_store

SCRIPT = (
    Path(__file__).resolve().parents[2]
    / "migrations"
    / "versions"
    / "20261205_f5c0ffee0805_subscription_status_counts.py"
)
AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def down_revision() -> str:
    found = re.search(r'^down_revision[^=]*= "([0-9a-f]+)"', SCRIPT.read_text(), re.M)
    assert found is not None
    return found.group(1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return found


def test_backfill_then_triggers_then_down(url: str) -> None:
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        plant_store(engine, 500, at=AT, outbox=False)  # the current schema, to fill it
        command.downgrade(migrate.alembic_config(url), down_revision())
        assert "subscription_status_count" not in inspect(engine).get_table_names()
        with engine.begin() as conn:  # written while no trigger counts
            conn.execute(text("UPDATE subscription SET status = 'unpaid' WHERE id % 7 = 0"))

        migrate.upgrade(url)

        count = "SELECT status, sum(n) FROM subscription_status_count GROUP BY status"
        truth = "SELECT status, count(*) FROM subscription GROUP BY status"
        with engine.connect() as conn:
            assert dict(conn.execute(text(count)).all()) == dict(conn.execute(text(truth)).all())
        with engine.begin() as conn:
            conn.execute(text("UPDATE subscription SET status = 'paused' WHERE id % 5 = 0"))
        with engine.connect() as conn:
            counted = {k: int(v) for k, v in conn.execute(text(count)).all() if v}
            assert counted == dict(conn.execute(text(truth)).all())
        assert migrate.schema_diff(url) == []
    finally:
        engine.dispose()
