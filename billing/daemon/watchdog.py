"""systemd's watchdog, pinged from the work loop itself: a scheduler job in the work jobs' pool.

The ping (``WATCHDOG=1``) is one more APScheduler job, every half ``WatchdogSec``, run by the
same ThreadPoolExecutor as the work jobs, and that pool has exactly one worker per work job, none
spare (scheduler.py). So a ping is sent only while the scheduler thread dispatches and some
worker gets free: a dead scheduler thread, or a pool whose every job hangs (all waiting on a
lock, or on a database that stopped answering), stops the pings, and systemd kills and restarts
the service. The ping waits for a worker only while all the work jobs run at once; healthy, the
short ones (lease reaper, expiry warnings) finish in milliseconds. A job that fails fast
(database down, gateway refusing) frees its worker and does not stop the pings: a restart would
not help there, and readiness and the alerts say so instead.

Decided: an overlong billing pass alone does NOT stop the pings. On billing day a pass runs for
minutes and holds its one worker; the other jobs keep cycling through theirs, so the ping still
finds a worker. A pass that hangs shows as readiness "last pass stale" and its alert, where a
person decides, rather than as a restart loop that would interrupt in-flight charges.

Which environment enables it follows sd_watchdog_enabled(3): ``WATCHDOG_USEC`` (set by systemd
from WatchdogSec=) and, when ``WATCHDOG_PID`` is set, only in the process it names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta

from apscheduler.schedulers.base import BaseScheduler

from billing.daemon.sdnotify import notify
from billing.logs import log_event

log = logging.getLogger("billing.daemon")
JOB_ID = "watchdog"


def interval_seconds(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Half of systemd's WatchdogSec, or None when the watchdog is not ours (not set, another
    process's, or unreadable: that one is logged, since systemd would then kill us)."""
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "").strip()
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID", "").strip()
    if pid_text:
        if not pid_text.isdigit():
            _unreadable("WATCHDOG_PID", pid_text)
            return None
        if int(pid_text) != (os.getpid() if pid is None else pid):
            return None  # meant for the process that started us, not for us
    if not usec_text.isdigit() or int(usec_text) == 0:
        _unreadable("WATCHDOG_USEC", usec_text)
        return None
    return int(usec_text) / 2 / 1_000_000


def _unreadable(name: str, value: str) -> None:
    log_event(
        log,
        "watchdog.disabled",
        logging.WARNING,
        reason=f"{name} is not a positive whole number",
        value=value[:40],
    )


def ping() -> None:
    """The job: one WATCHDOG=1 datagram (a no-op without NOTIFY_SOCKET)."""
    notify("WATCHDOG=1")


def add_watchdog_job(scheduler: BaseScheduler, seconds: float, start: datetime) -> None:
    """Ping every `seconds` through the scheduler's default (work) pool, first one `seconds`
    after `start` so that READY=1 goes out first.

    A ping that waits for a worker is still sent when one gets free, however late (no misfire
    grace): late is the truth about the pool, and the next ones are coalesced into it.
    """
    scheduler.add_job(
        ping,
        "interval",
        seconds=seconds,
        id=JOB_ID,
        next_run_time=start + timedelta(seconds=seconds),
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    log_event(log, "watchdog.enabled", interval_seconds=seconds)
