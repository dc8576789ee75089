"""Schema migrations from inside the application (the daemon and the CLI), wherever it runs from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlmodel import SQLModel

import billing.store.models  # noqa: F401  (registers every table on SQLModel.metadata)
from billing.errors import InvalidInput
from billing.store.db import make_engine, normalize_url

# The repository root (editable install): alembic.ini and migrations/ live there.
ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str | None = None) -> Config:
    """Alembic config bound to this repository's migrations and, if given, to `url`."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["configure_logger"] = False
    if url is not None:
        cfg.attributes["url"] = normalize_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision`; InvalidInput for a revision Alembic
    cannot go to (unknown, or behind the database), before anything is changed."""
    if revision.strip().lower() == "base":  # Alembic would forget the schema's revision
        raise InvalidInput("cannot upgrade to revision 'base': it is the empty schema")
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InvalidInput(f"cannot upgrade to revision {revision!r}: {reason}") from None


def head_revision() -> str:
    """The newest revision in migrations/versions."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {ROOT / 'migrations'}")
    return head


def current_revision(url: str) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_at_head(url: str) -> bool:
    """True when the database needs no migration."""
    return current_revision(url) == head_revision()


def schema_diff(url: str) -> list[Any]:
    """Differences between the database's schema and the models; empty when they agree."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()
