"""The store side of the retry policy: which card an attempt uses and what the caps see.

Checked where the attempt is written ahead (engine/charge.py), so a scheduled retry and an
operator's `invoices retry` obey the same caps (domain/retry.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from billing.domain.declines import DeclineClass
from billing.domain.lifecycle import AttemptState
from billing.domain.retry import WINDOW_24H, WINDOW_30D, CapRefusal, CardHistory, check_caps
from billing.store.models import ChargeAttempt, Customer, Invoice, PaymentInstrument, Subscription
from billing.store.types import UTCDateTime

# Attempts that are, or may still become, a decline of the card.
_COUNTED = (
    AttemptState.declined,
    AttemptState.sending,
    AttemptState.unknown,
    AttemptState.pending,
)


def _card_history_query() -> Select[int, int, int, Any, int, Any]:
    """Built once (store/claims.py style): bound per call by instrument and window starts."""
    a = ChargeAttempt
    counted = col(a.state).in_([str(x) for x in _COUNTED])
    recent_day = and_(counted, col(a.created_at) > bindparam("day_since", type_=UTCDateTime()))
    recent_month = and_(counted, col(a.created_at) > bindparam("month_since", type_=UTCDateTime()))
    hard = and_(col(a.state) == AttemptState.declined, col(a.decline_class) == DeclineClass.hard)
    return sa_select(
        func.count(case((hard, 1))),
        func.count(case((col(a.state) == AttemptState.sending, 1))),
        func.count(case((recent_day, 1))),
        func.min(case((recent_day, col(a.created_at)))),
        func.count(case((recent_month, 1))),
        func.min(case((recent_month, col(a.created_at)))),
    ).where(col(a.instrument_id) == bindparam("instrument_id"))


_CARD_HISTORY = _card_history_query()


def card_history(s: Session, instrument_id: int, now: datetime) -> CardHistory:
    """The card's never-retry answers, its charge in flight and its recent declines, across
    all invoices: one query over the card's attempts (ix_charge_attempt_card_recent)."""
    params = {
        "instrument_id": instrument_id,
        "day_since": now - WINDOW_24H,
        "month_since": now - WINDOW_30D,
    }
    row = s.connection().execute(_CARD_HISTORY, params).one()
    hard_count, sending, day, oldest_day, month, oldest_month = row
    return CardHistory(
        bool(hard_count),
        int(day),
        int(month),
        oldest_day,
        oldest_month,
        in_flight=bool(sending),
    )


def hard_declined_cards(s: Session, customer_id: int) -> set[int]:
    """The customer's cards that had a never-retry decline: never charged again."""
    rows = s.exec(
        select(ChargeAttempt.instrument_id)
        .join(PaymentInstrument, col(PaymentInstrument.id) == col(ChargeAttempt.instrument_id))
        .where(PaymentInstrument.customer_id == customer_id)
        .where(ChargeAttempt.state == AttemptState.declined)
        .where(ChargeAttempt.decline_class == DeclineClass.hard)
    ).all()
    return {r for r in rows if r is not None}


def candidate_cards(s: Session, sub: Subscription) -> list[PaymentInstrument]:
    """Active cards in the order they are tried: the subscription's own, the customer's
    default, then the newest first."""
    cards = s.exec(
        select(PaymentInstrument)
        .where(PaymentInstrument.customer_id == sub.customer_id)
        .where(PaymentInstrument.status == "active")
        .order_by(
            col(PaymentInstrument.is_default).desc(),
            col(PaymentInstrument.created_at).desc(),
            col(PaymentInstrument.id).desc(),
        )
    ).all()
    own = [c for c in cards if c.id == sub.instrument_id]
    return own + [c for c in cards if c.id != sub.instrument_id]


def renewal_card(s: Session, sub: Subscription) -> PaymentInstrument | None:
    """The card the next renewal's first attempt would use (pre-dunning warns about it)."""
    blocked = hard_declined_cards(s, sub.customer_id)
    return next((c for c in candidate_cards(s, sub) if c.id not in blocked), None)


