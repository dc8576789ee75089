"""billing invoices list / billing runs list: what was billed, what is unpaid, and why."""

from __future__ import annotations

from typing import Any

import typer
from sqlmodel import col, select

from billing.cli.common import JsonOption, handle_errors, output, settings, table
from billing.domain.lifecycle import InvoiceStatus
from billing.domain.money import to_major
from billing.engine.customers import get_customer
from billing.engine.runs import RUN_KINDS, effective_state, stale_after
from billing.errors import InvalidInput
from billing.store.db import session
from billing.store.models import BillingRun, Customer, Invoice
from billing.wiring import open_context

invoices_app = typer.Typer(help="Invoices: one per billed period.", no_args_is_help=True)
runs_app = typer.Typer(
    help="Billing runs: every pass or reconciler sweep that did work.", no_args_is_help=True
)


def invoice_view(invoice: Invoice, customer: str | None) -> dict[str, Any]:
    return {
        "number": invoice.number,
        "customer": customer,
        "subscription_id": invoice.subscription_id,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
        "amount": str(to_major(invoice.amount_minor, invoice.currency)),
        "currency": invoice.currency,
        "status": invoice.status,
        "attempts": invoice.attempt_count,
        "last_decline_code": invoice.last_decline_code,
        "last_decline_class": invoice.last_decline_class,
        "paid_at": invoice.paid_at,
    }


@invoices_app.command("list")
@handle_errors
def list_invoices(
    status: str | None = typer.Option(None, "--status", help="open, charging, paid, void"),
    customer: str | None = typer.Option(None, "--customer", help="Customer reference id."),
    limit: int = typer.Option(200, "--limit", min=1, max=100_000),
    as_json: bool = JsonOption,
) -> None:
    """List invoices, newest period first."""
    if status is not None and status not in InvoiceStatus.__members__:
        raise InvalidInput(
            f"unknown status {status!r}; use one of " + ", ".join(InvoiceStatus.__members__)
        )
    with open_context(settings()) as ctx, session(ctx.engine) as s:
        query = select(Invoice, Customer.reference_id).join(
            Customer, col(Customer.id) == col(Invoice.customer_id)
        )
        if status is not None:
            query = query.where(Invoice.status == status)
        if customer is not None:
            found = get_customer(s, customer, include_deleted=True)
            query = query.where(Invoice.customer_id == found.id)
        rows = s.exec(
            query.order_by(col(Invoice.period_start).desc(), col(Invoice.id).desc()).limit(limit)
        ).all()
        views = [invoice_view(invoice, ref) for invoice, ref in rows]
    columns = ["number", "customer", "period_start", "amount", "currency", "status"]
    output(views, as_json, table(views, [*columns, "attempts", "last_decline_code"]))


def run_view(run: BillingRun, state: str | None = None) -> dict[str, Any]:
    outcomes = {
        outcome: {
            "count": entry["count"],
            "amounts": {cur: str(to_major(m, cur)) for cur, m in entry["amounts"].items()},
        }
        for outcome, entry in run.totals.items()
    }
    return {
        "id": run.id,
        "kind": run.kind,
        "state": state or run.state,
        "node": run.node,
        "as_of": run.as_of,
        "started_at": run.started_at,
        "heartbeat_at": run.heartbeat_at,
        "finished_at": run.finished_at,
        "invoices_created": run.invoices_created,
        "attempts": run.attempts,
        "outcomes": outcomes,
    }


@runs_app.command("list")
@handle_errors
def list_runs(
    kind: str | None = typer.Option(None, "--kind", help="pass or reconcile (default: both)"),
    limit: int = typer.Option(50, "--limit", min=1, max=100_000),
    as_json: bool = JsonOption,
) -> None:
    """List billing runs (passes and reconciler sweeps), newest first, with their state
    (running, completed, interrupted) and counts per outcome."""
    if kind is not None and kind not in RUN_KINDS:
        raise InvalidInput(f"unknown run kind {kind!r}; use one of " + ", ".join(RUN_KINDS))
    with open_context(settings()) as ctx, session(ctx.engine) as s:
        query = select(BillingRun)
        if kind is not None:
            query = query.where(BillingRun.kind == kind)
        runs = s.exec(query.order_by(col(BillingRun.id).desc()).limit(limit)).all()
        # A run whose process died without closing it is shown interrupted at once.
        now, silent = ctx.clock.now(), stale_after(ctx)
        views = [run_view(r, effective_state(r, now, silent)) for r in runs]
    keys = ("id", "kind", "state", "node", "as_of", "invoices_created", "attempts")
    rows = [
        {
            **{k: v[k] for k in keys},
            "outcomes": ", ".join(f"{o} {e['count']}" for o, e in sorted(v["outcomes"].items())),
        }
        for v in views
    ]
    columns = [*keys, "outcomes"]
    output(views, as_json, table(rows, columns))
