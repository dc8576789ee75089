"""The revenue report: what was collected, failed, recovered and churned in a range, and MRR.

Read-only. Money figures come from charge attempts, invoices and events in [from, to); MRR at
an instant is reconstructed per subscription from its row, its plan and its `subscription.*`
events (status changes carry the status they left in `previous`; plan changes carry the old
and new terms and when they take effect). Every figure is per currency, in minor units.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from billing.domain import mrr
from billing.domain.buckets import Bucket, bucket_index, bucket_kind, buckets
from billing.domain.declines import DeclineClass
from billing.domain.lifecycle import AttemptState, InvoiceStatus
from billing.engine.context import BillingContext
from billing.store.db import session
from billing.store.models import ChargeAttempt, Event, Invoice, Plan, Subscription

PARKED = "parked"  # the invoice status safety bounds give (issue 8 item 4)
PARKED_EVENT = "invoice.parked"
ENDING_STATUSES = ("subscription.canceled", "subscription.unpaid")


@dataclass
class Figure:
    """A count and a sum of minor units."""

    count: int = 0
    amount_minor: int = 0

    def add(self, minor: int) -> None:
        self.count += 1
        self.amount_minor += minor


@dataclass
class BucketFigures:
    bucket: Bucket
    collected: Figure = field(default_factory=Figure)
    failed: Figure = field(default_factory=Figure)
    recovered: Figure = field(default_factory=Figure)


@dataclass
class CurrencyReport:
    """One currency's figures. `failed_invoices` is the recovery cohort: invoices whose first
    failed attempt fell in the range; `recovered_of_failed` those of them paid by its end."""

    currency: str
    buckets: list[BucketFigures]
    collected: Figure = field(default_factory=Figure)
    failed_attempts: Figure = field(default_factory=Figure)
    uncollectible: Figure = field(default_factory=Figure)
    recovered: Figure = field(default_factory=Figure)
    failed_invoices: Figure = field(default_factory=Figure)
    recovered_of_failed: Figure = field(default_factory=Figure)
    involuntary_churn: Figure = field(default_factory=Figure)  # amount: MRR lost
    parked: Figure = field(default_factory=Figure)  # parked in the range
    parked_now: Figure = field(default_factory=Figure)  # status parked when the report ran
    mrr_start: int = 0
    mrr_end: int = 0
    subscriptions_start: int = 0
    subscriptions_end: int = 0
    movement: dict[str, int] = field(default_factory=lambda: dict.fromkeys(mrr.MOVEMENTS, 0))

    @property
    def recovery_rate(self) -> Decimal | None:
        """recovered_of_failed / failed_invoices (counts), 4 places; None without failures."""
        if not self.failed_invoices.count:
            return None
        rate = Decimal(self.recovered_of_failed.count) / Decimal(self.failed_invoices.count)
        return rate.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


@dataclass
class RevenueReport:
    range_from: datetime
    range_to: datetime  # exclusive
    timezone: str
    bucket: str  # week | month
    generated_at: datetime
    currencies: list[CurrencyReport]


@dataclass(frozen=True, slots=True)
class _Terms:
    amount_minor: int
    currency: str
    interval: str
    interval_count: int

    def monthly(self) -> mrr.Contribution:
        minor = mrr.monthly_minor(self.amount_minor, self.interval, self.interval_count)
        return mrr.Contribution(self.currency, minor)


@dataclass
class _Timeline:
    """One subscription's counting status and plan terms over time."""

    created_at: datetime
    first_anchor: datetime
    initial_status: str
    statuses: list[tuple[datetime, str]]  # (at, status from then on)
    initial_terms: _Terms
    terms: list[tuple[datetime, _Terms]]  # (effective_at, terms from then on), in order
    involuntary_ends: list[datetime]

    def status_before(self, at: datetime) -> str | None:
        if self.created_at >= at:
            return None
        status = self.initial_status
        for when, value in self.statuses:
            if when >= at:
                break
            status = value
        return status

    def terms_before(self, at: datetime) -> _Terms:
        current = self.initial_terms
        for when, value in self.terms:
            if when < at:
                current = value
        return current

    def contribution(self, at: datetime) -> mrr.Contribution | None:
        """Its MRR just before `at`: counted once its first period started, while active or
        past_due."""
        if self.first_anchor >= at or self.status_before(at) not in mrr.COUNTING_STATUSES:
            return None
        return self.terms_before(at).monthly()

    def first_counted(self) -> datetime | None:
        points = [(self.created_at, self.initial_status), *self.statuses]
        for i, (when, status) in enumerate(points):
            if status not in mrr.COUNTING_STATUSES:
                continue
            begins = max(when, self.first_anchor)
            until = points[i + 1][0] if i + 1 < len(points) else None
            if until is None or begins < until:
                return begins
        return None


