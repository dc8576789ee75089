"""A PostgreSQL server that accepts the TCP connection and never answers must not hang a job
forever: the engine bounds the connect (libpq's own default is to wait indefinitely)."""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy.exc import OperationalError

from billing.store.db import make_engine


def test_a_server_that_never_answers_fails_the_connect_within_its_timeout() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or writes
    port = silent.getsockname()[1]
    engine = make_engine(f"postgresql://billing:pw@127.0.0.1:{port}/billing")
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError), engine.connect():
            pass
    finally:
        engine.dispose()
        silent.close()
    waited = time.monotonic() - started
    assert 5 < waited < 60, waited  # connect_timeout=10 (pool_pre_ping does not retry a connect)


def test_connect_parameters_in_the_url_win_over_the_defaults(pg_admin_url: str) -> None:
    def dsn(url: str) -> dict[str, str]:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                text: str = raw.info.dsn  # type: ignore[attr-defined]
        finally:
            engine.dispose()
        return dict(part.split("=", 1) for part in text.split())

    defaults = dsn(pg_admin_url)
    assert defaults["connect_timeout"] == "10" and defaults["keepalives"] == "1"
    sep = "&" if "?" in pg_admin_url else "?"
    assert dsn(f"{pg_admin_url}{sep}connect_timeout=3")["connect_timeout"] == "3"
