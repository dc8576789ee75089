"""billing invoices ...: what was billed, what is unpaid, and why (runs: cli/runs.py)."""

from __future__ import annotations

from typing import Any

import typer
from sqlalchemy import and_, func
from sqlmodel import col, select

from billing.cli.common import (
    ByOption,
    JsonOption,
    ReasonOption,
    cell,
    handle_errors,
    local_time,
    operator_name,
    output,
    settings,
    table,
)
from billing.domain.lifecycle import InvoiceStatus
from billing.domain.money import to_major
from billing.engine.customers import get_customer
from billing.engine.invoices import (
    AttemptLine,
    invoice_timeline,
    mark_uncollectible,
    release_invoice,
    resolve_invoice,
    void_invoice,
)
from billing.errors import InvalidInput
from billing.store.db import session
from billing.store.models import ChargeAttempt, Customer, Invoice
from billing.wiring import open_context

invoices_app = typer.Typer(help="Invoices: one per billed period.", no_args_is_help=True)
# The runs sub-app (list, show, export) lives in cli/runs.py; main.py loads it from here.
from billing.cli.runs import runs_app  # noqa: E402, F401

DEFAULT_INVOICE_LIMIT = 200


def invoice_view(
    invoice: Invoice, customer: str | None, attempt: ChargeAttempt | None = None
) -> dict[str, Any]:
    return {
        "id": invoice.id,
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
        # The latest attempt: what to look up at Plexo (referenceId, payment id) and its state.
        "attempt_state": attempt.state if attempt else None,
        "reference_id": attempt.reference_id if attempt else None,
        "plexo_payment_id": attempt.plexo_payment_id if attempt else None,
        # Safety bounds: why it is (or was) parked, and who released it.
        "parked_reason": invoice.parked_reason,
        "parked_detail": invoice.parked_detail,
        "parked_at": invoice.parked_at,
        "released_at": invoice.released_at,
        "released_by": invoice.released_by,
    }


@invoices_app.command("list")
@handle_errors
def list_invoices(
    status: str | None = typer.Option(
        None, "--status", help="open, charging, parked, paid, void, uncollectible"
    ),
    customer: str | None = typer.Option(None, "--customer", help="Customer reference id."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=100_000, help=f"At most N (default {DEFAULT_INVOICE_LIMIT})."
    ),
    show_all: bool = typer.Option(False, "--all", help="Show every matching invoice."),
    as_json: bool = JsonOption,
) -> None:
    """List invoices, newest period first, with their latest charge attempt."""
    if status is not None and status not in InvoiceStatus.__members__:
        raise InvalidInput(
            f"unknown status {status!r}; use one of " + ", ".join(InvoiceStatus.__members__)
        )
    if show_all and limit is not None:
        raise InvalidInput("give --limit N or --all, not both")
    cap = None if show_all else limit or DEFAULT_INVOICE_LIMIT
    with open_context(settings()) as ctx, session(ctx.engine) as s:
        latest = (
            select(func.max(ChargeAttempt.attempt_number))
            .where(ChargeAttempt.invoice_id == Invoice.id)
            .correlate(Invoice)
            .scalar_subquery()
        )
        query = (
            select(Invoice, Customer.reference_id, ChargeAttempt)
            .join(Customer, col(Customer.id) == col(Invoice.customer_id))
            .outerjoin(
                ChargeAttempt,
                and_(
                    col(ChargeAttempt.invoice_id) == col(Invoice.id),
                    col(ChargeAttempt.attempt_number) == latest,
                ),
            )
        )
        counted = select(func.count(col(Invoice.id)))
        if status is not None:
            query = query.where(Invoice.status == status)
            counted = counted.where(Invoice.status == status)
        if customer is not None:
            found = get_customer(s, customer, include_deleted=True)
            query = query.where(Invoice.customer_id == found.id)
            counted = counted.where(Invoice.customer_id == found.id)
        query = query.order_by(col(Invoice.period_start).desc(), col(Invoice.id).desc())
        rows = s.exec(query if cap is None else query.limit(cap)).all()
        total = len(rows) if cap is None or len(rows) < cap else s.exec(counted).one()
        views = [invoice_view(invoice, ref, attempt) for invoice, ref, attempt in rows]
    columns = ["number", "customer", "period_start", "amount", "currency", "status", "attempts"]
    columns += ["attempt_state", "reference_id", "plexo_payment_id", "last_decline_code"]
    if status == InvoiceStatus.parked:
        columns += ["parked_reason", "parked_at"]
    output(views, as_json, table(views, columns))
    if total > len(views):
        # stderr, so that --json stays one parsable document
        typer.echo(f"{len(views)} of {total} shown; use --limit N or --all", err=True)


def attempt_view(line: AttemptLine) -> dict[str, Any]:
    a = line.attempt
    return {
        "attempt": a.attempt_number,
        "at": a.created_at,
        "last_sent_at": a.last_sent_at,
        "resolved_at": a.resolved_at,
        "instrument_id": a.instrument_id,
        "instrument": _card(line.brand, line.last4),
        "state": a.state,
        "decline_code": a.decline_code,
        "result_code": a.result_code,
        "decline_class": a.decline_class,
        "reference_id": a.reference_id,
        "plexo_payment_id": a.plexo_payment_id,
        "send_count": a.send_count,
        "next_check_at": a.next_check_at,
    }


def _card(brand: str | None, last4: str | None) -> str | None:
    if brand is None and last4 is None:
        return None
    return f"{brand or 'card'} *{last4 or '????'}"


