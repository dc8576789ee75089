"""A loopback webhook receiver for `billing demo`: accepts every POST, checks its signature
(as README's recipe does) and keeps what arrived, so the demo can show what it sent."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from billing.domain.notifications import SIGNATURE_HEADER, sign


class WebhookSink:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink._take(self.headers.get(SIGNATURE_HEADER, ""), body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _take(self, header: str, body: bytes) -> None:
        parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
        stamp = parts.get("t", "")
        ok = stamp.isdigit() and sign(self.secret, int(stamp), body) == header
        with self._lock:
            if ok:
                self.received.append(json.loads(body))
            else:
                self.bad_signatures += 1

    def counts(self) -> dict[str, int]:
        """Distinct events received, by type (a redelivery repeats an id: counted once)."""
        with self._lock:
            unique = {item["id"]: item["type"] for item in self.received}
        return dict(sorted(Counter(unique.values()).items()))

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
