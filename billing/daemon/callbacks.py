"""The loopback HTTP receiver of Plexo payment callbacks (off unless BILLING_CALLBACK_ENABLED).

`POST /plexo/callbacks/<token>` with a PaymentDto body; any other path, including a wrong
token, is a bare 404 that touches nothing (the token is compared in constant time and never
logged). The work is engine/callbacks.py: the body is a hint confirmed with a GET.
"""

from __future__ import annotations

import hmac
import logging
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

from billing.engine.callbacks import handle_payment_callback
from billing.engine.context import BillingContext
from billing.errors import ListenFailed
from billing.httpserve import LoopbackHTTPServer, ServerThread
from billing.logs import log_event
from billing.settings import CALLBACK_PATH

log = logging.getLogger("billing.daemon")

MAX_BODY = 256 * 1024  # a PaymentDto is a few KB


class _Server(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], ctx: BillingContext, token: str) -> None:
        self.ctx = ctx
        self.path_bytes = f"{CALLBACK_PATH}/{token}".encode()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def _ours(self) -> bool:
        path = self.path.split("?", 1)[0].encode("utf-8", "surrogateescape")
        return hmac.compare_digest(path, self.server.path_bytes)

    def do_POST(self) -> None:
        if not self._ours():
            self._answer(404)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._answer(413 if length > MAX_BODY else 400)
            return
        body = self.rfile.read(length)
        try:
            result = handle_payment_callback(self.server.ctx, body)
        except Exception as exc:  # the database went away: Plexo retries later
            log_event(log, "callback.failed", logging.ERROR, error=type(exc).__name__)
            self._answer(503)
            return
        self._answer(result.http_status)

    def do_GET(self) -> None:
        self._answer(405 if self._ours() else 404)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the path holds the secret token."""


class CallbackReceiver:
    """`with CallbackReceiver(ctx, host, port, token) as receiver:` serves in a thread."""

    def __init__(self, ctx: BillingContext, host: str, port: int, token: str) -> None:
        try:
            self._httpd = _Server((host, port), ctx, token)
        except (OSError, OverflowError) as exc:
            error = exc if isinstance(exc, OSError) else OSError(None, "port out of range")
            raise ListenFailed(
                "the callback receiver", host, port, error, "BILLING_CALLBACK_PORT"
            ) from None
        self._serving = ServerThread(self._httpd, "plexo-callbacks")

    @property
    def port(self) -> int:
        return self._serving.port

    @property
    def base_url(self) -> str:
        return self._serving.url

    def start(self) -> CallbackReceiver:
        self._serving.start()
        return self

    def stop(self) -> None:
        self._serving.stop()

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
