"""Migration f7c0ffee0807 on a store with history: existing events get the subscription and
customer they are about (from the entity tables, else their data), the append-only triggers
hold again afterwards, and the downgrade removes the columns and keeps the triggers."""

from __future__ import annotations

import re

import pytest
from alembic import command
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from billing.store import migrate
from billing.store.db import make_engine

REVISION = "f7c0ffee0807"
T = "'2026-03-01 12:00:00+00:00'"


def _down_revision() -> str:
    """The revision before ours, read from the script (the lead re-chains them at merge)."""
    (path,) = (migrate.migrations_dir() / "versions").glob(f"*_{REVISION}_*.py")
    found = re.search(r"^down_revision: .*= ['\"]([0-9a-f]+)['\"]", path.read_text(), re.M)
    assert found is not None
    return found.group(1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return value


def _seed(engine: Engine) -> None:
    statements = [
        "INSERT INTO customer (id, reference_id, email, address, attributes, status, created_at,"
        f" updated_at) VALUES (7, 'cus-7', 'a@example.com', '{{}}', '{{}}', 'active', {T}, {T})",
        "INSERT INTO plan (id, code, name, amount_minor, currency, interval, interval_count,"
        f" trial_days, active, created_at) VALUES (1, 'basic', 'Basic', 59000, 'UYU', 'month',"
        f" 1, 0, true, {T})",
        "INSERT INTO subscription (id, customer_id, plan_id, status, anchor_at,"
        " next_period_index, cancel_at_period_end, created_at, updated_at)"
        f" VALUES (9, 7, 1, 'active', {T}, 1, false, {T}, {T})",
        "INSERT INTO invoice (id, number, subscription_id, customer_id, period_index,"
        " period_start, period_end, amount_minor, currency, status, attempt_count, created_at,"
        f" updated_at) VALUES (12, 'INV-1', 9, 7, 0, {T}, {T}, 59000, 'UYU', 'paid', 1, {T}, {T})",
        "INSERT INTO payment_instrument (id, customer_id, token, status, is_default, created_at,"
        f" updated_at) VALUES (3, 7, 'tok', 'active', true, {T}, {T})",
    ]
    events = [
        (1, "invoice", 12, "invoice.paid", "{}"),
        (2, "subscription", 9, "subscription.created", "{}"),
        (3, "customer", 7, "customer.created", "{}"),
        (4, "instrument", 3, "instrument.expiring", '{"subscription_id": 9}'),
        (5, "plan", 1, "plan.created", "{}"),
        (6, "invoice", 999, "invoice.voided", '{"customer_id": 7}'),  # its row is gone
    ]
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
        for id_, kind, entity, name, data in events:
            conn.execute(
                text(
                    "INSERT INTO event (id, at, entity_type, entity_id, event, actor, data)"
                    f" VALUES ({id_}, {T}, '{kind}', {entity}, '{name}', 'ana', '{data}')"
                )
            )


def test_backfill_and_downgrade(url: str) -> None:
    migrate.upgrade(url, _down_revision())
    engine = make_engine(url)
    try:
        _seed(engine)
        migrate.upgrade(url, REVISION)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, subscription_id, customer_id FROM event ORDER BY id")
            ).all()
        assert [tuple(r) for r in rows] == [
            (1, 9, 7),  # invoice -> its subscription and customer
            (2, 9, 7),  # subscription -> itself and its customer
            (3, None, 7),
            (4, 9, 7),  # instrument -> its customer; the subscription from the data
            (5, None, None),
            (6, None, 7),  # the row is gone: the data's customer_id
        ]
        _assert_append_only(engine)

        command.downgrade(migrate.alembic_config(url), _down_revision())
        with engine.connect() as conn:
            columns = conn.execute(text("SELECT * FROM event")).keys()
        assert "customer_id" not in columns and "subscription_id" not in columns
        _assert_append_only(engine)
        migrate.upgrade(url)
        assert migrate.schema_diff(url) == []
    finally:
        engine.dispose()


def _assert_append_only(engine: Engine) -> None:
    for statement in ("UPDATE event SET actor = 'mallory'", "DELETE FROM event"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
