"""How long each stored text may be, read from the tables' VARCHAR lengths (store/models.py).

SQLite does not enforce VARCHAR(n) and PostgreSQL fails on a longer value ("the database
failed"), so every input is measured against these limits before it reaches either: the same
refusal, in one clear line, on both. Text kept in JSON columns (address, metadata) has its
limits in domain/contact.py.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table
from sqlmodel import SQLModel

from billing.store.models import Customer, Event, PaymentInstrument, Plan


def column_limit(model: type[SQLModel], column: str) -> int:
    """The VARCHAR length of `model.column`; a text column without one is a bug here."""
    table = cast(Table, model.__table__)  # type: ignore[attr-defined]
    length = getattr(table.c[column].type, "length", None)
    if not isinstance(length, int):
        raise TypeError(f"{table.name}.{column} has no VARCHAR length")
    return length


CUSTOMER_FIELDS = (
    "reference_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "document_type",
    "document_number",
    "status",
)
CUSTOMER = {name: column_limit(Customer, name) for name in CUSTOMER_FIELDS}
PLEXO_ID = column_limit(Customer, "plexo_id")
PLAN_CODE = column_limit(Plan, "code")
PLAN_NAME = column_limit(Plan, "name")
REASON = column_limit(Event, "reason")
# Amounts are INTEGER columns (plan, invoice, charge_attempt): PostgreSQL refuses more than this.
AMOUNT_MINOR = 2**31 - 1

INSTRUMENT = {
    name: column_limit(PaymentInstrument, name)
    for name in ("token", "brand", "bin", "last4", "card_type")
}
