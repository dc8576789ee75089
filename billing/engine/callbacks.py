"""Plexo payment callbacks (issue 6 item 8): hints, never proof.

Callbacks are unsigned (plexo-api.md section 5): anyone who learns the URL can POST anything.
So a callback only names an attempt to look at again; what is recorded comes from our own
`GET /v1/payments/{id}` (with our credentials, checked against the referenceId we wrote),
through the same guarded path as the reconciler (`charge.record_outcome` under the invoice
lease). A callback for an attempt that is already settled, or that is not ours, costs no call
and changes nothing.

The answer tells Plexo whether to try again (it retries on non-2xx): 200 when the hint was
used or is of no use, 503 when we could not look now (the invoice is leased: a charge or a
check is in flight; the gateway is unavailable), 400 for a body that is no PaymentDto.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, update
from sqlmodel import col, select

from billing import metrics
from billing.domain.lifecycle import InvoiceStatus
from billing.engine.billing_pass import observe
from billing.engine.charge import UNRESOLVED, record_outcome
from billing.engine.context import BillingContext
from billing.logs import log_event
from billing.plexo.errors import PaymentNotFound, PlexoError
from billing.plexo.wire import camel_keys
from billing.store.claims import release_lease
from billing.store.db import session
from billing.store.models import ChargeAttempt, Invoice

log = logging.getLogger(__name__)

MAX_ID = 64  # the columns that hold a referenceId and a payment id


@dataclass(frozen=True)
class CallbackResult:
    http_status: int
    outcome: str  # recorded:<kind> | settled | not_ours | pending | busy | unavailable | ...


def handle_payment_callback(ctx: BillingContext, body: bytes) -> CallbackResult:
    """Use one callback body as a hint; see the module docstring."""
    hint = _read(body)
    if hint is None:
        return _done(CallbackResult(400, "malformed"))
    payment_id, ref = hint
    with session(ctx.engine) as s:
        row = s.exec(
            select(ChargeAttempt, Invoice.status)
            .join(Invoice, col(Invoice.id) == col(ChargeAttempt.invoice_id))
            .where(ChargeAttempt.reference_id == ref)
        ).first()
    if row is None:
        return _done(CallbackResult(200, "not_ours"))
    attempt, invoice_status = row
    if attempt.state not in UNRESOLVED or invoice_status != InvoiceStatus.charging:
        return _done(CallbackResult(200, "settled"))
    # The id we learned from Plexo's own answer wins over the one in an unsigned body.
    confirm_id = attempt.plexo_payment_id or payment_id
    if not _take_lease(ctx, attempt.invoice_id):
        return _done(CallbackResult(503, "busy"))
    try:
        outcome = ctx.plexo.get_payment(confirm_id, reference_id=ref)
    except PaymentNotFound:
        _release(ctx, attempt.invoice_id)
        return _done(CallbackResult(200, "no_such_payment"))
    except PlexoError:
        _release(ctx, attempt.invoice_id)
        return _done(CallbackResult(503, "unavailable"))
    except BaseException:
        _release(ctx, attempt.invoice_id)
        raise
    if outcome.kind not in ("approved", "declined"):
        # Still pending, or the payment names another reference: the reconciler keeps it.
        _release(ctx, attempt.invoice_id)
        return _done(CallbackResult(200, outcome.kind))
    result = record_outcome(ctx, ref, outcome, lease_owner=ctx.node)
    observe(result)  # counted with every other recorded charge outcome
    return _done(CallbackResult(200, f"recorded:{result.outcome}"))


def _read(body: bytes) -> tuple[str, str] | None:
    """(payment id, referenceId) from a PaymentDto, or None when it is not one."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, Mapping):
        return None
    data = camel_keys(data)
    payment_id, ref = data.get("id"), data.get("referenceId")
    if not isinstance(payment_id, str) or not isinstance(ref, str):
        return None
    for value in (payment_id, ref):
        if not 1 <= len(value) <= MAX_ID or not value.isascii() or not value.isprintable():
            return None
    return payment_id, ref


def _take_lease(ctx: BillingContext, invoice_id: int) -> bool:
    """Compare-and-set the invoice lease to this node, only when nobody holds it (not even
    this node: its own charge in flight records its own answer)."""
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        taken = s.exec(
            update(Invoice)
            .where(col(Invoice.id) == invoice_id)
            .where(col(Invoice.status) == InvoiceStatus.charging)
            .where(or_(col(Invoice.lease_owner).is_(None), col(Invoice.lease_until) < now))
            .values(lease_owner=ctx.node, lease_until=now + timedelta(seconds=ctx.lease_seconds))
        )
        return taken.rowcount == 1


def _release(ctx: BillingContext, invoice_id: int) -> None:
    release_lease(ctx.engine, invoice_id, ctx.node)


def _done(result: CallbackResult) -> CallbackResult:
    log_event(log, "callback.received", outcome=result.outcome, status=result.http_status)
    metrics.CALLBACKS.labels(outcome=result.outcome).inc()
    return result
