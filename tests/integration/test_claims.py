"""Leases on invoices: each due invoice goes to exactly one owner, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Table, insert, select, text, update

from billing.store.claims import (
    claim_invoices,
    extend_lease,
    reap_expired,
    release_all,
    release_lease,
    try_singleton,
)
from billing.store.db import make_engine
from billing.store.migrate import upgrade
from billing.store.models import Customer, Invoice, Plan, Subscription

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LEASE = 60
INVOICE = Invoice.__table__  # type: ignore[attr-defined]


def _insert(conn: Connection, table: Table, row: dict[str, Any]) -> int:
    return int(conn.execute(insert(table).returning(table.c.id), row).scalar_one())


class Factory:
    """Just enough customer/plan/subscription rows to hang invoices on."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.count = 0
        with engine.begin() as conn:
            customer_id = _insert(
                conn,
                Customer.__table__,  # type: ignore[attr-defined]
                {
                    "reference_id": "cust-1",
                    "email": "ana@example.com",
                    "address": {},
                    "attributes": {},
                    "status": "active",
                    "created_at": T0,
                    "updated_at": T0,
                },
            )
            plan_id = _insert(
                conn,
                Plan.__table__,  # type: ignore[attr-defined]
                {
                    "code": "basic",
                    "name": "Basic",
                    "amount_minor": 59000,
                    "currency": "UYU",
                    "interval": "month",
                    "interval_count": 1,
                    "trial_days": 0,
                    "active": True,
                    "created_at": T0,
                },
            )
            self.subscription_id = _insert(
                conn,
                Subscription.__table__,  # type: ignore[attr-defined]
                {
                    "customer_id": customer_id,
                    "plan_id": plan_id,
                    "status": "active",
                    "anchor_at": T0,
                    "next_period_index": 0,
                    "cancel_at_period_end": False,
                    "created_at": T0,
                    "updated_at": T0,
                },
            )
        self.customer_id = customer_id

    def invoices(
        self,
        n: int,
        *,
        status: str = "open",
        next_attempt_at: datetime | None = T0,
        lease_owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> list[int]:
        rows: list[dict[str, Any]] = []
        for _ in range(n):
            self.count += 1
            start = T0 + timedelta(days=self.count)
            rows.append(
                {
                    "number": f"INV-{self.count:05d}",
                    "subscription_id": self.subscription_id,
                    "customer_id": self.customer_id,
                    "period_index": self.count,
                    "period_start": start,
                    "period_end": start + timedelta(days=1),
                    "amount_minor": 59000,
                    "currency": "UYU",
                    "status": status,
                    "attempt_count": 0,
                    "next_attempt_at": next_attempt_at,
                    "lease_owner": lease_owner,
                    "lease_until": lease_until,
                    "created_at": T0,
                    "updated_at": T0,
                }
            )
        with self.engine.begin() as conn:
            ids = conn.execute(insert(INVOICE).returning(INVOICE.c.id), rows).scalars()
            return sorted(ids)

    def invoice(self, **kw: Any) -> int:
        return self.invoices(1, **kw)[0]

    def lease(self, invoice_id: int) -> tuple[str | None, datetime | None]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(INVOICE.c.lease_owner, INVOICE.c.lease_until).where(
                    INVOICE.c.id == invoice_id
                )
            ).one()
        return row.lease_owner, row.lease_until

    def set_status(self, invoice_id: int, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(INVOICE).where(INVOICE.c.id == invoice_id).values(status=status))


@pytest.fixture
def factory(engine: Engine) -> Factory:
    return Factory(engine)


# --- claiming -------------------------------------------------------------------------------


