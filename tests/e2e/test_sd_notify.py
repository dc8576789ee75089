"""The daemon speaks sd_notify to a socket the test owns, as systemd's Type=notify expects:
READY once it is up, STATUS with the last pass's counts, WATCHDOG while it runs, STOPPING on
SIGTERM (issue 7, item 5, in part)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sandbox, StartDaemon, billing_context, seed_due

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    try:
        yield sock, path
    finally:
        sock.close()


def _collect(sock: socket.socket, seconds: float, until: str | None = None) -> list[str]:
    """Every datagram for `seconds` (or until one contains `until`), split into lines."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        lines.extend(data.splitlines())
        if until is not None and until in data:
            break
    return lines


def test_ready_status_watchdog_and_stopping(
    sandbox: Sandbox,
    e2e_db_url: str,
    start_daemon: StartDaemon,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    with billing_context(e2e_db_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, 3)
    daemon = start_daemon(e2e_db_url, sandbox.url, "notify-node", NOTIFY_SOCKET=path)
    seen = _collect(sock, 20, until="WATCHDOG=1")
    assert seen and seen[0] == "READY=1", seen
    statuses = [line for line in seen if line.startswith("STATUS=last pass")]
    assert statuses and "3 charged (3 approved" in statuses[0], seen
    assert "WATCHDOG=1" in seen, seen
    daemon.popen.send_signal(signal.SIGTERM)
    after = _collect(sock, 15, until="STOPPING=1")
    assert "STOPPING=1" in after, after
    assert daemon.popen.wait(timeout=20) == 0
