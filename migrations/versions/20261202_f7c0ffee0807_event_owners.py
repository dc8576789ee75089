"""The audit log (issue 8, item 7): each event names the subscription and customer it is about.

Denormalised nullable columns, so `billing events list --customer/--subscription` finds the
events of that customer's invoices, attempts and subscriptions with one indexed query; existing
rows are backfilled from the entity tables. The event table is append-only (triggers, see the
initial schema): the backfill lifts them for its own UPDATEs only, inside this migration's
transaction, and puts them back.

Revision ID: f7c0ffee0807
Revises: f3c0ffee0803
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f7c0ffee0807"
down_revision: str | Sequence[str] | None = "f3c0ffee0803"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The initial schema's SQLite triggers, verbatim: SQLite cannot disable a trigger, so the
# backfill drops them and creates them again.
APPEND_ONLY_MESSAGE = "event is append-only"
SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER event_no_update BEFORE UPDATE ON event
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: UPDATE refused'); END""",
    f"""CREATE TRIGGER event_no_delete BEFORE DELETE ON event
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: DELETE refused'); END""",
]

# Same derivation as engine/events.py `record_event` (the writer of new rows).
BACKFILL = [
    """UPDATE event SET
        subscription_id = (SELECT i.subscription_id FROM invoice i WHERE i.id = event.entity_id),
        customer_id = (SELECT i.customer_id FROM invoice i WHERE i.id = event.entity_id)
    WHERE entity_type = 'invoice'""",
    """UPDATE event SET
        subscription_id = entity_id,
        customer_id = (SELECT s.customer_id FROM subscription s WHERE s.id = event.entity_id)
    WHERE entity_type = 'subscription'""",
    "UPDATE event SET customer_id = entity_id WHERE entity_type = 'customer'",
    """UPDATE event SET customer_id =
        (SELECT p.customer_id FROM payment_instrument p WHERE p.id = event.entity_id)
    WHERE entity_type IN ('instrument', 'payment_instrument')""",
    """UPDATE event SET customer_id =
        (SELECT o.customer_id FROM outbox_event o WHERE o.id = event.entity_id)
    WHERE entity_type = 'outbox_event'""",
    """UPDATE event SET
        subscription_id = (SELECT i.subscription_id FROM reconciliation_finding f
            JOIN invoice i ON i.id = f.invoice_id WHERE f.id = event.entity_id),
        customer_id = (SELECT i.customer_id FROM reconciliation_finding f
            JOIN invoice i ON i.id = f.invoice_id WHERE f.id = event.entity_id)
    WHERE entity_type = 'reconciliation_finding'""",
]


def _from_data(dialect: str, key: str) -> str:
    """Fill what the entity did not give from the event's own data (e.g. instrument.expiring
    names its subscription), as the writer does; only plain integers are taken."""
    if dialect == "sqlite":
        value = f"json_extract(data, '$.{key}')"
        typed = f"json_type(data, '$.{key}') = 'integer'"
    else:
        value = f"CAST(data ->> '{key}' AS INTEGER)"
        typed = f"json_typeof(data -> '{key}') = 'number' AND (data ->> '{key}') ~ '^[0-9]{{1,9}}$'"
    return f"UPDATE event SET {key} = {value} WHERE {key} IS NULL AND {typed}"


def upgrade() -> None:
    op.add_column("event", sa.Column("subscription_id", sa.Integer(), nullable=True))
    op.add_column("event", sa.Column("customer_id", sa.Integer(), nullable=True))
    op.create_index("ix_event_customer_id_id", "event", ["customer_id", "id"], unique=False)
    op.create_index("ix_event_subscription_id_id", "event", ["subscription_id", "id"], unique=False)
    op.create_index("ix_event_actor_at", "event", ["actor", "at"], unique=False)

    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS event_no_update")
    else:
        op.execute("ALTER TABLE event DISABLE TRIGGER event_no_update_delete")
    payload_sub = (
        "json_extract(o.payload, '$.subscription_id')"
        if dialect == "sqlite"
        else "CAST(o.payload ->> 'subscription_id' AS INTEGER)"
    )
    for statement in [
        *BACKFILL,
        f"""UPDATE event SET subscription_id = (SELECT {payload_sub} FROM outbox_event o
            WHERE o.id = event.entity_id) WHERE entity_type = 'outbox_event'""",
        _from_data(dialect, "subscription_id"),
        _from_data(dialect, "customer_id"),
    ]:
        op.execute(statement)
    if dialect == "sqlite":
        op.execute(SQLITE_TRIGGERS[0])
    else:
        op.execute("ALTER TABLE event ENABLE TRIGGER event_no_update_delete")


def downgrade() -> None:
    # Indexes first: SQLite drops an indexed column only once its indexes are gone. A plain
    # ALTER TABLE DROP COLUMN (no batch copy) keeps the append-only triggers in place.
    op.drop_index("ix_event_actor_at", table_name="event")
    op.drop_index("ix_event_subscription_id_id", table_name="event")
    op.drop_index("ix_event_customer_id_id", table_name="event")
    op.drop_column("event", "customer_id")
    op.drop_column("event", "subscription_id")
