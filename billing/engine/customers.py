"""Customers and their saved cards, kept in sync with Plexo.

Plexo is written first and our row second, so a refusal at Plexo leaves nothing behind; if our
write fails after Plexo accepted a new customer, the Plexo customer is deleted again. Every command
converges when retried after a failure that Plexo already recorded (a timeout, or our own write
failing): a create adopts the customer Plexo holds under our reference when its fields match, and
a delete whose target Plexo confirms is gone finishes here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlmodel import Session, col, select

from billing.domain.cards import refuse_card_number_as_token
from billing.domain.contact import (
    ADDRESS_LIMITS,
    normalize_address,
    normalize_email,
    normalize_metadata,
    normalize_phone,
    parse_birthdate,
)
from billing.domain.identity import normalize_document
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.text import checked_text, gateway_text, refuse_unsafe
from billing.engine import limits
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.invoicing import void_open_invoices
from billing.engine.status import set_status
from billing.errors import Conflict, InvalidInput, NotFound
from billing.plexo.errors import DuplicateReference, PlexoError, PlexoNotFound
from billing.plexo.models import (
    CustomerPayload,
    PlexoCustomer,
    PlexoInstrument,
)
from billing.store.db import session
from billing.store.models import Customer, PaymentInstrument, Subscription, is_row_id

log = logging.getLogger(__name__)

ADDRESS_KEYS = tuple(ADDRESS_LIMITS)
CUSTOMER_STATUSES = ("active", "inactive")


@dataclass(frozen=True)
class CustomerInput:
    """Validated customer fields (construct through `validate_customer`)."""

    reference_id: str
    email: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    document_type: str | None = None
    document_number: str | None = None
    address: dict[str, str] = field(default_factory=dict)
    birthdate: date | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    status: str = "active"


def validate_customer(raw: dict[str, Any], today: date) -> CustomerInput:
    """Check every field; raises InvalidInput naming the field. Card numbers, control
    characters and text longer than its column are refused before anything else."""
    text = _checked_texts(raw)
    ref = text.get("reference_id", "")
    if not ref:
        raise InvalidInput("reference_id is required")
    if not text.get("email"):
        raise InvalidInput("email is required (Plexo rejects customers without one)")
    doc_type, doc_number = text.get("document_type"), text.get("document_number")
    if bool(doc_type) != bool(doc_number):
        raise InvalidInput("document needs both a type and a number")
    document: tuple[str | None, str | None] = (None, None)
    if doc_type and doc_number:
        document = normalize_document(doc_type, doc_number)
    address = normalize_address(raw.get("address") or {})
    status = text.get("status") or "active"
    if status not in CUSTOMER_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(CUSTOMER_STATUSES)} (got {status!r})")
    birthdate = text.get("birthdate")
    return CustomerInput(
        reference_id=ref,
        email=normalize_email(text["email"]),
        first_name=text.get("first_name") or None,
        last_name=text.get("last_name") or None,
        phone=normalize_phone(text["phone"]) if text.get("phone") else None,
        document_type=document[0],
        document_number=document[1],
        address=address,
        birthdate=parse_birthdate(birthdate, today) if birthdate else None,
        metadata=normalize_metadata(dict(raw.get("metadata") or {})),
        status=status,
    )


def _checked_texts(raw: dict[str, Any]) -> dict[str, str]:
    """The plain text fields of `raw`, stripped, each within its column's length (the address
    and metadata, kept as JSON, are checked by their own normalisers)."""
    result: dict[str, str] = {}
    for name, value in raw.items():
        if name in ("address", "metadata") or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidInput(f"{name} must be text")
        limit = limits.CUSTOMER.get(name, _OTHER_TEXT)
        # "+86 138 0013 8000" has 13 digits and passes Luhn one time in ten; no card number
        # is written with a leading +, so an international phone number is not checked as one.
        international = name == "phone" and str(value).strip().startswith("+")
        result[name] = checked_text(str(value), name, limit, cards=not international)
    return result


_OTHER_TEXT = 100  # birthdate, or any other short field without a column of its own


def _payload(data: CustomerInput) -> CustomerPayload:
    return CustomerPayload(
        reference_id=data.reference_id,
        email=data.email,
        first_name=data.first_name,
        last_name=data.last_name,
        phone=data.phone,
        document=(
            {"type": data.document_type, "value": data.document_number}
            if data.document_type and data.document_number
            else None
        ),
        address=data.address or None,
        birthdate=data.birthdate,
        metadata=data.metadata,
    )


def get_customer(s: Session, reference_id: str, *, include_deleted: bool = False) -> Customer:
    refuse_unsafe(reference_id, "customer reference")
    customer = s.exec(select(Customer).where(Customer.reference_id == reference_id)).first()
    if customer is None:
        raise NotFound(f"no customer with reference {reference_id!r}")
    if customer.status == "deleted" and not include_deleted:
        raise NotFound(f"customer {reference_id!r} was deleted (its history is kept)")
    return customer


def create_customer(
    ctx: BillingContext, data: CustomerInput, reason: str | None = None
) -> Customer:
    from billing.engine.subscriptions import checked_reason

    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        taken = s.exec(select(Customer.id).where(Customer.reference_id == data.reference_id))
        if taken.first() is not None:
            raise Conflict(f"a customer with reference {data.reference_id!r} already exists")
    payload = _payload(data)
    try:
        remote = ctx.plexo.create_customer(payload)
    except DuplicateReference:
        remote = _adopt(ctx, payload)
    try:
        with session(ctx.engine) as s:
            customer = Customer(
                reference_id=data.reference_id,
                email=data.email,
                plexo_id=_checked_gateway_id(remote.id, "customer id", limits.PLEXO_ID),
                created_at=now,
                updated_at=now,
            )
            _apply(customer, data)
            s.add(customer)
            s.flush()
            assert customer.id is not None
            record_event(
                s,
                at=now,
                entity_type="customer",
                entity_id=customer.id,
                event="customer.created",
                actor=ctx.actor,
                reason=reason,
                reference_id=data.reference_id,
                plexo_id=remote.id,
            )
            return customer
    except Exception:
        try:
            ctx.plexo.delete_customer(remote.id)  # compensate: no orphan at Plexo
        except PlexoError:  # the retry adopts it (same reference, same fields)
            log.warning("customer.compensation_failed", extra={"event": "customer.orphan"})
        raise


def _adopt(ctx: BillingContext, payload: CustomerPayload) -> PlexoCustomer:
    """Plexo already holds our reference (an earlier try it recorded): take it if it is ours."""
    found = ctx.plexo.find_customer(payload.reference_id)
    if found is None:
        raise Conflict(
            f"Plexo refuses reference {payload.reference_id!r} as a duplicate but does not list it"
        )
    differs = _differences(payload, found)
    if differs:
        raise Conflict(
            f"Plexo already has customer {payload.reference_id!r} ({found.id}) with other "
            f"{', '.join(differs)}; not adopting it"
        )
    return found


def _differences(payload: CustomerPayload, remote: PlexoCustomer) -> list[str]:
    """Names of the fields where Plexo's customer differs from what we would send."""
    ours = payload.model_dump()
    theirs = remote.model_dump()
    theirs["address"] = theirs["address"] or None
    return [
        name
        for name in CustomerPayload.model_fields
        if name != "reference_id" and ours[name] != theirs[name]
    ]


