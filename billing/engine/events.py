"""The append-only event log: every state change with who made it and why."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

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
    **data: Any,
) -> None:
    """Add an event to the caller's transaction, so it commits (or not) with the change."""
    session.add(
        Event(
            at=at,
            entity_type=entity_type,
            entity_id=entity_id,
            event=event,
            actor=actor,
            reason=reason,
            data=data,
        )
    )
