"""Plans and subscriptions: creation and the lifecycle changes a merchant makes by hand."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from billing.domain.cards import refuse_card_numbers
from billing.domain.lifecycle import SubscriptionStatus, check_transition
from billing.domain.money import check_currency, parse_amount, to_major
from billing.domain.periods import Interval, parse_interval, period_index_at, period_start
from billing.domain.text import checked_text, refuse_too_long, refuse_unsafe
from billing.engine import limits
from billing.engine.context import BillingContext
from billing.engine.customers import get_customer
from billing.engine.events import record_event
from billing.engine.invoicing import (
    invoice_periods,
    over_cap,
    started_periods,
    void_open_invoices,
)
from billing.engine.status import set_status
from billing.errors import Conflict, InvalidInput, NotFound
from billing.store.db import session
from billing.store.models import Plan, Subscription, is_row_id

PLAN_CODE = re.compile(r"[a-z0-9][a-z0-9_.-]*")


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
    reason: str | None = None,
) -> Plan:
    reason = checked_reason(reason)
    refuse_unsafe(code, "plan code")
    refuse_too_long(code, "plan code", limits.PLAN_CODE)
    refuse_card_numbers(code, "plan code")
    if not PLAN_CODE.fullmatch(code):
        raise InvalidInput(
            f"plan code {code!r} must be 1-{limits.PLAN_CODE} lower-case letters, digits, "
            "'.', '_' or '-'"
        )
    name = checked_text(name, "plan name", limits.PLAN_NAME)
    if not name:
        raise InvalidInput("plan name is required")
    currency = check_currency(currency)
    minor = parse_amount(amount, currency)
    if minor > limits.AMOUNT_MINOR:
        raise InvalidInput(
            f"amount must be at most {to_major(limits.AMOUNT_MINOR, currency)} {currency}"
        )
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
            name=name,
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
            s,
            at=now,
            entity_type="plan",
            entity_id=plan.id,
            event="plan.created",
            actor=ctx.actor,
            reason=reason,
        )
        return plan


def get_plan(s: Session, code: str) -> Plan:
    refuse_unsafe(code, "plan code")
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
    backdate: bool = False,
    reason: str | None = None,
) -> Subscription:
    """Subscribe a customer. The anchor is the start (after the trial, if the plan has one).

    A second live subscription of one customer to one plan is refused unless asked for: it
    would bill the same service twice. So is a start that would bill more than one period at
    once (a typo such as 1026 for 2026 bills centuries) unless `backdate` says it is meant.
    """
    reason = checked_reason(reason)
    now = ctx.clock.now()
    begin = begin_at(start, now)
    with session(ctx.engine) as s:
        customer = get_customer(s, customer_ref)
        plan = get_plan(s, plan_code)
        if not plan.active:
            raise Conflict(f"plan {plan_code!r} is not active")
        check_backdate(ctx, plan, begin, now, backdate)
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
            reason=reason,
            customer=customer.reference_id,
            plan=plan.code,
            anchor_at=anchor.isoformat(),
        )
        return sub


def begin_at(start: datetime | None, now: datetime) -> datetime:
    """The start as an aware instant (none given: now)."""
    if start is not None and (start.tzinfo is None or start.utcoffset() is None):
        raise InvalidInput(f"start {start.isoformat()} has no timezone; give an offset or a date")
    return (start or now).astimezone(now.tzinfo)


def periods_at_start(ctx: BillingContext, plan: Plan, begin: datetime, now: datetime) -> int:
    """How many periods a subscription starting at `begin` has started by `now` (the first
    billing pass invoices them all): 0 for a future start, 1 for a start within one interval."""
    try:
        anchor = begin + timedelta(days=plan.trial_days) if plan.trial_days else begin
        index = period_index_at(anchor, Interval(plan.interval), plan.interval_count, now, ctx.tz)
    except OverflowError:  # within a day of year 1 or 9999 in the merchant zone
        raise InvalidInput(f"start {begin.isoformat()} is out of the supported range") from None
    return index + 1


def check_backdate(
    ctx: BillingContext, plan: Plan, begin: datetime, now: datetime, backdate: bool
) -> int:
    """The periods the start bills at once; more than one needs `backdate` (InvalidInput)."""
    periods = periods_at_start(ctx, plan, begin, now)
    if periods > 1 and not backdate:
        raise InvalidInput(
            f"start {begin.astimezone(ctx.tz):%Y-%m-%d %H:%M} is one billing interval or more in "
            f"the past: it would bill {periods:,} periods at once; pass --backdate to bill them"
        )
    return periods


def backdated_periods(ctx: BillingContext, *, plan_code: str, start: datetime | None) -> int:
    """What `create_subscription(..., start=start)` would bill at once, for the CLI to say
    before it creates a backdated subscription."""
    now = ctx.clock.now()
    begin = begin_at(start, now)
    with session(ctx.engine) as s:
        return periods_at_start(ctx, get_plan(s, plan_code), begin, now)


def get_subscription(s: Session, subscription_id: int) -> Subscription:
    sub = s.get(Subscription, subscription_id) if is_row_id(subscription_id) else None
    if sub is None:
        raise NotFound(f"no subscription {subscription_id}")
    return sub


def list_subscriptions(
    ctx: BillingContext,
    *,
    status: str | None = None,
    customer_ref: str | None = None,
    held: bool = False,
) -> list[Subscription]:
    with session(ctx.engine) as s:
        query = select(Subscription).order_by(col(Subscription.id))
        if held:
            query = query.where(col(Subscription.held_at).is_not(None))
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
    return checked_text(reason, "reason", limits.REASON) or None


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
    """Periods that started while active are billed; periods that start while paused are not.

    So the started periods not invoiced yet (the pass had not run since they started) are
    invoiced here, in the pause's own transaction: resume can then skip everything that
    started while paused without losing a period the customer had while active.
    """
    reason = checked_reason(reason)
    with session(ctx.engine) as s:
        # Locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises): no pass invoices
        # this subscription between our read and our write.
        sub = (
            s.get(Subscription, subscription_id, with_for_update=True)
            if is_row_id(subscription_id)
            else None
        )
        if sub is None:
            raise NotFound(f"no subscription {subscription_id}")
        check_transition("subscription", SubscriptionStatus(sub.status), SubscriptionStatus.paused)
        if sub.held_at is not None:
            raise Conflict(
                f"subscription {subscription_id} is held for review ({sub.held_reason}); "
                "release it first (billing subscriptions release)"
            )
        now = ctx.clock.now()
        plan = s.get(Plan, sub.plan_id)
        assert plan is not None
        owed = started_periods(ctx, sub, plan, now)
        if owed:
            if over_cap(ctx, sub, owed):
                raise Conflict(
                    f"subscription {subscription_id} has {len(owed)} started periods not yet "
                    f"invoiced, more than the catch-up cap of {ctx.catchup_max_periods}; the next "
                    "billing pass holds it for review: release it, then pause"
                )
            if invoice_periods(ctx, s, sub, plan, owed, now) < 0:
                raise Conflict(f"subscription {subscription_id} changed meanwhile; try again")
            s.refresh(sub)
            if sub.status == SubscriptionStatus.canceled:
                return sub  # its cancel-at-period-end came due: nothing is left to pause
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


def release_subscription(
    ctx: BillingContext, subscription_id: int, *, reason: str | None, skip_to_now: bool
) -> tuple[Subscription, int]:
    """Release a subscription held for review; returns it and the periods it will bill.

    Either bill the missed periods (the next pass may invoice them past the catch-up cap, once:
    the allowance ends at the period running now) or skip them, billing from the period
    running now. Who released it and why goes into the event log.
    """
    reason = checked_reason(reason)
    if reason is None:
        raise InvalidInput("--reason is required: say why the held periods are billed or skipped")
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        sub = (
            s.get(Subscription, subscription_id, with_for_update=True)
            if is_row_id(subscription_id)
            else None
        )
        if sub is None:
            raise NotFound(f"no subscription {subscription_id}")
        if sub.held_at is None:
            raise Conflict(f"subscription {subscription_id} is not held")
        if sub.status == SubscriptionStatus.canceled:
            raise Conflict(f"subscription {subscription_id} is canceled")
        plan = s.get(Plan, sub.plan_id)
        assert plan is not None
        interval = Interval(plan.interval)
        current = period_index_at(sub.anchor_at, interval, plan.interval_count, now, ctx.tz)
        first = sub.next_period_index
        skipped = max(current - first, 0) if skip_to_now else 0
        if skip_to_now:
            sub.next_period_index = first + skipped
            sub.next_billing_at = period_start(
                sub.anchor_at, interval, plan.interval_count, sub.next_period_index, ctx.tz
            )
            sub.catchup_through_index = None
        else:
            sub.catchup_through_index = current
        billed = max(current - sub.next_period_index + 1, 0)
        held_periods = sub.held_periods
        sub.held_at = sub.held_reason = sub.held_periods = None
        sub.updated_at = now
        s.add(sub)
        record_event(
            s,
            at=now,
            entity_type="subscription",
            entity_id=subscription_id,
            event="subscription.released",
            actor=ctx.actor,
            reason=reason,
            mode="skip" if skip_to_now else "bill",
            held_periods=held_periods,
            periods_billed=billed,
            periods_skipped=skipped,
            first_skipped_index=first if skipped else None,
        )
        return sub, billed


def uncancel_subscription(
    ctx: BillingContext, subscription_id: int, *, reason: str | None
) -> Subscription:
    """Undo a cancel scheduled for the period end: billing goes on as before.

    Compare-and-set on the flag and a live status, so a billing pass that is applying the
    cancel right now (it cancels when the paid period ends) either wins, and this is refused,
    or sees the flag cleared and bills the next period."""
    reason = checked_reason(reason)
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        sub = (
            s.get(Subscription, subscription_id, with_for_update=True)
            if is_row_id(subscription_id)
            else None
        )
        if sub is None:
            raise NotFound(f"no subscription {subscription_id}")
        if sub.status == SubscriptionStatus.canceled:
            raise Conflict(f"subscription {subscription_id} is already canceled; create a new one")
        if not sub.cancel_at_period_end:
            raise Conflict(f"subscription {subscription_id} has no cancel scheduled")
        changed = s.exec(
            update(Subscription)
            .where(col(Subscription.id) == subscription_id)
            .where(col(Subscription.cancel_at_period_end).is_(True))
            .where(col(Subscription.status) != SubscriptionStatus.canceled)
            .values(cancel_at_period_end=False, updated_at=now)
        )
        if changed.rowcount != 1:
            s.rollback()
            raise Conflict(f"subscription {subscription_id} changed meanwhile; look at it again")
        record_event(
            s,
            at=now,
            entity_type="subscription",
            entity_id=subscription_id,
            event="subscription.cancel_unscheduled",
            actor=ctx.actor,
            reason=reason,
        )
        s.refresh(sub)
        return sub


# A paused subscription's resume, and a canceled one, decide from its own plan: change them later.
PLAN_CHANGE_STATUSES = (
    SubscriptionStatus.incomplete,
    SubscriptionStatus.active,
    SubscriptionStatus.trialing,
    SubscriptionStatus.past_due,
)


def change_plan(
    ctx: BillingContext, subscription_id: int, *, plan_code: str, reason: str | None
) -> tuple[Subscription, datetime]:
    """Move a subscription to another plan from its next period on; returns it and the
    instant the new plan starts billing.

    Periods that started under the old plan are billed at the old plan: the started periods
    not invoiced yet are invoiced first, in this transaction (as pause does). With the same
    interval the periods stay where they were; with another interval the new plan's periods
    are anchored at the start of the next period (period 0 of the new plan), so no instant
    is billed twice or skipped. Invoices already created keep their amount and currency.
    """
    reason = checked_reason(reason)
    with session(ctx.engine) as s:
        sub = (
            s.get(Subscription, subscription_id, with_for_update=True)
            if is_row_id(subscription_id)
            else None
        )
        if sub is None:
            raise NotFound(f"no subscription {subscription_id}")
        if sub.status not in PLAN_CHANGE_STATUSES:
            raise Conflict(
                f"subscription {subscription_id} is {sub.status}; only an incomplete, active, "
                "trialing or past_due subscription changes plan (resume it first)"
            )
        if sub.held_at is not None:
            raise Conflict(
                f"subscription {subscription_id} is held for review ({sub.held_reason}); "
                "release it first (billing subscriptions release)"
            )
        old = s.get(Plan, sub.plan_id)
        assert old is not None
        new = get_plan(s, plan_code)
        if not new.active:
            raise Conflict(f"plan {plan_code!r} is not active")
        if new.id == old.id:
            raise Conflict(f"subscription {subscription_id} is already on plan {plan_code!r}")
        now = ctx.clock.now()
        owed = started_periods(ctx, sub, old, now)
        if owed:
            if over_cap(ctx, sub, owed):
                raise Conflict(
                    f"subscription {subscription_id} has {len(owed)} started periods not yet "
                    f"invoiced, more than the catch-up cap of {ctx.catchup_max_periods}; the next "
                    "billing pass holds it for review: release it, then change its plan"
                )
            if invoice_periods(ctx, s, sub, old, owed, now) < 0:
                raise Conflict(f"subscription {subscription_id} changed meanwhile; try again")
            s.refresh(sub)
            if sub.status == SubscriptionStatus.canceled:
                raise Conflict(
                    f"subscription {subscription_id} reached its scheduled cancel; nothing is "
                    "left to move to another plan"
                )
        starts = period_start(
            sub.anchor_at, Interval(old.interval), old.interval_count, sub.next_period_index, ctx.tz
        )
        same_periods = (old.interval, old.interval_count) == (new.interval, new.interval_count)
        values: dict[str, object] = {"plan_id": new.id, "updated_at": now}
        if not same_periods:
            values.update(anchor_at=starts, next_period_index=0, next_billing_at=starts)
            values["catchup_through_index"] = None
        moved = s.exec(
            update(Subscription)
            .where(col(Subscription.id) == subscription_id)
            .where(col(Subscription.next_period_index) == sub.next_period_index)
            .where(col(Subscription.plan_id) == old.id)
            .values(**values)
        )
        if moved.rowcount != 1:
            s.rollback()
            raise Conflict(f"subscription {subscription_id} changed meanwhile; try again")
        record_event(
            s,
            at=now,
            entity_type="subscription",
            entity_id=subscription_id,
            event="subscription.plan_changed",
            actor=ctx.actor,
            reason=reason,
            from_plan=old.code,
            to_plan=new.code,
            from_amount_minor=old.amount_minor,
            from_currency=old.currency,
            to_amount_minor=new.amount_minor,
            to_currency=new.currency,
            effective_at=starts.isoformat(),
        )
        s.refresh(sub)
        return sub, starts
