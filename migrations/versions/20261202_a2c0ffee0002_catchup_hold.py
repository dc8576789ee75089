"""Catch-up cap: subscriptions held for review, the release allowance, held count per run.

Revision ID: a2c0ffee0002
Revises: e9c0ffee0009
Create Date: 2026-12-02 14:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "a2c0ffee0002"
down_revision: str | Sequence[str] | None = "e9c0ffee0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscription") as batch:
        batch.add_column(sa.Column("held_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("held_reason", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch.add_column(sa.Column("held_periods", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("catchup_through_index", sa.Integer(), nullable=True))
    with op.batch_alter_table("billing_run") as batch:
        batch.add_column(
            sa.Column("subscriptions_held", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_run") as batch:
        batch.drop_column("subscriptions_held")
    with op.batch_alter_table("subscription") as batch:
        batch.drop_column("catchup_through_index")
        batch.drop_column("held_periods")
        batch.drop_column("held_reason")
        batch.drop_column("held_at")
