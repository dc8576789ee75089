"""Subscriptions per status without counting the subscription table.

The triggers of migration f5c0ffee0805 keep `subscription_status_count` in the transaction of
every change; this module reads it (`subscription_counts`) and folds PostgreSQL's delta rows
into one row per status (`fold_subscription_counts`, from the lease reaper). Reading costs the
number of rows there: the statuses plus the changes since the last fold.
"""

from __future__ import annotations

from collections import defaultdict
from typing import cast

from sqlalchemy import Connection, Engine, Table, delete, func, insert
from sqlmodel import Session, col, select

from billing.store.models import SubscriptionStatusCount

_TABLE = cast(Table, SubscriptionStatusCount.__table__)  # type: ignore[attr-defined]


def subscription_counts(s: Session) -> dict[str, int]:
    """Subscriptions per status as of the caller's transaction (statuses with none may be
    absent or 0)."""
    rows = s.exec(
        select(SubscriptionStatusCount.status, func.sum(col(SubscriptionStatusCount.n))).group_by(
            col(SubscriptionStatusCount.status)
        )
    ).all()
    return {str(status): int(n) for status, n in rows}


def fold_subscription_counts(engine: Engine) -> int:
    """Fold the delta rows into one row per status; returns how many rows were folded (0:
    nothing to do, and nothing was written).

    Exact under concurrency without any lock: `DELETE ... RETURNING` removes exactly the rows
    it returns, and the sums of those are inserted back in the same transaction. A delta
    committed meanwhile is not deleted, so it stays to be summed; on PostgreSQL a second fold
    running at once skips the rows the first deleted (READ COMMITTED re-checks them) and
    returns only what it removed itself.
    """
    with engine.begin() as conn:
        if not _has_deltas(conn):
            return 0
        gone = conn.execute(delete(_TABLE).returning(_TABLE.c.status, _TABLE.c.n)).all()
        sums: dict[str, int] = defaultdict(int)
        for status, n in gone:
            sums[status] += n
        if sums:
            conn.execute(insert(_TABLE), [{"status": k, "n": v} for k, v in sorted(sums.items())])
        return len(gone)


def _has_deltas(conn: Connection) -> bool:
    """More rows than statuses: something to fold (a cheap read over the small table)."""
    rows, statuses = conn.execute(
        select(func.count(), func.count(_TABLE.c.status.distinct()))
    ).one()
    return bool(rows > statuses)
