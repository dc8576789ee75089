"""Approval gate (issue 8, item 3): plans are billing runs with a frozen charge list.

Revision ID: f3c0ffee0803
Revises: e2c0ffee0802
Create Date: 2026-12-04 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f3c0ffee0803"
down_revision: str | Sequence[str] | None = "e2c0ffee0802"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = "state IN ('planned', 'approved')"


def upgrade() -> None:
    with op.batch_alter_table("billing_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("decided_by", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True)
        )
        batch_op.add_column(sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column(
                "decision_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True
            )
        )
    op.create_index(
        "uq_billing_run_waiting_plan",
        "billing_run",
        ["kind"],
        unique=True,
        sqlite_where=sa.text(WAITING),
        postgresql_where=sa.text(WAITING),
    )
    op.create_table(
        "run_plan_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("amount_minor", sa.Integer(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("instrument_id", sa.Integer(), nullable=False),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["payment_instrument.id"],
            name=op.f("fk_run_plan_item_instrument_id_payment_instrument"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoice.id"], name=op.f("fk_run_plan_item_invoice_id_invoice")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["billing_run.id"], name=op.f("fk_run_plan_item_run_id_billing_run")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_plan_item")),
        sa.UniqueConstraint(
            "run_id", "invoice_id", name=op.f("uq_run_plan_item_run_id_invoice_id")
        ),
    )
    with op.batch_alter_table("run_plan_item", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_run_plan_item_invoice_id"), ["invoice_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_run_plan_item_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_plan_item", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_plan_item_run_id"))
        batch_op.drop_index(batch_op.f("ix_run_plan_item_invoice_id"))
    op.drop_table("run_plan_item")
    op.drop_index("uq_billing_run_waiting_plan", table_name="billing_run")
    with op.batch_alter_table("billing_run", schema=None) as batch_op:
        batch_op.drop_column("decision_reason")
        batch_op.drop_column("decided_at")
        batch_op.drop_column("decided_by")
        batch_op.drop_column("expires_at")
