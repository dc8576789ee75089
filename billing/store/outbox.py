"""Named queries of the outbox: fan-out, delivery leases (the claims.py pattern) and outcomes.

Index: ix_outbox_delivery_due (state, next_attempt_at) serves the claim.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, text
from sqlmodel import col, select

from billing.clock import ensure_utc
from billing.store.claims import IDS_PARAM, NOW_PARAM, UNTIL_PARAM, claim_rows
from billing.store.db import session
from billing.store.models import Customer, OutboxDelivery, OutboxEvent

SELECT_DUE = """
SELECT id FROM outbox_delivery
 WHERE state = 'pending'
   AND next_attempt_at <= :now
   AND (lease_until IS NULL OR lease_until < :now)
 ORDER BY next_attempt_at, id
 LIMIT :limit
"""

CLAIM_DUE = text("""
UPDATE outbox_delivery
   SET lease_owner = :owner, lease_until = :until
 WHERE id IN :ids
   AND state = 'pending'
   AND next_attempt_at <= :now
   AND (lease_until IS NULL OR lease_until < :now)
RETURNING id
""").bindparams(IDS_PARAM, NOW_PARAM, UNTIL_PARAM)

# The outcome of one try, only while the lease is still ours: a node that lost its lease (it
# took longer than the lease) does not overwrite what the new holder recorded.
FINISH = text("""
UPDATE outbox_delivery
   SET state = :state, attempts = attempts + 1, last_error = :error,
       next_attempt_at = :next_at, delivered_at = :delivered_at,
       lease_owner = NULL, lease_until = NULL, updated_at = :now
 WHERE id = :id AND lease_owner = :owner AND state = 'pending'
""").bindparams(NOW_PARAM)

RELEASE_ALL = text("""
UPDATE outbox_delivery SET lease_owner = NULL, lease_until = NULL
 WHERE lease_owner = :owner AND state = 'pending'
""")


def claim_deliveries(
    engine: Engine, owner: str, now: datetime, lease_seconds: int, limit: int
) -> list[int]:
    """Lease up to `limit` due pending deliveries to `owner`, oldest due first."""
    return claim_rows(engine, SELECT_DUE, CLAIM_DUE, owner, now, lease_seconds, limit)


def finish_delivery(
    engine: Engine,
    delivery_id: int,
    owner: str,
    now: datetime,
    *,
    state: str,
    error: str | None,
    next_at: datetime | None,
) -> bool:
    """Record one try (delivered, failed with a retry at `next_at`, or dead); False if the
    lease was no longer ours."""
    params = {
        "id": delivery_id,
        "owner": owner,
        "now": ensure_utc(now, "delivery time"),
        "state": state,
        "error": error,
        "next_at": next_at,
        "delivered_at": now if state == "delivered" else None,
    }
    with engine.begin() as conn:
        return conn.execute(FINISH, params).rowcount == 1


def release_deliveries(engine: Engine, owner: str) -> int:
    """Graceful stop: hand back the deliveries `owner` still leases."""
    with engine.begin() as conn:
        return conn.execute(RELEASE_ALL, {"owner": owner}).rowcount


def fan_out(
    engine: Engine, now: datetime, targets: list[tuple[str, str]], email_types: frozenset[str]
) -> int:
    """Create the deliveries of outbox events not fanned out yet; returns how many.

    `targets` are (channel, target) pairs; an email one applies only to `email_types` and
    events with a customer. PostgreSQL: SKIP LOCKED, so two daemons split the events.
    """
    with session(engine) as s:
        events = s.exec(
            select(OutboxEvent)
            .where(col(OutboxEvent.fanned_out_at).is_(None))
            .order_by(col(OutboxEvent.id))
            .limit(500)
            .with_for_update(skip_locked=True)
        ).all()
        # The merchant's own id for the customer, read once for the batch; the payload is
        # final from here on (every delivery and redelivery sends the same bytes).
        wanted = {e.customer_id for e in events if e.customer_id is not None}
        references = dict(
            s.exec(
                select(Customer.id, Customer.reference_id).where(col(Customer.id).in_(wanted))
            ).all()
        )
        made = 0
        for event in events:
            if event.customer_id in references:
                event.payload = {
                    **event.payload,
                    "customer_reference": references[event.customer_id],
                }
            assert event.id is not None
            for channel, target in targets:
                if channel == "email" and (
                    event.type not in email_types or event.customer_id is None
                ):
                    continue
                s.add(
                    OutboxDelivery(
                        outbox_id=event.id,
                        channel=channel,
                        target=target,
                        next_attempt_at=event.created_at,
                        created_at=now,
                        updated_at=now,
                    )
                )
                made += 1
            event.fanned_out_at = now
            s.add(event)
    return made
