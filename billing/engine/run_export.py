"""The charge attempts of one billing run, one row each, streamed (`billing runs export`).

One SELECT, iterated in pages of `PAGE` rows (a server-side cursor on PostgreSQL, SQLite's
stepping cursor), so memory stays flat whatever the size of the run and the rows come from
one snapshot. Writers format as they go; nothing builds the full list.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple

from sqlalchemy import Select, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from billing.domain.lifecycle import AttemptState
from billing.domain.money import to_major
from billing.store.models import ChargeAttempt, Customer, Invoice

PAGE = 1000
FORMATS = ("csv", "json")
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): such a
# text cell is written with a leading apostrophe. Tab and CR are in OWASP's list too.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ChargeRow(NamedTuple):
    """One charge attempt of a run, as exported (amounts in minor units, times aware UTC)."""

    run_id: int
    invoice_number: str
    subscription_id: int
    customer_reference_id: str
    period_start: datetime
    period_end: datetime
    attempt_number: int
    amount_minor: int
    currency: str
    outcome: str  # approved | declined | pending | unknown (a `sending` attempt is unknown)
    attempt_state: str
    decline_class: str | None
    decline_code: str | None
    result_code: str | None
    plexo_payment_id: str | None
    reference_id: str
    attempted_at: datetime
    resolved_at: datetime | None


COLUMNS = (
    "run_id",
    "invoice_number",
    "subscription_id",
    "customer_reference_id",
    "period_start",
    "period_end",
    "attempt_number",
    "amount",
    "currency",
    "outcome",
    "attempt_state",
    "decline_class",
    "decline_code",
    "result_code",
    "plexo_payment_id",
    "reference_id",
    "attempted_at",
    "resolved_at",
)
# Cells that hold numbers or times we wrote ourselves: never formula-escaped.
_NOT_TEXT = frozenset(
    {"run_id", "subscription_id", "attempt_number", "amount", "period_start", "period_end"}
    | {"attempted_at", "resolved_at"}
)


def outcome_of(state: str) -> str:
    """An attempt still `sending` (its answer not recorded) counts as unknown, as in runs.py."""
    return str(AttemptState.unknown) if state == AttemptState.sending else state


def attempts_query(run_id: int, states: Iterable[str] | None = None) -> Select[*tuple[Any, ...]]:
    """The run's attempts with their invoice and customer, in attempt id order."""
    query = (
        select(
            col(ChargeAttempt.run_id),
            col(Invoice.number),
            col(Invoice.subscription_id),
            col(Customer.reference_id),
            col(Invoice.period_start),
            col(Invoice.period_end),
            col(ChargeAttempt.attempt_number),
            col(ChargeAttempt.amount_minor),
            col(ChargeAttempt.currency),
            col(ChargeAttempt.state),
            col(ChargeAttempt.decline_class),
            col(ChargeAttempt.decline_code),
            col(ChargeAttempt.result_code),
            col(ChargeAttempt.plexo_payment_id),
            col(ChargeAttempt.reference_id),
            col(ChargeAttempt.created_at),
            col(ChargeAttempt.resolved_at),
        )
        .join(Invoice, col(Invoice.id) == col(ChargeAttempt.invoice_id))
        .join(Customer, col(Customer.id) == col(Invoice.customer_id))
        .where(col(ChargeAttempt.run_id) == run_id)
        .order_by(col(ChargeAttempt.id))
    )
    if states is not None:
        query = query.where(col(ChargeAttempt.state).in_(list(states)))
    return query


def iter_charges(
    engine: Engine,
    run_id: int,
    *,
    states: Iterable[str] | None = None,
    limit: int | None = None,
) -> Iterator[ChargeRow]:
    """Stream the run's attempts (optionally only some states, at most `limit`)."""
    query = attempts_query(run_id, states)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=PAGE).execute(query)
        for r in result:
            (run, number, sub, ref, p_start, p_end, n, minor, cur, state) = r[:10]
            (d_class, d_code, r_code, payment, reference, at, resolved) = r[10:]
            yield ChargeRow(
                run, number, sub, ref, p_start, p_end, n, minor, cur, outcome_of(state), state,
                d_class, d_code, r_code, payment, reference, at, resolved,
            )  # fmt: skip


def row_values(row: ChargeRow) -> dict[str, Any]:
    """The exported fields: the amount in major units (a Decimal), times aware UTC."""
    values = row._asdict()
    values["amount"] = to_major(values.pop("amount_minor"), row.currency)
    return {c: values[c] for c in COLUMNS}


def csv_cell(column: str, value: Any) -> str:
    """ISO-8601 UTC for times, a dot for decimals, empty for none; a text cell that a
    spreadsheet would run as a formula gets a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    text = str(value)
    if column not in _NOT_TEXT and text.startswith(FORMULA_START):
        return "'" + text
    return text


def write_csv(rows: Iterable[ChargeRow], out: IO[str]) -> int:
    """A header then one line per row, CRLF line ends (RFC 4180); the caller opens `out`
    with encoding utf-8-sig (the BOM) and newline="". Returns the number of rows."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        writer.writerow([csv_cell(c, v) for c, v in row_values(row).items()])
        count += 1
    return count


def json_record(row: ChargeRow) -> dict[str, Any]:
    """One JSON line: the CSV's fields, the amount as a major-unit string plus `amount_minor`,
    times ISO-8601 UTC, null for none (no formula escaping: JSON is not run by spreadsheets)."""
    record: dict[str, Any] = {}
    for column, value in row_values(row).items():
        if isinstance(value, datetime):
            record[column] = value.astimezone(UTC).isoformat()
        elif column == "amount":
            record[column] = str(value)
            record["amount_minor"] = row.amount_minor
        else:
            record[column] = value
    return record


def write_jsonl(rows: Iterable[ChargeRow], out: IO[str]) -> int:
    """JSON Lines: one object per row, LF line ends. Returns the number of rows."""
    count = 0
    for row in rows:
        out.write(json.dumps(json_record(row), ensure_ascii=False) + "\n")
        count += 1
    return count


def export_run(engine: Engine, run_id: int, fmt: str, out: IO[str]) -> int:
    """Write every attempt of the run to `out` in `fmt` (csv or json); returns the row count."""
    rows = iter_charges(engine, run_id)
    return write_csv(rows, out) if fmt == "csv" else write_jsonl(rows, out)
