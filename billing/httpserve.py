"""A small threaded HTTP server run in a daemon thread: the daemon's endpoints, the callback
receiver and the sandbox share this start/stop (stdlib only, no framework)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that speaks IPv6 when given an IPv6 address; handler threads never
    keep the process alive."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class ServerThread:
    """`serve_forever` of `httpd` in a named daemon thread; stop() also closes the socket."""

    def __init__(self, httpd: ThreadingHTTPServer, name: str, poll_interval: float = 0.2) -> None:
        self.httpd = httpd
        self.name = name
        self.poll_interval = poll_interval  # how soon stop() is noticed
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """e.g. http://127.0.0.1:41234 (the real port when 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.httpd.serve_forever,
                kwargs={"poll_interval": self.poll_interval},
                name=self.name,
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
