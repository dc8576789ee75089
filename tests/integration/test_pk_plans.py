"""The charge hot path finds its rows by key whatever the statistics say (PostgreSQL).

Statistics are taken while nothing is open (autovacuum off for the tables, so they stay
stale), then 20,000 open invoices with an attempt each arrive. One charge runs while a
before_cursor_execute hook captures every statement it sends; each SELECT and UPDATE is then
EXPLAINed with its own parameters. Bare, the write-ahead's compare-and-set walked
ix_invoice_claimable over every open invoice in this state (the control below shows the
planner still would); the engine's statements must read the invoice by pk_invoice and the
attempt by its key, and never scan either table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, event, insert, text

from billing.clock import TestClock
from billing.engine import customers, subscriptions
from billing.engine.billing_pass import run_billing_pass
from billing.engine.charge import charge_invoice
from billing.engine.context import BillingContext
from billing.engine.invoicing import create_due_invoices
from billing.plexo.client import PlexoClient
from billing.sandbox.simulator import PlexoSimulator
from billing.sandbox.transport import SandboxTransport
from billing.store.claims import claim_invoices
from billing.store.db import make_engine
from billing.store.migrate import upgrade
from billing.store.models import ChargeAttempt, Invoice
from billing.testing import APPROVING_CARD, ensure_plan

START = datetime(2026, 3, 1, 12, tzinfo=UTC)
OPEN = 20_000

# The bare compare-and-set the write-ahead used to send (the control).
BARE_CAS = """
EXPLAIN UPDATE invoice SET status = 'charging'
 WHERE id = %(id)s AND status = 'open' AND lease_owner = 'node' AND lease_until > %(now)s
"""


@pytest.fixture
def stale(pg_url: str) -> Iterator[tuple[BillingContext, TestClock]]:
    """A store with one paid invoice, analyzed, then OPEN open invoices nobody analyzed."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    simulator = PlexoSimulator()
    clock = TestClock(START)
    client = PlexoClient(
        "http://sandbox.local", "sandbox-client", "sandbox-key", 1,
        transport=SandboxTransport(simulator),
    )  # fmt: skip
    ctx = BillingContext(
        engine=engine, plexo=client, clock=clock, tz=ZoneInfo("America/Montevideo"),
        node="test-node", actor="test",
    )  # fmt: skip
    try:
        ensure_plan(ctx)
        data = customers.validate_customer(
            {"reference_id": "cus-1", "email": "cus-1@example.com"}, START.date()
        )
        customer = customers.create_customer(ctx, data)
        assert customer.plexo_id is not None and customer.id is not None
        simulator.add_instrument(customer.plexo_id, APPROVING_CARD)
        customers.sync_instruments(ctx, "cus-1")
        subscriptions.create_subscription(
            ctx, customer_ref="cus-1", plan_code="monthly", start=START
        )
        assert run_billing_pass(ctx).count("approved") == 1  # nothing open any more
        with engine.begin() as conn:
            for table in ("invoice", "charge_attempt"):
                conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
                conn.execute(text(f"ANALYZE {table}"))
        # Another customer's: the charged customer's own queries (cards, caps, the day's
        # count) walk that customer's rows by their indexes, as they should.
        other = customers.create_customer(
            ctx,
            customers.validate_customer(
                {"reference_id": "cus-2", "email": "c2@x.io"}, START.date()
            ),
        )
        planted = subscriptions.create_subscription(
            ctx, customer_ref="cus-2", plan_code="monthly", start=START + timedelta(days=3000)
        )
        assert other.id is not None
        _plant_open(engine, planted.id, other.id)
        clock.set(START + timedelta(days=31))  # the second period is due
        yield ctx, clock
    finally:
        client.close()
        engine.dispose()


