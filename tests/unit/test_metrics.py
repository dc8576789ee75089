"""billing/metrics.py's cached collectors, the after-commit counting helper, the scheduler's job
metrics and /readyz's checks, each on its own (the cache's query is a counting fake: the unit
under test is the cache)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from billing import metrics
from billing.daemon.endpoints import Check, Readiness
from billing.daemon.scheduler import count_jobs
from billing.metrics import CachedCollector, Samples, StoreGauge
from billing.store.aftercommit import after_commit, count_after_commit

DUE = StoreGauge("test_due", "Due.")
BY_STATE = StoreGauge("test_by_state", "By state.", ("state",))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingQuery:
    """Returns `value` (or raises `error`), counting calls; `gate` can hold a call open."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = 1.0
        self.error: Exception | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self) -> Samples:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.error is not None:
            raise self.error
        return {DUE.name: {(): self.value}, BY_STATE.name: {("a",): 2.0, ("b",): 0.0}}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def query() -> CountingQuery:
    return CountingQuery()


@pytest.fixture
def registry(clock: FakeClock, query: CountingQuery) -> Iterator[CollectorRegistry]:
    # auto_describe=True as billing.metrics.REGISTRY: registration would collect() without
    # the collector's describe().
    registry = CollectorRegistry(auto_describe=True)
    collector = CachedCollector("test", (DUE, BY_STATE), ttl=15, clock=clock, wait=30)
    collector.bind(query)
    registry.register(collector)
    yield registry


def test_registering_does_not_query(registry: CollectorRegistry, query: CountingQuery) -> None:
    assert query.calls == 0


def test_one_query_per_ttl_across_many_scrapes(
    registry: CollectorRegistry, query: CountingQuery, clock: FakeClock
) -> None:
    for _ in range(50):
        assert value(registry, "test_due") == 1.0
    assert value(registry, "test_by_state", state="a") == 2.0
    assert query.calls == 1
    query.value = 7.0
    clock.now += 14.9
    assert value(registry, "test_due") == 1.0 and query.calls == 1, "still within the TTL"
    clock.now += 0.2
    for _ in range(20):
        assert value(registry, "test_due") == 7.0
    assert query.calls == 2


def test_a_failed_query_keeps_the_last_values_and_is_retried_after_the_ttl(
    registry: CollectorRegistry, query: CountingQuery, clock: FakeClock
) -> None:
    assert value(registry, "test_due") == 1.0
    query.error = RuntimeError("connection refused to postgresql://secret@db")
    clock.now += 16
    for _ in range(10):
        text_out = generate_latest(registry).decode()  # never raises
        assert "test_due 1.0" in text_out
    assert query.calls == 2, "a failing database is asked once per TTL, not once per scrape"
    query.error = None
    query.value = 3.0
    clock.now += 16
    assert value(registry, "test_due") == 3.0 and query.calls == 3


def test_concurrent_scrapes_share_one_query(
    registry: CollectorRegistry, query: CountingQuery
) -> None:
    query.gate = threading.Event()
    results: list[float | None] = []
    first = threading.Thread(target=lambda: results.append(value(registry, "test_due")))
    first.start()
    assert query.entered.wait(10)
    others = [
        threading.Thread(target=lambda: results.append(value(registry, "test_due")))
        for _ in range(8)
    ]
    for t in others:
        t.start()
    time.sleep(0.05)  # not a synchronisation: only gives the others a chance to (wrongly) query
    query.gate.set()
    for t in [first, *others]:
        t.join(10)
    assert query.calls == 1
    assert results == [1.0] * 9


def test_while_a_read_hangs_scrapes_wait_a_bounded_time_and_serve_the_last_values(
    query: CountingQuery, clock: FakeClock
) -> None:
    registry = CollectorRegistry(auto_describe=True)
    collector = CachedCollector("test", (DUE, BY_STATE), ttl=15, clock=clock, wait=0.2)
    collector.bind(query)
    registry.register(collector)
    assert value(registry, "test_due") == 1.0
    clock.now += 16
    query.gate = threading.Event()
    query.entered.clear()
    try:
        for _ in range(3):
            started = time.monotonic()
            assert value(registry, "test_due") == 1.0
            assert time.monotonic() - started < 5, "a scrape must not queue behind a hung read"
        assert query.calls == 2, "one read in flight, not one per scrape"
    finally:
        query.gate.set()