def revenue_report(
    ctx: BillingContext, range_from: datetime, range_to: datetime, *, bucket: str = "auto"
) -> RevenueReport:
    """Every figure of the report for [range_from, range_to); writes nothing."""
    kind = bucket_kind(bucket, range_from, range_to)
    cuts = buckets(range_from, range_to, kind, ctx.tz)
    starts = [b.start for b in cuts]
    per: dict[str, CurrencyReport] = {}

    def cur(code: str) -> CurrencyReport:
        if code not in per:
            per[code] = CurrencyReport(code, [BucketFigures(b) for b in cuts])
        return per[code]

    def in_bucket(report: CurrencyReport, at: datetime) -> BucketFigures:
        return report.buckets[bucket_index(starts, at)]

    with session(ctx.engine) as s:
        for currency, minor, at in _attempts(s, AttemptState.approved, range_from, range_to):
            report = cur(currency)
            report.collected.add(minor)
            in_bucket(report, at).collected.add(minor)
        for currency, minor, at in _attempts(s, AttemptState.declined, range_from, range_to):
            report = cur(currency)
            report.failed_attempts.add(minor)
            in_bucket(report, at).failed.add(minor)
        for currency, minor in _invoices_by_event(s, "invoice.uncollectible", range_from, range_to):
            cur(currency).uncollectible.add(minor)
        for currency, minor in _invoices_by_event(s, PARKED_EVENT, range_from, range_to):
            cur(currency).parked.add(minor)
        for currency, minor in s.exec(
            select(Invoice.currency, Invoice.amount_minor).where(Invoice.status == PARKED)
        ).all():
            cur(currency).parked_now.add(minor)
        for currency, minor, paid_at in _recovered(s, range_from, range_to):
            report = cur(currency)
            report.recovered.add(minor)
            in_bucket(report, paid_at).recovered.add(minor)
        for currency, minor, paid in _failed_cohort(s, range_from, range_to):
            report = cur(currency)
            report.failed_invoices.add(minor)
            if paid:
                report.recovered_of_failed.add(minor)
        for timeline in _timelines(s, range_to):
            _add_mrr(timeline, range_from, range_to, cur)
    return RevenueReport(
        range_from=range_from.astimezone(UTC),
        range_to=range_to.astimezone(UTC),
        timezone=ctx.tz.key,
        bucket=kind,
        generated_at=ctx.clock.now(),
        currencies=[per[code] for code in sorted(per)],
    )


def _customer_decline() -> Any:
    """A decline that is the customer's card's, not Plexo refusing our request (no money
    could move, no dunning: `invalid_request`, an operator's "not charged")."""
    return or_(
        col(ChargeAttempt.decline_class).is_(None),
        col(ChargeAttempt.decline_class) != str(DeclineClass.invalid_request),
    )


def _attempts(
    s: Session, state: AttemptState, range_from: datetime, range_to: datetime
) -> list[tuple[str, int, datetime]]:
    """(currency, minor, resolved_at) of the attempts settled as `state` in the range."""
    query = (
        select(ChargeAttempt.currency, ChargeAttempt.amount_minor, ChargeAttempt.resolved_at)
        .where(ChargeAttempt.state == str(state))
        .where(col(ChargeAttempt.resolved_at) >= range_from)
        .where(col(ChargeAttempt.resolved_at) < range_to)
    )
    if state == AttemptState.declined:
        query = query.where(_customer_decline())
    return [(c, m, at) for c, m, at in s.exec(query).all() if at is not None]


def _invoices_by_event(
    s: Session, event: str, range_from: datetime, range_to: datetime
) -> list[tuple[str, int]]:
    """(currency, minor) of each invoice with `event` in the range, once per invoice."""
    ids = (
        select(Event.entity_id)
        .where(Event.entity_type == "invoice")
        .where(Event.event == event)
        .where(col(Event.at) >= range_from)
        .where(col(Event.at) < range_to)
    )
    query = select(Invoice.currency, Invoice.amount_minor).where(col(Invoice.id).in_(ids))
    return [(c, m) for c, m in s.exec(query).all()]


def _failed_invoice_ids() -> Any:
    return (
        select(ChargeAttempt.invoice_id)
        .where(ChargeAttempt.state == str(AttemptState.declined))
        .where(_customer_decline())
    )


def _recovered(
    s: Session, range_from: datetime, range_to: datetime
) -> list[tuple[str, int, datetime]]:
    """(currency, minor, paid_at) of invoices paid in the range after a failed attempt."""
    query = (
        select(Invoice.currency, Invoice.amount_minor, Invoice.paid_at)
        .where(Invoice.status == str(InvoiceStatus.paid))
        .where(col(Invoice.paid_at) >= range_from)
        .where(col(Invoice.paid_at) < range_to)
        .where(col(Invoice.id).in_(_failed_invoice_ids()))
    )
    return [(c, m, at) for c, m, at in s.exec(query).all() if at is not None]


def _failed_cohort(
    s: Session, range_from: datetime, range_to: datetime
) -> list[tuple[str, int, bool]]:
    """(currency, minor, paid by the end) of invoices whose first failed attempt is in range."""
    first = (
        select(
            col(ChargeAttempt.invoice_id).label("invoice_id"),
            func.min(ChargeAttempt.resolved_at).label("first_failed"),
        )
        .where(ChargeAttempt.state == str(AttemptState.declined))
        .where(_customer_decline())
        .group_by(col(ChargeAttempt.invoice_id))
        .subquery()
    )
    query = (
        select(Invoice.currency, Invoice.amount_minor, Invoice.status, Invoice.paid_at)
        .join(first, first.c.invoice_id == Invoice.id)
        .where(first.c.first_failed >= range_from)
        .where(first.c.first_failed < range_to)
    )
    return [
        (c, m, status == InvoiceStatus.paid and paid_at is not None and paid_at < range_to)
        for c, m, status, paid_at in s.exec(query).all()
    ]


