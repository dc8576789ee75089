"""SQLModel tables. Money is integer minor units + ISO currency; every timestamp is UTC.

Invariants the database itself enforces (see ARCHITECTURE.md):
- one invoice per (subscription, period_start): a period can never be billed twice;
- one charge attempt per Plexo referenceId, and per (invoice, attempt_number).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from billing.store.types import UTCDateTime

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


MAX_ROW_ID = 2**31 - 1
"""Row ids are INTEGER: 32 bits on PostgreSQL. A larger id names no row on either backend (and
would make the query itself fail), so lookups answer "not found" for it before asking."""


# Predicates of partial indexes, written out literally by the queries they serve: a planner
# can only prove a query covered by a partial index from literals, not from bound parameters.
ATTEMPT_UNRESOLVED = "state IN ('sending', 'unknown', 'pending')"
DELIVERY_BACKLOG = "state IN ('pending', 'dead')"
SUBSCRIPTION_HELD = "held_at IS NOT NULL"


def is_row_id(value: int) -> bool:
    """True when ``value`` can be the id of a row."""
    return 1 <= value <= MAX_ROW_ID


def _utc(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Customer(SQLModel, table=True):
    """A merchant's customer, mirrored at Plexo (plexo_id is Plexo's UUID)."""

    id: int | None = Field(default=None, primary_key=True)
    reference_id: str = Field(max_length=100, unique=True)
    plexo_id: str | None = Field(default=None, max_length=64, unique=True)
    email: str = Field(max_length=254)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    document_type: str | None = Field(default=None, max_length=16)
    document_number: str | None = Field(default=None, max_length=32)
    address: dict[str, Any] = _json()
    birthdate: date | None = None
    attributes: dict[str, Any] = _json()  # Plexo's "metadata" (string -> string)
    status: str = Field(default="active", max_length=16)  # active | inactive | deleted
    created_at: datetime = _utc()
    updated_at: datetime = _utc()
    deleted_at: datetime | None = _utc(nullable=True)


class PaymentInstrument(SQLModel, table=True):
    """A saved card: only Plexo's token and display data, never the card number."""

    __tablename__ = "payment_instrument"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    token: str = Field(max_length=64, unique=True)
    brand: str | None = Field(default=None, max_length=32)
    bin: str | None = Field(default=None, max_length=8)
    last4: str | None = Field(default=None, max_length=4)
    card_type: str | None = Field(default=None, max_length=16)
    exp_month: int | None = None
    exp_year: int | None = None
    status: str = Field(default="active", max_length=16)  # active | removed
    is_default: bool = False
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class InstrumentWarning(SQLModel, table=True):
    """A pre-dunning warning sent for a card: once per (card, expiry, days ahead), UNIQUE, so
    a second daemon or a rerun cannot send it twice. A card whose expiry Plexo updates is a
    new expiry and is warned about again."""

    __tablename__ = "instrument_warning"
    __table_args__ = (UniqueConstraint("instrument_id", "expires_at", "days_before"),)

    id: int | None = Field(default=None, primary_key=True)
    instrument_id: int = Field(foreign_key="payment_instrument.id", index=True)
    expires_at: datetime = _utc()  # the first moment the card no longer works
    days_before: int
    subscription_id: int | None = Field(default=None, foreign_key="subscription.id")
    sent_at: datetime = _utc()


class Plan(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=200)
    amount_minor: int
    currency: str = Field(max_length=3)
    interval: str = Field(max_length=8)  # day | week | month | year
    interval_count: int = 1
    trial_days: int = 0
    active: bool = True
    created_at: datetime = _utc()


