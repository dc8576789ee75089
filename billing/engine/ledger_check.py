"""The ledger check (`billing reconcile`): our charge attempts against Plexo's payments.

Not the reconciler (engine/reconcile.py), which settles single attempts whose outcome is not
known yet. This compares, for a range of time, every attempt we wrote with every payment Plexo
lists for the merchant, by referenceId, and stores what does not match as findings:

| kind               | ours                        | Plexo's                                   |
|--------------------|-----------------------------|-------------------------------------------|
| missing_here       | none, or declined           | money taken (approved, refunded...)       |
| missing_at_plexo   | approved                    | no payment with that referenceId          |
| status_mismatch    | approved / declined         | another state (denied, refunded, pending) |
| amount_mismatch    | approved                    | approved, another amount or currency      |

A pair is in the range by our attempt's time when we know the referenceId, else by Plexo's
`createdAt`, so the two clocks need not agree at the edges. Attempts still unresolved
(sending, unknown, pending) are the reconciler's and are counted, not reported. Plexo's query
has no documented date filter: every page of the merchant's payments is read (bounded), and a
listing that fails part-way stores nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlmodel import Session, col, select

from billing.domain.money import from_major
from billing.domain.text import gateway_text
from billing.engine.context import BillingContext
from billing.engine.events import record_event
from billing.engine.subscriptions import checked_reason
from billing.errors import BillingError, Conflict, InvalidInput, NotFound
from billing.logs import log_event
from billing.store.db import session
from billing.store.models import (
    ChargeAttempt,
    Invoice,
    LedgerCheckRun,
    ReconciliationFinding,
    is_row_id,
)

log = logging.getLogger("billing.ledger_check")

KINDS = ("missing_here", "missing_at_plexo", "status_mismatch", "amount_mismatch")
MONEY_TAKEN = frozenset({"approved", "refunded", "partially-refunded"})
UNRESOLVED_STATES = frozenset({"sending", "unknown", "pending"})
PAGE_SIZE = 100
MAX_PAGES = 2000  # 200,000 payments at the default page size
LOOKUP_CHUNK = 500
ENTITY = "reconciliation_finding"
# Serialises the write of checks on PostgreSQL, so two checks never open one finding twice
# (SQLite's BEGIN IMMEDIATE already does).
_WRITE_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('billing.ledger_check'))")


class LedgerCheckFailed(BillingError):
    """Plexo's listing could not be read whole: nothing was stored."""


@dataclass(frozen=True, slots=True)
class Ours:
    """The facts of one of our attempts the check compares."""

    attempt_id: int
    invoice_id: int
    invoice_number: str
    reference_id: str
    state: str
    amount_minor: int
    currency: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Theirs:
    """The facts of one Plexo payment the check compares (fields Plexo left out are None)."""

    payment_id: str | None
    reference_id: str | None
    status: str | None
    amount_minor: int | None
    currency: str | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class Discrepancy:
    kind: str
    key: str
    ours: Ours | None
    theirs: Theirs | None


@dataclass
class CheckResult:
    check_id: int
    range_from: datetime
    range_to: datetime
    counts: dict[str, int]
    findings: list[ReconciliationFinding] = field(default_factory=list)
    auto_resolved: list[int] = field(default_factory=list)

    @property
    def open_findings(self) -> list[ReconciliationFinding]:
        return [f for f in self.findings if f.resolved_at is None]

    @property
    def clean(self) -> bool:
        """Nothing this check saw is left unexplained (resolved findings are explained)."""
        return not self.open_findings


def compare(ours: Ours | None, theirs: Theirs | None) -> str:
    """The kind of one referenceId's pair, or matched / unresolved / ignored (no finding)."""
    if ours is None:
        if theirs is not None and theirs.status in MONEY_TAKEN:
            return "missing_here"
        return "ignored"  # a foreign payment that took no money
    if ours.state in UNRESOLVED_STATES:
        return "unresolved"  # the reconciler's to settle
    if theirs is None:
        return "missing_at_plexo" if ours.state == "approved" else "matched"
    if ours.state == "declined":
        if theirs.status == "approved":
            return "missing_here"
        if theirs.status in MONEY_TAKEN or theirs.status in ("pending", "created", "authorized"):
            return "status_mismatch"
        return "matched"
    if theirs.status != "approved":
        return "status_mismatch"
    if theirs.amount_minor != ours.amount_minor or theirs.currency != ours.currency:
        return "amount_mismatch"
    return "matched"


def run_ledger_check(
    ctx: BillingContext,
    start: datetime,
    end: datetime,
    *,
    trigger: str = "cli",
    page_size: int = PAGE_SIZE,
    max_pages: int = MAX_PAGES,
) -> CheckResult:
    """Compare [start, end) with Plexo, store the findings (a re-run updates open ones)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("the range of a ledger check must be aware datetimes")
    if not start < end:
        raise InvalidInput("the range is empty: --from must be before --to")
    started = ctx.clock.now()
    ours = _our_attempts(ctx, start, end)
    listed, candidates, counts = _plexo_payments(ctx, set(ours), start, end, page_size, max_pages)
    known_elsewhere = _known_references(ctx, {t.reference_id for t in candidates} - {None})
    pairs: dict[str, tuple[Ours | None, Theirs | None]] = {
        ref: (attempt, _pick(listed.get(ref, []))) for ref, attempt in ours.items()
    }
    for theirs in candidates:
        if theirs.reference_id is not None and theirs.reference_id in known_elsewhere:
            continue  # ours, judged in the range of our attempt
        key = theirs.reference_id or f"payment:{theirs.payment_id or '?'}"
        previous = pairs.get(key, (None, None))[1]
        pairs[key] = (None, _pick([theirs] + ([previous] if previous else [])))
    discrepancies: list[Discrepancy] = []
    settled: set[str] = set()
    for key, (attempt, payment) in pairs.items():
        verdict = compare(attempt, payment)
        counts[verdict] = counts.get(verdict, 0) + 1
        if verdict in KINDS:
            discrepancies.append(Discrepancy(verdict, key, attempt, payment))
        elif verdict in ("matched", "ignored"):
            settled.add(key)
    return _store(ctx, start, end, started, trigger, counts, discrepancies, settled)


def _our_attempts(ctx: BillingContext, start: datetime, end: datetime) -> dict[str, Ours]:
    with session(ctx.engine) as s:
        rows = s.exec(
            select(ChargeAttempt, Invoice.number)
            .join(Invoice, col(Invoice.id) == col(ChargeAttempt.invoice_id))
            .where(col(ChargeAttempt.created_at) >= start)
            .where(col(ChargeAttempt.created_at) < end)
        ).all()
    return {
        a.reference_id: Ours(
            int(a.id or 0),
            a.invoice_id,
            number,
            a.reference_id,
            a.state,
            a.amount_minor,
            a.currency,
            a.created_at,
        )
        for a, number in rows
    }


def _plexo_payments(
    ctx: BillingContext,
    our_refs: set[str],
    start: datetime,
    end: datetime,
    page_size: int,
    max_pages: int,
) -> tuple[dict[str, list[Theirs]], list[Theirs], dict[str, int]]:
    """Every page of the merchant's payments: those naming our references, and the others
    dated in the range (or not dated at all) as candidates. Raises on anything partial."""
    from billing.plexo.client import ListedPayment  # the client (httpx) only when used

    listed: dict[str, list[Theirs]] = {}
    candidates: list[Theirs] = []
    seen: set[str] = set()
    counts = {"plexo_payments": 0, "pages": 0, "undated": 0}
    previous_len = 0
    for page in range(1, max_pages + 2):
        if page > max_pages:
            raise LedgerCheckFailed(
                f"Plexo lists more than {max_pages} pages of {page_size} payments; "
                "nothing was stored (the listing is bounded)"
            )
        answer = ctx.plexo.list_payments(page, page_size)
        counts["pages"] = page
        items: list[ListedPayment] = answer.items
        fresh = [p for p in items if p.payment_id is None or p.payment_id not in seen]
        if items and not fresh:
            if previous_len > page_size:
                break  # it ignored paging and listed everything at once
            raise LedgerCheckFailed(
                f"Plexo answered page {page} with the payments of an earlier page (paging not "
                "honoured); nothing was stored"
            )
        for item in fresh:
            if item.payment_id is not None:
                seen.add(item.payment_id)
            counts["plexo_payments"] += 1
            theirs = _theirs(item)
            if theirs.reference_id is not None and theirs.reference_id in our_refs:
                listed.setdefault(theirs.reference_id, []).append(theirs)
            elif theirs.created_at is None:
                counts["undated"] += 1
                candidates.append(theirs)
            elif start <= theirs.created_at < end:
                candidates.append(theirs)
        previous_len = len(items)
        if len(items) < page_size or (answer.total is not None and len(seen) >= answer.total):
            break
    return listed, candidates, counts


def _theirs(item: Any) -> Theirs:
    minor: int | None = None
    if item.total is not None and item.currency is not None:
        try:
            minor = from_major(item.total, item.currency)
        except InvalidInput:
            minor = None  # a currency we do not settle, or more decimals than it has
    return Theirs(
        payment_id=item.payment_id,
        reference_id=item.reference_id[:100] if item.reference_id else None,
        status=item.status,
        amount_minor=minor,
        currency=gateway_text(item.currency, 8),
        created_at=item.created_at,
    )


def _pick(payments: Sequence[Theirs]) -> Theirs | None:
    """Two payments under one referenceId should not exist; if they do, money taken wins."""
    if not payments:
        return None
    return min(payments, key=lambda t: (t.status not in MONEY_TAKEN, t.status != "approved"))


def _known_references(ctx: BillingContext, refs: Iterable[str | None]) -> set[str]:
    wanted = sorted(r for r in refs if r is not None)
    found: set[str] = set()
    with session(ctx.engine) as s:
        for n in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[n : n + LOOKUP_CHUNK]
            found.update(
                s.exec(
                    select(ChargeAttempt.reference_id).where(
                        col(ChargeAttempt.reference_id).in_(chunk)
                    )
                ).all()
            )
    return found


def _facts(d: Discrepancy) -> dict[str, Any]:
    ours, theirs = d.ours, d.theirs
    return {
        "kind": d.kind,
        "reference_id": ours.reference_id if ours else (theirs.reference_id if theirs else None),
        "plexo_payment_id": theirs.payment_id if theirs else None,
        "attempt_id": ours.attempt_id if ours else None,
        "invoice_id": ours.invoice_id if ours else None,
        "expected_status": ours.state if ours else None,
        "found_status": gateway_text(theirs.status, 32) if theirs else "absent",
        "expected_amount_minor": ours.amount_minor if ours else None,
        "expected_currency": ours.currency if ours else None,
        "found_amount_minor": theirs.amount_minor if theirs else None,
        "found_currency": theirs.currency if theirs else None,
        "occurred_at": ours.created_at if ours else (theirs.created_at if theirs else None),
    }


# Facts that make a finding "the same one": a resolved finding with these equal stays resolved.
_SAME = (
    "kind",
    "plexo_payment_id",
    "expected_status",
    "found_status",
    "expected_amount_minor",
    "expected_currency",
    "found_amount_minor",
    "found_currency",
)


def _store(
    ctx: BillingContext,
    start: datetime,
    end: datetime,
    started: datetime,
    trigger: str,
    counts: dict[str, int],
    discrepancies: list[Discrepancy],
    settled: set[str],
) -> CheckResult:
    now = ctx.clock.now()
    for kind in KINDS:
        counts.setdefault(kind, 0)
    with session(ctx.engine) as s:
        if s.get_bind().dialect.name == "postgresql":
            s.exec(_WRITE_LOCK)  # type: ignore[call-overload]
        run = LedgerCheckRun(
            range_from=start,
            range_to=end,
            trigger=trigger,
            actor=ctx.actor,
            node=ctx.node,
            started_at=started,
            finished_at=now,
            counts=counts,
        )
        s.add(run)
        s.flush()
        assert run.id is not None
        result = CheckResult(run.id, start, end, counts)
        keys = [d.key for d in discrepancies] + sorted(settled)
        existing = _findings_by_key(s, keys)
        for d in discrepancies:
            facts = _facts(d)
            rows = existing.get(d.key, [])
            current = next((f for f in rows if f.resolved_at is None), None)
            if current is None:
                current = next(
                    (f for f in rows if all(getattr(f, k) == facts[k] for k in _SAME)), None
                )
            if current is not None and current.resolved_at is None:
                for name, value in facts.items():
                    setattr(current, name, value)
                current.last_seen_at = now
                current.last_check_id = run.id
                s.add(current)
            elif current is None:
                current = ReconciliationFinding(
                    key=d.key,
                    first_seen_at=now,
                    last_seen_at=now,
                    first_check_id=run.id,
                    last_check_id=run.id,
                    **facts,
                )
                s.add(current)
                s.flush()
                assert current.id is not None
                record_event(
                    s,
                    at=now,
                    entity_type=ENTITY,
                    entity_id=current.id,
                    event="reconciliation.finding_opened",
                    actor=ctx.actor,
                    kind=d.kind,
                    reference_id=facts["reference_id"],
                    check_id=run.id,
                )
            result.findings.append(current)
        for key in sorted(settled):
            for finding in existing.get(key, []):
                if finding.resolved_at is not None:
                    continue
                # The pair matches now (the reconciler settled it, Plexo caught up).
                why = f"matched in ledger check {run.id}"
                _resolve(ctx, s, finding, now, why, check_id=run.id)
                assert finding.id is not None
                result.auto_resolved.append(finding.id)
        counts["open"] = len(result.open_findings)
        run.counts = dict(counts)
        s.add(run)
    log_event(
        log,
        "ledger_check.completed",
        check_id=result.check_id,
        range_from=start.isoformat(),
        range_to=end.isoformat(),
        open=counts["open"],
        matched=counts.get("matched", 0),
        plexo_payments=counts["plexo_payments"],
        pages=counts["pages"],
    )
    return result


def _findings_by_key(s: Session, keys: list[str]) -> dict[str, list[ReconciliationFinding]]:
    found: dict[str, list[ReconciliationFinding]] = {}
    for n in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[n : n + LOOKUP_CHUNK]
        rows = s.exec(
            select(ReconciliationFinding)
            .where(col(ReconciliationFinding.key).in_(chunk))
            .order_by(col(ReconciliationFinding.id).desc())
        ).all()
        for row in rows:
            found.setdefault(row.key, []).append(row)
    return found


def list_findings(
    ctx: BillingContext, *, open_only: bool = False, limit: int | None = None
) -> list[ReconciliationFinding]:
    """Findings, newest first."""
    with session(ctx.engine) as s:
        query = select(ReconciliationFinding)
        if open_only:
            query = query.where(col(ReconciliationFinding.resolved_at).is_(None))
        query = query.order_by(col(ReconciliationFinding.id).desc())
        return list(s.exec(query if limit is None else query.limit(limit)).all())


def resolve_finding(ctx: BillingContext, finding_id: int, reason: str) -> ReconciliationFinding:
    """A person explains a finding: who (ctx.actor) and why go on it and into the event log."""
    why = checked_reason(reason)
    if why is None:
        raise InvalidInput("--reason is required: say why the finding is explained")
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        finding = (
            s.get(ReconciliationFinding, finding_id, with_for_update=True)
            if is_row_id(finding_id)
            else None
        )
        if finding is None:
            raise NotFound(f"no reconciliation finding {finding_id}")
        if finding.resolved_at is not None:
            raise Conflict(f"finding {finding_id} was already resolved by {finding.resolved_by}")
        _resolve(ctx, s, finding, now, why, kind=finding.kind, reference_id=finding.reference_id)
    return finding


def _resolve(
    ctx: BillingContext,
    s: Session,
    finding: ReconciliationFinding,
    now: datetime,
    why: str,
    **details: Any,
) -> None:
    """Close a finding as ctx.actor with `why`, and say so in the event log."""
    assert finding.id is not None
    finding.resolved_at = now
    finding.resolved_by = ctx.actor
    finding.resolution = why
    s.add(finding)
    record_event(
        s,
        at=now,
        entity_type=ENTITY,
        entity_id=finding.id,
        event="reconciliation.finding_resolved",
        actor=ctx.actor,
        reason=why,
        **details,
    )


def open_findings_by_kind(s: Session) -> dict[str, int]:
    """Open findings per kind, every kind present (0 when none): the metric's samples."""
    from sqlalchemy import func

    counts = {kind: 0 for kind in KINDS}
    rows = s.exec(
        select(ReconciliationFinding.kind, func.count())
        .where(col(ReconciliationFinding.resolved_at).is_(None))
        .group_by(col(ReconciliationFinding.kind))
    ).all()
    counts.update({str(kind): int(n) for kind, n in rows})
    return counts


def last_daemon_check_to(ctx: BillingContext) -> datetime | None:
    """The end of the range of the daemon's latest check, or None if it never ran one."""
    from sqlalchemy import func

    with session(ctx.engine) as s:
        return s.exec(
            select(func.max(LedgerCheckRun.range_to)).where(LedgerCheckRun.trigger == "daemon")
        ).one()


def daily_range(
    now: datetime, tz: ZoneInfo, hour: int, days: int
) -> tuple[datetime, datetime] | None:
    """The daemon's daily window: the `days` whole local days before today, once the local
    clock has reached `hour`; None before it."""
    local = now.astimezone(tz)
    if local.hour < hour:
        return None
    end = datetime.combine(local.date(), time(0), tzinfo=tz)
    start = datetime.combine(local.date() - timedelta(days=days), time(0), tzinfo=tz)
    return start, end
