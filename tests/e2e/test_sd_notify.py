"""The daemon speaks sd_notify to a socket the test owns, as systemd's Type=notify expects:
READY once it is up, STATUS with the last pass's counts, WATCHDOG at half the WatchdogSec that
systemd passes as WATCHDOG_USEC (and none without it), STOPPING on SIGTERM; a daemon whose every
work job hangs stops sending WATCHDOG, sends it again once they move, and still stops on SIGTERM
while they hang (issue 7, item 5)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from billing.store.migrate import upgrade
from tests.e2e.conftest import (
    Proc,
    Sandbox,
    StartDaemon,
    billing_context,
    seed_due,
    sigterm_and_check,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

WATCHDOG_USEC = "2000000"  # WatchdogSec=2s: a ping every 1 s
PING_SECONDS = 1.0
# Every job on its shortest timer, so that each one touches the store within a second or two.
EVERY_JOB_OFTEN = {"BILLING_EXPIRY_CHECK_SECONDS": "1", "BILLING_NOTIFY_SECONDS": "1"}


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield sock, path
    finally:
        sock.close()


def _collect_timed(
    sock: socket.socket, seconds: float, until: str | None = None
) -> list[tuple[float, str]]:
    """(arrival time, line) of every datagram for `seconds`, or until one holds `until`."""
    lines: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        arrived = time.monotonic()
        lines.extend((arrived, line) for line in data.splitlines())
        if until is not None and until in data:
            break
    return lines


def _collect(sock: socket.socket, seconds: float, until: str | None = None) -> list[str]:
    return [line for _, line in _collect_timed(sock, seconds, until)]


def _pings(lines: list[tuple[float, str]]) -> list[float]:
    return [at for at, line in lines if line == "WATCHDOG=1"]


def _gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in pairwise(times)]


def test_ready_status_watchdog_at_half_watchdogsec_and_stopping(
    sandbox: Sandbox,
    e2e_db_url: str,
    start_daemon: StartDaemon,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    with billing_context(e2e_db_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, 3)
    daemon = start_daemon(
        e2e_db_url, sandbox.url, "notify-node", NOTIFY_SOCKET=path, WATCHDOG_USEC=WATCHDOG_USEC
    )
    seen = _collect_timed(sock, 30, until="WATCHDOG=1")
    assert seen and seen[0][1] == "READY=1", seen
    # Pings for a while: about one a second, never a gap systemd (2 s) would have acted on
    # by much; bounds are generous for a loaded 2-core machine.
    window = _collect_timed(sock, 8)
    pings = _pings(seen) + _pings(window)
    statuses = [line for _, line in seen + window if line.startswith("STATUS=last pass")]
    assert statuses and "3 charged (3 approved" in statuses[0], seen + window
    print(f"{len(pings)} pings, gaps {_gaps(pings)}")
    assert 5 <= len(pings) <= 14, (len(pings), _gaps(pings))
    assert max(_gaps(pings)) <= 3 * PING_SECONDS, _gaps(pings)
    daemon.popen.send_signal(signal.SIGTERM)
    after = _collect(sock, 15, until="STOPPING=1")
    assert "STOPPING=1" in after, after
    assert daemon.popen.wait(timeout=30) == 0


@pytest.mark.parametrize(
    "watchdog_env",
    [
        pytest.param({}, id="no-WATCHDOG_USEC"),
        # sd_watchdog_enabled(3): WATCHDOG_PID names the process the watchdog is for (not us).
        pytest.param({"WATCHDOG_USEC": WATCHDOG_USEC, "WATCHDOG_PID": "1"}, id="another-pid"),
    ],
)
def test_no_watchdog_unless_systemd_asks_this_process(
    sandbox: Sandbox,
    sqlite_url: str,
    start_daemon: StartDaemon,
    notify_socket: tuple[socket.socket, str],
    watchdog_env: dict[str, str],
) -> None:
    sock, path = notify_socket
    upgrade(sqlite_url)
    daemon = start_daemon(
        sqlite_url, sandbox.url, "no-watchdog", NOTIFY_SOCKET=path, **watchdog_env
    )
    seen = _collect(sock, 30, until="READY=1")
    assert "READY=1" in seen, seen
    seen += _collect(sock, 5 * PING_SECONDS)
    assert "WATCHDOG=1" not in seen, seen
    assert not daemon.events("watchdog.enabled"), daemon.tail()
    sigterm_and_check(daemon, 30)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _lock_every_table(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """In conn's open transaction, ACCESS EXCLUSIVE on every table of the schema (so on every
    table any job reads or writes). A deadlock with a job's transaction is retried."""
    tables = [
        str(name)
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
    ]
    conn.rollback()
    names = ", ".join(f'"{name}"' for name in tables)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn.execute("SET LOCAL lock_timeout = '10s'")
            conn.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
            return tables
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
            conn.rollback()
            if time.monotonic() > deadline:
                raise


