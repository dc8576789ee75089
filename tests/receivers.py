"""Loopback receivers for notification tests: a webhook endpoint and an SMTP server.

The webhook receiver answers 500 to its first `fail_next` requests, and while `hold` is
cleared it keeps each request waiting (a daemon can be killed mid-delivery).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class WebhookReceiver:
    url: str = ""
    fail_next: int = 0
    requests: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [str(r.json["id"]) for r in self.accepted]


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.hold.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            item = Received(dict(self.headers.items()), self.rfile.read(length))
            with receiver.lock:
                receiver.requests.append(item)
            receiver.hold.wait(60)
            with receiver.lock:
                failing = receiver.fail_next > 0
                if failing:
                    receiver.fail_next -= 1
                else:
                    receiver.accepted.append(item)
            try:
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:  # the sender died while we held it
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/billing"
    try:
        yield receiver
    finally:
        receiver.hold.set()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SmtpSink:
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    logins: int = 0


@contextmanager
def smtp_sink(
    tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None
) -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on loopback; what arrives is parsed into `messages`.

    With `tls` it requires STARTTLS; with `login` it requires that user and password."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    sink = SmtpSink(port=free_port())

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            login is not None
            and isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == login
        )
        if ok:
            sink.logins += 1
        return AuthResult(success=ok)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            sink.messages.append(parsed)
            sink.recipients.append(list(envelope.rcpt_tos))
            return "250 OK"

    options: dict[str, Any] = {}
    if tls is not None:
        options.update(tls_context=tls, require_starttls=True)
    if login is not None:
        options.update(authenticator=authenticate, auth_require_tls=tls is not None)
    controller = Controller(Handler(), hostname="127.0.0.1", port=sink.port, **options)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 and the certificate file a client should trust."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert
