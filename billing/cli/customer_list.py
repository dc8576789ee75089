"""billing customers list: read through the driver when it can (engine/quickread.py).

Kept apart from cli/customers.py, which imports the engine, SQLAlchemy and the tables for
the commands that write: listing customers answers within the start-up budget of item 17.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer

from billing.cli.common import JsonOption, handle_errors, output, settings, table

COLUMNS = ["reference_id", "email", "first_name", "last_name", "status"]


def customer_fields(c: Mapping[str, Any]) -> dict[str, Any]:
    """What every command shows of a customer, from its row's fields (ORM or driver)."""
    document_type = c.get("document_type")
    return {
        "reference_id": c["reference_id"],
        "plexo_id": c.get("plexo_id"),
        "email": c["email"],
        "first_name": c.get("first_name"),
        "last_name": c.get("last_name"),
        "phone": c.get("phone"),
        "document": (
            {"type": document_type, "number": c.get("document_number")} if document_type else None
        ),
        "address": c.get("address") or None,
        "birthdate": c.get("birthdate"),
        "metadata": c.get("attributes"),
        "status": c["status"],
        "created_at": c.get("created_at"),
        "deleted_at": c.get("deleted_at"),
    }


def quick_customer_rows(include_deleted: bool) -> list[dict[str, Any]] | None:
    """The customers in id order through the driver; None when the URL needs SQLAlchemy."""
    from billing.engine.quickread import day, json_value, open_reader, utc

    cfg = settings()
    with open_reader(cfg.database_url, cfg.timezone) as reader:
        if reader is None:
            return None
        where = "" if include_deleted else " WHERE status <> 'deleted'"
        rows = reader.rows(
            "SELECT reference_id, plexo_id, email, first_name, last_name, phone, document_type,"
            " document_number, address, birthdate, attributes, status, created_at, deleted_at"
            f" FROM customer{where} ORDER BY id"
        )
    for row in rows:
        row["address"], row["attributes"] = (
            json_value(row["address"]),
            json_value(row["attributes"]),
        )
        row["birthdate"] = day(row["birthdate"])
        row["created_at"], row["deleted_at"] = utc(row["created_at"]), utc(row["deleted_at"])
    return rows


@handle_errors
def list_customers(
    include_deleted: bool = typer.Option(False, "--include-deleted"),
    as_json: bool = JsonOption,
) -> None:
    """List customers."""
    rows = quick_customer_rows(include_deleted)
    if rows is None:
        from billing.engine.customers import list_customers as listed
        from billing.wiring import open_context

        with open_context(settings()) as ctx:
            rows = [c.model_dump() for c in listed(ctx, include_deleted=include_deleted)]
    views = [customer_fields(r) for r in rows]
    output(views, as_json, table(views, COLUMNS))
