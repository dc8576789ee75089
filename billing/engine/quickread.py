"""Read-only queries straight through the database driver, for commands that must answer fast.

Importing SQLAlchemy, SQLModel and the tables costs more than the 0.3 s a listing may take
(issue 5 item 17), while sqlite3 is in the standard library and psycopg is what SQLAlchemy
would load anyway. `open_reader` connects with the driver when the URL is a plain one (a
SQLite file; a PostgreSQL URL, which libpq parses itself) and returns None for anything else,
so the caller takes the normal path: this module is a shortcut, never the only way in.

Before any read it applies the same store rules `wiring.open_context` does for a read-only
command: the schema is at the head revision and BILLING_TIMEZONE is the store's zone. (The
clock rule refuses only a test clock or billing work, neither of which reads through here.)
Values come back as the ORM would give them: UTC-aware datetimes, dates, parsed JSON.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from billing.engine.store_rules import SCHEMA_BEHIND, timezone_refusal
from billing.errors import BillingError, ConfigError
from billing.store.migrate import script_heads


class StoreFailed(BillingError):
    """The database failed under a quick read (the message names the driver's reason)."""


class Reader:
    """One read-only connection: `rows` runs a query written with `?` placeholders."""

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect  # sqlite | postgresql

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        try:
            cursor = self.conn.cursor()
            cursor.execute(sql, tuple(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except Exception as exc:
            raise _failed(exc) from None

    def has_table(self, name: str) -> bool:
        if self.dialect == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT c.relname FROM pg_class c WHERE c.oid = to_regclass(?)"
        return bool(self.rows(sql, [name]))


def _failed(exc: Exception) -> StoreFailed:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StoreFailed(f"the database failed: {reason[:300]}")


def sqlite_path(url: str) -> Path | None:
    """The file of a plain `sqlite:///path` URL (no query, no memory database); else None."""
    parts = urlsplit(url)
    if parts.scheme not in ("sqlite", "sqlite+pysqlite") or parts.query or parts.netloc:
        return None
    path = parts.path[1:]  # sqlite:///rel -> "rel"; sqlite:////abs -> "/abs"
    if not path or path == ":memory:" or path.startswith("file:") or "%" in path:
        return None
    return Path(path).expanduser()


def postgres_conninfo(url: str) -> str | None:
    """The libpq URI of a PostgreSQL URL (SQLAlchemy's driver suffix dropped); else None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        return None
    return f"postgresql://{rest}"


@contextmanager
def open_reader(url: str, timezone: str) -> Iterator[Reader | None]:
    """A checked read-only connection to the store at `url`, or None: take the normal path.

    Raises ConfigError as open_context would (schema behind, another merchant zone) and
    StoreFailed when the database cannot be read; None also when no zone is recorded yet."""
    reader = _connect(url)
    if reader is None:
        yield None
        return
    try:
        yield reader if _rules_hold(reader, timezone) else None
    finally:
        reader.conn.close()


def _connect(url: str) -> Reader | None:
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            return None  # the normal path creates it and says the schema is behind
        try:
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise _failed(exc) from None
        return Reader(conn, "sqlite")
    conninfo = postgres_conninfo(url)
    if conninfo is None:
        return None
    import psycopg

    try:
        # The same bounded connect as store/db.py; READ ONLY transactions, never committed.
        pg = psycopg.connect(conninfo, connect_timeout=10)
    except psycopg.ProgrammingError:
        return None  # a URL libpq does not take: let SQLAlchemy's parser have it
    except psycopg.Error as exc:
        raise _failed(exc) from None
    pg.read_only = True
    return Reader(pg, "postgresql")


def _rules_hold(reader: Reader, timezone: str) -> bool:
    """Raise as open_context would; False when the store has no zone recorded yet (the
    normal path records it: a store's first successful command is its first use)."""
    stored: set[str] = set()
    if reader.has_table("alembic_version"):
        stored = {r["version_num"] for r in reader.rows("SELECT version_num FROM alembic_version")}
    if stored != script_heads():
        raise ConfigError(SCHEMA_BEHIND)
    found = reader.rows("SELECT value FROM store_meta WHERE key = ?", ["timezone"])
    if not found:
        return False
    refusal = timezone_refusal(found[0]["value"], timezone)
    if refusal is not None:
        raise ConfigError(refusal)
    return True


def utc(value: Any) -> datetime | None:
    """A timestamp column as the ORM's UTCDateTime returns it (SQLite keeps naive UTC text)."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def day(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def json_value(value: Any) -> Any:
    """A JSON column: psycopg parses it already, SQLite hands back the text."""
    return json.loads(value) if isinstance(value, str | bytes) else value
