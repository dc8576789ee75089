"""Input limits come from the tables themselves, so SQLite and PostgreSQL refuse alike."""

from __future__ import annotations

import pytest
from sqlalchemy import String
from sqlmodel import SQLModel

import billing.store.models  # noqa: F401  (every table registered)
from billing.engine import limits
from billing.store.models import Customer, Plan


def test_every_text_column_has_a_length() -> None:
    """A VARCHAR without a length is unbounded on PostgreSQL and unchecked here: none exist."""
    unbounded = [
        f"{table.name}.{column.name}"
        for table in SQLModel.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String) and column.type.length is None
    ]
    assert unbounded == []


def test_limits_are_the_columns_lengths() -> None:
    assert limits.PLAN_NAME == Plan.__table__.c.name.type.length == 200  # type: ignore[attr-defined]
    assert limits.PLAN_CODE == 64
    for name, limit in limits.CUSTOMER.items():
        assert Customer.__table__.c[name].type.length == limit  # type: ignore[attr-defined]


def test_a_column_without_a_length_is_refused_as_a_bug() -> None:
    with pytest.raises(TypeError, match=r"customer\.address has no VARCHAR length"):
        limits.column_limit(Customer, "address")
