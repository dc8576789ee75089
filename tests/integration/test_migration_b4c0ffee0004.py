"""Migration b4c0ffee0004 on a store with history: runs saved before it are `completed`, and
older attempts keep no run (which pass wrote them was never recorded)."""

from __future__ import annotations

from sqlalchemy import text

from billing.store import migrate
from billing.store.db import make_engine


def test_runs_and_attempts_from_before_the_revision(sqlite_url: str) -> None:
    run_migration_on_history(sqlite_url)


def test_runs_and_attempts_from_before_the_revision_on_postgres(pg_url: str) -> None:
    run_migration_on_history(pg_url)


def run_migration_on_history(url: str) -> None:
    migrate.upgrade(url, "ec230408422c")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO billing_run (kind, node, as_of, started_at, finished_at,"
                    " invoices_created, attempts, totals) VALUES ('pass', 'n1',"
                    " '2026-03-01 12:00:00+00:00', '2026-03-01 12:00:00+00:00',"
                    " '2026-03-01 12:00:05+00:00', 0, 0, '{}')"
                )
            )
        migrate.upgrade(url)
        with engine.connect() as conn:
            state, beat = conn.execute(text("SELECT state, heartbeat_at FROM billing_run")).one()
        assert (state, beat) == ("completed", None)
        assert migrate.schema_diff(url) == []
    finally:
        engine.dispose()
