"""Schema migrations from inside the application (the daemon and the CLI), wherever it runs from."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from billing.errors import InvalidInput

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions that migrate: every command checks `is_at_head`,
# and importing Alembic (its DDL dialects, its script loader) costs more than the command.
# SQLAlchemy too: `script_heads` is what a quick read (engine/quickread.py) needs from here.

PACKAGE = Path(__file__).resolve().parents[1]
# The repository root of a source checkout (editable install): alembic.ini and migrations/.
ROOT = PACKAGE.parent


def migrations_dir() -> Path:
    """The migration scripts: the copy a wheel carries (billing/_migrations), else the source
    checkout's migrations/ folder."""
    shipped = PACKAGE / "_migrations"
    return shipped if (shipped / "env.py").is_file() else ROOT / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """Alembic config bound to the shipped migrations and, if given, to `url`."""
    from alembic.config import Config

    ini = ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() and ini.parent == migrations_dir().parent else Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["configure_logger"] = False
    if url is not None:
        from billing.store.db import normalize_url

        cfg.attributes["url"] = normalize_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision`; InvalidInput for a revision Alembic
    cannot go to (unknown, or behind the database), before anything is changed."""
    from alembic import command
    from alembic.util.exc import CommandError

    if revision.strip().lower() == "base":  # Alembic would forget the schema's revision
        raise InvalidInput("cannot upgrade to revision 'base': it is the empty schema")
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InvalidInput(f"cannot upgrade to revision {revision!r}: {reason}") from None


def head_revision() -> str:
    """The newest revision in migrations/versions."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {migrations_dir()}")
    return head


def current_revision(url: str) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    from alembic.runtime.migration import MigrationContext

    from billing.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_at_head(url: str) -> bool:
    """True when the database needs no migration (read without importing Alembic)."""
    return stored_revisions(url) == script_heads()


# `revision = "abc"` / `down_revision: str | None = ("a", "b")` at the start of a line.
_REVISION_LINE = re.compile(r"^(revision|down_revision|depends_on)\b[^=\n]*=\s*(.+)$", re.MULTILINE)


def script_heads(versions: Path | None = None) -> set[str]:
    """The head revision(s) of migrations/versions, read from the files' identifiers.

    The same answer as Alembic's ScriptDirectory (a test compares them) at a fraction of the
    cost; a file this reading does not understand (a `depends_on`, an expression) makes it
    ask Alembic instead.
    """
    revisions: set[str] = set()
    downs: set[str] = set()
    try:
        for path in sorted((versions or migrations_dir() / "versions").glob("*.py")):
            found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
            if "revision" not in found:
                continue
            if ast.literal_eval(found.get("depends_on", "None")) is not None:
                raise ValueError("depends_on")
            revision = ast.literal_eval(found["revision"])
            down = ast.literal_eval(found.get("down_revision", "None"))
            if not isinstance(revision, str):
                raise ValueError(revision)
            revisions.add(revision)
            downs.update([down] if isinstance(down, str) else down or ())
    except (ValueError, SyntaxError, TypeError):
        return alembic_heads(versions)
    heads = revisions - downs
    return heads if heads and downs <= revisions else alembic_heads(versions)


def alembic_heads(versions: Path | None = None) -> set[str]:
    """Alembic's own answer to `script_heads` (it imports every migration file)."""
    from alembic.script import ScriptDirectory

    if versions is None:
        return set(ScriptDirectory.from_config(alembic_config()).get_heads())
    return set(ScriptDirectory(str(versions.parent)).get_heads())


def stored_revisions(url: str) -> set[str]:
    """The revision(s) in the database's alembic_version table; empty when never migrated."""
    from sqlalchemy import inspect, text

    from billing.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return set()
            return set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[Any]:
    """Differences between the database's schema and the models; empty when they agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    import billing.store.models  # noqa: F401  (registers every table on SQLModel.metadata)
    from billing.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()
