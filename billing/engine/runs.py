"""Billing runs: every pass and reconciler sweep is a `billing_run` row from its first moment.

A run is inserted `running` when a pass starts (a sweep: when it has attempts to examine), its
counts and `heartbeat_at` are written as it goes, and it is closed `completed` (it ran out of
work) or `interrupted` (asked to stop, or an exception). A process killed outright cannot
close its run: a `running` run whose heartbeat is older than `stale_after` (or of the same
node, when that node's daemon starts again) is closed `interrupted` by the next pass, its
counts recounted from the attempts linked to it. A pass that did nothing leaves no row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, update
from sqlmodel import col, select

from billing.clock import SystemClock
from billing.domain.lifecycle import AttemptState
from billing.engine.context import BillingContext
from billing.engine.store_rules import clock_refusal
from billing.errors import ConfigError
from billing.logs import log_event
from billing.store.db import session
from billing.store.meta import advance_clock
from billing.store.models import BillingRun, ChargeAttempt

if TYPE_CHECKING:
    from billing.engine.billing_pass import RunSummary

log = logging.getLogger(__name__)

RUNNING, COMPLETED, INTERRUPTED = "running", "completed", "interrupted"
RUN_KINDS = ("pass", "reconcile")
# Counts and heartbeat are written at most this often while a run goes (and at its end).
BEAT_SECONDS = 1.0


def stale_after(ctx: BillingContext) -> timedelta:
    """A run silent this long has no live pass behind it: its batches are leased for
    `lease_seconds` and it writes a heartbeat after each one."""
    return timedelta(seconds=2 * ctx.lease_seconds)


def clock_source(ctx: BillingContext) -> str:
    return "system" if isinstance(ctx.clock, SystemClock) else "test"


class RunTracker:
    """The row of one run, written by the thread that runs it (no one else writes it while
    its heartbeat is fresh)."""

    def __init__(self, ctx: BillingContext, kind: str, as_of: datetime) -> None:
        self.ctx = ctx
        self.kind = kind
        self.as_of = as_of
        self.run_id: int | None = None
        self._last_flush = time.monotonic()

    def open(self) -> int:
        """Insert the `running` row and move the store's clock forward, in one transaction.

        Refused (ConfigError, nothing written) when the clock is behind the store's (see
        engine/store_rules.py): a daemon already running when a test clock drove the store
        ahead stops working rather than strand what was scheduled there."""
        now = self.ctx.clock.now()
        source = clock_source(self.ctx)
        with session(self.ctx.engine) as s:
            reading = advance_clock(s, self.as_of, source)
            refusal = clock_refusal(reading, self.as_of, test_clock=source == "test")
            if refusal is not None:
                raise ConfigError(refusal)
            run = BillingRun(
                kind=self.kind,
                node=self.ctx.node,
                state=RUNNING,
                as_of=self.as_of,
                started_at=now,
                heartbeat_at=now,
            )
            s.add(run)
            s.flush()
            assert run.id is not None
            self.run_id = run.id
        return self.run_id

    def beat(self, summary: RunSummary) -> None:
        """Write the counts so far and the heartbeat, at most once every BEAT_SECONDS."""
        if time.monotonic() - self._last_flush >= BEAT_SECONDS:
            self.flush(summary)

    def flush(self, summary: RunSummary, state: str = RUNNING) -> None:
        """Write the counts so far (and the heartbeat); a final state also sets finished_at."""
        if self.run_id is None:
            return
        now = self.ctx.clock.now()
        values: dict[str, Any] = {
            "state": state,
            "heartbeat_at": now,
            "invoices_created": summary.invoices_created,
            "subscriptions_held": summary.subscriptions_held,
            "attempts": summary.attempts,
            "totals": summary.totals,
        }
        if state != RUNNING:
            values["finished_at"] = now
        with session(self.ctx.engine) as s:
            s.exec(update(BillingRun).where(col(BillingRun.id) == self.run_id).values(**values))
        self._last_flush = time.monotonic()

    def close(self, summary: RunSummary, state: str) -> int | None:
        """Close the run; a run that did nothing is removed instead. Returns the run id kept."""
        if self.run_id is None:
            return None
        if not summary.did_work:
            with session(self.ctx.engine) as s:
                linked = s.exec(
                    select(ChargeAttempt.id).where(ChargeAttempt.run_id == self.run_id)
                ).first()
                if linked is None:
                    s.exec(delete(BillingRun).where(col(BillingRun.id) == self.run_id))
                    self.run_id = None
                    return None
        self.flush(summary, state)
        return self.run_id

    def close_after_error(self, summary: RunSummary) -> None:
        """Best effort: the database may be what failed; then the row stays `running` and
        the next pass closes it as stale."""
        try:
            self.flush(summary, INTERRUPTED)
        except Exception as exc:
            log_event(log, "run.close_failed", logging.ERROR, error=type(exc).__name__)


def recount(attempts: Iterable[ChargeAttempt]) -> tuple[int, dict[str, dict[str, Any]]]:
    """Attempts and per-outcome totals from attempt rows as they stand (`sending`: unknown)."""
    totals: dict[str, dict[str, Any]] = {}
    count = 0
    for a in attempts:
        count += 1
        outcome = AttemptState.unknown if a.state == AttemptState.sending else a.state
        entry = totals.setdefault(str(outcome), {"count": 0, "amounts": {}})
        entry["count"] += 1
        entry["amounts"][a.currency] = entry["amounts"].get(a.currency, 0) + a.amount_minor
        if a.decline_class:
            classes: dict[str, int] = entry.setdefault("decline_classes", {})
            classes[a.decline_class] = classes.get(a.decline_class, 0) + 1
    return count, totals


def close_stale_runs(ctx: BillingContext, *, own_node: bool = False) -> list[int]:
    """Close as `interrupted` the runs left `running` by a dead process: silent longer than
    `stale_after`, or (own_node, at daemon start) any of this node's. Returns their ids."""
    now = ctx.clock.now()
    silent = or_(
        col(BillingRun.heartbeat_at).is_(None),
        col(BillingRun.heartbeat_at) < now - stale_after(ctx),
    )
    where = or_(silent, col(BillingRun.node) == ctx.node) if own_node else silent
    with session(ctx.engine) as s:
        ids = list(
            s.exec(select(BillingRun.id).where(BillingRun.state == RUNNING).where(where)).all()
        )
    closed: list[int] = []
    for run_id in ids:
        assert run_id is not None
        with session(ctx.engine) as s:
            run = s.exec(
                select(BillingRun)
                .where(BillingRun.id == run_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one()
            if run.state != RUNNING:
                continue
            linked = s.exec(select(ChargeAttempt).where(ChargeAttempt.run_id == run_id)).all()
            if run.kind == "pass":
                parked = run.totals.get("parked")  # no attempt rows: kept from the last beat
                run.attempts, run.totals = recount(linked)
                if parked:
                    run.totals["parked"] = parked
            run.state = INTERRUPTED
            run.finished_at = run.heartbeat_at or run.started_at
            s.add(run)
            closed.append(run_id)
    if closed:
        log_event(log, "run.interrupted", runs=",".join(map(str, closed)), reason="stale")
    return closed


def effective_state(run: BillingRun, now: datetime, silent_for: timedelta) -> str:
    """What to show: a `running` run whose heartbeat is older than `silent_for` is
    interrupted, even before a pass has closed it."""
    if run.state != RUNNING:
        return run.state
    beat = run.heartbeat_at or run.started_at
    return INTERRUPTED if now - beat > silent_for else RUNNING
