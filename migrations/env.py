"""Alembic environment for plexo-billing.

The database URL comes from, in order: `config.attributes["url"]` (billing.store.migrate),
`alembic -x url=...`, or the billing settings (`database_url`).
"""

from __future__ import annotations

import logging.config
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import billing.store.models  # noqa: F401  (registers every table on SQLModel.metadata)
from billing.store.db import make_engine, normalize_url
from billing.store.types import UTCDateTime

config = context.config
target_metadata = SQLModel.metadata

# Callers inside the application keep their own logging; only the alembic CLI configures it.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        # Imported here: settings may need config files and env that a caller passing a URL lacks.
        from billing.settings import load_settings

        url = load_settings().database_url
    return normalize_url(str(url))


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Write UTCDateTime as the column type it creates, so migrations never import app code.

    The DDL is the same either way (TIMESTAMP WITH TIME ZONE / DATETIME), which is all that
    compare_metadata looks at; the UTC rule itself lives in the models, not in the schema.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


CONFIGURE: dict[str, Any] = {
    "target_metadata": target_metadata,
    "render_as_batch": True,  # SQLite can only ALTER by copying the table
    "compare_type": True,
    "render_item": render_item,
    "transactional_ddl": True,  # SQLite can roll DDL back too: a failed migration leaves no trace
}


MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('plexo-billing:migrations'))"


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"}, **CONFIGURE
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # Must run outside a transaction (it is a no-op inside one), hence the raw DBAPI connection.
    # Off during migrations because batch mode copies and drops tables that others reference.
    dbapi = connection.connection.driver_connection
    assert dbapi is not None
    dbapi.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def run_migrations_online() -> None:
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                _sqlite_foreign_keys(connection, False)
            context.configure(connection=connection, **CONFIGURE)
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # Daemons starting together: the second waits here, then reads the version
                    # the first wrote and has nothing to do. (SQLite: BEGIN IMMEDIATE does this.)
                    connection.exec_driver_sql(MIGRATION_LOCK)
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
            connection.commit()
            if sqlite:
                _sqlite_foreign_keys(connection, True)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
