"""Metrics without scans (issue 9, item 4): subscriptions counted per status by triggers,
and partial indexes holding only what the other gauges count (held subscriptions, unresolved
attempts, the notification backlog).

`billing_subscriptions{status}` used to be `SELECT status, count(*) FROM subscription GROUP BY
status`: a whole-table scan per scrape (0.2-1.4 s at 1M subscriptions). The counts now live in
`subscription_status_count`, kept by triggers in the transaction of every insert, delete and
status change, whoever writes (the engine, an import, a Core statement on the hot path, SQL
typed by an operator). The scrape sums its few rows. Why triggers and why the two backends
differ: ARCHITECTURE.md, "Metrics without scans".

Note for later migrations: a SQLite batch operation on `subscription` recreates the table and
drops these triggers; recreate them (tests/integration/test_subscription_counts.py checks that
they exist at head).

Revision ID: f5c0ffee0805
Revises: f4c0ffee0804
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f5c0ffee0805"
down_revision: str | Sequence[str] | None = "f4c0ffee0804"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Literal copies of billing/store/models.py's predicates (a migration never imports models).
HELD = "held_at IS NOT NULL"
UNRESOLVED = "state IN ('sending', 'unknown', 'pending')"
BACKLOG = "state IN ('pending', 'dead')"

# SQLite has one writer at a time (BEGIN IMMEDIATE): the count is updated in place, one row per
# status (created on first use), and contends with nothing.
_SQLITE_ADD = """INSERT INTO subscription_status_count (status, n)
        SELECT {row}.status, 0 WHERE NOT EXISTS
            (SELECT 1 FROM subscription_status_count WHERE status = {row}.status);
        UPDATE subscription_status_count SET n = n {sign} 1
        WHERE id = (SELECT min(id) FROM subscription_status_count WHERE status = {row}.status);"""
SQLITE_UP = [
    f"""CREATE TRIGGER subscription_count_inserted AFTER INSERT ON subscription
    BEGIN {_SQLITE_ADD.format(row="NEW", sign="+")} END""",
    f"""CREATE TRIGGER subscription_count_deleted AFTER DELETE ON subscription
    BEGIN {_SQLITE_ADD.format(row="OLD", sign="-")} END""",
    f"""CREATE TRIGGER subscription_count_changed AFTER UPDATE OF status ON subscription
    WHEN OLD.status IS NOT NEW.status
    BEGIN {_SQLITE_ADD.format(row="OLD", sign="-")} {_SQLITE_ADD.format(row="NEW", sign="+")} END""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS subscription_count_changed",
    "DROP TRIGGER IF EXISTS subscription_count_deleted",
    "DROP TRIGGER IF EXISTS subscription_count_inserted",
]

# PostgreSQL: concurrent transactions never share a counter row (a shared row would be locked
# until commit by every status change: the record step of concurrent charges would queue on it,
# and two transactions changing statuses in opposite orders would deadlock). Each change
# appends a delta row instead (+1 / -1; one row per status per INSERT or DELETE statement,
# from the transition tables); the reaper folds them (billing/store/counts.py). Appends take no
# lock anyone else waits for, and nothing is read-modify-written.
POSTGRESQL_UP = [
    """CREATE FUNCTION subscription_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO subscription_status_count (status, n)
        SELECT status, count(*) FROM new_rows GROUP BY status;
        RETURN NULL;
    END
    $$""",
    """CREATE FUNCTION subscription_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO subscription_status_count (status, n)
        SELECT status, -count(*) FROM old_rows GROUP BY status;
        RETURN NULL;
    END
    $$""",
    """CREATE FUNCTION subscription_count_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO subscription_status_count (status, n)
        VALUES (OLD.status, -1), (NEW.status, 1);
        RETURN NULL;
    END
    $$""",
    """CREATE FUNCTION subscription_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM subscription_status_count;
        RETURN NULL;
    END
    $$""",
    """CREATE TRIGGER subscription_count_inserted AFTER INSERT ON subscription
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION subscription_count_inserted()""",
    """CREATE TRIGGER subscription_count_deleted AFTER DELETE ON subscription
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION subscription_count_deleted()""",
    # Row level with a WHEN clause: an UPDATE that leaves the status alone (every approval,
    # every invoicing compare-and-set) costs a comparison in C, no PL/pgSQL call.
    """CREATE TRIGGER subscription_count_changed AFTER UPDATE OF status ON subscription
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION subscription_count_changed()""",
    """CREATE TRIGGER subscription_count_truncated AFTER TRUNCATE ON subscription
    FOR EACH STATEMENT EXECUTE FUNCTION subscription_count_truncated()""",
]
POSTGRESQL_DOWN = [
    "DROP TRIGGER IF EXISTS subscription_count_truncated ON subscription",
    "DROP TRIGGER IF EXISTS subscription_count_changed ON subscription",
    "DROP TRIGGER IF EXISTS subscription_count_deleted ON subscription",
    "DROP TRIGGER IF EXISTS subscription_count_inserted ON subscription",
    "DROP FUNCTION IF EXISTS subscription_count_truncated()",
    "DROP FUNCTION IF EXISTS subscription_count_changed()",
    "DROP FUNCTION IF EXISTS subscription_count_deleted()",
    "DROP FUNCTION IF EXISTS subscription_count_inserted()",
]


def _run(statements: dict[str, list[str]]) -> None:
    dialect = op.get_context().dialect.name
    if dialect not in statements:
        raise NotImplementedError(f"no subscription count triggers for dialect {dialect!r}")
    for statement in statements[dialect]:
        op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "subscription_status_count",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_status_count")),
    )
    # The triggers first, then the backfill, in this one transaction: on PostgreSQL CREATE
    # TRIGGER locks `subscription` against writers until commit (SHARE ROW EXCLUSIVE), on
    # SQLite the migration holds the write lock, so no change can fall between the two.
    _run({"sqlite": SQLITE_UP, "postgresql": POSTGRESQL_UP})
    op.execute(
        "INSERT INTO subscription_status_count (status, n) "
        "SELECT status, count(*) FROM subscription GROUP BY status"
    )
    op.create_index(
        "ix_subscription_held",
        "subscription",
        ["status"],
        sqlite_where=sa.text(HELD),
        postgresql_where=sa.text(HELD),
    )
    op.create_index(
        "ix_charge_attempt_unresolved_age",
        "charge_attempt",
        ["created_at"],
        sqlite_where=sa.text(UNRESOLVED),
        postgresql_where=sa.text(UNRESOLVED),
    )
    op.create_index(
        "ix_outbox_delivery_backlog",
        "outbox_delivery",
        ["channel", "state", "created_at"],
        sqlite_where=sa.text(BACKLOG),
        postgresql_where=sa.text(BACKLOG),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_delivery_backlog", table_name="outbox_delivery")
    op.drop_index("ix_charge_attempt_unresolved_age", table_name="charge_attempt")
    op.drop_index("ix_subscription_held", table_name="subscription")
    _run({"sqlite": SQLITE_DOWN, "postgresql": POSTGRESQL_DOWN})
    op.drop_table("subscription_status_count")
