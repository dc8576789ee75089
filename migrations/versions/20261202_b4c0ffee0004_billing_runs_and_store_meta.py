"""Billing runs get a state and a heartbeat, charge attempts link to their run, and the store
records facts about itself (merchant zone, latest clock) in store_meta.

Revision ID: b4c0ffee0004
Revises: a2c0ffee0002
Create Date: 2026-12-02 14:02:34.805192
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b4c0ffee0004"
down_revision: str | Sequence[str] | None = "a2c0ffee0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "store_meta",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_store_meta")),
    )
    # Runs written before this revision were saved when they ended: they are completed.
    with op.batch_alter_table("billing_run", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "state",
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default="completed",
            )
        )
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_billing_run_state"), ["state"], unique=False)
    with op.batch_alter_table("billing_run", schema=None) as batch_op:
        batch_op.alter_column("state", server_default=None)

    # Older attempts keep run_id NULL: which pass wrote them was never recorded.
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_charge_attempt_run_id"), ["run_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_charge_attempt_run_id_billing_run"), "billing_run", ["run_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_charge_attempt_run_id_billing_run"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_charge_attempt_run_id"))
        batch_op.drop_column("run_id")

    with op.batch_alter_table("billing_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_run_state"))
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("state")

    op.drop_table("store_meta")