def test_claim_leases_due_open_invoices_oldest_first(engine: Engine, factory: Factory) -> None:
    later = factory.invoice(next_attempt_at=T0 - timedelta(minutes=1))
    earliest = factory.invoice(next_attempt_at=T0 - timedelta(hours=1))
    same_time = factory.invoices(2, next_attempt_at=T0 - timedelta(minutes=1))

    claimed = claim_invoices(engine, "node-a", T0, LEASE, limit=3)

    assert claimed == [earliest, later, same_time[0]]
    assert factory.lease(earliest) == ("node-a", T0 + timedelta(seconds=LEASE))
    assert factory.lease(same_time[1]) == (None, None)
    assert claim_invoices(engine, "node-a", T0, LEASE, limit=3) == [same_time[1]]
    assert claim_invoices(engine, "node-a", T0, LEASE, limit=3) == []


def test_not_yet_due_undated_and_non_open_invoices_are_not_claimed(
    engine: Engine, factory: Factory
) -> None:
    factory.invoice(next_attempt_at=T0 + timedelta(seconds=1))
    factory.invoice(next_attempt_at=None)
    for status in ("charging", "paid", "void"):
        factory.invoice(status=status)
    due_exactly_now = factory.invoice(next_attempt_at=T0)

    assert claim_invoices(engine, "node-a", T0, LEASE, limit=100) == [due_exactly_now]


