"""Pre-dunning: the expiry warnings sent for each stored card (once per card, expiry and
number of days ahead).

Revision ID: d6c0ffee0603
Revises: b4c0ffee0004
Create Date: 2026-12-02 15:04:09.558843
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


# revision identifiers, used by Alembic.
revision: str = 'd6c0ffee0603'
down_revision: str | Sequence[str] | None = 'b4c0ffee0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('instrument_warning',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instrument_id', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('days_before', sa.Integer(), nullable=False),
    sa.Column('subscription_id', sa.Integer(), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instrument_id'], ['payment_instrument.id'], name=op.f('fk_instrument_warning_instrument_id_payment_instrument')),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscription.id'], name=op.f('fk_instrument_warning_subscription_id_subscription')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instrument_warning')),
    sa.UniqueConstraint('instrument_id', 'expires_at', 'days_before', name=op.f('uq_instrument_warning_instrument_id_expires_at_days_before'))
    )
    with op.batch_alter_table('instrument_warning', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instrument_warning_instrument_id'), ['instrument_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('instrument_warning', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instrument_warning_instrument_id'))

    op.drop_table('instrument_warning')
