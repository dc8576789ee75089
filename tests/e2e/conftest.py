"""End-to-end fixtures: the sandbox and the daemon as REAL processes, talking over loopback HTTP.

Every child process writes its stderr (one JSON line per event) to a file in the test's tmp dir;
the tests poll those files, the sandbox's control routes and the database, always with a bounded
deadline. Every process started here is killed when the test ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from billing.clock import SystemClock
from billing.engine.context import BillingContext
from billing.plexo.client import PlexoClient
from billing.store.db import make_engine
from billing.testing import ensure_plan, seed_subscriptions

T = TypeVar("T")
TZ = ZoneInfo("America/Montevideo")


def billing_executable() -> str:
    """The `billing` console script of this venv (not whatever `billing` is first on PATH)."""
    beside = Path(sys.executable).parent / "billing"
    if beside.exists():
        return str(beside)
    found = shutil.which("billing")
    if found is None:
        pytest.fail("the `billing` console script is not installed (run `make install`)")
    return found


def clean_environ(**overrides: str) -> dict[str, str]:
    """The parent's environment without any BILLING_* variable, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BILLING_")}
    env.pop("NOTIFY_SOCKET", None)  # never talk to a real systemd from a test
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def json_records(text: str) -> list[dict[str, Any]]:
    """The JSON-object lines of a log; anything else (a half-written line, a plain line) is
    skipped."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` s.

    `alive` returns a reason to give up early (a child process died) or None.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if alive is not None and (reason := alive()) is not None:
            pytest.fail(f"while waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """One child process whose stderr goes to `log_path`."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON lines written so far (a half-written last line is skipped)."""
        return json_records(self.log_text())

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == event]

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def died(self) -> str | None:
        """Why this process is no use any more (it exited), or None while it runs."""
        code = self.popen.poll()
        if code is None:
            return None
        return f"{self.name} exited with {code}; last stderr lines:\n{self.tail()}"

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far (Linux /proc), for the timing report."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        return wait_until(
            lambda: next(iter(self.events(event)), None),
            timeout,
            f"{self.name} to log {event}",
            alive=self.died,
        )

    def signal_and_wait(self, sig: signal.Signals, timeout: float) -> tuple[int, float]:
        """Send `sig`; return (exit status, seconds until exit). Fails if it outlives `timeout`."""
        started = time.monotonic()
        self.popen.send_signal(sig)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running {timeout:g} s after {sig.name}:\n{self.tail()}")
        return code, time.monotonic() - started

    def ensure_dead(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@dataclass
class Processes:
    """Starts children in the test's tmp dir and kills them all at teardown."""

    tmp_path: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log_path = self.tmp_path / f"{name}-{len(self.started)}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=self.tmp_path,
            )
        proc = Proc(name, popen, log_path)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            code = proc.popen.poll()
            if code is not None and code not in (0, -signal.SIGKILL):
                # Shown with the captured output of a failed test: who died before teardown.
                print(f"{proc.name} (pid {proc.popen.pid}) had exited with {code}")
            proc.ensure_dead()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()


@dataclass
class Sandbox:
    """The `billing sandbox` process and its (unauthenticated) control routes."""

    proc: Proc
    url: str
    http: httpx.Client

    def payments(self) -> list[dict[str, Any]]:
        response = self.http.get("/sandbox/payments")
        response.raise_for_status()
        payments: list[dict[str, Any]] = response.json()
        return payments

    def add_fault(self, mode: str, **body: Any) -> None:
        self.http.post("/sandbox/faults", json={"mode": mode, **body}).raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete("/sandbox/faults").raise_for_status()


@pytest.fixture
def sandbox(processes: Processes) -> Iterator[Sandbox]:
    """`billing sandbox --port 0` as a process; its first stderr line names the real URL."""
    proc = processes.start(
        "sandbox",
        [billing_executable(), "sandbox", "--host", "127.0.0.1", "--port", "0"],
        clean_environ(),
    )
    started = proc.wait_event("sandbox.started", timeout=20)
    url = str(started["url"])
    with httpx.Client(base_url=url, timeout=10) as http:
        wait_until(lambda: http.get("/sandbox/health").status_code == 200, 10, "sandbox health")
        yield Sandbox(proc, url, http)


# Short timers so that a crashed node's leases and `sending` attempts come back within seconds.
DAEMON_DEFAULTS = {
    "BILLING_TICK_SECONDS": "1",
    "BILLING_RECONCILE_SECONDS": "1",
    "BILLING_REAPER_SECONDS": "1",
    "BILLING_LEASE_SECONDS": "4",
    "BILLING_PLEXO_TIMEOUT_SECONDS": "2",
    "BILLING_RESEND_GRACE_SECONDS": "1",
    "BILLING_STOP_BUDGET_SECONDS": "10",
    "BILLING_METRICS_PORT": "0",
    "BILLING_CONCURRENCY": "4",
    "BILLING_LOG_FORMAT": "json",
}


