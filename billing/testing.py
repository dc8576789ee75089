"""Seeding and ledger checks shared by tests, benchmarks and end-to-end scripts.

Everything goes through the engine and the sandbox's HTTP contract, as a merchant would.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
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
