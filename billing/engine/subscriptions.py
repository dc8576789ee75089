"""Plans and subscriptions: creation and the lifecycle changes a merchant makes by hand."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from billing.domain.cards import refuse_card_numbers
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.money import check_currency, parse_amount
from billing.domain.periods import Interval, parse_interval, period_index_at, period_start
from billing.engine.context import BillingContext
from billing.engine.customers import get_customer
from billing.engine.events import record_event
from billing.engine.invoicing import void_open_invoices
from billing.engine.status import set_status
from billing.errors import Conflict, InvalidInput, NotFound
from billing.store.db import session
from billing.store.models import Plan, Subscription, is_row_id

PLAN_CODE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def create_plan(
    ctx: BillingContext,
    *,
    code: str,
    name: str,
    amount: str,
    currency: str,
    interval: str,
    interval_count: int = 1,
    trial_days: int = 0,
) -> Plan:
    if not PLAN_CODE.match(code):
        raise InvalidInput(
            f"plan code {code!r} must be 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    if not name.strip():
        raise InvalidInput("plan name is required")
    refuse_card_numbers(code, "plan code")
    refuse_card_numbers(name, "plan name")
    currency = check_currency(currency)
    minor = parse_amount(amount, currency)
    parsed_interval = parse_interval(interval)
    if not 1 <= interval_count <= 365:
        raise InvalidInput(f"interval count must be between 1 and 365 (got {interval_count})")
    if not 0 <= trial_days <= 730:
        raise InvalidInput(f"trial days must be between 0 and 730 (got {trial_days})")
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        if s.exec(select(Plan.id).where(Plan.code == code)).first() is not None:
            raise Conflict(f"a plan with code {code!r} already exists")
        plan = Plan(
            code=code,
            name=name.strip(),
            amount_minor=minor,
            currency=currency,
            interval=parsed_interval,
            interval_count=interval_count,
            trial_days=trial_days,
            created_at=now,
        )
        s.add(plan)
        s.flush()
        assert plan.id is not None
        record_event(
            s, at=now, entity_type="plan", entity_id=plan.id, event="plan.created", actor=ctx.actor
        )
        return plan


def get_plan(s: Session, code: str) -> Plan:
    plan = s.exec(select(Plan).where(Plan.code == code)).first()
    if plan is None:
        raise NotFound(f"no plan with code {code!r}")
    return plan


def list_plans(ctx: BillingContext) -> list[Plan]:
    with session(ctx.engine) as s:
        return list(s.exec(select(Plan).order_by(col(Plan.id))).all())


def create_subscription(
    ctx: BillingContext,
    *,
    customer_ref: str,
    plan_code: str,
    start: datetime | None = None,
    instrument: str | None = None,
    allow_duplicate: bool = False,
) -> Subscription:
    """Subscribe a customer. The anchor is the start (after the trial, if the plan has one).

    A second live subscription of one customer to one plan is refused unless asked for: it
    would bill the same service twice.
    """
    now = ctx.clock.now()
    if start is not None and (start.tzinfo is None or start.utcoffset() is None):
        raise InvalidInput(f"start {start.isoformat()} has no timezone; give an offset or a date")
    begin = (start or now).astimezone(now.tzinfo)
    with session(ctx.engine) as s:
        customer = get_customer(s, customer_ref)
        plan = get_plan(s, plan_code)
        if not plan.active:
            raise Conflict(f"plan {plan_code!r} is not active")
        existing = s.exec(
            select(Subscription.id)
            .where(Subscription.customer_id == customer.id)
            .where(Subscription.plan_id == plan.id)
            .where(Subscription.status != SubscriptionStatus.canceled)
        ).first()
        if existing is not None and not allow_duplicate:
            raise Conflict(
                f"customer {customer_ref!r} already has subscription {existing} to plan "
                f"{plan_code!r}; cancel it first or pass --allow-duplicate"
            )
        instrument_id: int | None = None
        if instrument is not None:
            from billing.engine.customers import _find_instrument

            instrument_id = _find_instrument(s, customer, instrument).id
        trial_end = begin + timedelta(days=plan.trial_days) if plan.trial_days else None
        anchor = trial_end or begin
        assert customer.id is not None and plan.id is not None
        sub = Subscription(
            customer_id=customer.id,
            plan_id=plan.id,
            instrument_id=instrument_id,
            status=SubscriptionStatus.trialing if trial_end else SubscriptionStatus.active,
            anchor_at=anchor,
            trial_end_at=trial_end,
            next_period_index=0,
            next_billing_at=anchor,
            created_at=now,
            updated_at=now,
        )
        s.add(sub)
        s.flush()
        assert sub.id is not None
        record_event(
            s,
            at=now,
            entity_type="subscription",
            entity_id=sub.id,
            event="subscription.created",
            actor=ctx.actor,
            customer=customer.reference_id,
            plan=plan.code,
            anchor_at=anchor.isoformat(),
        )
        return sub


def get_subscription(s: Session, subscription_id: int) -> Subscription:
    sub = s.get(Subscription, subscription_id) if is_row_id(subscription_id) else None
    if sub is None:
        raise NotFound(f"no subscription {subscription_id}")
    return sub


def list_subscriptions(
    ctx: BillingContext, *, status: str | None = None, customer_ref: str | None = None
) -> list[Subscription]:
    with session(ctx.engine) as s:
        query = select(Subscription).order_by(col(Subscription.id))
        if status is not None:
            if status not in SubscriptionStatus.__members__:
                raise InvalidInput(
                    f"unknown status {status!r}; use one of "
                    + ", ".join(SubscriptionStatus.__members__)
                )
            query = query.where(Subscription.status == status)
        if customer_ref is not None:
            customer = get_customer(s, customer_ref, include_deleted=True)
            query = query.where(Subscription.customer_id == customer.id)
        return list(s.exec(query).all())


def checked_reason(reason: str | None) -> str | None:
    """A person's free-text reason goes into the append-only event log: check it first."""
    if reason is None:
        return None
    refuse_card_numbers(reason, "reason")
    if len(reason) > 500:
        raise InvalidInput("reason must be at most 500 characters")
    return reason.strip() or None


