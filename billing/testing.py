"""Seeding and ledger checks shared by tests, benchmarks and end-to-end scripts.

Everything goes through the engine and the sandbox's HTTP contract, as a merchant would.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import col, select

from billing.domain.money import from_major
from billing.engine import customers, subscriptions
from billing.engine.charge import UNRESOLVED
from billing.engine.context import BillingContext
from billing.store.db import session
from billing.store.models import ChargeAttempt, Invoice, Plan

APPROVING_CARD = "4444333322221111"


def ensure_plan(
    ctx: BillingContext,
    code: str = "monthly",
    amount: str = "590.00",
    currency: str = "UYU",
    interval: str = "month",
) -> str:
    with session(ctx.engine) as s:
        if s.exec(select(Plan.id).where(Plan.code == code)).first() is not None:
            return code
    subscriptions.create_plan(
        ctx, code=code, name=code.title(), amount=amount, currency=currency, interval=interval
    )
    return code


def seed_subscriptions(
    ctx: BillingContext,
    sandbox_url: str,
    count: int,
    *,
    plan_code: str = "monthly",
    card: str = APPROVING_CARD,
    start: datetime | None = None,
    prefix: str = "cus",
    backdate: bool = False,
) -> list[int]:
    """`count` customers, each with a saved card (through the sandbox) and one subscription."""
    today = ctx.clock.now().astimezone(ctx.tz).date()
    ids: list[int] = []
    with httpx.Client(base_url=sandbox_url, timeout=30) as http:
        for n in range(count):
            ref = f"{prefix}-{n:05d}"
            data = customers.validate_customer(
                {"reference_id": ref, "email": f"{ref}@example.com"}, today
            )
            customer = customers.create_customer(ctx, data)
            http.post(
                f"/sandbox/customers/{customer.plexo_id}/instruments",
                json={"cardNumber": card, "expMonth": 12, "expYear": 2035},
            ).raise_for_status()
            customers.sync_instruments(ctx, ref)
            sub = subscriptions.create_subscription(
                ctx, customer_ref=ref, plan_code=plan_code, start=start, backdate=backdate
            )
            assert sub.id is not None
            ids.append(sub.id)
    return ids


def ledger(ctx: BillingContext) -> dict[str, Any]:
    """What our database says was charged, keyed for comparison with the sandbox listing."""
    with session(ctx.engine) as s:
        approved = s.exec(
            select(ChargeAttempt.reference_id, ChargeAttempt.amount_minor, ChargeAttempt.currency)
            .where(ChargeAttempt.state == "approved")
            .order_by(col(ChargeAttempt.reference_id))
        ).all()
        invoices = Counter(s.exec(select(Invoice.status)).all())
        unresolved = s.exec(
            select(ChargeAttempt.reference_id).where(col(ChargeAttempt.state).in_(UNRESOLVED))
        ).all()
    return {
        "approved": {ref: (minor, cur) for ref, minor, cur in approved},
        "invoices": dict(invoices),
        "unresolved": list(unresolved),
    }


def sandbox_approved(payments: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """The sandbox's approved payments as {referenceId: (minor units, currency)}."""
    result: dict[str, tuple[int, str]] = {}
    for p in payments:
        if p["status"] != "approved":
            continue
        currency = p["amount"]["currency"]
        minor = from_major(Decimal(str(p["amount"]["total"])), currency)
        result[p["referenceId"]] = (minor, currency)
    return result


def invoice_refs_charged(payments: list[dict[str, Any]]) -> Counter[str]:
    """How many approved payments each invoice number has at the sandbox (must be <= 1)."""
    counts: Counter[str] = Counter()
    for p in payments:
        if p["status"] == "approved":
            counts[p["invoiceNumber"]] += 1
    return counts


