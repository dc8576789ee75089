"""Facts about the store itself (table store_meta): the merchant zone and the latest clock.

Both rules are per store, not per process: every daemon and command on one database must
compute periods in one zone, and billing work must never run on a clock behind work that a
test clock already scheduled. Writes are insert-if-absent (two nodes starting at once agree on
one value) and a locked read-modify-write for the clock (it only moves forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from billing.clock import ensure_utc
from billing.store.db import session
from billing.store.models import StoreMeta

TIMEZONE = "timezone"
LATEST_CLOCK = "latest_clock"  # ISO-8601 UTC instant
LATEST_CLOCK_SOURCE = "latest_clock_source"  # "test" | "system": which clock set it


@dataclass(frozen=True)
class ClockReading:
    at: datetime
    source: str  # test | system


def get_meta(engine: Engine, key: str) -> str | None:
    with session(engine) as s:
        row = s.get(StoreMeta, key)
        return None if row is None else row.value


def _insert_if_absent(s: Session, key: str, value: str, now: datetime) -> None:
    bind = s.get_bind()
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    s.exec(
        insert(StoreMeta)
        .values(key=key, value=value, updated_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
    )


def record_first(engine: Engine, key: str, value: str, now: datetime) -> str:
    """Store `value` under `key` unless a value is there already; return the stored value."""
    with session(engine) as s:
        _insert_if_absent(s, key, value, now)
        row = s.get(StoreMeta, key, populate_existing=True)
        assert row is not None
        return row.value


def latest_clock(engine: Engine) -> ClockReading | None:
    """The latest clock reading billing work ran at on this store (None: never)."""
    with session(engine) as s:
        at = s.get(StoreMeta, LATEST_CLOCK)
        source = s.get(StoreMeta, LATEST_CLOCK_SOURCE)
    if at is None:
        return None
    return ClockReading(datetime.fromisoformat(at.value), source.value if source else "system")


def advance_clock(s: Session, now: datetime, source: str) -> ClockReading:
    """Move the store's latest clock reading forward to `now` (never back), in the caller's
    transaction; returns the reading as it stands afterwards."""
    now = ensure_utc(now, "clock reading")
    _insert_if_absent(s, LATEST_CLOCK, now.isoformat(), now)
    row = s.exec(
        select(StoreMeta)
        .where(StoreMeta.key == LATEST_CLOCK)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    stored = datetime.fromisoformat(row.value)
    source_row = s.get(StoreMeta, LATEST_CLOCK_SOURCE)
    if source_row is None or now > stored:
        row.value, row.updated_at = now.isoformat(), now
        s.add(row)
        if source_row is None:
            source_row = StoreMeta(key=LATEST_CLOCK_SOURCE, value=source, updated_at=now)
        source_row.value, source_row.updated_at = source, now
        s.add(source_row)
        return ClockReading(now, source)
    return ClockReading(stored, source_row.value)
