"""Rules a store keeps across processes, checked before any command or daemon works on it.

- One merchant zone per store: periods are computed in the zone recorded at first use; a
  different BILLING_TIMEZONE would move every period boundary (an overlapping or a lost day).
- The clock only moves forward per store: a test clock earlier than the latest reading billing
  work ran at is refused, and so is the real clock while a test clock has driven the store
  ahead of it (work scheduled at those future times would wait, stranded, until then).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from billing.clock import Clock, SystemClock
from billing.errors import ConfigError

if TYPE_CHECKING:  # the store is imported where it is used: engine/quickread.py reads without it
    from sqlalchemy import Engine

    from billing.store.meta import ClockReading

SCHEMA_BEHIND = "the database schema is not at the latest revision; run `billing db upgrade`"


def check_timezone(engine: Engine, setting: str, clock: Clock, *, record: bool) -> None:
    """Refuse a setting that differs from the recorded zone; with `record`, record the
    setting when no zone is recorded yet (first use)."""
    from billing.store.meta import TIMEZONE, get_meta, record_first

    if record:
        recorded: str | None = record_first(engine, TIMEZONE, setting, clock.now())
    else:
        recorded = get_meta(engine, TIMEZONE)
    refusal = timezone_refusal(recorded, setting)
    if refusal is not None:
        raise ConfigError(refusal)


def timezone_refusal(recorded: str | None, setting: str) -> str | None:
    """Why BILLING_TIMEZONE=`setting` is refused on a store that recorded `recorded`."""
    if recorded is None or recorded == setting:
        return None
    return (
        f"BILLING_TIMEZONE is {setting} but this store's periods are computed in "
        f"{recorded} (recorded at its first use): set BILLING_TIMEZONE={recorded}; "
        "one store keeps one merchant zone"
    )


def check_clock(engine: Engine, clock: Clock, *, billing_work: bool) -> None:
    """Refuse a test clock behind the store's latest reading, and (for billing work) the real
    clock behind a reading a test clock made."""
    from billing.store.meta import latest_clock

    reading = latest_clock(engine)
    if reading is None:
        return
    refusal = clock_refusal(reading, clock.now(), test_clock=not isinstance(clock, SystemClock))
    if refusal is not None and (billing_work or not isinstance(clock, SystemClock)):
        raise ConfigError(refusal)


def clock_refusal(reading: ClockReading, now: datetime, *, test_clock: bool) -> str | None:
    """Why billing work at `now` is refused on a store whose latest reading is `reading`."""
    latest = reading.at.isoformat()
    if now >= reading.at:
        return None
    if test_clock:
        return (
            f"the test clock (--as-of) at {now.isoformat()} is earlier than this store's "
            f"latest clock reading, {latest} ({reading.source} clock): a test clock only "
            f"moves forward; use {latest} or later"
        )
    if reading.source == "test":
        return (
            f"this store was driven to {latest} by a test clock (--as-of) and the real clock "
            f"({now.isoformat()}) is behind it: work scheduled there would be stranded; keep "
            f"using `billing run --once --as-of` at {latest} or later, wait until then, or "
            "use a new database"
        )
    return None  # the real clock a little behind another node's: clock skew, accepted