class Subscription(SQLModel, table=True):
    """Periods are computed from `anchor_at`; `next_period_index` is the next period to invoice."""

    __table_args__ = (
        Index("ix_subscription_due", "status", "next_billing_at"),
        # billing_subscriptions_held counts these: a few rows, never a scan of the table.
        Index(
            "ix_subscription_held",
            "status",
            sqlite_where=text(SUBSCRIPTION_HELD),
            postgresql_where=text(SUBSCRIPTION_HELD),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    plan_id: int = Field(foreign_key="plan.id", index=True)
    instrument_id: int | None = Field(default=None, foreign_key="payment_instrument.id")
    status: str = Field(max_length=16)
    anchor_at: datetime = _utc()
    trial_end_at: datetime | None = _utc(nullable=True)
    next_period_index: int = 0
    next_billing_at: datetime | None = _utc(nullable=True)
    current_period_start: datetime | None = _utc(nullable=True)
    current_period_end: datetime | None = _utc(nullable=True)
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = _utc(nullable=True)
    paused_at: datetime | None = _utc(nullable=True)
    # Held for review (too many periods due at once): not invoiced until a person releases it.
    held_at: datetime | None = _utc(nullable=True)
    held_reason: str | None = Field(default=None, max_length=200)
    held_periods: int | None = None
    # Released to bill a catch-up: periods up to this index may be invoiced past the cap, once.
    catchup_through_index: int | None = None
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class SubscriptionStatusCount(SQLModel, table=True):
    """How many subscriptions are in each status: the sum of `n` over a status's rows.

    Written only by triggers on `subscription` (migration f5c0ffee0805), in the transaction of
    every insert, delete and status change, so no writer can forget it. SQLite keeps one row
    per status, updated in place; PostgreSQL appends +1/-1 delta rows, which never make two
    transactions wait for each other, and `store/counts.py` folds them. The metrics scrape
    reads these few rows instead of counting the subscription table."""

    __tablename__ = "subscription_status_count"

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(max_length=16)
    n: int


class Invoice(SQLModel, table=True):
    """One billable period. status: open -> charging -> paid | open (declined, a retry is
    scheduled) | uncollectible (the retry chain ended) | void.

    `next_attempt_at` is when the engine may claim it; NULL means "not to be tried now"
    (e.g. after a decline, until the retry policy schedules another attempt).
    """

    __table_args__ = (
        UniqueConstraint("subscription_id", "period_start"),
        Index("ix_invoice_claimable", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Random, never reused even if the database is rebuilt: the stem of every Plexo referenceId
    # and the invoiceNumber sent to Plexo.
    number: str = Field(max_length=32, unique=True)
    subscription_id: int = Field(foreign_key="subscription.id", index=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    period_index: int
    period_start: datetime = _utc()
    period_end: datetime = _utc()
    amount_minor: int
    currency: str = Field(max_length=3)
    status: str = Field(max_length=16)
    attempt_count: int = 0
    next_attempt_at: datetime | None = _utc(nullable=True)
    last_decline_code: str | None = Field(default=None, max_length=32)
    last_decline_class: str | None = Field(default=None, max_length=16)
    # The retry chain snapshotted at the first failure (domain/retry.py build_schedule).
    retry_schedule: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    # Plexo's retry-after advice: no attempt before this, whoever asks (scheduler or operator).
    retry_not_before: datetime | None = _utc(nullable=True)
    # Set when the engine stopped and a person must look (pending too long, refused too often).
    attention: str | None = Field(default=None, max_length=32)
    attention_at: datetime | None = _utc(nullable=True)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = _utc(nullable=True)
    # Parked over a safety bound (domain/bounds.py): ceiling | factor | daily_count, and why.
    parked_reason: str | None = Field(default=None, max_length=16)
    parked_detail: str | None = Field(default=None, max_length=200)
    parked_at: datetime | None = _utc(nullable=True)
    # `invoices release`: who let it go, and the amount the permission covers (once changed,
    # the bounds apply again).
    released_at: datetime | None = _utc(nullable=True)
    released_by: str | None = Field(default=None, max_length=128)
    released_amount_minor: int | None = None
    paid_at: datetime | None = _utc(nullable=True)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class ChargeAttempt(SQLModel, table=True):
    """One call to POST /v1/payments, written ahead of the call with state `sending`.

    state: sending -> approved | declined | pending | unknown; pending/unknown are resolved
    by the reconciler only.
    """

    __tablename__ = "charge_attempt"
    __table_args__ = (
        UniqueConstraint("invoice_id", "attempt_number"),
        Index("ix_charge_attempt_unresolved", "state", "next_check_at"),
        # The card-network caps count a card's recent attempts (engine/retries.py).
        Index("ix_charge_attempt_card_recent", "instrument_id", "created_at"),
        # billing_unknown_outcomes and the oldest one's age: only unresolved rows are in it
        # (an approval takes its row out), so no statistics make a table scan look cheaper.
        Index(
            "ix_charge_attempt_unresolved_age",
            "created_at",
            sqlite_where=text(ATTEMPT_UNRESOLVED),
            postgresql_where=text(ATTEMPT_UNRESOLVED),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: int = Field(foreign_key="invoice.id", index=True)
    attempt_number: int
    reference_id: str = Field(max_length=64, unique=True)
    state: str = Field(max_length=16)
    amount_minor: int
    currency: str = Field(max_length=3)
    instrument_id: int | None = Field(default=None, foreign_key="payment_instrument.id")
    plexo_payment_id: str | None = Field(default=None, max_length=64)
    decline_code: str | None = Field(default=None, max_length=32)  # the word, else the number
    result_code: str | None = Field(default=None, max_length=16)  # the processor's resultCode
    decline_class: str | None = Field(default=None, max_length=16)
    message: str | None = Field(default=None, max_length=500)
    node: str = Field(max_length=128)
    # The billing run that wrote it ahead (NULL only for attempts older than runs' linking).
    run_id: int | None = Field(default=None, foreign_key="billing_run.id", index=True)
    send_count: int = 1
    last_sent_at: datetime | None = _utc(nullable=True)  # the resend grace counts from here
    check_count: int = 0
    next_check_at: datetime | None = _utc(nullable=True)
    # When Plexo first said the customer must act (3-D Secure): notified once, then we wait.
    action_required_at: datetime | None = _utc(nullable=True)
    created_at: datetime = _utc()
    resolved_at: datetime | None = _utc(nullable=True)


class BillingRun(SQLModel, table=True):
    """One billing pass (or reconciler sweep) that did work. `totals` holds per-outcome
    counts and per-currency amounts: {"approved": {"count": n, "amounts": {"UYU": minor}}}.

    Written when the pass starts (state `running`), its counts and `heartbeat_at` refreshed as
    it goes, closed `completed` or `interrupted` (see engine/runs.py)."""

    __tablename__ = "billing_run"
    __table_args__ = (
        # The approval gate (engine/approval.py): at most one plan waits at a time, whatever
        # the number of daemons.
        Index(
            "uq_billing_run_waiting_plan",
            "kind",
            unique=True,
            sqlite_where=text("state IN ('planned', 'approved')"),
            postgresql_where=text("state IN ('planned', 'approved')"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # pass | reconcile
    node: str = Field(max_length=128)
    # running | completed | interrupted; a plan (approval gate) first: planned | approved |
    # rejected | expired
    state: str = Field(default="running", max_length=16, index=True)
    as_of: datetime = _utc()
    started_at: datetime = _utc()
    heartbeat_at: datetime | None = _utc(nullable=True)
    finished_at: datetime | None = _utc(nullable=True)
    invoices_created: int = 0
    subscriptions_held: int = 0
    attempts: int = 0
    totals: dict[str, Any] = _json()
    # Plans only (approval gate): not approvable from this moment; who decided, when, why.
    expires_at: datetime | None = _utc(nullable=True)
    decided_by: str | None = Field(default=None, max_length=128)
    decided_at: datetime | None = _utc(nullable=True)
    decision_reason: str | None = Field(default=None, max_length=500)


class RunPlanItem(SQLModel, table=True):
    """One charge frozen into a plan (approval gate): the only invoices its run may charge,
    each at this amount, on this card, as this attempt number.

    status: frozen -> sent (an attempt was written ahead; `outcome` is its first answer) |
    skipped (`note` says why: changed since freezing, paid or voided meanwhile, not due)."""

    __tablename__ = "run_plan_item"
    __table_args__ = (UniqueConstraint("run_id", "invoice_id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="billing_run.id", index=True)
    invoice_id: int = Field(foreign_key="invoice.id", index=True)
    kind: str = Field(max_length=16)  # renewal | retry
    amount_minor: int
    currency: str = Field(max_length=3)
    instrument_id: int = Field(foreign_key="payment_instrument.id")
    attempt_number: int
    status: str = Field(default="frozen", max_length=16)
    outcome: str | None = Field(default=None, max_length=16)
    note: str | None = Field(default=None, max_length=200)


class StoreMeta(SQLModel, table=True):
    """Facts about the store itself, one row per key: the merchant zone its periods are
    computed in, the latest clock reading billing work ran at (see store/meta.py)."""

    __tablename__ = "store_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=200)
    updated_at: datetime = _utc()


class Event(SQLModel, table=True):
    """Append-only log of every state change, with who did it and why."""

    __table_args__ = (
        Index("ix_event_entity", "entity_type", "entity_id"),
        # The audit log's filters page by id (engine/audit.py): newest first, keyset.
        Index("ix_event_customer_id_id", "customer_id", "id"),
        Index("ix_event_subscription_id_id", "subscription_id", "id"),
        Index("ix_event_actor_at", "actor", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _utc(index=True)
    entity_type: str = Field(max_length=32)
    entity_id: int
    event: str = Field(max_length=64)
    actor: str = Field(max_length=128)
    reason: str | None = Field(default=None, max_length=500)
    data: dict[str, Any] = _json()
    # Denormalised owners, set by record_event: a customer's or subscription's audit trail
    # includes the events of its invoices and attempts. No foreign key: the log outlives rows.
    subscription_id: int | None = None
    customer_id: int | None = None


class OutboxEvent(SQLModel, table=True):
    """A notification written in the transaction of the change that caused it (the outbox).

    `event_id` is what receivers see and dedupe on: stable across every redelivery.
    `payload` holds identifiers only. `fanned_out_at` is set once its deliveries exist.
    """

    __tablename__ = "outbox_event"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=40, unique=True)
    type: str = Field(max_length=64, index=True)
    created_at: datetime = _utc()
    entity_type: str = Field(max_length=32)
    entity_id: int
    customer_id: int | None = Field(default=None, foreign_key="customer.id")
    payload: dict[str, Any] = _json()
    fanned_out_at: datetime | None = _utc(nullable=True, index=True)


class OutboxDelivery(SQLModel, table=True):
    """One outbox event to one receiver (a webhook endpoint, or the customer's email).

    state: pending -> delivered | dead (after the attempt limit); `notifications redeliver` puts a
    delivered or dead one back to pending. Leased like invoices (store/claims.py).
    """

    __tablename__ = "outbox_delivery"
    __table_args__ = (
        UniqueConstraint("outbox_id", "channel", "target"),
        Index("ix_outbox_delivery_due", "state", "next_attempt_at"),
        # billing_outbox_deliveries and the oldest pending age: the backlog only.
        Index(
            "ix_outbox_delivery_backlog",
            "channel",
            "state",
            "created_at",
            sqlite_where=text(DELIVERY_BACKLOG),
            postgresql_where=text(DELIVERY_BACKLOG),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int = Field(foreign_key="outbox_event.id", index=True)
    channel: str = Field(max_length=16)  # webhook | email
    target: str = Field(max_length=500)  # the endpoint URL, or "customer" for email
    state: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime | None = _utc(nullable=True)
    last_error: str | None = Field(default=None, max_length=200)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = _utc(nullable=True)
    delivered_at: datetime | None = _utc(nullable=True)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class LedgerCheckRun(SQLModel, table=True):
    """One `billing reconcile` (or the daemon's daily check) that completed: the range it
    compared with Plexo's payments and its counts. A check that failed stores nothing."""

    __tablename__ = "ledger_check_run"

    id: int | None = Field(default=None, primary_key=True)
    range_from: datetime = _utc()
    range_to: datetime = _utc()  # exclusive
    trigger: str = Field(max_length=16)  # cli | daemon
    actor: str = Field(max_length=128)
    node: str = Field(max_length=128)
    started_at: datetime = _utc()
    finished_at: datetime = _utc()
    counts: dict[str, Any] = _json()


class ReconciliationFinding(SQLModel, table=True):
    """A difference between our ledger and Plexo's payments (engine/ledger_check.py).

    One open finding per `key` (the referenceId, else `payment:<plexo id>`): a re-run updates
    it. Resolved by a person (`billing reconcile findings resolve`) or by a later check that
    sees the pair match; either way `resolved_by` and `resolution` say who and why.
    """

    __tablename__ = "reconciliation_finding"
    __table_args__ = (Index("ix_reconciliation_finding_open", "resolved_at", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=100, index=True)
    kind: str = Field(max_length=24)
    reference_id: str | None = Field(default=None, max_length=100)
    plexo_payment_id: str | None = Field(default=None, max_length=64)
    attempt_id: int | None = Field(default=None, foreign_key="charge_attempt.id")
    invoice_id: int | None = Field(default=None, foreign_key="invoice.id")
    expected_status: str | None = Field(default=None, max_length=32)
    found_status: str | None = Field(default=None, max_length=32)
    expected_amount_minor: int | None = None
    expected_currency: str | None = Field(default=None, max_length=8)
    found_amount_minor: int | None = None
    found_currency: str | None = Field(default=None, max_length=8)
    occurred_at: datetime | None = _utc(nullable=True)  # our attempt's time, else Plexo's
    first_seen_at: datetime = _utc()
    last_seen_at: datetime = _utc()
    first_check_id: int = Field(foreign_key="ledger_check_run.id")
    last_check_id: int = Field(foreign_key="ledger_check_run.id")
    resolved_at: datetime | None = _utc(nullable=True)
    resolved_by: str | None = Field(default=None, max_length=128)
    resolution: str | None = Field(default=None, max_length=500)
