"""Safety bounds (issue 8, item 4): parked invoices and their release.

Revision ID: f4c0ffee0804
Revises: f7c0ffee0807
Create Date: 2026-12-03 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f4c0ffee0804"
down_revision: str | Sequence[str] | None = "f7c0ffee0807"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoice") as batch:
        batch.add_column(
            sa.Column("parked_reason", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True)
        )
        batch.add_column(
            sa.Column("parked_detail", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch.add_column(sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("released_by", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True)
        )
        batch.add_column(sa.Column("released_amount_minor", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invoice") as batch:
        batch.drop_column("released_amount_minor")
        batch.drop_column("released_by")
        batch.drop_column("released_at")
        batch.drop_column("parked_at")
        batch.drop_column("parked_detail")
        batch.drop_column("parked_reason")
