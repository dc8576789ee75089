"""The audit log: the append-only event table, filtered and paged, newest first.

A customer's or subscription's trail includes the events of its invoices and attempts
(`event.customer_id` / `event.subscription_id`, set by record_event). Paging is keyset on the
event id (`before_id`), so a page costs the same however large the log is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, or_, select

from billing.domain.text import escape
from billing.engine.context import BillingContext
from billing.engine.invoices import find_invoice
from billing.errors import InvalidInput, NotFound
from billing.store.db import session
from billing.store.models import Customer, Event, is_row_id


@dataclass(frozen=True)
class AuditFilter:
    """What `events list` asks for; every field optional. `type_` ending in "." (or "*") is
    a prefix ("invoice." = every invoice event), else an exact event name."""

    subscription: int | None = None
    invoice: str | None = None  # row id or number (INV-...)
    customer: str | None = None  # referenceId, else row id
    actor: str | None = None
    type_: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    before_id: int | None = None


@dataclass(frozen=True)
class AuditPage:
    events: list[Event]
    more: bool  # older events match too: ask again with before_id=events[-1].id


def list_audit_events(ctx: BillingContext, f: AuditFilter, limit: int = 100) -> AuditPage:
    """Matching events, newest (highest id) first, at most `limit`; NotFound for an
    invoice or customer that does not exist (so a typo is not an empty log)."""
    if f.since is not None and f.until is not None and not f.since < f.until:
        raise InvalidInput("--from must be before --to")
    with session(ctx.engine) as s:
        query = select(Event)
        if f.subscription is not None:
            query = query.where(col(Event.subscription_id) == _row_id(f.subscription))
        if f.invoice is not None:
            invoice = find_invoice(s, f.invoice)
            query = query.where(
                col(Event.entity_type) == "invoice", col(Event.entity_id) == invoice.id
            )
        if f.customer is not None:
            query = query.where(col(Event.customer_id) == _customer_id(s, f.customer))
        if f.actor is not None:
            query = query.where(col(Event.actor) == _plain(f.actor, "--actor"))
        if f.type_ is not None:
            name = _plain(f.type_, "--type")
            if name.endswith((".", "*")):
                query = query.where(col(Event.event).startswith(name.rstrip("*"), autoescape=True))
            else:
                query = query.where(col(Event.event) == name)
        if f.since is not None:
            query = query.where(col(Event.at) >= f.since)
        if f.until is not None:
            query = query.where(col(Event.at) < f.until)
        if f.before_id is not None:
            query = query.where(col(Event.id) < f.before_id)
        rows = list(s.exec(query.order_by(col(Event.id).desc()).limit(limit + 1)).all())
    return AuditPage(rows[:limit], len(rows) > limit)


def event_view(e: Event) -> dict[str, Any]:
    """One event for --json: times ISO-8601 UTC, data as stored."""
    return {
        "id": e.id,
        "at": e.at,
        "entity": {"type": e.entity_type, "id": e.entity_id},
        "event": e.event,
        "actor": e.actor,
        "reason": e.reason,
        "subscription_id": e.subscription_id,
        "customer_id": e.customer_id,
        "data": e.data,
    }


def _row_id(value: int) -> int:
    return value if is_row_id(value) else 0  # names no row: an empty page, not a DB error


def _plain(value: str, label: str) -> str:
    if not value or not value.isprintable() or len(value) > 128:
        raise InvalidInput(f"{label} must be 1-128 printable characters")
    return value


def _customer_id(s: Session, key: str) -> int:
    """A customer by referenceId (deleted ones too: their history is kept), else by row id."""
    _plain(key, "--customer")
    conditions = [col(Customer.reference_id) == key]
    if key.isascii() and key.isdigit() and is_row_id(int(key)):
        conditions.append(col(Customer.id) == int(key))
    found = s.exec(select(Customer.id, Customer.reference_id).where(or_(*conditions))).all()
    for customer_id, reference in found:  # a referenceId that is all digits wins over an id
        if reference == key and customer_id is not None:
            return customer_id
    if found and found[0][0] is not None:
        return found[0][0]
    raise NotFound(f"no customer {escape(key)!r} (give its referenceId or id)")
