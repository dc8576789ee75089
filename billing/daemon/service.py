"""The daemon's jobs and its life: start, work, stop gracefully on SIGTERM.

The jobs are plain methods so the demo and tests can drive them on a test clock; only
billing/daemon/scheduler.py knows APScheduler.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime
from types import FrameType

from sqlalchemy import Engine, func, text
from sqlmodel import col, select

from billing import metrics
from billing.daemon.sdnotify import notify
from billing.domain.lifecycle import InvoiceStatus, SubscriptionStatus
from billing.engine.billing_pass import RunSummary, run_billing_pass
from billing.engine.context import BillingContext
from billing.engine.expiry import send_expiry_warnings
from billing.engine.reconcile import run_reconcile
from billing.logs import log_event
from billing.notify.deliver import DeliverySummary, Notifier
from billing.store.claims import reap_expired, release_all, try_singleton
from billing.store.counts import fold_subscription_counts, subscription_counts
from billing.store.db import dialect_name, indexed_plans_only, session
from billing.store.models import ATTEMPT_UNRESOLVED, ChargeAttempt, Invoice, Subscription
from billing.store.outbox import release_deliveries

log = logging.getLogger("billing.daemon")
# An idle daemon still says it is alive in its log this often (metrics say it every scrape).
HEARTBEAT_SECONDS = 600.0


class Daemon:
    def __init__(
        self,
        ctx: BillingContext,
        stop_budget_seconds: float = 30.0,
        notifier: Notifier | None = None,
        ledger_check: tuple[int, int] | None = None,
    ) -> None:
        self.ctx = ctx
        self.notifier = notifier
        # The daily ledger check against Plexo: (local hour, days back), None when off.
        self.ledger_check_at = ledger_check
        self.stop_budget_seconds = stop_budget_seconds
        self.stopping = threading.Event()
        self._last_log = time.monotonic()
        self.started = time.monotonic()
        # When the last billing pass ended without an error (monotonic); None before the first.
        self.last_pass_finished: float | None = None
        # When billing passes last moved (finished, or a running one took its next invoice).
        self.last_pass_progress = self.started
        metrics.PASS_PROGRESS.set(time.time())

    def _progress_or_stop(self) -> bool:
        """A running pass polls this between invoices: that it does is its progress."""
        self.last_pass_progress = time.monotonic()
        metrics.PASS_PROGRESS.set(time.time())
        return self.stopping.is_set()

    # --- jobs ----------------------------------------------------------------------------

    def billing_pass(self) -> RunSummary:
        summary = run_billing_pass(self.ctx, should_stop=self._progress_or_stop)
        if summary.did_work:
            self._last_log = time.monotonic()
            log_event(
                log,
                "billing.pass",
                run_id=summary.run_id,
                state=summary.state,
                invoices_created=summary.invoices_created,
                subscriptions_held=summary.subscriptions_held,
                attempts=summary.attempts,
                approved=summary.count("approved"),
                declined=summary.count("declined"),
                pending=summary.count("pending"),
                unknown=summary.count("unknown"),
                plan_id=summary.plan_id,
                parked=summary.count("parked"),
            )
            notify(f"STATUS={status_line(summary)}")  # systemctl status shows the last pass
        elif time.monotonic() - self._last_log >= HEARTBEAT_SECONDS:
            self._last_log = time.monotonic()
            log_event(log, "daemon.heartbeat", node=self.ctx.node, note="alive, nothing due")
        metrics.LAST_TICK.labels(scheduler_job="billing_pass").set(time.time())
        metrics.PASS_PROGRESS.set(time.time())
        self.last_pass_finished = self.last_pass_progress = time.monotonic()
        return summary

    def reconcile(self) -> RunSummary:
        summary, result = run_reconcile(self.ctx)
        if result.examined:
            log_event(
                log,
                "billing.reconcile",
                run_id=summary.run_id,
                examined=result.examined,
                resent=result.resent,
                **{k: v for k, v in result.outcomes.items()},
            )
        metrics.LAST_TICK.labels(scheduler_job="reconcile").set(time.time())
        return summary

    def expiry_warnings(self) -> int:
        """Pre-dunning: warn about cards that expire before their next renewal."""
        sent = send_expiry_warnings(self.ctx)
        metrics.LAST_TICK.labels(scheduler_job="expiry_warnings").set(time.time())
        return sent

    def notify(self) -> DeliverySummary:
        """Deliver the outbox (webhooks, email): fan out new events, send the due ones."""
        if self.notifier is None:
            return DeliverySummary()
        summary = self.notifier.run(should_stop=self.stopping.is_set)
        metrics.LAST_TICK.labels(scheduler_job="notify").set(time.time())
        return summary

    def ledger_check(self) -> int | None:
        """Once a local day after its hour: `billing reconcile` over the last whole days.

        Returns the check's id, None when not due (or off). A failed listing raises (the job
        error is logged and counted) and is tried again on the next tick.
        """
        from billing.engine.ledger_check import daily_range, last_daemon_check_to, run_ledger_check

        if self.ledger_check_at is None:
            return None
        hour, days = self.ledger_check_at
        window = daily_range(self.ctx.clock.now(), self.ctx.tz, hour, days)
        done_to = last_daemon_check_to(self.ctx)
        if window is None or (done_to is not None and done_to >= window[1]):
            metrics.LAST_TICK.labels(scheduler_job="ledger_check").set(time.time())
            return None
        result = run_ledger_check(self.ctx, *window, trigger="daemon")
        metrics.LAST_TICK.labels(scheduler_job="ledger_check").set(time.time())
        return result.check_id

    def lease_reaper(self) -> int:
        """Singleton chore: free expired leases, fold the subscription count deltas."""
        now = self.ctx.clock.now()
        if dialect_name(self.ctx.engine) == "sqlite":
            # One daemon per SQLite file, and a held BEGIN IMMEDIATE would block the reap itself.
            freed = reap_expired(self.ctx.engine, now)
            fold_subscription_counts(self.ctx.engine)
        else:
            with self.ctx.engine.begin() as conn:  # the advisory lock lives as long as this tx
                if not try_singleton(conn, "billing.lease_reaper"):
                    return 0
                freed = reap_expired(self.ctx.engine, now)
                fold_subscription_counts(self.ctx.engine)
        if freed:
            log_event(log, "lease.reaped", count=freed)
        metrics.LAST_TICK.labels(scheduler_job="lease_reaper").set(time.time())
        return freed

    def store_samples(self) -> metrics.Samples:
        """The DB-derived gauges (metrics.STORE): subscriptions by status, held, due backlog and
        unresolved attempts with their oldest ages, parked invoices, read in one short
        transaction."""
        return store_samples(self.ctx.engine, self.ctx.clock.now())

    # --- life ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            log_event(log, "daemon.stopping", signal=signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def release_leases(self) -> int:
        released = release_all(self.ctx.engine, self.ctx.node, self.ctx.clock.now())
        released += release_deliveries(self.ctx.engine, self.ctx.node)
        log_event(log, "lease.released", count=released)
        return released


def store_samples(engine: Engine, now: datetime) -> metrics.Samples:
    """Every status and gauge is present (0 when none), so alerts need no absent().

    No query scans a big table (tests/integration/test_metrics_scans.py runs EXPLAIN on each):
    subscriptions by status come from the trigger-kept counts, every other gauge is an indexed
    range over the few rows it counts (due, parked, held, unresolved, open findings). count(*),
    not count(id): every column read is in the index, so PostgreSQL can answer from the index
    alone (an index-only scan) instead of visiting one heap page per row counted."""
    with session(engine) as s:
        indexed_plans_only(s)
        by_status = subscription_counts(s)  # kept by triggers: no count over the table
        due_count, oldest_due = s.exec(
            select(func.count(), func.min(Invoice.next_attempt_at))
            .where(Invoice.status == InvoiceStatus.open)
            .where(col(Invoice.next_attempt_at) <= now)
        ).one()
        unresolved, oldest_unknown = s.exec(  # ix_charge_attempt_unresolved_age (partial)
            select(func.count(), func.min(ChargeAttempt.created_at)).where(text(ATTEMPT_UNRESOLVED))
        ).one()
        from billing.engine.ledger_check import open_findings_by_kind

        findings = open_findings_by_kind(s)
        held = s.exec(  # ix_subscription_held (partial: held_at IS NOT NULL) serves it
            select(func.count())
            .select_from(Subscription)
            .where(col(Subscription.held_at).is_not(None))
            .where(Subscription.status != SubscriptionStatus.canceled)
        ).one()
        parked = s.exec(  # ix_invoice_claimable (status, next_attempt_at) serves it
            select(func.count()).select_from(Invoice).where(Invoice.status == InvoiceStatus.parked)
        ).one()
    statuses = {str(status): 0.0 for status in SubscriptionStatus}
    statuses.update({str(status): float(n) for status, n in by_status.items()})
    return {
        metrics.SUBSCRIPTIONS.name: {(status,): n for status, n in statuses.items()},
        metrics.SUBSCRIPTIONS_HELD.name: {(): float(held)},
        metrics.INVOICES_PARKED.name: {(): float(parked)},
        metrics.DUE_BACKLOG.name: {(): float(due_count)},
        metrics.DUE_OLDEST_AGE.name: {(): _age(now, oldest_due)},
        metrics.UNKNOWN_OUTCOMES.name: {(): float(unresolved)},
        metrics.UNKNOWN_OLDEST_AGE.name: {(): _age(now, oldest_unknown)},
        metrics.RECONCILIATION_OPEN.name: {(kind,): float(n) for kind, n in findings.items()},
    }


def _age(now: datetime, since: datetime | None) -> float:
    """Seconds since `since` (min() keeps the UTCDateTime column type, so it is aware)."""
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


def status_line(summary: RunSummary) -> str:
    """One human line about a pass, for systemd's STATUS= (no ids, no amounts)."""
    return (
        f"last pass {summary.as_of:%Y-%m-%d %H:%M} UTC: {summary.invoices_created} invoiced, "
        f"{summary.attempts} charged ({summary.count('approved')} approved, "
        f"{summary.count('declined')} declined, {summary.count('unknown')} unknown), "
        f"{summary.subscriptions_held} held, {summary.count('parked')} parked"
    )
