"""APScheduler 3 as a metronome only: in-memory jobs declared here, UTC, coalesced, one
instance each. The billing schedule itself lives in our tables."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from billing import metrics
from billing.daemon.service import Daemon
from billing.daemon.watchdog import add_watchdog_job
from billing.logs import log_event

log = logging.getLogger("billing.daemon")


def build_scheduler(
    daemon: Daemon,
    *,
    tick_seconds: int,
    reconcile_seconds: int,
    reaper_seconds: int,
    expiry_seconds: int = 3600,
    notify_seconds: int = 10,
    watchdog_seconds: float | None = None,
    ledger_check_seconds: int | None = None,
) -> BackgroundScheduler:
    """The work jobs, and systemd's watchdog ping every `watchdog_seconds` (None: no ping)."""
    start = datetime.now(UTC)
    jobs: list[tuple[str, Callable[[], Any], int]] = [
        ("billing_pass", daemon.billing_pass, tick_seconds),
        ("reconcile", daemon.reconcile, reconcile_seconds),
        ("lease_reaper", daemon.lease_reaper, reaper_seconds),
        ("expiry_warnings", daemon.expiry_warnings, expiry_seconds),
        ("notify", daemon.notify, notify_seconds),
    ]
    if ledger_check_seconds is not None:  # BILLING_LEDGER_RECONCILE_ENABLED; due once a day
        jobs.append(("ledger_check", daemon.ledger_check, ledger_check_seconds))
    # One worker per work job and none spare: the watchdog ping waits for a work job to finish,
    # so a pool whose every job hangs stops the pings (watchdog.py).
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=len(jobs))},
        timezone=UTC,
    )
    for job_id, func, seconds in jobs:
        scheduler.add_job(
            func,
            "interval",
            seconds=seconds,
            id=job_id,
            next_run_time=start,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=seconds,
        )
    if watchdog_seconds is not None:
        add_watchdog_job(scheduler, watchdog_seconds, start)

    def on_error(event: JobExecutionEvent) -> None:
        log_event(
            log,
            "job.failed",
            logging.ERROR,
            job=event.job_id,
            error=type(event.exception).__name__,
            detail=str(event.exception)[:300],
        )

    scheduler.add_listener(on_error, EVENT_JOB_ERROR)
    count_jobs(scheduler)
    return scheduler


def count_jobs(scheduler: BackgroundScheduler) -> None:
    """Job metrics from the scheduler's own events, and each job's configured interval.

    A run skipped because the previous one still runs (max_instances) or that woke too late
    for its slot (misfire) both count as missed: either way that slot's work did not start.
    """
    for job in scheduler.get_jobs():
        if isinstance(job.trigger, IntervalTrigger):
            metrics.JOB_INTERVAL.labels(scheduler_job=job.id).set(
                job.trigger.interval.total_seconds()
            )

    def on_event(event: JobEvent) -> None:
        if event.code in (EVENT_JOB_EXECUTED, EVENT_JOB_ERROR):
            metrics.JOB_RUNS.labels(scheduler_job=event.job_id).inc()
        if event.code == EVENT_JOB_ERROR:
            metrics.JOB_ERRORS.labels(scheduler_job=event.job_id).inc()
        elif event.code in (EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES):
            metrics.JOB_MISSED.labels(scheduler_job=event.job_id).inc()

    scheduler.add_listener(
        on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
    )
