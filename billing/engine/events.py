"""The append-only event log: every state change with who made it and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from billing.domain.notifications import id_fields
from billing.engine.limits import REASON
from billing.engine.outbox import add_notification, related_ids
from billing.store.models import Event


def record_event(
    session: Session,
    *,
    at: datetime,
    entity_type: str,
    entity_id: int,
    event: str,
    actor: str,
    reason: str | None = None,
    extra_data: Mapping[str, Any] | None = None,
    **data: Any,
) -> None:
    """Add an event to the caller's transaction, so it commits (or not) with the change.

    `extra_data` adds data keys a keyword cannot carry (e.g. a data key named "reason").

    A notification type (domain/notifications.py) also gets its outbox row here, in the same
    transaction (engine/outbox.py). The subscription and customer it is about are derived
    here (from the entity's row, else the ids in `data`), for the audit log's filters."""
    if extra_data:
        data = {**data, **extra_data}
    ids = related_ids(session, entity_type, entity_id, data)
    session.add(
        Event(
            at=at,
            entity_type=entity_type,
            entity_id=entity_id,
            event=event,
            actor=actor,
            # People's reasons are checked where they are typed (checked_reason); this keeps a
            # composed one (with a gateway's code in it) within the column on PostgreSQL too.
            reason=reason[:REASON] if reason else reason,
            data=data,
            subscription_id=_int(ids.get("subscription_id")),
            customer_id=_int(ids.get("customer_id")),
        )
    )
    add_notification(
        session,
        at=at,
        entity_type=entity_type,
        entity_id=entity_id,
        event=event,
        data=data,
        ids=ids,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class NewEvent:
    """One event of a batch whose owners the caller already knows (`ids`: what related_ids
    would derive, e.g. subscription_id and customer_id), so recording it reads no row."""

    entity_type: str
    entity_id: int
    event: str
    ids: Mapping[str, int | str]
    reason: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def record_events(session: Session, *, at: datetime, actor: str, events: list[NewEvent]) -> None:
    """record_event for many changes of one transaction: one multi-row INSERT instead of a
    flush (and an owner lookup) per event, so a batch of invoicing pays O(1) round trips.

    Same rows as record_event: the owners come from `ids`, notifications get their outbox
    row (add_notification, in this transaction)."""
    if not events:
        return
    rows = []
    for e in events:
        ids = {**id_fields(e.data), **e.ids}
        rows.append(
            {
                "at": at,
                "entity_type": e.entity_type,
                "entity_id": e.entity_id,
                "event": e.event,
                "actor": actor,
                "reason": e.reason[:REASON] if e.reason else e.reason,
                "data": dict(e.data),
                "subscription_id": _int(ids.get("subscription_id")),
                "customer_id": _int(ids.get("customer_id")),
            }
        )
        add_notification(
            session,
            at=at,
            entity_type=e.entity_type,
            entity_id=e.entity_id,
            event=e.event,
            data=dict(e.data),
            ids=ids,
        )
    session.connection().execute(insert(Event), rows)
