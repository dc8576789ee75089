"""The simulator as a real HTTP server on loopback (stdlib ThreadingHTTPServer, no framework).

Faults misbehave on the socket: "drop" shuts the connection down without writing a byte;
"timeout" holds the connection `hang_seconds` (cut short by `stop()`), then closes it unanswered.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from billing.errors import ListenFailed
from billing.httpserve import LoopbackHTTPServer, ServerThread
from billing.sandbox.simulator import PlexoSimulator, SimRequest, SimResponse

_log_lock = threading.Lock()


def _log(record: dict[str, Any]) -> None:
    """One JSON line on stderr (no card data: only method, path, status, fault)."""
    line = json.dumps(record, separators=(",", ":"))
    with _log_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _HTTPServer(LoopbackHTTPServer):
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        simulator: PlexoSimulator,
        log_requests: bool,
    ) -> None:
        self.simulator = simulator
        self.log_requests = log_requests
        self.stopping = threading.Event()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: pooled clients reuse connections under load
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus delayed ACK
    # add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        request = SimRequest(
            method=self.command,
            path=unquote(split.path),
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        response = self.server.simulator.handle(request)
        if response.delay:
            self.server.stopping.wait(response.delay)
        if response.fault == "timeout":
            self.server.stopping.wait(response.hang_seconds)
            self._close_unanswered()
        elif response.fault == "drop":
            self._close_unanswered()
        else:
            self._write(response)
        if self.server.log_requests:
            _log(
                {
                    "event": "sandbox.request",
                    "method": self.command,
                    "path": split.path,
                    "status": response.status,
                    "fault": response.fault,
                }
            )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def _write(self, response: SimResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.status != 204:
            self.wfile.write(response.body)

    def _close_unanswered(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have gone away first
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib access log; `serve()` writes JSON lines instead."""


class SandboxServer:
    """Run a simulator on loopback in a daemon thread: `with SandboxServer(sim) as server:`."""

    def __init__(
        self,
        simulator: PlexoSimulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_requests: bool = False,
    ) -> None:
        self.simulator = simulator
        self._httpd = _HTTPServer((host, port), simulator, log_requests)
        self._serving = ServerThread(self._httpd, "plexo-sandbox", poll_interval=0.1)
        self._started = False

    @property
    def host(self) -> str:
        return self._serving.host

    @property
    def port(self) -> int:
        return self._serving.port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234 (the real port when 0 was asked for)."""
        return self._serving.url

    def start(self) -> SandboxServer:
        if not self._started:
            self._started = True
            self.simulator.callbacks.start()
            self._serving.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end any hanging fault and callback retry, close the listening socket."""
        self._httpd.stopping.set()
        self.simulator.callbacks.stop()
        self._serving.stop()
        self._started = False

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(host: str, port: int, simulator: PlexoSimulator) -> None:
    """Serve until SIGTERM or SIGINT, logging one JSON line per request to stderr.

    The first line is `{"event":"sandbox.started","url":...}` so that a caller who asked for
    port 0 learns the real port.
    """
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        server = SandboxServer(simulator, host, port, log_requests=True)
    except (OSError, OverflowError) as exc:  # in use, not an address of ours, out of range
        error = exc if isinstance(exc, OSError) else OSError(None, "port out of range")
        raise ListenFailed("the sandbox", host, port, error, "--host/--port") from None
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        _log({"event": "sandbox.started", "url": server.url})
        stop.wait()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
