"""The one way a subscription changes status: checked against the transition table, logged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from billing.domain.lifecycle import SubscriptionStatus, check_transition
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.store.models import Subscription


def set_status(
    ctx: BillingContext,
    s: Session,
    sub: Subscription,
    new: SubscriptionStatus,
    now: datetime,
    reason: str | None,
    event: str | None = None,
    **data: Any,
) -> None:
    """Move `sub` to `new` in the caller's transaction (InvalidTransition if not allowed)."""
    check_transition("subscription", SubscriptionStatus(sub.status), new)
    old = sub.status
    sub.status = new
    sub.updated_at = now
    if new == SubscriptionStatus.canceled:
        sub.canceled_at = now
        sub.next_billing_at = None
        # Nothing is left to review: a canceled subscription is no longer held.
        sub.held_at = sub.held_reason = sub.held_periods = sub.catchup_through_index = None
    s.add(sub)
    assert sub.id is not None
    record_event(
        s,
        at=now,
        entity_type="subscription",
        entity_id=sub.id,
        event=event or f"subscription.{new}",
        actor=ctx.actor,
        reason=reason,
        previous=old,
        **data,
    )
