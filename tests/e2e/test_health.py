"""/metrics, /healthz and /readyz of a real `billing daemon` billing against the sandbox process.

- every metric family billing/metrics.py declares is on /metrics, and the values move when the
  daemon charges (charges and amounts by currency and outcome, job runs, the DB-derived gauges);
- /readyz is 200 once the first pass ran;
- on PostgreSQL reached through a loopback TCP proxy this test owns: cutting the proxy (every
  connection closed, new ones refused) turns /readyz 503 with the db check false while the
  daemon keeps running and /healthz stays 200; restoring it makes /readyz 200 again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

import billing
from billing import metrics
from billing.store.migrate import script_heads, upgrade
from tests.e2e.conftest import (
    Proc,
    Sandbox,
    StartDaemon,
    billing_context,
    seed_due,
    sigterm_and_check,
    wait_all_paid,
    wait_until,
)

AMOUNT = 59000  # billing.testing.ensure_plan: 590.00 UYU


def free_port() -> int:
    """A loopback port free now (BILLING_METRICS_PORT=0 means "off", so the test picks one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Endpoint:
    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15)

    def get(self, path: str) -> httpx.Response | None:
        try:
            return self.http.get(path)
        except httpx.TransportError:
            return None  # not listening yet

    def status(self, path: str) -> int | None:
        response = self.get(path)
        return None if response is None else response.status_code

    def families(self) -> dict[str, Any]:
        response = self.get("/metrics")
        assert response is not None and response.status_code == 200
        return {f.name: f for f in text_string_to_metric_families(response.text)}

    def value(self, name: str, **labels: str) -> float | None:
        """The value of sample `name` with exactly `labels`, None when absent."""
        for family in self.families().values():
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None


@pytest.fixture
def clients() -> Iterator[list[Endpoint]]:
    opened: list[Endpoint] = []
    try:
        yield opened
    finally:
        for endpoint in opened:
            endpoint.http.close()


def start(
    start_daemon: StartDaemon, db_url: str, sandbox: Sandbox, node: str, clients: list[Endpoint]
) -> tuple[Proc, Endpoint]:
    port = free_port()
    daemon = start_daemon(db_url, sandbox.url, node, BILLING_METRICS_PORT=str(port))
    endpoint = Endpoint(port)
    clients.append(endpoint)
    listening = daemon.wait_event("metrics.listening", timeout=30)
    assert listening["url"] == f"http://127.0.0.1:{port}/metrics"
    return daemon, endpoint