def test_a_live_lease_is_not_taken_an_expired_one_is(engine: Engine, factory: Factory) -> None:
    invoice_id = factory.invoice()
    assert claim_invoices(engine, "node-a", T0, LEASE, limit=10) == [invoice_id]

    halfway = T0 + timedelta(seconds=LEASE // 2)
    assert claim_invoices(engine, "node-b", halfway, LEASE, limit=10) == []
    at_expiry = T0 + timedelta(seconds=LEASE)
    assert claim_invoices(engine, "node-b", at_expiry, LEASE, limit=10) == []

    after = at_expiry + timedelta(microseconds=1)
    assert claim_invoices(engine, "node-b", after, LEASE, limit=10) == [invoice_id]
    assert factory.lease(invoice_id) == ("node-b", after + timedelta(seconds=LEASE))
    # node-a lost it: it can neither release nor extend it any more.
    assert not release_lease(engine, invoice_id, "node-a")
    assert not extend_lease(engine, invoice_id, "node-a", after + timedelta(hours=1))
    assert factory.lease(invoice_id) == ("node-b", after + timedelta(seconds=LEASE))


def test_claim_refuses_naive_time_and_non_positive_sizes(engine: Engine) -> None:
    with pytest.raises(ValueError, match="timezone"):
        claim_invoices(engine, "node-a", datetime(2025, 3, 1, 12), LEASE, limit=1)
    with pytest.raises(ValueError, match="positive"):
        claim_invoices(engine, "node-a", T0, LEASE, limit=0)
    with pytest.raises(ValueError, match="positive"):
        claim_invoices(engine, "node-a", T0, 0, limit=1)


def test_concurrent_claimers_never_share_an_invoice(engine: Engine, factory: Factory) -> None:
    all_ids = set(factory.invoices(200))
    owners = [f"node-{i}" for i in range(4)]
    claimed: dict[str, list[int]] = {owner: [] for owner in owners}
    errors: list[BaseException] = []
    start = threading.Barrier(len(owners))

    def claimer(owner: str) -> None:
        try:
            start.wait()
            while batch := claim_invoices(engine, owner, T0, LEASE, limit=7):
                claimed[owner].extend(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    every_claim = [i for ids in claimed.values() for i in ids]
    assert len(every_claim) == len(set(every_claim)), "an invoice was handed out twice"
    assert set(every_claim) == all_ids
    with engine.connect() as conn:
        holders = {row.id: row.lease_owner for row in conn.execute(select(INVOICE))}
    for owner, ids in claimed.items():
        assert all(holders[i] == owner for i in ids)


# --- giving leases back ---------------------------------------------------------------------


def test_release_and_extend_only_by_the_owner(engine: Engine, factory: Factory) -> None:
    invoice_id = factory.invoice()
    claim_invoices(engine, "node-a", T0, LEASE, limit=1)
    later = T0 + timedelta(minutes=5)

    assert not extend_lease(engine, invoice_id, "node-b", later)
    assert not release_lease(engine, invoice_id, "node-b")
    assert factory.lease(invoice_id) == ("node-a", T0 + timedelta(seconds=LEASE))

    assert extend_lease(engine, invoice_id, "node-a", later)
    assert factory.lease(invoice_id) == ("node-a", later)
    assert release_lease(engine, invoice_id, "node-a")
    assert factory.lease(invoice_id) == (None, None)
    assert not release_lease(engine, invoice_id, "node-a")
    assert claim_invoices(engine, "node-b", T0, LEASE, limit=1) == [invoice_id]


def test_release_all_frees_open_and_expires_charging(engine: Engine, factory: Factory) -> None:
    held_until = T0 + timedelta(seconds=LEASE)
    open_ids = factory.invoices(2, lease_owner="node-a", lease_until=held_until)
    charging = factory.invoice(status="charging", lease_owner="node-a", lease_until=held_until)
    stale = T0 - timedelta(minutes=1)
    charging_expired = factory.invoice(status="charging", lease_owner="node-a", lease_until=stale)
    paid = factory.invoice(status="paid", lease_owner="node-a", lease_until=held_until)
    others = factory.invoice(lease_owner="node-b", lease_until=held_until)

    assert release_all(engine, "node-a", T0) == 3

    assert [factory.lease(i) for i in open_ids] == [(None, None), (None, None)]
    assert factory.lease(charging) == ("node-a", T0)
    assert factory.lease(charging_expired) == ("node-a", stale)  # never lengthened
    assert factory.lease(paid) == ("node-a", held_until)
    assert factory.lease(others) == ("node-b", held_until)


def test_reap_expired_clears_only_expired_open_leases(engine: Engine, factory: Factory) -> None:
    expired = factory.invoice(lease_owner="node-a", lease_until=T0 - timedelta(seconds=1))
    live = factory.invoice(lease_owner="node-a", lease_until=T0 + timedelta(seconds=1))
    charging = factory.invoice(
        status="charging", lease_owner="node-a", lease_until=T0 - timedelta(seconds=1)
    )

    assert reap_expired(engine, T0) == 1

    assert factory.lease(expired) == (None, None)
    assert factory.lease(live)[0] == "node-a"
    assert factory.lease(charging)[0] == "node-a"  # the reconciler's business, not the reaper's


# --- singleton chores -----------------------------------------------------------------------


def test_singleton_on_sqlite_is_always_ours(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as first, engine.connect() as second:
            assert try_singleton(first, "reconcile")
            assert try_singleton(second, "reconcile")
    finally:
        engine.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """Migrated PostgreSQL engine whose lock waits fail after 2 s instead of hanging a test."""
    upgrade(pg_url)
    engine = make_engine(pg_url + "?options=-c%20lock_timeout%3D2000")
    yield engine
    engine.dispose()


def test_singleton_on_postgresql_is_held_until_the_transaction_ends(pg_engine: Engine) -> None:
    with pg_engine.connect() as first, pg_engine.connect() as second:
        with first.begin():
            assert try_singleton(first, "reconcile")
            assert not try_singleton(second, "reconcile")
            assert try_singleton(second, "dunning")  # another chore, another lock
            second.rollback()
        assert try_singleton(second, "reconcile")
        second.commit()


def test_postgresql_claim_skips_rows_locked_by_another_transaction(pg_engine: Engine) -> None:
    factory = Factory(pg_engine)
    locked, free = factory.invoices(2)
    with pg_engine.connect() as other, other.begin():
        other.execute(text("SELECT id FROM invoice WHERE id = :id FOR UPDATE"), {"id": locked})

        # Without SKIP LOCKED this would wait on `other` (and fail on lock_timeout).
        claimed = claim_invoices(pg_engine, "node-a", T0, LEASE, limit=10)

    assert claimed == [free]
    assert claim_invoices(pg_engine, "node-a", T0, LEASE, limit=10) == [locked]
