"""Charge attempts keep the processor's resultCode beside the decline word (issue 5, item 9).

Revision ID: e9c0ffee0009
Revises: ec230408422c
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "e9c0ffee0009"
down_revision: str | Sequence[str] | None = "ec230408422c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("charge_attempt") as batch:
        batch.add_column(sa.Column("result_code", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("charge_attempt") as batch:
        batch.drop_column("result_code")