def _apply(customer: Customer, data: CustomerInput) -> None:
    customer.reference_id = data.reference_id
    customer.email = data.email
    customer.first_name = data.first_name
    customer.last_name = data.last_name
    customer.phone = data.phone
    customer.document_type = data.document_type
    customer.document_number = data.document_number
    customer.address = dict(data.address)
    customer.birthdate = data.birthdate
    customer.attributes = dict(data.metadata)
    customer.status = data.status


def current_input(customer: Customer) -> CustomerInput:
    return CustomerInput(
        reference_id=customer.reference_id,
        email=customer.email,
        first_name=customer.first_name,
        last_name=customer.last_name,
        phone=customer.phone,
        document_type=customer.document_type,
        document_number=customer.document_number,
        address=dict(customer.address),
        birthdate=customer.birthdate,
        metadata=dict(customer.attributes),
        status=customer.status,
    )


def update_customer(
    ctx: BillingContext, reference_id: str, changes: dict[str, Any], reason: str | None = None
) -> Customer:
    """Merge `changes` into the stored customer, validate the whole, PUT it to Plexo, store it."""
    from billing.engine.subscriptions import checked_reason

    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
        current = _raw(current_input(customer))
        if "metadata" in changes:  # --metadata adds or changes keys; it does not drop the rest
            changes = {**changes, "metadata": {**current["metadata"], **changes["metadata"]}}
        merged = {**current, **changes}
    data = validate_customer(merged, now.astimezone(ctx.tz).date())
    if data.reference_id != reference_id:
        raise InvalidInput("reference_id cannot be changed")
    assert customer.plexo_id is not None
    ctx.plexo.update_customer(customer.plexo_id, _payload(data))
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
        _apply(customer, data)
        customer.updated_at = now
        s.add(customer)
        assert customer.id is not None
        record_event(
            s,
            at=now,
            entity_type="customer",
            entity_id=customer.id,
            event="customer.updated",
            actor=ctx.actor,
            reason=reason,
            fields=sorted(changes),
        )
        return customer