def _cards_query(lock: bool) -> Select[PaymentInstrument, bool, bool]:
    """choose_card's query, built once per variant: a customer's active cards (in id order,
    the order their locks are taken in) with, per card, whether it had a hard decline and
    whether invoice `invoice_id` was declined on it."""
    a = ChargeAttempt
    declined = col(a.state) == AttemptState.declined
    hard = (
        sa_select(col(a.id))
        .where(col(a.instrument_id) == col(PaymentInstrument.id), declined)
        .where(col(a.decline_class) == DeclineClass.hard)
        .exists()
    )
    tried = (
        sa_select(col(a.id))
        .where(col(a.instrument_id) == col(PaymentInstrument.id), declined)
        .where(col(a.invoice_id) == bindparam("invoice_id"))
        .exists()
    )
    query = (
        select(PaymentInstrument, hard, tried)
        .where(col(PaymentInstrument.customer_id) == bindparam("customer_id"))
        .where(PaymentInstrument.status == "active")
        .order_by(col(PaymentInstrument.id))
    )
    if not lock:
        return query
    return (
        query.join(Customer, col(Customer.id) == col(PaymentInstrument.customer_id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )


_CARDS, _CARDS_LOCKED = _cards_query(False), _cards_query(True)


def choose_card(
    s: Session, sub: Subscription, invoice: Invoice, *, fallback: bool, lock: bool = False
) -> PaymentInstrument | None:
    """The card the next attempt of `invoice` uses; None when none may be charged.

    Never a card with a hard decline. With fallback on, a retry prefers a card this invoice
    has not been declined on yet (a card the customer added through the update link, or the
    next one after a hard decline); otherwise the first eligible card. With fallback off only
    the first active card is ever tried.

    One query: the candidates (candidate_cards' order) with, per card, whether it had a hard
    decline and whether this invoice was declined on it. `lock` (the write-ahead): the same
    statement locks the customer's active cards and the customer's row (PostgreSQL FOR UPDATE;
    SQLite holds the database lock), so one card is charged at a time and the caps and the
    daily count read after it (cap_refusal(locked=True), bound_breach(lock=False)) see every attempt
    committed before; a statement's own reads could not (its snapshot predates the wait).
    """
    query = _CARDS_LOCKED if lock else _CARDS
    params = {"customer_id": sub.customer_id, "invoice_id": invoice.id}
    found: list[tuple[PaymentInstrument, bool, bool]] = [
        (card, bool(blocked), bool(was_tried))
        for card, blocked, was_tried in s.execute(query, params).all()
    ]
    rows = sorted(
        found, key=lambda r: (r[0].is_default, r[0].created_at, r[0].id or 0), reverse=True
    )  # candidate_cards' order: the default, then the newest first
    own = [r for r in rows if r[0].id == sub.instrument_id]
    rows = own + [r for r in rows if r[0].id != sub.instrument_id]
    if not fallback:
        return rows[0][0] if rows and not rows[0][1] else None
    eligible = [(card, was_tried) for card, blocked, was_tried in rows if not blocked]
    if not eligible:
        return None
    fresh = [card for card, was_tried in eligible if not was_tried]
    return (fresh or [card for card, _ in eligible])[0]


def other_card_left(s: Session, sub: Subscription, declined_card: int | None) -> bool:
    """Whether, besides `declined_card` (just hard-declined), a card may still be charged."""
    blocked = hard_declined_cards(s, sub.customer_id) | {declined_card}
    return any(c.id not in blocked for c in candidate_cards(s, sub))


def cap_refusal(
    s: Session, invoice: Invoice, instrument_id: int, now: datetime, *, locked: bool = False
) -> CapRefusal | None:
    """The card-network cap one more attempt of `invoice` on this card would break, if any.

    The card's row is locked first (PostgreSQL; SQLite holds the database lock), so two
    writers cannot both see room for one more attempt; `locked`: the caller's choose_card
    (lock=True) took that lock already, in this transaction."""
    if not locked:
        s.get(PaymentInstrument, instrument_id, with_for_update=True)
    return check_caps(card_history(s, instrument_id, now), now, invoice.retry_not_before)


def invalid_in_a_row(s: Session, invoice_id: int) -> int:
    """Consecutive invalid_request refusals at the end of the invoice's attempts."""
    classes = s.exec(
        select(ChargeAttempt.decline_class)
        .where(ChargeAttempt.invoice_id == invoice_id)
        .where(ChargeAttempt.state == AttemptState.declined)
        .order_by(col(ChargeAttempt.attempt_number).desc())
    ).all()
    run = 0
    for cls in classes:
        if cls != DeclineClass.invalid_request:
            break
        run += 1
    return run
