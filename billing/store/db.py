"""Engine and session set-up: SQLite pragmas and write locks up front, PostgreSQL via psycopg 3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlmodel import Session

from billing.errors import ConfigError

_SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=30000",  # wait for the write lock instead of failing at once
    "PRAGMA journal_mode=WAL",  # readers do not block the writer
    "PRAGMA synchronous=NORMAL",  # durable at checkpoints; safe with WAL
    "PRAGMA foreign_keys=ON",
)


def normalize_url(url: str) -> str:
    """Spell a PostgreSQL URL with the psycopg 3 driver; leave every other URL as given."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """An engine for the billing database (SQLite file or PostgreSQL)."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    # libpq waits forever for a server that never answers: bound the connect, and let TCP
    # keepalives end a connection to a vanished host, so jobs fail (and retry) instead of
    # hanging. Parameters given in the URL's query win.
    connect_args = {k: v for k, v in _PG_CONNECT_DEFAULTS.items() if k not in parsed.query}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


_PG_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:" and not database.startswith("file:"):
        directory = Path(database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"BILLING_DATABASE_URL: cannot create {directory} for the SQLite file "
                f"({exc.strerror or type(exc).__name__})"
            ) from None
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN is deferred (a reader that later writes can deadlock on upgrade);
        # switch it off and emit our own BEGIN IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Every transaction takes the write lock up front, so writers queue on busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def dialect_name(engine: Engine) -> str:
    """'sqlite' or 'postgresql'."""
    return engine.dialect.name


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    with Session(engine, expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


def indexed_plans_only(s: Session) -> None:
    """For the rest of this transaction, PostgreSQL plans no Seq Scan where an index serves.

    For reads designed around an index over a small set (the metrics' gauges): statistics
    taken while a table was small or shaped otherwise (autoanalyze waits for 10 % of rows to
    change) can make a whole-table scan look cheaper than it is. SET LOCAL ends with the
    transaction. JIT goes off too: the penalty that steers the planner away from a Seq Scan
    is a cost of 1e10, far above jit_above_cost, and compiling costs 100-300 ms (measured)
    for a read of a few rows. On SQLite the gauges' queries are served by partial indexes
    that hold only the rows counted, which no statistics make look dearer than a scan.
    """
    if s.get_bind().dialect.name == "postgresql":
        s.connection().exec_driver_sql("SET LOCAL enable_seqscan = off")
        s.connection().exec_driver_sql("SET LOCAL jit = off")
