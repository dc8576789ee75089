"""Migration f4c0ffee0804 (parked invoices) up and down on a store with an invoice: the new
columns arrive empty (nothing is parked by upgrading), leave on downgrade, and the schema
matches the models at head."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import inspect, text

from billing.store import migrate
from billing.store.db import make_engine

SCRIPT = (
    Path(__file__).resolve().parents[2]
    / "migrations"
    / "versions"
    / "20261203_f4c0ffee0804_parked_invoices.py"
)
NEW = {
    "parked_reason",
    "parked_detail",
    "parked_at",
    "released_at",
    "released_by",
    "released_amount_minor",
}


def down_revision() -> str:
    found = re.search(r'^down_revision[^=]*= "([0-9a-f]+)"', SCRIPT.read_text(), re.M)
    assert found is not None
    return found.group(1)


def test_up_and_down_on_sqlite(sqlite_url: str) -> None:
    up_and_down(sqlite_url)


def test_up_and_down_on_postgres(pg_url: str) -> None:
    up_and_down(pg_url)


def columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("invoice")}
    finally:
        engine.dispose()


def up_and_down(url: str) -> None:
    before = down_revision()
    migrate.upgrade(url, before)
    assert not NEW & columns(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO customer (reference_id, email, address, attributes, status,"
                    " created_at, updated_at) VALUES ('c1', 'c1@example.com', '{}', '{}',"
                    " 'active', '2026-03-01 12:00:00+00:00', '2026-03-01 12:00:00+00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO plan (code, name, amount_minor, currency, interval,"
                    " interval_count, trial_days, active, created_at) VALUES ('m', 'M', 59000,"
                    " 'UYU', 'month', 1, 0, true, '2026-03-01 12:00:00+00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO subscription (customer_id, plan_id, status, anchor_at,"
                    " next_period_index, cancel_at_period_end, created_at, updated_at)"
                    " VALUES (1, 1, 'active', '2026-03-01 12:00:00+00:00', 1, false,"
                    " '2026-03-01 12:00:00+00:00', '2026-03-01 12:00:00+00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO invoice (number, subscription_id, customer_id, period_index,"
                    " period_start, period_end, amount_minor, currency, status, attempt_count,"
                    " created_at, updated_at) VALUES ('INV-1', 1, 1, 0,"
                    " '2026-03-01 12:00:00+00:00', '2026-04-01 12:00:00+00:00', 59000, 'UYU',"
                    " 'open', 0, '2026-03-01 12:00:00+00:00', '2026-03-01 12:00:00+00:00')"
                )
            )
        migrate.upgrade(url)
        assert columns(url) >= NEW
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT status, parked_reason, released_amount_minor FROM invoice")
            ).one()
        assert tuple(row) == ("open", None, None)
        assert migrate.schema_diff(url) == []
        _downgrade(url, before)
        assert not NEW & columns(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT number FROM invoice")).scalar_one() == "INV-1"
        migrate.upgrade(url)
        assert columns(url) >= NEW
    finally:
        engine.dispose()


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(migrate.alembic_config(url), revision)