def cancel_subscription(
    ctx: BillingContext, subscription_id: int, *, at_period_end: bool, reason: str | None
) -> Subscription:
    """Now: stop billing, void open invoices. At period end: bill nothing after the paid period."""
    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        sub = get_subscription(s, subscription_id)
        if sub.status == SubscriptionStatus.canceled:
            raise Conflict(f"subscription {subscription_id} is already canceled")
        if at_period_end and sub.current_period_end is not None:
            sub.cancel_at_period_end = True
            sub.updated_at = now
            s.add(sub)
            record_event(
                s,
                at=now,
                entity_type="subscription",
                entity_id=subscription_id,
                event="subscription.cancel_scheduled",
                actor=ctx.actor,
                reason=reason,
                effective_at=sub.current_period_end.isoformat(),
            )
            return sub
        # Invoices first (lock order: invoice, then subscription, as when recording charges).
        void_open_invoices(
            ctx, s, now, reason or "subscription canceled", subscription_id=subscription_id
        )
        set_status(ctx, s, sub, SubscriptionStatus.canceled, now, reason)
        return sub


def pause_subscription(
    ctx: BillingContext, subscription_id: int, reason: str | None
) -> Subscription:
    """Paused subscriptions are not invoiced; periods that start while paused are skipped."""
    reason = checked_reason(reason)
    with session(ctx.engine) as s:
        sub = get_subscription(s, subscription_id)
        now = ctx.clock.now()
        set_status(ctx, s, sub, SubscriptionStatus.paused, now, reason)
        sub.paused_at = now
        return sub


def resume_subscription(
    ctx: BillingContext, subscription_id: int, reason: str | None
) -> Subscription:
    """Billing resumes with the first period that starts after now (paused periods are free)."""
    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        sub = get_subscription(s, subscription_id)
        if sub.status != SubscriptionStatus.paused:
            raise Conflict(f"subscription {subscription_id} is {sub.status}, not paused")
        plan = s.get(Plan, sub.plan_id)
        assert plan is not None
        interval = Interval(plan.interval)
        next_index = max(
            sub.next_period_index,
            period_index_at(sub.anchor_at, interval, plan.interval_count, now, ctx.tz) + 1,
        )
        sub.next_period_index = next_index
        sub.next_billing_at = period_start(
            sub.anchor_at, interval, plan.interval_count, next_index, ctx.tz
        )
        sub.paused_at = None
        set_status(ctx, s, sub, SubscriptionStatus.active, now, reason, "subscription.resumed")
        return sub