def plant_run(engine: Engine, attempts: int, *, at: datetime, chunk: int = 5000) -> int:
    """A completed pass with `attempts` charge attempts (one invoice each), written straight
    into the tables with bulk Core inserts (export tests and benchmarks: fast, no gateway).
    Every fourth is declined (soft, insufficient_funds/51), every tenth unknown, one in five
    in USD. Returns the run id."""
    from sqlalchemy import insert, update

    from billing.domain.lifecycle import AttemptState
    from billing.store.models import BillingRun, Customer, Subscription

    with session(engine) as s:
        run = BillingRun(kind="pass", node="planted", state="completed", as_of=at)
        run.started_at = run.heartbeat_at = run.finished_at = at
        s.add(run)
        s.flush()
        assert run.id is not None
        run_id = run.id
        customer = Customer(reference_id=f"bulk-{run_id}", email="bulk@example.com")
        customer.created_at = customer.updated_at = at
        plan = Plan(
            code=f"bulk-{run_id}", name="Bulk", amount_minor=59000, currency="UYU", interval="day"
        )
        plan.created_at = at
        s.add_all([customer, plan])
        s.flush()
        assert customer.id is not None and plan.id is not None
        sub = Subscription(customer_id=customer.id, plan_id=plan.id, status="active")
        sub.anchor_at = sub.created_at = sub.updated_at = at
        s.add(sub)
        s.flush()
        customer_id, sub_id = customer.id, sub.id
    totals: dict[str, dict[str, Any]] = {}  # as engine/runs.py recount() would write them
    with engine.begin() as conn:
        for begin in range(0, attempts, chunk):
            invoices: list[dict[str, Any]] = []
            rows: list[dict[str, Any]] = []
            for i in range(begin, min(begin + chunk, attempts)):
                number = f"INV-B{run_id:04d}{i:09d}"
                usd = i % 5 == 4
                amount, currency = (1990, "USD") if usd else (59000, "UYU")
                if i % 10 == 7:
                    state, d_class, d_code, r_code = AttemptState.unknown, None, None, None
                elif i % 4 == 1:
                    state, d_class, d_code, r_code = (
                        AttemptState.declined, "soft", "insufficient_funds", "51",
                    )  # fmt: skip
                else:
                    state, d_class, d_code, r_code = AttemptState.approved, None, None, None
                start = at + timedelta(minutes=i)
                invoices.append(
                    {
                        "number": number, "subscription_id": sub_id, "customer_id": customer_id,
                        "period_index": i, "period_start": start,
                        "period_end": start + timedelta(minutes=1), "amount_minor": amount,
                        "currency": currency, "attempt_count": 1, "created_at": at,
                        "updated_at": at,
                        "status": "paid" if state == AttemptState.approved else "charging",
                    }
                )  # fmt: skip
                rows.append(
                    {
                        "attempt_number": 1, "reference_id": f"{number}-1", "state": str(state),
                        "amount_minor": amount, "currency": currency, "decline_class": d_class,
                        "decline_code": d_code, "result_code": r_code, "node": "planted",
                        "run_id": run_id, "created_at": at + timedelta(seconds=i),
                        "plexo_payment_id": None if state == AttemptState.unknown else f"pay-{i}",
                        "resolved_at": None if state == AttemptState.unknown else at,
                    }
                )  # fmt: skip
                entry = totals.setdefault(str(state), {"count": 0, "amounts": {}})
                entry["count"] += 1
                entry["amounts"][currency] = entry["amounts"].get(currency, 0) + amount
                if d_class:
                    entry.setdefault("decline_classes", {})[d_class] = (
                        entry.get("decline_classes", {}).get(d_class, 0) + 1
                    )
            conn.execute(insert(Invoice), invoices)
            found = conn.execute(
                select(col(Invoice.id), col(Invoice.number)).where(
                    col(Invoice.number).in_([r["number"] for r in invoices])
                )
            ).all()
            by_number = {number: invoice_id for invoice_id, number in found}
            for row, inv in zip(rows, invoices, strict=True):
                row["invoice_id"] = by_number[inv["number"]]
            conn.execute(insert(ChargeAttempt), rows)
        conn.execute(
            update(BillingRun)
            .where(col(BillingRun.id) == run_id)
            .values(attempts=attempts, totals=totals, invoices_created=attempts)
        )
    return run_id


