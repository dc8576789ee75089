"""When the daemon pings systemd's watchdog (sd_watchdog_enabled(3) rules) and from where."""

from __future__ import annotations

from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from billing.daemon.main import RELEASE_SECONDS
from billing.daemon.scheduler import build_scheduler
from billing.daemon.watchdog import JOB_ID, interval_seconds
from billing.settings import Settings
from tests.unit.test_daemon_wiring import FakeDaemon


def test_half_of_watchdog_usec_when_it_is_ours() -> None:
    assert interval_seconds({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert interval_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, pid=7) == 1.0


def test_no_watchdog_when_unset_or_meant_for_another_process() -> None:
    assert interval_seconds({}, pid=7) is None
    assert interval_seconds({"WATCHDOG_USEC": ""}, pid=7) is None
    assert interval_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, pid=7) is None


def test_unreadable_values_disable_it() -> None:
    for usec in ("0", "-5", "2s", "1.5"):
        assert interval_seconds({"WATCHDOG_USEC": usec}, pid=7) is None, usec
    assert interval_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, pid=7) is None


def _scheduler(watchdog_seconds: float | None) -> BackgroundScheduler:
    return build_scheduler(
        FakeDaemon(),  # type: ignore[arg-type]
        tick_seconds=60,
        reconcile_seconds=30,
        reaper_seconds=45,
        watchdog_seconds=watchdog_seconds,
    )


def test_the_ping_shares_the_work_pool_which_has_no_spare_worker() -> None:
    scheduler = _scheduler(15.0)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    ping = jobs.pop(JOB_ID)
    assert ping.executor == "default" and all(j.executor == "default" for j in jobs.values())
    assert ping.trigger.interval.total_seconds() == 15.0
    assert ping.misfire_grace_time is None and ping.max_instances == 1
    # The first ping comes one interval after the others' first run: READY=1 goes out first.
    first_work = min(j.next_run_time for j in jobs.values())
    assert (ping.next_run_time - first_work).total_seconds() == 15.0
    executor = scheduler._lookup_executor("default")
    assert isinstance(executor, ThreadPoolExecutor)
    assert executor._pool._max_workers == len(jobs)


def test_no_ping_job_without_a_watchdog() -> None:
    assert JOB_ID not in {job.id for job in _scheduler(None).get_jobs()}


def _unit_seconds(unit: str, key: str) -> float:
    text = (Path(__file__).resolve().parents[2] / "systemd" / unit).read_text()
    [value] = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]
    assert value.endswith("s"), (unit, key, value)
    return float(value[:-1])


def test_units_watch_the_daemon_and_wait_past_its_stop_budget() -> None:
    budget = Settings.model_fields["stop_budget_seconds"].default
    for unit in ("billing.service", "billing@.service"):
        assert _unit_seconds(unit, "WatchdogSec") >= 10  # pings every half of it
        # The drain budget, then releasing the leases: systemd must not SIGKILL first.
        assert _unit_seconds(unit, "TimeoutStopSec") >= budget + RELEASE_SECONDS + 5
