"""What every command shares: settings, the engine context, output as a table or --json,
and errors as one clear line with a non-zero exit."""

from __future__ import annotations

import functools
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer

from billing.domain.cards import refuse_card_numbers
from billing.domain.text import escape, escape_keeping_newlines
from billing.errors import BillingError, ConfigError, Conflict, InvalidInput, NotFound
from billing.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")

EXIT_INPUT = 2
EXIT_FAILED = 1

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
ByOption = typer.Option(None, "--by", help="Who does it (default: the OS user).")
ReasonOption = typer.Option(..., "--reason", help="Why (kept in the event log).")
OptionalReasonOption = typer.Option(None, "--reason", help="Why (kept in the event log).")


@dataclass
class Globals:
    config_path: str | None = None
    # Tables show times in the merchant's zone (JSON keeps ISO-8601 UTC).
    display_tz: tzinfo = UTC


GLOBALS = Globals()


def settings() -> Settings:
    cfg = load_settings(GLOBALS.config_path)
    GLOBALS.display_tz = cfg.tz
    return cfg


EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)
"""Timestamps given on the command line must fall in [EARLIEST, LATEST): far from the ends of
``datetime`` (year 1 or 9999 with an offset overflows in UTC) and from any real billing date."""


def bounded_instant(value: datetime, label: str) -> datetime:
    """An aware datetime checked to lie within the supported range; InvalidInput otherwise."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise InvalidInput(
            f"{label} {value.isoformat()} is out of range: give a time between "
            f"{EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} UTC"
        )
    return value


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a BillingError into one line on stderr and exit 2 (bad input) or 1 (failure)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (InvalidInput, NotFound, Conflict, ConfigError) as exc:
            fail(str(exc), EXIT_INPUT)
        except BillingError as exc:  # the gateway or another dependency failed
            fail(f"{exc}{_hint(exc)}", EXIT_FAILED)
        except ValueError as exc:  # naive datetimes and similar programming-boundary refusals
            fail(str(exc), EXIT_INPUT)
        except Exception as exc:
            reason = database_failure(exc)
            if reason is None:
                raise
            fail(f"the database failed: {reason[:300]}", EXIT_FAILED)

    return wrapper


def database_failure(exc: Exception) -> str | None:
    """The driver's reason when `exc` is SQLAlchemy's DBAPIError, else None.

    Looked up in sys.modules rather than imported: a command that never loaded SQLAlchemy
    cannot have raised its error, and importing it here would cost every command its import."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is None or not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = exc.orig
    lines = str(orig).strip().splitlines() if orig else []
    return lines[0] if lines else type(orig or exc).__name__


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` as one line on stderr (several problems joined by "; ") and
    exit with ``code``."""
    lines = [escape(" ".join(line.split())) for line in message.splitlines()]
    typer.echo(f"error: {'; '.join(line for line in lines if line)}", err=True)
    raise typer.Exit(code)


def _hint(exc: BillingError) -> str:
    from billing.plexo.errors import GatewayUnavailable

    if isinstance(exc, GatewayUnavailable):
        try:
            builtin = settings().sandbox_builtin
        except BillingError:
            return ""
        if builtin:
            return (
                " (no BILLING_PLEXO_BASE_URL is set, so this is the built-in sandbox's address:"
                " start it with `billing sandbox`)"
            )
    return ""


def to_jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(data: Any) -> None:
    typer.echo(json.dumps(to_jsonable(data), indent=2, sort_keys=False))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Plain aligned columns (no colour), for people; --json is for programs."""
    if not rows:
        return "(none)"
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    # Numbers and amounts line up on the right, as finance people read them.
    numeric = [all(_NUMBER.fullmatch(row[i]) for row in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = zip(values, widths, numeric, strict=True)
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in parts).rstrip()

    return "\n".join([line([c.upper() for c in columns]), *(line(row) for row in cells)])


_NUMBER = re.compile(r"-|-?[0-9]+(\.[0-9]+)?")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(GLOBALS.display_tz).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value))  # a value never moves the cursor or starts a new line


def local_time(value: datetime) -> str:
    """A moment in a sentence: the merchant's zone like the tables, with the zone named."""
    local = value.astimezone(GLOBALS.display_tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def output(data: Any, as_json: bool, text: str) -> None:
    """JSON (ensure_ascii: every control character escaped) or text, made terminal-safe."""
    if as_json:
        print_json(data)
    else:
        typer.echo(escape_keeping_newlines(text))


def progress(message: str) -> None:
    """Progress for long manual work goes to stderr, so --json output stays clean."""
    if sys.stderr.isatty() or os.environ.get("BILLING_PROGRESS"):
        typer.echo(escape(message), err=True)


def operator_name(by: str | None) -> str:
    """The person recorded as the actor: --by, else the OS user."""
    name = (by if by is not None else _os_user()).strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise InvalidInput("--by must be 1-128 printable characters")
    refuse_card_numbers(name, "--by")
    return name


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (e.g. a DynamicUser without a name)
        return "unknown"
