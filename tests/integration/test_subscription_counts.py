"""billing_subscriptions{status} comes from `subscription_status_count` (kept by the triggers of
migration f5c0ffee0805), never from counting the subscription table: the counts stay exactly
the table's own through every transition, every kind of statement and concurrent writers.

The truth each check compares with is `SELECT status, count(*) FROM subscription GROUP BY
status`, read in the same transaction as the counts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text
from sqlmodel import select

from billing import metrics
from billing.daemon.service import Daemon
from billing.engine import customers, subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.store.counts import fold_subscription_counts, subscription_counts
from billing.store.db import dialect_name, make_engine, session
from billing.store.migrate import upgrade
from billing.store.models import Customer, Subscription
from billing.testing import ensure_plan, seed_subscriptions
from tests.integration.conftest import START, Env

SOFT_TWICE = "4000000000000341"  # 51 on the first two charges, then approved
STOLEN = "4000000000000119"  # hard decline: with no other card the chain ends (unpaid)
DAY = timedelta(days=1)
TRIGGERS = {
    "sqlite": {"subscription_count_inserted", "subscription_count_deleted",
               "subscription_count_changed"},
    "postgresql": {"subscription_count_inserted", "subscription_count_deleted",
                   "subscription_count_changed", "subscription_count_truncated"},
}  # fmt: skip


def truth_and_counts(engine: Engine) -> tuple[dict[str, int], dict[str, int]]:
    with session(engine) as s:
        truth = dict(
            s.exec(text("SELECT status, count(*) FROM subscription GROUP BY status")).all()  # type: ignore[call-overload]
        )
        counts = subscription_counts(s)
    return {k: int(v) for k, v in truth.items()}, {k: v for k, v in counts.items() if v}


def assert_exact(engine: Engine, fold: bool = True) -> dict[str, int]:
    """The counts equal the table's, before and after folding the deltas (and the fold leaves
    one row per status)."""
    truth, counts = truth_and_counts(engine)
    assert counts == truth
    if fold:
        fold_subscription_counts(engine)
        assert truth_and_counts(engine) == (truth, truth)
        with engine.connect() as conn:
            rows, statuses = conn.execute(
                text("SELECT count(*), count(DISTINCT status) FROM subscription_status_count")
            ).one()
        assert rows == statuses
    return truth


def test_the_triggers_exist_at_head(db_url: str) -> None:
    """A later migration that recreates `subscription` (a SQLite batch operation) drops them:
    this fails until it recreates them."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            if dialect_name(engine) == "sqlite":
                query = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = "
                query += "'subscription'"
            else:
                query = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'subscription'::regclass "
                query += "AND NOT tgisinternal"
            names = set(conn.execute(text(query)).scalars())
    finally:
        engine.dispose()
    assert names >= TRIGGERS[dialect_name(engine)]


def test_counts_follow_create_pause_resume_cancel_and_dunning(env: Env) -> None:
    engine = env.ctx.engine
    ensure_plan(env.ctx)
    assert assert_exact(engine) == {}
    a, b, c, d = seed_subscriptions(env.ctx, env.sandbox_url, 4, start=START)
    [soft] = seed_subscriptions(env.ctx, env.sandbox_url, 1, card=SOFT_TWICE, prefix="soft")
    [hard] = seed_subscriptions(env.ctx, env.sandbox_url, 1, card=STOLEN, prefix="hard")
    assert assert_exact(engine) == {"active": 6}

    run_billing_pass(env.ctx)  # a soft decline -> past_due; a hard one ends the chain -> unpaid
    assert assert_exact(engine, fold=False) == {"active": 4, "past_due": 1, "unpaid": 1}

    subscriptions.pause_subscription(env.ctx, a, reason="vacation")
    assert assert_exact(engine, fold=False) == {"active": 3, "past_due": 1, "unpaid": 1,
                                                "paused": 1}  # fmt: skip
    subscriptions.resume_subscription(env.ctx, a, reason="back")
    subscriptions.cancel_subscription(env.ctx, b, at_period_end=False, reason="left")
    subscriptions.cancel_subscription(env.ctx, c, at_period_end=True, reason="later")
    subscriptions.uncancel_subscription(env.ctx, c, reason="stays")  # no status change
    assert assert_exact(engine) == {"active": 3, "past_due": 1, "unpaid": 1, "canceled": 1}

    with session(engine) as s:
        sub_d = s.get(Subscription, d)
        assert sub_d is not None
        customer = s.get(Customer, sub_d.customer_id)
        assert customer is not None
    customers.delete_customer(env.ctx, customer.reference_id, reason="gone")
    assert assert_exact(engine) == {"active": 2, "past_due": 1, "unpaid": 1, "canceled": 2}

    for days in (1, 3):  # the soft decline recovers on the second retry: past_due -> active
        env.clock.set(START + DAY * days)
        run_billing_pass(env.ctx)
        assert_exact(engine, fold=days == 3)
    with session(engine) as s:
        assert [s.get(Subscription, i).status for i in (soft, hard)] == ["active", "unpaid"]  # type: ignore[union-attr]
    truth = assert_exact(engine)
    assert truth == {"active": 3, "unpaid": 1, "canceled": 2}

    gauges = Daemon(env.ctx).store_samples()[metrics.SUBSCRIPTIONS.name]
    assert gauges == {
        ("active",): 3, ("unpaid",): 1, ("canceled",): 2, ("past_due",): 0, ("paused",): 0,
        ("trialing",): 0, ("incomplete",): 0,
    }  # fmt: skip