def test_metrics_health_and_readiness_of_a_billing_daemon(
    sqlite_url: str, sandbox: Sandbox, start_daemon: StartDaemon, clients: list[Endpoint]
) -> None:
    upgrade(sqlite_url)
    with billing_context(sqlite_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, 5, threads=2)
        daemon, endpoint = start(start_daemon, sqlite_url, sandbox, "health-1", clients)
        assert endpoint.status("/healthz") == 200
        assert endpoint.get("/healthz").text == "ok\n"  # type: ignore[union-attr]

        def ready_after_a_pass() -> dict[str, Any] | None:
            response = endpoint.get("/readyz")
            if response is None or response.status_code != 200:
                return None
            body: dict[str, Any] = response.json()
            ran = body["checks"]["last_pass"]["detail"].startswith("last pass finished")
            return body if ran else None  # before: ready within the start-up grace

        body = wait_until(ready_after_a_pass, 60, "/readyz 200 after a pass", 0.2, daemon.died)
        assert body["ready"] is True
        assert set(body["checks"]) == {"db", "schema", "scheduler", "last_pass"}
        assert all(check["ok"] for check in body["checks"].values())
        assert endpoint.status("/nope") == 404
        assert endpoint.status("/metrics/") == 404

        families = endpoint.families()
        declared = metrics.declared_names()
        assert set(families) == declared, (
            f"missing {sorted(declared - set(families))}, extra {sorted(set(families) - declared)}"
        )

        wait_all_paid(ctx, 5, 120, daemon)

    def charged() -> bool:
        approved = endpoint.value("billing_charges_total", outcome="approved", decline_class="")
        amount = endpoint.value(
            "billing_charge_amount_minor_total", currency="UYU", outcome="approved"
        )
        return approved == 5 and amount == 5 * AMOUNT

    wait_until(charged, 30, "charge counters to show 5 approved", 0.2, daemon.died)
    assert endpoint.value("billing_charges_total", outcome="declined", decline_class="") == 0
    assert (
        endpoint.value("billing_charge_amount_minor_total", currency="USD", outcome="approved") == 0
    )
    assert (endpoint.value("billing_job_runs_total", scheduler_job="billing_pass") or 0) >= 1
    assert endpoint.value("billing_job_errors_total", scheduler_job="billing_pass") == 0
    assert endpoint.value("billing_job_interval_seconds", scheduler_job="billing_pass") == 1
    assert (endpoint.value("billing_runs_total", kind="pass", state="completed") or 0) >= 1
    assert endpoint.value("billing_run_charge_attempts_sum") == 5
    assert endpoint.value("billing_ready") == 1
    [build] = families["billing_build_info"].samples
    assert build.value == 1 and build.labels == {
        "version": billing.__version__,
        "schema_revision": ",".join(sorted(script_heads())),
    }
    assert (endpoint.value("process_resident_memory_bytes") or 0) > 0
    # The DB-derived gauges are read once per 15 s: new subscriptions show within a TTL or so.
    assert endpoint.value("billing_subscriptions", status="active") == 5
    with billing_context(sqlite_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, 8, threads=2)
        wait_until(
            lambda: endpoint.value("billing_subscriptions", status="active") == 8,
            60,
            "billing_subscriptions{status=active} 8",
            0.5,
            daemon.died,
        )
        wait_all_paid(ctx, 8, 120, daemon)
    wait_until(
        lambda: endpoint.value("billing_charges_total", outcome="approved", decline_class="") == 8,
        30,
        "8 approved charges",
        0.2,
        daemon.died,
    )
    assert endpoint.value("billing_unknown_outcomes") == 0
    assert endpoint.value("billing_due_invoice_oldest_age_seconds") == 0
    sigterm_and_check(daemon, 30)


class CuttableProxy:
    """Loopback TCP proxy to PostgreSQL: cut() closes every connection and refuses new ones
    (accepted and closed at once), restore() forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.down = threading.Event()
        self.closed = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv on it
        sock.close()

    def cut(self) -> None:
        self.down.set()
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            self._close(sock)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[tuple[CuttableProxy, str]]:
    """The test's PostgreSQL database (migrated directly) and its URL through the proxy."""
    upgrade(pg_url)
    url = make_url(pg_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    finally:
        proxy.close()


@pytest.mark.postgres
def test_readiness_is_false_while_the_database_is_down_and_true_again_after(
    pg_proxy: tuple[CuttableProxy, str],
    sandbox: Sandbox,
    start_daemon: StartDaemon,
    clients: list[Endpoint],
) -> None:
    proxy, proxied_url = pg_proxy
    daemon, endpoint = start(start_daemon, proxied_url, sandbox, "health-pg", clients)

    def readyz() -> dict[str, Any] | None:
        response = endpoint.get("/readyz")
        return None if response is None else {"status": response.status_code, **response.json()}

    wait_until(lambda: endpoint.status("/readyz") == 200, 60, "/readyz 200", 0.2, daemon.died)
    assert endpoint.value("billing_subscriptions", status="active") == 0  # read once: cached

    proxy.cut()
    down = wait_until(
        lambda: (r := readyz()) and r["status"] == 503 and not r["checks"]["db"]["ok"] and r,
        60,
        "/readyz 503 with the db check false",
        0.2,
        daemon.died,
    )
    assert down["ready"] is False
    assert (
        "unreachable" in down["checks"]["db"]["detail"]
        or "no answer" in down["checks"]["db"]["detail"]
    )
    assert endpoint.status("/healthz") == 200, "alive, though not ready"
    assert endpoint.value("billing_ready") == 0
    assert endpoint.value("billing_subscriptions", status="active") == 0, (
        "the cached gauges keep their last values while the database is gone"
    )
    assert daemon.died() is None

    proxy.restore()
    wait_until(
        lambda: (r := readyz()) and r["status"] == 200 and r,
        90,
        "/readyz 200 after the database came back",
        0.2,
        daemon.died,
    )
    assert daemon.died() is None
    sigterm_and_check(daemon, 30)