def test_an_unbound_collector_names_its_families_without_samples() -> None:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CachedCollector("test", (DUE, BY_STATE)))
    exposition = generate_latest(registry).decode()
    assert "# TYPE test_due gauge" in exposition and "# TYPE test_by_state gauge" in exposition
    assert value(registry, "test_due") is None


def test_the_daemon_registry_declares_every_store_gauge_without_querying() -> None:
    names = metrics.declared_names()
    for gauge in (*metrics.STORE.gauges, *metrics.OUTBOX.gauges):
        assert gauge.name in names
    assert "process_cpu_seconds" in names and "billing_build_info" in names


def test_build_info_has_one_label_set() -> None:
    metrics.set_build_info("1.2.3", "abc")
    metrics.set_build_info("1.2.4", "def")
    families = [m for m in metrics.REGISTRY.collect() if m.name == "billing_build_info"]
    assert [(s.labels, s.value) for s in families[0].samples] == [
        ({"version": "1.2.4", "schema_revision": "def"}, 1.0)
    ]


# --- after commit ---------------------------------------------------------------------------


@pytest.fixture
def memory_session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_after_commit_runs_on_commit_only(memory_session: Session) -> None:
    s = memory_session
    done: list[str] = []
    s.execute(text("SELECT 1"))
    after_commit(s, lambda: done.append("rolled back"))
    s.rollback()
    after_commit(s, lambda: done.append("before any statement, then rolled back"))
    s.rollback()
    with s.begin_nested():  # a savepoint released is not the commit
        after_commit(s, lambda: done.append("committed"))
    assert done == []
    s.commit()
    assert done == ["committed"]
    after_commit(s, lambda: done.append("closed"))
    s.close()
    s.commit()
    assert done == ["committed"]


def test_count_after_commit_increments_the_named_counter(memory_session: Session) -> None:
    def dunning(stage: str) -> float:
        found = metrics.REGISTRY.get_sample_value(
            "billing_dunning_transitions_total", {"stage": stage}
        )
        return found or 0.0

    before = dunning("recovered")
    count_after_commit(memory_session, "DUNNING", stage="recovered")
    assert dunning("recovered") == before
    memory_session.commit()
    assert dunning("recovered") == before + 1


# --- scheduler job metrics ------------------------------------------------------------------


def counter(name: str, job: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"scheduler_job": job}) or 0.0


def test_job_runs_errors_and_intervals_come_from_the_scheduler() -> None:
    scheduler = BackgroundScheduler()
    ran = threading.Event()
    failed = threading.Event()

    def ok() -> None:
        ran.set()

    def boom() -> None:
        failed.set()
        raise RuntimeError("job failed")

    start = datetime.now().astimezone()
    scheduler.add_job(ok, "interval", seconds=42, id="test_ok", next_run_time=start)
    scheduler.add_job(boom, "interval", seconds=7, id="test_boom", next_run_time=start)
    count_jobs(scheduler)
    assert counter("billing_job_interval_seconds", "test_ok") == 42.0
    assert counter("billing_job_interval_seconds", "test_boom") == 7.0
    scheduler.start()
    try:
        wait_for(lambda: counter("billing_job_runs_total", "test_ok") >= 1, "ok ran")
        wait_for(lambda: counter("billing_job_errors_total", "test_boom") >= 1, "boom failed")
        assert counter("billing_job_runs_total", "test_boom") >= 1, "an error run still ran"
        assert counter("billing_job_errors_total", "test_ok") == 0
    finally:
        scheduler.shutdown(wait=True)


def test_a_run_skipped_because_the_last_one_overran_counts_as_missed() -> None:
    scheduler = BackgroundScheduler()
    release = threading.Event()
    running = threading.Event()

    def slow() -> None:
        running.set()
        release.wait(30)

    job = scheduler.add_job(
        slow,
        "interval",
        seconds=3600,
        id="test_slow",
        next_run_time=datetime.now().astimezone(),
        max_instances=1,
    )
    count_jobs(scheduler)
    scheduler.start()
    try:
        wait_for(running.is_set, "the first run to start")
        job.modify(next_run_time=datetime.now().astimezone() + timedelta(milliseconds=10))
        scheduler.wakeup()
        wait_for(lambda: counter("billing_job_missed_total", "test_slow") >= 1, "a missed run")
    finally:
        release.set()
        scheduler.shutdown(wait=True)