def test_counts_follow_bulk_statements_and_rollbacks(db_url: str) -> None:
    """Multi-row INSERT, UPDATE and DELETE statements (an import, an operator's SQL), a rolled
    back change, and on PostgreSQL TRUNCATE."""
    engine = make_engine(db_url)
    try:
        with session(engine) as s:
            customer = Customer(reference_id="bulk", email="bulk@example.com")
            customer.created_at = customer.updated_at = START
            s.add(customer)
            s.flush()
            from billing.store.models import Plan

            plan = Plan(code="p", name="P", amount_minor=100, currency="UYU", interval="month")
            plan.created_at = START
            s.add(plan)
            s.flush()
            ids = {"customer": customer.id, "plan": plan.id}
        rows = []
        for n in range(30):
            sub = Subscription(
                customer_id=ids["customer"] or 0,
                plan_id=ids["plan"] or 0,
                status=("active", "trialing", "past_due")[n % 3],
            )
            sub.anchor_at = sub.created_at = sub.updated_at = START
            rows.append(sub)
        with session(engine) as s:
            s.add_all(rows)  # one executemany / multi-row INSERT
        assert assert_exact(engine, fold=False) == {"active": 10, "trialing": 10, "past_due": 10}
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE subscription SET status = 'active' WHERE status = 'trialing'")
            )
            conn.execute(text("UPDATE subscription SET status = status"))  # no change: no delta
        assert assert_exact(engine, fold=False) == {"active": 20, "past_due": 10}
        with pytest.raises(RuntimeError), engine.begin() as conn:
            conn.execute(text("UPDATE subscription SET status = 'canceled'"))
            raise RuntimeError("rolled back with its deltas")
        assert assert_exact(engine) == {"active": 20, "past_due": 10}
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM subscription WHERE status = 'past_due'"))
        assert assert_exact(engine) == {"active": 20}
        if dialect_name(engine) == "postgresql":
            with engine.begin() as conn:
                conn.execute(text("TRUNCATE subscription CASCADE"))
            assert assert_exact(engine) == {}
    finally:
        engine.dispose()


# --- PostgreSQL: concurrent writers ------------------------------------------------------


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _plant(engine: Engine, n: int) -> list[int]:
    from billing.testing import plant_store

    plant_store(engine, n, at=START, outbox=False)
    with session(engine) as s:
        return list(s.exec(select(Subscription.id).order_by(Subscription.id)).all())  # type: ignore[arg-type]


@pytest.mark.postgres
def test_two_writers_in_opposite_directions_never_wait_for_each_other(pg_engine: Engine) -> None:
    """Transaction A moves a subscription active -> past_due while B moves another past_due ->
    active, both open at once: with a shared counter row per status each would lock the row
    the other needs next (a deadlock). Deltas are appends: neither waits (a lock wait of more
    than 2 s fails the test), and both changes count."""
    _plant(pg_engine, 200)
    with session(pg_engine) as s:
        active = list(s.exec(select(Subscription.id).where(Subscription.status == "active")))
        due = list(s.exec(select(Subscription.id).where(Subscription.status == "past_due")))
    before = assert_exact(pg_engine)
    first, second = pg_engine.connect(), pg_engine.connect()
    try:
        for conn in (first, second):
            conn.execute(text("SET lock_timeout = '2s'"))
        update = text("UPDATE subscription SET status = :to WHERE id = :id")
        first.execute(update, {"to": "past_due", "id": active[0]})
        second.execute(update, {"to": "active", "id": due[0]})
        first.execute(update, {"to": "paused", "id": due[1]})
        second.execute(update, {"to": "canceled", "id": active[1]})
        assert fold_subscription_counts(pg_engine) == 0  # nothing committed to fold yet
        first.commit()
        fold_subscription_counts(pg_engine)  # a fold between the two commits
        second.commit()
    finally:
        first.close()
        second.close()
    after = assert_exact(pg_engine)
    assert sum(after.values()) == sum(before.values())
    assert after != before


@pytest.mark.postgres
def test_concurrent_writers_and_folds_lose_no_change(pg_engine: Engine) -> None:
    """Two writers flip statuses of their own subscriptions in many short transactions while
    two folders fold at the same time: at the end the counts equal the table's."""
    ids = _plant(pg_engine, 400)
    halves = [ids[0::2], ids[1::2]]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(mine: list[int]) -> None:
        try:
            for round_ in range(6):
                for start in range(0, len(mine), 20):
                    with pg_engine.begin() as conn:
                        for sub_id in mine[start : start + 20]:
                            status = ("paused", "active", "past_due")[(sub_id + round_) % 3]
                            conn.execute(
                                text("UPDATE subscription SET status = :s WHERE id = :id"),
                                {"s": status, "id": sub_id},
                            )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def fold() -> None:
        try:
            while not stop.is_set():
                fold_subscription_counts(pg_engine)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(half,)) for half in halves]
    folders = [threading.Thread(target=fold) for _ in range(2)]
    for thread in writers + folders:
        thread.start()
    for thread in writers:
        thread.join(120)
    stop.set()
    for thread in folders:
        thread.join(30)
    assert errors == []
    truth = assert_exact(pg_engine)
    assert sum(truth.values()) == 400