def _timelines(s: Session, range_to: datetime) -> list[_Timeline]:
    """A timeline for every subscription created before the end of the range."""
    subs = s.exec(
        select(Subscription)
        .where(col(Subscription.created_at) < range_to)
        .order_by(col(Subscription.id))
    ).all()
    if not subs:
        return []
    plans = s.exec(select(Plan)).all()
    by_id = {p.id: p for p in plans}
    by_code = {p.code: p for p in plans}
    events: dict[int, list[Event]] = defaultdict(list)
    for event in s.exec(
        select(Event).where(Event.entity_type == "subscription").order_by(col(Event.id))
    ).all():
        events[event.entity_id].append(event)
    result: list[_Timeline] = []
    for sub in subs:
        assert sub.id is not None
        plan = by_id[sub.plan_id]
        result.append(_timeline(sub, plan, by_code, events.get(sub.id, [])))
    return result


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _plan_terms(
    data: dict[str, Any], side: str, by_code: dict[str, Plan], fallback: Plan
) -> _Terms:
    plan = by_code.get(str(data.get(f"{side}_plan")), fallback)
    return _Terms(
        int(data.get(f"{side}_amount_minor", plan.amount_minor)),
        str(data.get(f"{side}_currency", plan.currency)),
        plan.interval,
        plan.interval_count,
    )


def _timeline(
    sub: Subscription, plan: Plan, by_code: dict[str, Plan], events: list[Event]
) -> _Timeline:
    first_anchor = sub.anchor_at
    status_events: list[Event] = []
    plan_changes: list[Event] = []
    involuntary: list[datetime] = []
    dunning_cancel_scheduled = False
    for event in events:
        data = event.data or {}
        if event.event == "subscription.created":
            first_anchor = _parse(data.get("anchor_at")) or first_anchor
        elif event.event == "subscription.plan_changed":
            plan_changes.append(event)
        elif event.event == "subscription.cancel_scheduled":
            dunning_cancel_scheduled = "invoice_id" in data  # the final action set it
        elif event.event == "subscription.cancel_unscheduled":
            dunning_cancel_scheduled = False
        if "previous" in data or event.event == "subscription.canceled":
            status_events.append(event)
            if event.event in ENDING_STATUSES and (
                "invoice_id" in data
                or ("previous" not in data and dunning_cancel_scheduled)  # at period end
            ):
                involuntary.append(event.at)
    statuses: list[tuple[datetime, str]] = []
    for i, event in enumerate(status_events):
        following = status_events[i + 1] if i + 1 < len(status_events) else None
        if following is None:
            after = sub.status
        elif "previous" in (following.data or {}):
            after = str(following.data["previous"])
        else:
            after = event.event.removeprefix("subscription.")
            after = {"recovered": "active", "resumed": "active"}.get(after, after)
        statuses.append((event.at, after))
    if status_events and "previous" in (status_events[0].data or {}):
        initial = str(status_events[0].data["previous"])
    elif not status_events:
        initial = sub.status
    else:
        initial = "trialing" if sub.trial_end_at is not None else "active"
    current = _Terms(plan.amount_minor, plan.currency, plan.interval, plan.interval_count)
    initial_terms = current
    terms: list[tuple[datetime, _Terms]] = []
    if plan_changes:
        initial_terms = _plan_terms(plan_changes[0].data, "from", by_code, plan)
        dated = [(_parse(e.data.get("effective_at")) or e.at, e) for e in plan_changes]
        dated.sort(key=lambda pair: pair[0])
        terms = [(when, _plan_terms(e.data, "to", by_code, plan)) for when, e in dated]
    return _Timeline(
        created_at=sub.created_at,
        first_anchor=first_anchor,
        initial_status=initial,
        statuses=statuses,
        initial_terms=initial_terms,
        terms=terms,
        involuntary_ends=involuntary,
    )


def _add_mrr(
    timeline: _Timeline,
    range_from: datetime,
    range_to: datetime,
    cur: Any,
) -> None:
    start = timeline.contribution(range_from)
    end = timeline.contribution(range_to)
    if start is not None:
        report = cur(start.currency)
        report.mrr_start += start.minor
        report.subscriptions_start += 1
    if end is not None:
        report = cur(end.currency)
        report.mrr_end += end.minor
        report.subscriptions_end += 1
    first = timeline.first_counted()
    before = first is not None and first < range_from
    for currency, component, minor in mrr.movement(start, end, counted_before=before):
        cur(currency).movement[component] += minor
    for at in timeline.involuntary_ends:
        if range_from <= at < range_to:
            lost = timeline.terms_before(at).monthly()
            cur(lost.currency).involuntary_churn.add(lost.minor)
