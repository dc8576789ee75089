"""Bulk-import files (CSV or JSON Lines) read into rows of named text fields, line by line.

Pure: bytes in, rows out. Which fields are valid is decided by the engine's own create
checks; this module only knows the column names, so a bad row is reported with its line
number instead of stopping the whole import.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from billing.errors import InvalidInput

FORMATS = ("csv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
METADATA = "metadata"


@dataclass(frozen=True)
class Columns:
    """The fields a file may carry; `metadata` (when allowed) is free-form key=value text;
    `flags` are optional yes/no fields (JSON true/false, CSV true/false/yes/no)."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    metadata: bool = False
    flags: tuple[str, ...] = ()

    @property
    def known(self) -> tuple[str, ...]:
        return self.required + self.optional + self.flags


@dataclass(frozen=True)
class Row:
    """One record: its first line in the file, and either its fields or why it is unreadable."""

    line: int
    fields: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def file_format(path: str, given: str | None) -> str:
    """--format wins; otherwise the extension decides."""
    if given is not None:
        fmt = given.lower()
        if fmt not in FORMATS:
            raise InvalidInput(f"--format must be csv or jsonl (got {given!r})")
        return fmt
    fmt = _EXTENSIONS.get(PurePath(path).suffix.lower(), "")
    if not fmt:
        raise InvalidInput(
            f"cannot tell the format of {path!r} from its extension; use .csv or .jsonl, "
            "or pass --format"
        )
    return fmt


def parse_rows(data: bytes, fmt: str, columns: Columns) -> list[Row]:
    """Every record of the file; raises InvalidInput only for what spoils the whole file."""
    text = _decode(data)
    return _csv_rows(text, columns) if fmt == "csv" else _jsonl_rows(text, columns)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # a BOM from a spreadsheet export is fine
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(
            f"line {line}: the file is not UTF-8 (byte 0x{data[exc.start]:02x}); "
            "save it as UTF-8 and import again"
        ) from None


def _csv_rows(text: str, columns: Columns) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InvalidInput(f"line 1: unreadable CSV header ({exc})") from None
    if header is None:
        raise InvalidInput("the file is empty: it needs a header line naming the columns")
    names = [h.strip() for h in header]
    _check_names(names, columns, "column")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInput(f"line 1: column(s) {', '.join(repeated)} appear more than once")
    rows: list[Row] = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append(Row(start, error=f"unreadable CSV ({exc})"))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(names):
            rows.append(Row(line, error=f"has {len(cells)} cells; the header names {len(names)}"))
            continue
        rows.append(_row(line, dict(zip(names, cells, strict=True)), columns))
    return rows


def _jsonl_rows(text: str, columns: Columns) -> list[Row]:
    rows: list[Row] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            rows.append(Row(number, error=f"not valid JSON ({exc.args[0].split(':')[0]})"))
            continue
        if not isinstance(obj, dict):
            rows.append(Row(number, error="must be a JSON object"))
            continue
        try:
            _check_names(list(obj), columns, "field")
            flat = _flatten(obj, columns)
        except InvalidInput as exc:
            rows.append(Row(number, error=str(exc)))
            continue
        rows.append(_row(number, flat, columns))
    return rows


def _flatten(obj: dict[str, Any], columns: Columns) -> dict[str, str]:
    """JSON values to the same text a CSV cell holds; `metadata` may be a nested object."""
    flat: dict[str, str] = {}
    for key, value in obj.items():
        if key == METADATA:
            if not isinstance(value, dict):
                raise InvalidInput(f"{METADATA} must be an object of key: value")
            for mkey, mvalue in value.items():
                flat[f"{METADATA}.{mkey}"] = _text(mvalue, f"{METADATA}.{mkey}")
        elif key in columns.flags and isinstance(value, bool):
            flat[key] = "true" if value else "false"
        else:
            flat[key] = _text(value, key)
    return flat


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInput(f"{name} must be a string or a number")
    return str(value)


_YES, _NO = frozenset({"true", "yes"}), frozenset({"false", "no"})


def flag(fields: dict[str, str], name: str) -> bool:
    """A yes/no field of a row: absent means no; anything but true/false/yes/no is refused."""
    value = fields.get(name)
    if value is None:
        return False
    if value.lower() in _YES:
        return True
    if value.lower() in _NO:
        return False
    raise InvalidInput(f"{name} must be true or false (got {value[:20]!r})")


def _check_names(names: Sequence[str], columns: Columns, what: str) -> None:
    def allowed(name: str) -> bool:
        if name in columns.known:
            return True
        return columns.metadata and name.startswith(f"{METADATA}.") and len(name) > 9

    nested = what == "field" and columns.metadata  # JSON Lines may nest "metadata": {...}
    unknown = [n for n in names if not allowed(n) and not (nested and n == METADATA)]
    where = "line 1: " if what == "column" else ""
    if unknown:
        hint = f"; use {', '.join(columns.known)}"
        if columns.metadata:
            hint += f" or {METADATA}.KEY"
        raise InvalidInput(f"{where}unknown {what}(s) {', '.join(unknown)}{hint}")
    missing = [n for n in columns.required if n not in names]
    if missing and what == "column":
        raise InvalidInput(f"{where}missing required column(s) {', '.join(missing)}")


def _row(line: int, cells: dict[str, str], columns: Columns) -> Row:
    fields: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for name, value in cells.items():
        value = value.strip()
        if not value:
            continue  # an empty cell means "not given"
        if name.startswith(f"{METADATA}."):
            metadata[name.removeprefix(f"{METADATA}.")] = value
        else:
            fields[name] = value
    missing = [n for n in columns.required if n not in fields]
    if missing:
        return Row(line, error=f"{', '.join(missing)} is required")
    return Row(line, fields, metadata)
