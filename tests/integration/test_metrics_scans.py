"""No metrics scrape scans a big table (PostgreSQL, EXPLAIN): the statements the two cached
collectors' queries really send are captured and explained in the same transaction settings,
on a store of 30,000 subscriptions with an invoice and an attempt each, with fresh statistics
and with statistics that describe another day (taken while every invoice was open and due,
every attempt unresolved, every delivery pending; autovacuum off so they stay stale)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from billing.daemon.service import store_samples
from billing.notify.deliver import outbox_samples
from billing.store.db import make_engine
from billing.store.migrate import upgrade
from billing.testing import plant_store
from tests.integration.conftest import START

pytestmark = pytest.mark.postgres

BIG = ("subscription", "invoice", "charge_attempt", "outbox_delivery", "outbox_event")
SUBSCRIPTIONS = 30_000


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        yield engine
    finally:
        engine.dispose()


def scrape_statements(engine: Engine) -> list[tuple[str, Any]]:
    """Every statement one scrape of both collectors sends, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        store_samples(engine, START)
        outbox_samples(engine, START)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent


def scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield plan["Node Type"], plan.get("Relation Name", "")
    for child in plan.get("Plans", []):
        yield from scans(child)


def explained(engine: Engine) -> dict[str, set[tuple[str, str]]]:
    """{SELECT statement: its (node type, relation) pairs}, each explained in one transaction
    with the settings statements (SET LOCAL) the scrape sent before it."""
    plans: dict[str, set[tuple[str, str]]] = {}
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in scrape_statements(engine):
            if not statement.lstrip().upper().startswith("SELECT"):
                cursor.execute(statement, parameters)
                continue
            cursor.execute(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
            (document,) = cursor.fetchone()
            found = json.loads(document) if isinstance(document, str) else document
            plans[statement] = set(scans(found[0]["Plan"]))
        raw.rollback()
    finally:
        raw.close()
    return plans


def assert_no_big_seq_scan(engine: Engine) -> None:
    plans = explained(engine)
    assert len(plans) >= 7  # counts, due, unresolved, findings, held, parked; the outbox
    bad = {
        statement.split("FROM")[1][:80]: sorted(nodes)
        for statement, nodes in plans.items()
        if any(node == "Seq Scan" and rel in BIG for node, rel in nodes)
    }
    assert bad == {}
    touched = {rel for nodes in plans.values() for _, rel in nodes}
    assert "subscription_status_count" in touched


def test_fresh_statistics(pg_engine: Engine) -> None:
    plant_store(pg_engine, SUBSCRIPTIONS, at=START)
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    assert_no_big_seq_scan(pg_engine)


def test_statistics_of_another_day(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        for table in BIG:
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
    plant_store(pg_engine, SUBSCRIPTIONS, at=START)
    with pg_engine.begin() as conn:  # billing-day morning: everything waits
        conn.execute(text("UPDATE invoice SET status = 'open', next_attempt_at = created_at"))
        conn.execute(text("UPDATE charge_attempt SET state = 'unknown'"))
        conn.execute(text("UPDATE subscription SET held_at = created_at"))
        conn.execute(text("UPDATE outbox_delivery SET state = 'pending'"))
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    with pg_engine.begin() as conn:  # ... and then it was all done, with no ANALYZE since
        for table in ("charge_attempt", "invoice", "subscription", "outbox_delivery"):
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("DELETE FROM outbox_event"))
    plant_store(pg_engine, SUBSCRIPTIONS, at=START + timedelta(days=1))
    assert_no_big_seq_scan(pg_engine)