def _raw(data: CustomerInput) -> dict[str, Any]:
    raw = {k: v for k, v in data.__dict__.items()}
    raw["birthdate"] = data.birthdate.isoformat() if data.birthdate else None
    return raw


def delete_customer(ctx: BillingContext, reference_id: str, reason: str | None) -> Customer:
    """DELETE at Plexo, cancel the subscriptions, keep the billing history."""
    from billing.engine.subscriptions import checked_reason

    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
        plexo_id = customer.plexo_id
    if plexo_id:
        try:
            ctx.plexo.delete_customer(plexo_id)
        except PlexoNotFound:
            # Gone already (an earlier try Plexo recorded)? Only Plexo's own word counts.
            if not ctx.plexo.customer_gone(plexo_id):
                raise
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
        assert customer.id is not None
        # Invoices first (lock order: invoice, then subscription, as when recording charges).
        void_open_invoices(ctx, s, now, "customer deleted", customer_id=customer.id)
        customer.status = "deleted"
        customer.deleted_at = now
        customer.updated_at = now
        s.add(customer)
        subs = s.exec(
            select(Subscription)
            .where(Subscription.customer_id == customer.id)
            .where(Subscription.status != SubscriptionStatus.canceled)
        ).all()
        for sub in subs:
            set_status(ctx, s, sub, SubscriptionStatus.canceled, now, "customer deleted")
        for instrument in s.exec(
            select(PaymentInstrument).where(PaymentInstrument.customer_id == customer.id)
        ).all():
            s.add(_retire(instrument, now))
        record_event(
            s,
            at=now,
            entity_type="customer",
            entity_id=customer.id,
            event="customer.deleted",
            actor=ctx.actor,
            reason=reason,
            subscriptions_canceled=len(subs),
        )
        return customer


def list_customers(ctx: BillingContext, *, include_deleted: bool = False) -> list[Customer]:
    with session(ctx.engine) as s:
        query = select(Customer).order_by(col(Customer.id))
        if not include_deleted:
            query = query.where(Customer.status != "deleted")
        return list(s.exec(query).all())


# --- instruments -------------------------------------------------------------------------


def link_instrument(ctx: BillingContext, reference_id: str) -> str:
    """Open a Plexo tokenization session; returns the hosted URL for the customer."""
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
    assert customer.plexo_id is not None
    ref = f"tok-{customer.reference_id}-{int(ctx.clock.now().timestamp())}"
    try:
        return ctx.plexo.create_tokenization_session(customer.plexo_id, ref).url
    except DuplicateReference:  # opened by an earlier try that timed out: hand out that one
        found = ctx.plexo.find_session(customer.plexo_id, ref)
        if found is None:
            raise
        return found.url


def sync_instruments(
    ctx: BillingContext, reference_id: str, reason: str | None = None
) -> list[PaymentInstrument]:
    """Mirror the customer's saved cards from Plexo: new tokens added, vanished ones removed."""
    from billing.engine.subscriptions import checked_reason

    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
    assert customer.plexo_id is not None and customer.id is not None
    remote = {i.token: i for i in ctx.plexo.list_instruments(customer.plexo_id)}
    for token in remote:
        refuse_card_number_as_token(token, "instrument token")
        _checked_gateway_id(token, "card token", limits.INSTRUMENT["token"])
    with session(ctx.engine) as s:
        local = {
            i.token: i
            for i in s.exec(
                select(PaymentInstrument).where(PaymentInstrument.customer_id == customer.id)
            ).all()
        }
        for token, item in remote.items():
            row = local.get(token) or PaymentInstrument(
                customer_id=customer.id, token=token, created_at=now
            )
            _apply_instrument(row, item)
            row.updated_at = now
            s.add(row)
        for token, row in local.items():
            if token not in remote and row.status != "removed":
                s.add(_retire(row, now))
        s.flush()
        _ensure_default(s, customer.id)
        record_event(
            s,
            at=now,
            entity_type="customer",
            entity_id=customer.id,
            event="instruments.synced",
            actor=ctx.actor,
            reason=reason,
            count=len(remote),
        )
    return list_instruments(ctx, reference_id)


def _apply_instrument(row: PaymentInstrument, item: PlexoInstrument) -> None:
    """Plexo's display data, never more than a BIN and four digits: anything else that looks
    like a card number is masked, and a BIN or last4 that is not one is dropped."""
    row.brand = gateway_text(item.brand, limits.INSTRUMENT["brand"])
    row.bin = _digits_or_none(item.bin, 6, limits.INSTRUMENT["bin"])
    row.last4 = _digits_or_none(item.last4, 4, limits.INSTRUMENT["last4"])
    row.card_type = gateway_text(item.card_type, limits.INSTRUMENT["card_type"])
    row.exp_month = item.exp_month
    row.exp_year = item.exp_year
    row.status = "active" if (item.status or "active") == "active" else "removed"


