"""The daemon's operator endpoints on BILLING_METRICS_ADDRESS:PORT (loopback by default).

- `/metrics`: Prometheus text format from billing.metrics.REGISTRY;
- `/healthz`: 200 "ok" while the process serves (alive; says nothing about the database);
- `/readyz`: 200 when every check passes, else 503, with a small JSON body naming each check
  (database reachable, schema at head, scheduler running, last billing pass not stale).
Any other path is 404. The database checks run in a worker thread and are waited for at most
DB_CHECK_TIMEOUT_SECONDS, so a database that is gone cannot hold an HTTP thread for long.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from apscheduler.schedulers.base import STATE_RUNNING, BaseScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine

from billing import metrics
from billing.daemon.service import Daemon
from billing.errors import ListenFailed
from billing.httpserve import LoopbackHTTPServer, ServerThread
from billing.logs import log_event

log = logging.getLogger("billing.daemon")

DB_CHECK_TIMEOUT_SECONDS = 3.0
# Before the first pass has finished, it is not stale for this long beyond 3 ticks (a first
# pass after downtime may have a backlog to charge).
STARTUP_GRACE_SECONDS = 60.0
STALE_TICKS = 3


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    checks: dict[str, Check]
    at: float  # monotonic

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def body(self) -> bytes:
        data = {
            "ready": self.ready,
            "checks": {n: {"ok": c.ok, "detail": c.detail} for n, c in self.checks.items()},
        }
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def probe_store(engine: Engine, heads: set[str]) -> tuple[Check, Check]:
    """`SELECT 1`, then the schema revision, on a raw pooled connection: no ORM, and on SQLite
    no BEGIN IMMEDIATE (so a readiness probe never queues for the write lock)."""
    conn = engine.raw_connection()
    try:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
            db = Check(True, "reachable")
            try:
                cursor.execute("SELECT version_num FROM alembic_version")
                stored = {str(row[0]) for row in cursor.fetchall()}
            except Exception as exc:  # no table: never migrated
                return db, Check(False, f"no schema revision ({type(exc).__name__})")
        finally:
            cursor.close()
        conn.rollback()
    finally:
        conn.close()
    if stored == heads:
        return db, Check(True, f"at head {','.join(sorted(heads))}")
    shown = ",".join(sorted(stored)) or "none"
    return db, Check(False, f"database at {shown}, this version expects {','.join(sorted(heads))}")


class Readiness:
    """The /readyz checks; each evaluation also sets billing_ready."""

    def __init__(
        self,
        daemon: Daemon,
        scheduler: BaseScheduler,
        heads: set[str],
        tick_seconds: float,
        *,
        db_timeout: float = DB_CHECK_TIMEOUT_SECONDS,
        startup_grace: float = STARTUP_GRACE_SECONDS,
        probe: Callable[[], tuple[Check, Check]] | None = None,
    ) -> None:
        self.daemon = daemon
        self.scheduler = scheduler
        self.stale_after = STALE_TICKS * tick_seconds
        self.db_timeout = db_timeout
        self.startup_grace = startup_grace
        self._probe = probe or (lambda: probe_store(daemon.ctx.engine, heads))
        self._lock = threading.Lock()
        self._inflight: Future[tuple[Check, Check]] | None = None
        self._last: Report | None = None

    def evaluate(self, max_age: float = 0.0) -> Report:
        """Run the checks (or reuse a report younger than `max_age` seconds)."""
        last = self._last
        if last is not None and time.monotonic() - last.at < max_age:
            return last
        db, schema = self._store_checks()
        report = Report(
            {
                "db": db,
                "schema": schema,
                "scheduler": self._scheduler_check(),
                "last_pass": self._pass_check(),
            },
            time.monotonic(),
        )
        self._last = report
        metrics.READY.set(1 if report.ready else 0)
        return report

    def _store_checks(self) -> tuple[Check, Check]:
        """At most one probe in flight: a hung one is waited for again, never piled up."""
        with self._lock:
            if self._inflight is None or self._inflight.done():
                self._inflight = self._start_probe()
            inflight = self._inflight
        try:
            return inflight.result(timeout=self.db_timeout)
        except FutureTimeout:
            why = f"no answer within {self.db_timeout:g} s"
            return Check(False, why), Check(False, "unknown: " + why)
        except Exception as exc:  # the text could name the database URL: the type only
            return Check(False, f"unreachable ({type(exc).__name__})"), Check(
                False, "unknown: database unreachable"
            )

    def _start_probe(self) -> Future[tuple[Check, Check]]:
        future: Future[tuple[Check, Check]] = Future()

        def run() -> None:
            try:
                future.set_result(self._probe())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="readyz-db", daemon=True).start()
        return future

    def _scheduler_check(self) -> Check:
        if self.daemon.stopping.is_set():
            return Check(False, "stopping")
        if self.scheduler.state != STATE_RUNNING:
            return Check(False, "scheduler not running")
        return Check(True, "running")

    def _pass_check(self) -> Check:
        """Stale when no pass finished within 3 ticks, unless a running pass keeps taking
        invoices (billing day); the first pass gets a start-up grace."""
        now = time.monotonic()
        finished = self.daemon.last_pass_finished
        moved = now - self.daemon.last_pass_progress
        if finished is None:
            waited = now - self.daemon.started
            if waited <= self.stale_after + self.startup_grace:
                return Check(True, f"first pass running ({waited:.0f} s since start)")
            if moved <= self.stale_after:
                return Check(True, f"first pass running, last progress {moved:.0f} s ago")
            return Check(False, f"no pass finished in {waited:.0f} s since start")
        age = now - finished
        if age <= self.stale_after:
            return Check(True, f"last pass finished {age:.0f} s ago")
        if moved <= self.stale_after:
            return Check(True, f"pass running, last progress {moved:.0f} s ago")
        return Check(
            False, f"last pass finished {age:.0f} s ago (stale after {self.stale_after:g} s)"
        )


class _Server(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], readiness: Readiness | None) -> None:
        self.readiness = readiness
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    # Headers and body are separate writes: without TCP_NODELAY, Nagle and delayed ACK add
    # ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        readiness = self.server.readiness
        if path == "/metrics":
            if readiness is not None:  # billing_ready is as fresh as the cached gauges
                readiness.evaluate(max_age=metrics.CACHE_TTL_SECONDS)
            self._answer(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            if readiness is None:
                self._answer(503, b'{"ready":false,"checks":{}}\n', "application/json")
                return
            report = readiness.evaluate()
            self._answer(200 if report.ready else 503, report.body(), "application/json")
        else:
            self._answer(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self._answer(405 if self.path.split("?", 1)[0] in _PATHS else 404, b"", "text/plain")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds."""


_PATHS = ("/metrics", "/healthz", "/readyz")


class Endpoints:
    """`/metrics`, `/healthz`, `/readyz` served in a thread; `readiness` may be set later
    (until then /readyz answers 503)."""

    def __init__(self, host: str, port: int) -> None:
        try:
            self._httpd = _Server((host, port), None)
        except (OSError, OverflowError) as exc:  # a second daemon on this host, or not ours
            error = exc if isinstance(exc, OSError) else OSError(None, "port out of range")
            raise ListenFailed(
                "the metrics endpoint", host, port, error, "BILLING_METRICS_PORT (0 turns it off)"
            ) from None
        self._serving = ServerThread(self._httpd, "metrics-http")

    @property
    def url(self) -> str:
        return self._serving.url

    @property
    def readiness(self) -> Readiness | None:
        return self._httpd.readiness

    @readiness.setter
    def readiness(self, value: Readiness | None) -> None:
        self._httpd.readiness = value

    def start(self) -> Endpoints:
        self._serving.start()
        log_event(log, "metrics.listening", url=f"{self.url}/metrics")
        return self

    def stop(self) -> None:
        self._serving.stop()
