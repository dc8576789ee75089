"""The simulator over real loopback HTTP: sockets dropped, hung, and many clients at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from billing.sandbox import PlexoSimulator, SandboxServer

AUTH = ("sandbox-client", "sandbox-key")


@pytest.fixture
def sim() -> PlexoSimulator:
    return PlexoSimulator()


@pytest.fixture
def server(sim: PlexoSimulator) -> Iterator[SandboxServer]:
    with SandboxServer(sim) as running:
        yield running


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=AUTH, timeout=5) as http:
        yield http


@pytest.fixture
def token(sim: PlexoSimulator, client: httpx.Client) -> str:
    customer = client.post("/v1/customers", json={"email": "ana@example.uy"}).json()["id"]
    added = client.post(
        f"/sandbox/customers/{customer}/instruments", json={"cardNumber": "4444333322221111"}
    )
    return str(added.json()["token"])


def charge(client: httpx.Client, token: str, reference: str = "inv-1-a1") -> httpx.Response:
    body = (
        '{"merchantId": 1, "referenceId": "REF", "invoiceNumber": "inv-1",'
        ' "amount": {"total": 590.00, "currency": "UYU"},'
        ' "paymentMethod": {"source": "token", "paymentInstrument": {"token": "TOKEN"}}}'
    )
    content = body.replace("REF", reference).replace("TOKEN", token).encode()
    return client.post("/v1/payments", content=content)


def test_round_trip_over_http(server: SandboxServer, client: httpx.Client, token: str) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    response = charge(client, token)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json()["status"] == "approved"
    assert client.get("/sandbox/payments").json()[0]["amount"]["total"] == "590.00"
    assert client.delete("/sandbox/faults").status_code == 204
    assert httpx.get(f"{server.url}/v1/customers").status_code == 401


def test_drop_after_closes_the_socket_but_the_payment_exists(
    client: httpx.Client, token: str
) -> None:
    client.post("/sandbox/faults", json={"mode": "drop_after"})
    with pytest.raises(httpx.RemoteProtocolError):
        charge(client, token)
    found = client.get("/v1/payments/query", params={"referenceId": "inv-1-a1"}).json()
    assert found["total"] == 1 and found["items"][0]["status"] == "approved"


def test_timeout_after_hangs_then_the_client_times_out(
    server: SandboxServer, sim: PlexoSimulator, token: str
) -> None:
    sim.faults.hang_seconds = 3.0
    sim.faults.queue("timeout_after")
    with httpx.Client(base_url=server.url, auth=AUTH, timeout=0.3) as impatient:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            charge(impatient, token)
        assert time.monotonic() - started < 2.5  # gave up long before the hang ended
    assert [p["referenceId"] for p in sim.payments()] == ["inv-1-a1"]


def test_timeout_after_closes_unanswered_when_the_client_waits(
    server: SandboxServer, token: str
) -> None:
    with httpx.Client(base_url=server.url, auth=AUTH, timeout=3) as patient:
        patient.post("/sandbox/faults", json={"mode": "timeout_after", "hangSeconds": 0.2})
        with pytest.raises(httpx.RemoteProtocolError):
            charge(patient, token)
        assert len(patient.get("/sandbox/payments").json()) == 1


def test_stop_ends_a_hanging_request(sim: PlexoSimulator) -> None:
    server = SandboxServer(sim).start()
    sim.faults.queue("timeout_after", route="GET /v1/customers", hang_seconds=30)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, f"{server.url}/v1/customers", auth=AUTH, timeout=10)
        time.sleep(0.2)
        started = time.monotonic()
        server.stop()
        with pytest.raises(httpx.RemoteProtocolError):
            pending.result()
    assert time.monotonic() - started < 5


def test_concurrent_payments_from_many_clients(server: SandboxServer, token: str) -> None:
    def batch(worker: int) -> list[int]:
        with httpx.Client(base_url=server.url, auth=AUTH, timeout=10) as http:
            return [charge(http, token, f"w{worker}-{i}").status_code for i in range(25)]

    with ThreadPoolExecutor(8) as pool:
        statuses = [code for codes in pool.map(batch, range(8)) for code in codes]
    assert statuses == [200] * 200
    listing = httpx.get(f"{server.url}/sandbox/payments", timeout=10).json()
    assert len({p["referenceId"] for p in listing}) == 200


def test_serve_process_logs_json_lines_and_stops_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "billing.sandbox", "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            assert process.stderr is not None and process.stdout is not None
            started = json.loads(process.stderr.readline())
            assert started["event"] == "sandbox.started"
            url = started["url"]
            assert httpx.get(f"{url}/v1/payments/query", timeout=5).status_code == 401
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            lines = [json.loads(line) for line in process.stderr.read().splitlines()]
            assert lines == [
                {
                    "event": "sandbox.request",
                    "method": "GET",
                    "path": "/v1/payments/query",
                    "status": 401,
                    "fault": None,
                }
            ]
            assert process.stdout.read() == ""
        finally:
            if process.poll() is None:
                process.kill()