@invoices_app.command("show")
@handle_errors
def show_invoice(
    invoice: str = typer.Argument(..., help="Invoice id or number (INV-...)."),
    as_json: bool = JsonOption,
) -> None:
    """Show one invoice and its timeline: every attempt and the next scheduled one."""
    with open_context(settings()) as ctx:
        timeline = invoice_timeline(ctx, invoice)
        with session(ctx.engine) as s:
            customer = s.get(Customer, timeline.invoice.customer_id)
        ref = customer.reference_id if customer else None
    view = {
        **invoice_view(timeline.invoice, ref),
        "next_attempt_at": timeline.next_attempt_at,
        "next_check_at": timeline.next_check_at,
        "timeline": [attempt_view(line) for line in timeline.attempts],
    }
    output(view, as_json, render_timeline(view))


def render_timeline(view: dict[str, Any]) -> str:
    head = [
        f"invoice {view['id']} {view['number']}  {view['status']}  "
        f"{view['amount']} {view['currency']}  customer {cell(view['customer'])}",
        f"period {cell(view['period_start'])} - {cell(view['period_end'])}, "
        f"subscription {view['subscription_id']}",
    ]
    rows = view["timeline"]
    columns = ["attempt", "at", "instrument", "state", "decline_code", "result_code"]
    columns += ["decline_class", "reference_id", "plexo_payment_id"]
    lines = [*head, table(rows, columns) if rows else "no attempts yet"]
    if view["status"] == "parked":
        lines.append(
            f"parked {local_time(view['parked_at'])} ({view['parked_reason']}): "
            f"{cell(view['parked_detail'])}; `billing invoices release {view['number']} "
            "--reason ...` lets it be charged"
        )
    if view["released_at"] is not None:
        lines.append(
            f"released by {cell(view['released_by'])} {local_time(view['released_at'])} "
            f"(was parked: {view['parked_reason']})"
        )
    if view["next_attempt_at"] is not None:
        lines.append(f"next attempt: {local_time(view['next_attempt_at'])}")
    elif view["next_check_at"] is not None:
        lines.append(f"next check with Plexo: {local_time(view['next_check_at'])}")
    elif view["status"] == "open":
        lines.append("next attempt: none scheduled")
    return "\n".join(lines)


@invoices_app.command("void")
@handle_errors
def void(
    invoice: str = typer.Argument(..., help="Invoice id or number."),
    reason: str = ReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Void an open invoice: the period is not owed (never while it is charging)."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        done = void_invoice(ctx, invoice, reason=reason)
    output(invoice_view(done, None), as_json, f"invoice {done.number} voided by {actor}")


@invoices_app.command("release")
@handle_errors
def release(
    invoice: str = typer.Argument(..., help="Invoice id or number."),
    reason: str = ReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Let a parked invoice be charged (over its safety bound, at this amount, once)."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        done = release_invoice(ctx, invoice, reason=reason)
    output(
        invoice_view(done, None),
        as_json,
        f"invoice {done.number} released by {actor}: the next billing pass charges it",
    )


@invoices_app.command("mark-uncollectible")
@handle_errors
def uncollectible(
    invoice: str = typer.Argument(..., help="Invoice id or number."),
    reason: str = ReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Write an open invoice off: no more attempts; a late payment still pays it."""
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        done = mark_uncollectible(ctx, invoice, reason=reason)
    output(
        invoice_view(done, None), as_json, f"invoice {done.number} marked uncollectible by {actor}"
    )


@invoices_app.command("resolve")
@handle_errors
def resolve(
    invoice: str = typer.Argument(..., help="Invoice id or number."),
    paid: bool = typer.Option(False, "--paid", help="Plexo took the money: the invoice is paid."),
    not_charged: bool = typer.Option(
        False, "--not-charged", help="No money moved: the invoice reopens and is charged again."
    ),
    reason: str = ReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Settle an attempt the reconciler cannot (e.g. Plexo answers 409 and finds nothing)."""
    if paid == not_charged:
        raise InvalidInput("give exactly one of --paid or --not-charged")
    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        done, attempt = resolve_invoice(ctx, invoice, paid=paid, reason=reason)
    view = {**invoice_view(done, None, attempt), "resolved_by": actor}
    what = "paid" if paid else "not charged: reopened"
    output(view, as_json, f"invoice {done.number} attempt {attempt.reference_id} {what} by {actor}")


@invoices_app.command("retry")
@handle_errors
def retry_invoice(
    invoice: str = typer.Argument(..., help="Invoice number (INV-...) or id."),
    reason: str = ReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Charge an open invoice now, within the card-network caps (refused naming the cap)."""
    from billing.engine.dunning import retry_invoice as retry

    actor = operator_name(by)
    with open_context(settings(), actor=actor) as ctx:
        result = retry(ctx, invoice, reason)
    view = {
        "number": result.invoice_number,
        "attempt": result.attempt_number,
        "outcome": result.outcome,
        "reference_id": result.reference_id,
        "decline_code": result.decline_code,
        "decline_class": result.decline_class,
        "status": result.invoice_status,
        "next_attempt_at": result.next_attempt_at,
    }
    text = f"invoice {result.invoice_number} attempt {result.attempt_number} by {actor}: "
    text += result.outcome
    if result.outcome == "declined":
        text += f" {result.decline_code} ({result.decline_class})"
        text += (
            f"; next retry {local_time(result.next_attempt_at)}"
            if result.next_attempt_at
            else f"; invoice {result.invoice_status}"
        )
    elif result.outcome == "parked":
        text += ": over a safety bound, not sent (see `billing invoices show`)"
    elif result.outcome in ("unknown", "pending"):
        text += ": the reconciler asks Plexo before anything else is sent"
    output(view, as_json, text)
