"""Operator views of the outbox: list deliveries, put one event back to pending (store only)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select, update

from billing.domain.notifications import NOTIFICATION_TYPES
from billing.domain.text import escape
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.subscriptions import checked_reason
from billing.errors import Conflict, InvalidInput, NotFound
from billing.settings import redact_url
from billing.store.db import session
from billing.store.models import OutboxDelivery, OutboxEvent

EVENT_ID = re.compile(r"evt_[0-9a-f]{32}")
DELIVERY_STATES = ("pending", "delivered", "dead")
CHANNELS = ("webhook", "email")


@dataclass(frozen=True)
class DeliveryView:
    event: OutboxEvent
    delivery: OutboxDelivery | None

    def as_dict(self) -> dict[str, Any]:
        d = self.delivery
        return {
            "event_id": self.event.event_id,
            "type": self.event.type,
            "created_at": self.event.created_at,
            "data": self.event.payload,
            "channel": d.channel if d else None,
            # A URL's user:password@ never leaves the store (settings refuse them anyway).
            "target": (redact_url(d.target) if d.channel == "webhook" else d.target) if d else None,
            "state": d.state if d else ("no receivers" if self.event.fanned_out_at else "new"),
            "attempts": d.attempts if d else 0,
            "next_attempt_at": d.next_attempt_at if d else None,
            "delivered_at": d.delivered_at if d else None,
            "last_error": d.last_error if d else None,
        }


def list_deliveries(
    ctx: BillingContext,
    *,
    type_: str | None = None,
    state: str | None = None,
    channel: str | None = None,
    event_id: str | None = None,
    limit: int = 100,
) -> list[DeliveryView]:
    """Newest events first, one line per delivery (an event not fanned out yet: one line)."""
    if type_ is not None and type_ not in NOTIFICATION_TYPES:
        raise InvalidInput(
            f"unknown event type {escape(type_)!r}; use one of "
            + ", ".join(sorted(NOTIFICATION_TYPES))
        )
    if state is not None and state not in DELIVERY_STATES:
        raise InvalidInput(
            f"unknown state {escape(state)!r}; use one of " + ", ".join(DELIVERY_STATES)
        )
    if channel is not None and channel not in CHANNELS:
        raise InvalidInput(
            f"unknown channel {escape(channel)!r}; use one of " + ", ".join(CHANNELS)
        )
    if event_id is not None:
        _check_event_id(event_id)
    with session(ctx.engine) as s:
        query = select(OutboxEvent, OutboxDelivery).join(
            OutboxDelivery,
            col(OutboxDelivery.outbox_id) == col(OutboxEvent.id),
            isouter=state is None and channel is None,
        )
        if type_ is not None:
            query = query.where(OutboxEvent.type == type_)
        if event_id is not None:
            query = query.where(OutboxEvent.event_id == event_id)
        if state is not None:
            query = query.where(OutboxDelivery.state == state)
        if channel is not None:
            query = query.where(OutboxDelivery.channel == channel)
        rows = s.exec(
            query.order_by(col(OutboxEvent.id).desc(), col(OutboxDelivery.id)).limit(limit)
        ).all()
    return [DeliveryView(event, delivery) for event, delivery in rows]


def redeliver(
    ctx: BillingContext, event_id: str, reason: str | None, channel: str | None = None
) -> int:
    """Put the event's delivered or dead deliveries back to pending, due now; how many.

    The event id stays the same, so a receiver that already has it can drop the copy."""
    _check_event_id(event_id)
    if channel is not None and channel not in CHANNELS:
        raise InvalidInput(
            f"unknown channel {escape(channel)!r}; use one of " + ", ".join(CHANNELS)
        )
    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        event = s.exec(select(OutboxEvent).where(OutboxEvent.event_id == event_id)).first()
        if event is None:
            raise NotFound(f"no event {event_id}")
        statement = (
            update(OutboxDelivery)
            .where(col(OutboxDelivery.outbox_id) == event.id)
            .where(col(OutboxDelivery.state).in_(("delivered", "dead")))
        )
        if channel is not None:
            statement = statement.where(col(OutboxDelivery.channel) == channel)
        changed = s.exec(
            statement.values(
                state="pending",
                attempts=0,
                next_attempt_at=now,
                last_error=None,
                delivered_at=None,
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
        ).rowcount
        if not changed:
            raise Conflict(
                f"event {event_id} has no delivered or dead delivery to send again "
                "(still pending, or no receiver configured when it was fanned out)"
            )
        assert event.id is not None
        record_event(
            s,
            at=now,
            entity_type="outbox_event",
            entity_id=event.id,
            event="outbox.redeliver",
            actor=ctx.actor,
            reason=reason,
            event_id=event_id,
            deliveries=changed,
        )
    return int(changed)


def _check_event_id(event_id: str) -> None:
    if not EVENT_ID.fullmatch(event_id):
        raise InvalidInput("an event id looks like evt_ followed by 32 hex digits")
