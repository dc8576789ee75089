"""Retries and dunning: the retry-after advice and the "needs a person" flag of an invoice, and
an index for the card-network caps (a card's recent attempts).

Revision ID: d6a0ffee0601
Revises: d6b0ffee0602
Create Date: 2026-12-02 15:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d6a0ffee0601"
down_revision: str | Sequence[str] | None = "d6b0ffee0602"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("retry_not_before", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("attention", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )
        batch_op.add_column(sa.Column("attention_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("action_required_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_charge_attempt_card_recent", ["instrument_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.drop_index("ix_charge_attempt_card_recent")
        batch_op.drop_column("action_required_at")
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.drop_column("attention_at")
        batch_op.drop_column("attention")
        batch_op.drop_column("retry_not_before")