def plant_store(engine: Engine, subscriptions: int, *, at: datetime, outbox: bool = True) -> None:
    """A store shaped like a big merchant's, generated by the database itself (INSERT ...
    SELECT over a series: 1M subscriptions in seconds, no Python row loop), for the EXPLAIN
    test of the metrics queries and bench_metrics_scrape.py.

    Per subscription, by id: 80 % active, 10 % canceled, 5 % past_due, 3 % paused, 2 %
    trialing, one in 10,000 held; one invoice each, paid but for one in 1,000 open and due, one
    in 1,000 open and due later, one in 5,000 parked; one attempt per invoice, approved but for
    one in 2,000 unknown. With `outbox`, one event per 10 subscriptions, one webhook delivery
    each: delivered but for one in 100 pending and one in 500 dead. The subscription count
    triggers fire as for any insert.
    """
    from sqlalchemy import bindparam, text

    from billing.store.db import dialect_name
    from billing.store.models import Customer
    from billing.store.types import UTCDateTime

    with session(engine) as s:
        customer = Customer(reference_id=f"planted-{at:%Y%m%d%H%M%S}", email="bulk@example.com")
        customer.created_at = customer.updated_at = at
        plan = Plan(
            code=f"planted-{at:%Y%m%d%H%M%S}", name="Planted", amount_minor=59000,
            currency="UYU", interval="month",
        )  # fmt: skip
        plan.created_at = at
        s.add_all([customer, plan])
        s.flush()
        customer_id, plan_id = customer.id, plan.id
    if dialect_name(engine) == "postgresql":
        series = "SELECT g AS i FROM generate_series(1, :n) AS g"
    else:
        series = "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n) "
        series += "SELECT i FROM g"
    statements = [
        f"""INSERT INTO subscription (customer_id, plan_id, status, anchor_at, next_period_index,
            cancel_at_period_end, held_at, created_at, updated_at)
        SELECT :customer, :plan,
            CASE WHEN i % 100 < 80 THEN 'active' WHEN i % 100 < 90 THEN 'canceled'
                 WHEN i % 100 < 95 THEN 'past_due' WHEN i % 100 < 98 THEN 'paused'
                 ELSE 'trialing' END,
            :at, 1, 1 = 0, CASE WHEN i % 10000 = 0 THEN :at END, :at, :at
        FROM ({series}) AS series""",
        """INSERT INTO invoice (number, subscription_id, customer_id, period_index, period_start,
            period_end, amount_minor, currency, status, attempt_count, next_attempt_at, paid_at,
            created_at, updated_at)
        SELECT 'INV-P' || id, id, customer_id, 0, :at, :later, 59000, 'UYU',
            CASE WHEN id % 1000 IN (1, 2) THEN 'open' WHEN id % 5000 = 3 THEN 'parked'
                 ELSE 'paid' END,
            1, CASE id % 1000 WHEN 1 THEN :at WHEN 2 THEN :later END,
            CASE WHEN id % 1000 NOT IN (1, 2) AND id % 5000 <> 3 THEN :at END, :at, :at
        FROM subscription WHERE customer_id = :customer""",
        """INSERT INTO charge_attempt (invoice_id, attempt_number, reference_id, state,
            amount_minor, currency, node, send_count, check_count, created_at, resolved_at)
        SELECT id, 1, number || '-1', CASE WHEN id % 2000 = 5 THEN 'unknown' ELSE 'approved' END,
            amount_minor, currency, 'planted', 1, 0, :at,
            CASE WHEN id % 2000 = 5 THEN NULL ELSE :at END
        FROM invoice WHERE customer_id = :customer""",
    ]
    if outbox:
        statements += [
            f"""INSERT INTO outbox_event (event_id, type, created_at, entity_type, entity_id,
                customer_id, payload, fanned_out_at)
            SELECT 'evt_planted_' || i, 'invoice.paid', :at, 'invoice', i, :customer, '{{}}', :at
            FROM ({series}) AS series WHERE i % 10 = 0""",
            """INSERT INTO outbox_delivery (outbox_id, channel, target, state, attempts,
                created_at, updated_at, delivered_at)
            SELECT id, 'webhook', 'https://example.com/hook',
                CASE WHEN id % 100 = 7 THEN 'pending' WHEN id % 500 = 9 THEN 'dead'
                     ELSE 'delivered' END,
                1, :at, :at, :at
            FROM outbox_event WHERE event_id LIKE 'evt_planted_%'""",
        ]
    values: dict[str, object] = {"n": subscriptions, "customer": customer_id, "plan": plan_id}
    values |= {"at": at, "later": at + timedelta(days=30)}
    with engine.begin() as conn:
        for statement in statements:
            times = [
                bindparam(k, type_=UTCDateTime) for k in ("at", "later") if f":{k}" in statement
            ]
            conn.execute(
                text(statement).bindparams(*times),
                {k: v for k, v in values.items() if f":{k}" in statement},
            )


def plant_due_subscriptions(
    engine: Engine, count: int, *, plan_id: int, anchor: datetime, at: datetime, chunk: int = 5000
) -> list[int]:
    """`count` customers with one active subscription each on `plan_id`, anchored at `anchor`
    (so every period started by then is due), written with bulk Core inserts (invoicing tests
    and benchmarks: fast, no gateway, no card). Returns the subscription ids."""
    import uuid

    from sqlalchemy import insert

    from billing.store.models import Customer, Subscription

    stem = uuid.uuid4().hex[:8]
    ids: list[int] = []
    with engine.begin() as conn:
        for begin in range(0, count, chunk):
            refs = [f"due-{stem}-{i:07d}" for i in range(begin, min(begin + chunk, count))]
            conn.execute(
                insert(Customer),
                [
                    {"reference_id": r, "email": f"{r}@example.com", "address": {},
                     "attributes": {}, "created_at": at, "updated_at": at}
                    for r in refs
                ],
            )  # fmt: skip
            customers = conn.execute(
                select(col(Customer.id)).where(col(Customer.reference_id).in_(refs))
            ).scalars()
            subs = conn.execute(
                insert(Subscription).returning(col(Subscription.id)),
                [
                    {"customer_id": c, "plan_id": plan_id, "status": "active",
                     "anchor_at": anchor, "next_period_index": 0, "next_billing_at": anchor,
                     "cancel_at_period_end": False, "created_at": at, "updated_at": at}
                    for c in customers
                ],
            )  # fmt: skip
            ids.extend(sub_id for sub_id in subs.scalars() if sub_id is not None)
    return ids