def _lock_waiters(admin: psycopg.Connection[tuple[object, ...]], database: str) -> int:
    """The daemon's backends on the test database that wait for a lock (ours)."""
    row = admin.execute(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
        (database,),
    ).fetchone()
    return int(str(row[0])) if row else 0


def _wait_for_silence(sock: socket.socket, daemon: Proc, quiet: float, timeout: float) -> float:
    """Until no WATCHDOG=1 arrived for `quiet` s (the daemon alive all along); returns when the
    last ping came."""
    last = time.monotonic()
    deadline = last + timeout
    while time.monotonic() - last < quiet:
        assert daemon.popen.poll() is None, daemon.tail()
        if time.monotonic() > deadline:
            pytest.fail(f"WATCHDOG=1 still arriving {timeout:g} s after every table was locked")
        last = max([last, *_pings(_collect_timed(sock, 0.2))])
    return last


@pytest.mark.postgres
def test_a_stuck_work_loop_stops_the_watchdog_and_a_moving_one_resumes_it(
    sandbox: Sandbox,
    pg_url: str,
    start_daemon: StartDaemon,
    notify_socket: tuple[socket.socket, str],
) -> None:
    # The engine sets no lock_timeout or statement_timeout (billing/store/db.py), so a job that
    # meets our lock waits for it: every worker of the pool ends up stuck, none fails and frees.
    sock, path = notify_socket
    upgrade(pg_url)
    with billing_context(pg_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, 2)
    daemon = start_daemon(
        pg_url,
        sandbox.url,
        "stuck-node",
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC=WATCHDOG_USEC,
        **EVERY_JOB_OFTEN,
    )
    healthy = _pings(_collect_timed(sock, 6))
    assert len(healthy) >= 3, healthy
    database = str(make_url(pg_url).database)
    with (
        psycopg.connect(_libpq(pg_url)) as locker,
        psycopg.connect(_libpq(pg_url), autocommit=True) as admin,
    ):
        tables = _lock_every_table(locker)
        locked_at = time.monotonic()
        assert {"invoice", "subscription", "outbox_event", "charge_attempt"} <= set(tables)
        last_ping = _wait_for_silence(sock, daemon, quiet=3.5 * PING_SECONDS, timeout=45)
        # Why it is silent: the five work jobs all wait on our lock, and the process is alive.
        waiters = wait_until(
            lambda: (n := _lock_waiters(admin, database)) >= 5 and n,
            20,
            "every work job to wait on the lock",
            alive=daemon.died,
        )
        silence = _collect_timed(sock, 3 * PING_SECONDS)
        assert "WATCHDOG=1" not in [line for _, line in silence], silence
        assert daemon.popen.poll() is None, daemon.tail()
        stuck_for = time.monotonic() - max(last_ping, locked_at)
        locker.rollback()  # the jobs move again
        released_at = time.monotonic()
        resumed = wait_until(
            lambda: _pings(_collect_timed(sock, 0.2)),
            20,
            "WATCHDOG=1 again after the lock was released",
            alive=daemon.died,
        )
        print(
            f"lock waiters {waiters}; silent {stuck_for:.1f} s while stuck; first ping again "
            f"{resumed[0] - released_at:.2f} s after the release"
        )
        steady = _pings(_collect_timed(sock, 4))
        assert len(steady) >= 2, steady
        wait_until(lambda: _lock_waiters(admin, database) == 0, 20, "no job left waiting")
    sigterm_and_check(daemon, 30)


@pytest.mark.postgres
def test_a_stuck_daemon_still_stops_on_sigterm_within_its_budget(
    sandbox: Sandbox,
    pg_url: str,
    start_daemon: StartDaemon,
    notify_socket: tuple[socket.socket, str],
) -> None:
    """Every job hangs on our lock and SIGTERM comes: the drain budget runs out, the daemon
    says so and exits 0 (its leases expire as a crashed node's do) before systemd's SIGKILL."""
    sock, path = notify_socket
    upgrade(pg_url)
    budget = 5
    daemon = start_daemon(
        pg_url,
        sandbox.url,
        "stuck-stop",
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC=WATCHDOG_USEC,
        BILLING_STOP_BUDGET_SECONDS=str(budget),
        **EVERY_JOB_OFTEN,
    )
    assert _pings(_collect_timed(sock, 4)), "no WATCHDOG=1 before the lock"
    database = str(make_url(pg_url).database)
    with (
        psycopg.connect(_libpq(pg_url)) as locker,
        psycopg.connect(_libpq(pg_url), autocommit=True) as admin,
    ):
        _lock_every_table(locker)
        wait_until(
            lambda: _lock_waiters(admin, database) >= 5,
            30,
            "every work job to wait on the lock",
            alive=daemon.died,
        )
        code, seconds = daemon.signal_and_wait(signal.SIGTERM, budget + 20)
        assert code == 0, daemon.tail()
        stopped = daemon.events("daemon.stopped")
        assert stopped and stopped[-1]["graceful"] is False, daemon.tail()
        print(f"stuck daemon exited {seconds:.1f} s after SIGTERM (budget {budget} s)")
        locker.rollback()
