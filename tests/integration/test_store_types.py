"""UTCDateTime on a real database (UTC stored and read back, naive refused); event append-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from billing.store.db import dialect_name, make_engine, session
from billing.store.migrate import upgrade
from billing.store.models import Event, Plan

MONTEVIDEO = timezone(timedelta(hours=-3))
PLAN = Plan.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]


def _plan_row(created_at: datetime) -> dict[str, Any]:
    return {
        "code": "basic",
        "name": "Basic",
        "amount_minor": 59000,
        "currency": "UYU",
        "interval": "month",
        "interval_count": 1,
        "trial_days": 0,
        "active": True,
        "created_at": created_at,
    }


def test_aware_datetime_round_trips_as_the_same_instant_in_utc(engine: Engine) -> None:
    local = datetime(2025, 1, 31, 21, 30, 15, 123456, tzinfo=MONTEVIDEO)
    with engine.begin() as conn:
        conn.execute(insert(PLAN).values(_plan_row(local)))

    with engine.connect() as conn:
        stored = conn.execute(select(PLAN.c.created_at)).scalar_one()
        raw = conn.execute(text("SELECT created_at FROM plan")).scalar_one()

    assert stored == local
    assert stored.tzinfo is UTC
    assert stored == datetime(2025, 2, 1, 0, 30, 15, 123456, tzinfo=UTC)
    # What lies in the database is UTC itself, not local time with an offset dropped.
    if dialect_name(engine) == "sqlite":
        assert raw == "2025-02-01 00:30:15.123456"
    else:
        assert raw == datetime(2025, 2, 1, 0, 30, 15, 123456, tzinfo=UTC)


def test_orm_round_trip_keeps_utc(engine: Engine) -> None:
    with session(engine) as s:
        s.add(Plan(**_plan_row(datetime(2025, 6, 1, 12, tzinfo=MONTEVIDEO))))
    with session(engine) as s:
        plan = s.get(Plan, 1)
        assert plan is not None
        assert plan.created_at == datetime(2025, 6, 1, 15, tzinfo=UTC)
        assert plan.created_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused_and_nothing_is_written(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime refused"), engine.begin() as conn:
        conn.execute(insert(PLAN).values(_plan_row(datetime(2025, 1, 1, 12))))

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM plan")).scalar_one() == 0


def _add_event(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(EVENT)
                .values(
                    at=datetime(2025, 1, 1, tzinfo=UTC),
                    entity_type="invoice",
                    entity_id=1,
                    event="created",
                    actor="test",
                    data={},
                )
                .returning(EVENT.c.id)
            ).scalar_one()
        )


@pytest.mark.parametrize(
    "statement",
    ["UPDATE event SET reason = 'rewritten' WHERE id = :id", "DELETE FROM event WHERE id = :id"],
    ids=["update", "delete"],
)
def test_event_log_refuses_update_and_delete(engine: Engine, statement: str) -> None:
    event_id = _add_event(engine)

    with pytest.raises(IntegrityError, match="event is append-only"), engine.begin() as conn:
        conn.execute(text(statement), {"id": event_id})

    with engine.connect() as conn:
        row = conn.execute(select(EVENT.c.reason).where(EVENT.c.id == event_id)).one()
    assert row.reason is None
    _add_event(engine)  # appending still works


def test_event_log_refuses_truncate_on_postgresql(pg_url: str) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        _add_event(engine)
        with pytest.raises(IntegrityError, match="event is append-only"), engine.begin() as conn:
            conn.execute(text("TRUNCATE event"))
    finally:
        engine.dispose()


def test_session_commits_on_success_and_rolls_back_on_error(engine: Engine) -> None:
    with session(engine) as s:
        s.add(Plan(**_plan_row(datetime(2025, 1, 1, tzinfo=UTC))))
    with pytest.raises(RuntimeError, match="boom"), session(engine) as s:
        plan = s.get(Plan, 1)
        assert plan is not None
        plan.name = "Renamed"
        s.add(plan)
        s.flush()
        raise RuntimeError("boom")

    with session(engine) as s:
        plan = s.get(Plan, 1)
        assert plan is not None
        assert plan.name == "Basic"