def _plant_open(engine: Engine, subscription_id: Any, customer_id: int) -> None:
    """OPEN open invoices (periods far ahead, not due) with one old declined attempt each."""
    far = START + timedelta(days=3650)
    invoices = [
        {
            "number": f"INV-PLANT{i:07d}",
            "subscription_id": subscription_id,
            "customer_id": customer_id,
            "period_index": 1000 + i,
            "period_start": far + timedelta(hours=i),
            "period_end": far + timedelta(hours=i + 1),
            "amount_minor": 59000,
            "currency": "UYU",
            "status": "open",
            "attempt_count": 1,
            "next_attempt_at": far,
            "created_at": START,
            "updated_at": START,
        }
        for i in range(OPEN)
    ]
    with engine.begin() as conn:
        ids = conn.execute(insert(Invoice).returning(Invoice.id), invoices).scalars().all()
        attempts = [
            {
                "invoice_id": invoice_id,
                "attempt_number": 1,
                "reference_id": f"PLANT-{n}-1",
                "state": "declined",
                "amount_minor": 59000,
                "currency": "UYU",
                "node": "x",
                "send_count": 1,
                "check_count": 0,
                "created_at": START - timedelta(days=90),
            }
            for n, invoice_id in enumerate(ids)
        ]
        conn.execute(insert(ChargeAttempt), attempts)


def _capture(engine: Engine) -> tuple[list[tuple[str, Any]], Any]:
    seen: list[tuple[str, Any]] = []

    def hook(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        verb = statement.split()[0].upper()
        if verb in ("SELECT", "UPDATE"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", hook)
    return seen, hook


def _explain(engine: Engine, statement: str, parameters: Any) -> str:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        raw.rollback()
        return plan
    finally:
        raw.close()


def _scans(plan: str, table: str) -> list[str]:
    """The plan's access paths to `table`: "Index Scan using pk_invoice", "Seq Scan", ..."""
    pattern = rf"((?:Seq Scan|(?:Index|Index Only|Bitmap Heap) Scan(?: using \w+)?)) on {table}\b"
    return re.findall(pattern, plan)


@pytest.mark.postgres
def test_hot_statements_use_the_keys_with_stale_statistics(
    stale: tuple[BillingContext, TestClock],
) -> None:
    ctx, clock = stale
    engine = ctx.engine
    with engine.connect() as conn:
        planned = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE relname = 'invoice'")
        ).scalar_one()
    assert planned < 10, "statistics must predate the open invoices"
    assert create_due_invoices(ctx, clock.now()).created == 1
    [invoice_id] = claim_invoices(engine, ctx.node, clock.now(), 60, 10)

    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(BARE_CAS, {"id": invoice_id, "now": clock.now()})
        control = "\n".join(row[0] for row in cursor.fetchall())
        raw.rollback()
    finally:
        raw.close()
    assert "ix_invoice_claimable" in control, f"control: the bare form walks the index\n{control}"

    seen, hook = _capture(engine)
    try:
        result = charge_invoice(ctx, invoice_id)
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    assert result.outcome == "approved", result
    checked = 0
    for statement, parameters in seen:
        plan = _explain(engine, statement, parameters)
        shown = f"{' '.join(statement.split())[:160]}\n{plan}"
        assert "ix_invoice_claimable" not in plan, shown
        assert "ix_charge_attempt_unresolved" not in plan, shown
        invoice_scans = _scans(plan, "invoice")
        attempt_scans = _scans(plan, "charge_attempt")
        assert "Seq Scan" not in invoice_scans + attempt_scans, shown
        if re.search(r"WHERE invoice\.id = ", statement):  # names its invoice by key
            assert invoice_scans and set(invoice_scans) == {"Index Scan using pk_invoice"}, shown
            checked += 1
        if re.search(r"charge_attempt\.reference_id = ", statement):  # names its attempt
            assert "Index Scan using uq_charge_attempt_reference_id" in attempt_scans, shown
            checked += 1
    # The write-ahead's read and compare-and-set; the record's three updates (invoice by the
    # attempt's invoice_id, the attempt by its reference).
    assert checked >= 5, [" ".join(s.split())[:100] for s, _ in seen]