def wait_for(probe: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- readiness --------------------------------------------------------------------------------


class FakeDaemon:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.started = time.monotonic() - 3600
        self.last_pass_finished: float | None = None
        self.last_pass_progress = self.started


class RunningScheduler:
    state = 1  # apscheduler.schedulers.base.STATE_RUNNING


def readiness(
    daemon: FakeDaemon,
    probe: Callable[[], tuple[Check, Check]],
    *,
    tick: float = 10,
    grace: float = 5,
    db_timeout: float = 3,
) -> Readiness:
    return Readiness(
        daemon,  # type: ignore[arg-type]
        RunningScheduler(),  # type: ignore[arg-type]
        {"head"},
        tick,
        db_timeout=db_timeout,
        startup_grace=grace,
        probe=probe,
    )


def healthy() -> tuple[Check, Check]:
    return Check(True, "reachable"), Check(True, "at head")


def test_ready_when_every_check_passes_and_the_gauge_mirrors_it() -> None:
    daemon = FakeDaemon()
    daemon.last_pass_finished = time.monotonic()
    report = readiness(daemon, healthy).evaluate()
    assert report.ready and set(report.checks) == {"db", "schema", "scheduler", "last_pass"}
    assert metrics.READY._value.get() == 1
    daemon.stopping.set()
    report = readiness(daemon, healthy).evaluate()
    assert not report.ready and report.checks["scheduler"] == Check(False, "stopping")
    assert metrics.READY._value.get() == 0


def test_a_pass_is_stale_after_three_ticks_with_a_grace_before_the_first() -> None:
    daemon = FakeDaemon()
    daemon.started = daemon.last_pass_progress = time.monotonic() - 34  # in 3 x 10 s + 5 s
    assert readiness(daemon, healthy).evaluate().checks["last_pass"].ok
    daemon.started = daemon.last_pass_progress = time.monotonic() - 36
    assert not readiness(daemon, healthy).evaluate().checks["last_pass"].ok
    daemon.last_pass_finished = daemon.last_pass_progress = time.monotonic() - 29
    assert readiness(daemon, healthy).evaluate().checks["last_pass"].ok
    daemon.last_pass_finished = daemon.last_pass_progress = time.monotonic() - 31
    assert not readiness(daemon, healthy).evaluate().checks["last_pass"].ok


def test_a_long_pass_that_keeps_taking_invoices_is_not_stale() -> None:
    daemon = FakeDaemon()
    daemon.last_pass_finished = time.monotonic() - 600  # billing day: one pass for 10 minutes
    daemon.last_pass_progress = time.monotonic() - 2
    check = readiness(daemon, healthy).evaluate().checks["last_pass"]
    assert check.ok and "progress" in check.detail
    daemon.last_pass_progress = time.monotonic() - 31  # ... until it stops moving
    assert not readiness(daemon, healthy).evaluate().checks["last_pass"].ok
    first = FakeDaemon()  # a first pass that runs long after the start-up grace
    first.last_pass_progress = time.monotonic() - 1
    assert readiness(first, healthy).evaluate().checks["last_pass"].ok


def test_a_hanging_database_check_is_bounded_and_not_piled_up() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def hangs() -> tuple[Check, Check]:
        calls.append(1)
        gate.wait(30)
        return healthy()

    daemon = FakeDaemon()
    ready = readiness(daemon, hangs, db_timeout=0.3)
    try:
        for _ in range(3):
            started = time.monotonic()
            report = ready.evaluate()
            assert time.monotonic() - started < 5
            assert not report.ready and not report.checks["db"].ok
            assert "no answer within" in report.checks["db"].detail
        assert calls == [1], "one probe in flight at a time"
    finally:
        gate.set()


def test_a_failing_database_check_names_the_error_type_only() -> None:
    def refused() -> tuple[Check, Check]:
        raise ConnectionError("password=hunter2 refused")

    report = readiness(FakeDaemon(), refused).evaluate()
    assert report.checks["db"] == Check(False, "unreachable (ConnectionError)")
    assert "hunter2" not in report.body().decode()
