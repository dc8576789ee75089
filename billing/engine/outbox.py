"""The transactional outbox: a notification row added in the session of the state change.

record_event (engine/events.py) calls add_notification for every event-log entry; entries that
are notifications get an outbox row in the same transaction, so a crash loses none and a
rolled-back change sends none. Delivery is billing/notify/ (a daemon job).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlmodel import Session

from billing.domain.notifications import id_fields, notification_type
from billing.store.models import (
    Invoice,
    OutboxEvent,
    PaymentInstrument,
    ReconciliationFinding,
    Subscription,
)


def new_event_id() -> str:
    """The receiver-visible id: random, so a rebuilt database never repeats one."""
    return f"evt_{uuid.uuid4().hex}"


def add_notification(
    s: Session,
    *,
    at: datetime,
    entity_type: str,
    entity_id: int,
    event: str,
    data: dict[str, Any],
    ids: dict[str, int | str] | None = None,
) -> OutboxEvent | None:
    """Add the outbox row for `event` when it is a notification; None when it is not.
    `ids`: related_ids() when the caller has them already."""
    kind = notification_type(event)
    if kind is None:
        return None
    if ids is None:
        ids = related_ids(s, entity_type, entity_id, data)
    row = OutboxEvent(
        event_id=new_event_id(),
        type=kind,
        created_at=at,
        entity_type=entity_type,
        entity_id=entity_id,
        customer_id=customer if isinstance(customer := ids.get("customer_id"), int) else None,
        payload=ids,
    )
    s.add(row)
    return row


def related_ids(
    s: Session, entity_type: str, entity_id: int, data: dict[str, Any]
) -> dict[str, int | str]:
    """The ids a receiver needs to find the objects: its own and its parents'. Read from rows
    the change has loaded already, so the change's transaction pays (almost) no query."""
    # no_autoflush: looking up related ids must not flush the caller's pending updates early
    # (that would take row locks out of the agreed invoice -> attempt -> subscription order).
    with s.no_autoflush:
        return _related_ids(s, entity_type, entity_id, data)


def _related_ids(
    s: Session, entity_type: str, entity_id: int, data: dict[str, Any]
) -> dict[str, int | str]:
    ids: dict[str, int | str] = id_fields(data)
    customer_id: int | None = None
    if entity_type == "invoice":
        ids["invoice_id"] = entity_id
        number = data.get("invoice_number")
        if isinstance(number, str) and all(
            isinstance(ids.get(k), int) for k in ("subscription_id", "customer_id")
        ):
            # The caller read them from the row (charge._ids): no query for the row again.
            invoice = None
            ids["invoice_number"] = number
        else:
            invoice = s.get(Invoice, entity_id)
        if invoice is not None:
            ids["invoice_number"] = invoice.number
            ids["subscription_id"] = invoice.subscription_id
            customer_id = invoice.customer_id
    elif entity_type == "subscription":
        ids["subscription_id"] = entity_id
        sub = s.get(Subscription, entity_id)
        customer_id = sub.customer_id if sub is not None else None
    elif entity_type in ("instrument", "payment_instrument"):
        ids["instrument_id"] = entity_id
        instrument = s.get(PaymentInstrument, entity_id)
        customer_id = instrument.customer_id if instrument is not None else None
    elif entity_type == "customer":
        customer_id = entity_id
    elif entity_type == "outbox_event":
        outbox = s.get(OutboxEvent, entity_id)
        if outbox is not None:
            customer_id = outbox.customer_id
            if isinstance(sub_id := outbox.payload.get("subscription_id"), int):
                ids.setdefault("subscription_id", sub_id)
    elif entity_type == "reconciliation_finding":
        finding = s.get(ReconciliationFinding, entity_id)
        invoice = s.get(Invoice, finding.invoice_id) if finding and finding.invoice_id else None
        if invoice is not None:
            ids["subscription_id"] = invoice.subscription_id
            customer_id = invoice.customer_id
    if customer_id is None and isinstance(ids.get("customer_id"), int):
        customer_id = int(ids["customer_id"])
    if customer_id is not None:
        ids["customer_id"] = customer_id  # its reference is added at fan-out (one query a batch)
    return ids