def _digits_or_none(value: str | None, shortest: int, longest: int) -> str | None:
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return value if shortest <= len(value) <= longest else None


def _checked_gateway_id(value: str, what: str, limit: int) -> str:
    """An identifier Plexo gave us (customer id, token) that we store and send back: refused
    (a gateway failure, exit 1) when it cannot be stored as it is on both backends."""
    if len(value) > limit or not value.isprintable():
        raise PlexoError(
            f"Plexo sent a {what} that cannot be stored ({len(value)} characters, at most "
            f"{limit} printable ones allowed); nothing was saved"
        )
    return value


def _retire(row: PaymentInstrument, now: datetime) -> PaymentInstrument:
    """Mark a card removed here (it is gone at Plexo, or its customer is)."""
    row.status = "removed"
    row.is_default = False
    row.updated_at = now
    return row


def _ensure_default(s: Session, customer_id: int) -> None:
    active = s.exec(
        select(PaymentInstrument)
        .where(PaymentInstrument.customer_id == customer_id)
        .where(PaymentInstrument.status == "active")
        .order_by(col(PaymentInstrument.id))
    ).all()
    if active and not any(i.is_default for i in active):
        active[0].is_default = True
        s.add(active[0])


def list_instruments(
    ctx: BillingContext, reference_id: str, *, include_removed: bool = False
) -> list[PaymentInstrument]:
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
        query = select(PaymentInstrument).where(PaymentInstrument.customer_id == customer.id)
        if not include_removed:
            query = query.where(PaymentInstrument.status == "active")
        return list(s.exec(query.order_by(col(PaymentInstrument.id))).all())


def _find_instrument(s: Session, customer: Customer, which: str) -> PaymentInstrument:
    """An instrument by our id or by its token, refusing anything shaped like a card number."""
    refuse_unsafe(which, "instrument")
    refuse_card_number_as_token(which, "instrument")
    query = select(PaymentInstrument).where(PaymentInstrument.customer_id == customer.id)
    if which.isascii() and which.isdigit() and len(which) < 12:
        if not is_row_id(int(which)):
            raise NotFound(f"customer {customer.reference_id!r} has no active instrument {which!r}")
        query = query.where(PaymentInstrument.id == int(which))
    else:
        query = query.where(PaymentInstrument.token == which)
    found = s.exec(query).first()
    if found is None or found.status != "active":
        raise NotFound(f"customer {customer.reference_id!r} has no active instrument {which!r}")
    return found


def remove_instrument(
    ctx: BillingContext, reference_id: str, which: str, reason: str | None = None
) -> PaymentInstrument:
    from billing.engine.subscriptions import checked_reason

    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
        instrument = _find_instrument(s, customer, which)
    assert customer.plexo_id is not None
    try:
        ctx.plexo.delete_instrument(customer.plexo_id, instrument.token)
    except PlexoNotFound:
        # Removed by an earlier try? Believe the 404 only when Plexo's list agrees.
        listed = ctx.plexo.list_instruments(customer.plexo_id)
        if any(i.token == instrument.token and i.status != "removed" for i in listed):
            raise
    with session(ctx.engine) as s:
        row = s.get(PaymentInstrument, instrument.id)
        assert row is not None and customer.id is not None and row.id is not None
        s.add(_retire(row, now))
        s.flush()
        _ensure_default(s, customer.id)
        record_event(
            s,
            at=now,
            entity_type="instrument",
            entity_id=row.id,
            event="instrument.removed",
            actor=ctx.actor,
            reason=reason,
            last4=row.last4,
        )
        return row


def set_default_instrument(
    ctx: BillingContext, reference_id: str, which: str, reason: str | None = None
) -> PaymentInstrument:
    from billing.engine.subscriptions import checked_reason

    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        customer = get_customer(s, reference_id)
        chosen = _find_instrument(s, customer, which)
        for row in s.exec(
            select(PaymentInstrument).where(PaymentInstrument.customer_id == customer.id)
        ).all():
            row.is_default = row.id == chosen.id
            row.updated_at = now
            s.add(row)
        assert chosen.id is not None
        record_event(
            s,
            at=now,
            entity_type="instrument",
            entity_id=chosen.id,
            event="instrument.default",
            actor=ctx.actor,
            reason=reason,
        )
        return chosen