def daemon_environ(db_url: str, sandbox_url: str, node: str, **overrides: str) -> dict[str, str]:
    settings = {
        **DAEMON_DEFAULTS,
        "BILLING_DATABASE_URL": db_url,
        "BILLING_PLEXO_BASE_URL": sandbox_url,
        "BILLING_NODE_NAME": node,
    }
    settings.update(overrides)
    return clean_environ(**settings)


StartDaemon = Callable[..., Proc]


@pytest.fixture
def start_daemon(processes: Processes) -> StartDaemon:
    """start_daemon(db_url, sandbox_url, node, BILLING_X="...", wait=True): `billing daemon`.

    With wait=True it returns once the daemon logged daemon.ready.
    """

    def start(
        db_url: str, sandbox_url: str, node: str, *, wait: bool = True, **overrides: str
    ) -> Proc:
        proc = processes.start(
            node,
            [billing_executable(), "daemon"],
            daemon_environ(db_url, sandbox_url, node, **overrides),
        )
        if wait:
            proc.wait_event("daemon.ready", timeout=30)
        return proc

    return start


@contextmanager
def billing_context(db_url: str, sandbox_url: str) -> Iterator[BillingContext]:
    """The test's own view of the store and gateway (seeding and checks), as tests/integration."""
    engine = make_engine(db_url)
    client = PlexoClient(sandbox_url, "sandbox-client", "sandbox-key", 1, timeout=10)
    try:
        yield BillingContext(
            engine=engine,
            plexo=client,
            clock=SystemClock(),
            tz=TZ,
            node="e2e-seeder",
            actor="e2e",
        )
    finally:
        client.close()
        engine.dispose()


def seed_due(ctx: BillingContext, sandbox_url: str, total: int, threads: int = 4) -> None:
    """Top the store up to `total` subscriptions started a day ago (period 0 due at once).

    Seeding goes through the engine and the sandbox's HTTP contract, a few calls per customer;
    `threads` seeders share the work so that one's network waits overlap another's work.
    """
    ensure_plan(ctx)
    start = ctx.clock.now() - timedelta(days=1)
    existing = subscription_count(ctx)
    missing = total - existing
    shares = [missing // threads + (1 if n < missing % threads else 0) for n in range(threads)]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        futures = [
            # Customer references must be new: `existing` makes them differ between calls.
            pool.submit(
                seed_subscriptions, ctx, sandbox_url, share, start=start, prefix=f"s{existing}w{n}"
            )
            for n, share in enumerate(shares)
            if share > 0
        ]
        for future in futures:
            future.result()
    assert subscription_count(ctx) == total


def subscription_count(ctx: BillingContext) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM subscription")).scalar_one())


@dataclass(frozen=True)
class StoreState:
    invoices: int
    paid: int
    unresolved: int


def store_state(ctx: BillingContext) -> StoreState:
    """Invoice and attempt counts, cheap enough to poll while a daemon works."""
    with ctx.engine.connect() as conn:
        invoices, paid = conn.execute(
            text(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'paid' THEN 1 ELSE 0 END), 0)"
                " FROM invoice"
            )
        ).one()
        unresolved = conn.execute(
            text(
                "SELECT COUNT(*) FROM charge_attempt"
                " WHERE state IN ('sending', 'unknown', 'pending')"
            )
        ).scalar_one()
    return StoreState(int(invoices), int(paid), int(unresolved))


def wait_all_paid(ctx: BillingContext, count: int, timeout: float, *daemons: Proc) -> StoreState:
    """Until `count` invoices exist, all paid, with no attempt left unresolved."""

    def done() -> StoreState | None:
        state = store_state(ctx)
        ok = state.invoices == count and state.paid == count and state.unresolved == 0
        return state if ok else None

    def alive() -> str | None:
        return next((r for d in daemons if (r := d.died()) is not None), None)

    try:
        return wait_until(done, timeout, f"{count} paid invoices", interval=0.25, alive=alive)
    except pytest.fail.Exception:
        tails = "\n".join(f"--- {d.name}\n{d.tail()}" for d in daemons)
        pytest.fail(f"not all paid: {store_state(ctx)}\n{tails}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def e2e_db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database, once per backend (the daemon refuses a schema not at head)."""
    from billing.store.migrate import upgrade

    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    upgrade(url)
    return url


def sigterm_and_check(daemon: Proc, budget: float) -> float:
    """SIGTERM; expect exit 0 within `budget` s and a graceful daemon.stopped line."""
    code, seconds = daemon.signal_and_wait(signal.SIGTERM, budget)
    assert code == 0, f"{daemon.name} exited {code} after SIGTERM:\n{daemon.tail()}"
    stopped = daemon.events("daemon.stopped")
    assert stopped and stopped[-1].get("graceful") is True, daemon.tail()
    return seconds
