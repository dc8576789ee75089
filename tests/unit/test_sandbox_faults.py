"""Fault modes of the simulator, in-process: each proves whether the payment WAS recorded."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from billing.errors import InvalidInput
from billing.sandbox import FaultPlan, PlexoSimulator, SandboxTransport

BASE = "https://api.testing.plexo.com.uy"
AUTH = ("sandbox-client", "sandbox-key")


class FakeSleep:
    """Records sleeps instead of sleeping, so latency tests take no time."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sim() -> PlexoSimulator:
    return PlexoSimulator(seed=42)


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def client(sim: PlexoSimulator, sleep: FakeSleep) -> Iterator[httpx.Client]:
    transport = SandboxTransport(sim, sleep=sleep)
    with httpx.Client(transport=transport, base_url=BASE, auth=AUTH, timeout=10) as http:
        yield http


@pytest.fixture
def token(sim: PlexoSimulator, client: httpx.Client) -> str:
    customer = client.post("/v1/customers", json={"email": "ana@example.uy"}).json()["id"]
    return str(sim.add_instrument(customer, "4444333322221111")["token"])


def charge(client: httpx.Client, token: str, reference: str = "inv-1-a1") -> httpx.Response:
    body = (
        '{"merchantId": 1, "referenceId": "REF", "invoiceNumber": "inv-1",'
        ' "amount": {"total": 590.00, "currency": "UYU"},'
        ' "paymentMethod": {"source": "token", "paymentInstrument": {"token": "TOKEN"}}}'
    )
    content = body.replace("REF", reference).replace("TOKEN", token).encode()
    return client.post("/v1/payments", content=content)


def references(sim: PlexoSimulator) -> list[str]:
    return [p["referenceId"] for p in sim.payments()]


def test_error_before_records_nothing(
    client: httpx.Client, sim: PlexoSimulator, token: str
) -> None:
    sim.faults.queue("error_before")
    response = charge(client, token)
    assert response.status_code == 503
    assert response.json()["type"] == "api-error"
    assert references(sim) == []
    assert charge(client, token).status_code == 200  # the same referenceId may be sent again
    assert references(sim) == ["inv-1-a1"]


@pytest.mark.parametrize("status", [500, 502])
def test_error_after_records_the_payment(
    client: httpx.Client, sim: PlexoSimulator, token: str, status: int
) -> None:
    sim.faults.queue("error_after", status=status)
    response = charge(client, token)
    assert response.status_code == status
    assert response.json()["type"] == "api-error"
    [payment] = sim.payments()
    assert payment["status"] == "approved"
    found = client.get("/v1/payments/query", params={"referenceId": "inv-1-a1"}).json()
    assert [p["id"] for p in found["items"]] == [payment["id"]]


def test_timeout_after_records_then_raises_read_timeout(
    client: httpx.Client, sim: PlexoSimulator, token: str
) -> None:
    sim.faults.queue("timeout_after")
    with pytest.raises(httpx.ReadTimeout):
        charge(client, token)
    assert references(sim) == ["inv-1-a1"]
    assert charge(client, token).status_code == 409  # resending the reference is a duplicate


def test_drop_after_records_then_raises_protocol_error(
    client: httpx.Client, sim: PlexoSimulator, token: str
) -> None:
    sim.faults.queue("drop_after")
    with pytest.raises(httpx.RemoteProtocolError):
        charge(client, token)
    assert references(sim) == ["inv-1-a1"]


def test_rate_limit_records_nothing(client: httpx.Client, sim: PlexoSimulator, token: str) -> None:
    sim.faults.queue("rate_limit", retry_after=7)
    response = charge(client, token)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["type"] == "api-error"
    assert response.json()["status"] == 429
    assert references(sim) == []


def test_latency_sleeps_then_answers(
    client: httpx.Client, sim: PlexoSimulator, token: str, sleep: FakeSleep
) -> None:
    sim.faults.queue("latency", seconds=2.5)
    assert charge(client, token).status_code == 200
    assert sleep.calls == [2.5]
    assert references(sim) == ["inv-1-a1"]


def test_latency_beyond_read_timeout_is_a_recorded_timeout(
    sim: PlexoSimulator, token: str, sleep: FakeSleep
) -> None:
    transport = SandboxTransport(sim, sleep=sleep)
    with httpx.Client(transport=transport, base_url=BASE, auth=AUTH, timeout=3) as http:
        sim.faults.queue("latency", seconds=60)
        with pytest.raises(httpx.ReadTimeout):
            charge(http, token)
    assert sleep.calls == [3.0]
    assert references(sim) == ["inv-1-a1"]


def test_queue_times_and_route_matching(
    client: httpx.Client, sim: PlexoSimulator, token: str
) -> None:
    sim.faults.queue("error_before", times=2)
    sim.faults.queue("rate_limit", route="GET /v1/payments/{id}")
    assert client.get("/v1/customers").status_code == 200  # other routes untouched
    assert [charge(client, token, f"r-{i}").status_code for i in range(3)] == [503, 503, 200]
    payment_id = sim.payments()[0]["id"]
    assert client.get(f"/v1/payments/{payment_id}").status_code == 429
    assert client.get(f"/v1/payments/{payment_id}").status_code == 200


def test_faults_skip_unauthenticated_and_control_requests(
    sim: PlexoSimulator, client: httpx.Client, token: str
) -> None:
    sim.faults.queue("error_before", route="*")
    with httpx.Client(transport=SandboxTransport(sim), base_url=BASE) as anonymous:
        assert anonymous.get("/v1/customers").status_code == 401
        assert anonymous.get("/sandbox/payments").status_code == 200
    assert charge(client, token).status_code == 503


def test_clear_removes_queued_and_probability_faults(
    client: httpx.Client, sim: PlexoSimulator, token: str
) -> None:
    sim.faults.queue("error_before")
    sim.faults.set_probability("drop_after", 1.0)
    sim.faults.clear()
    assert charge(client, token).status_code == 200


def outcome_sequence(seed: int, count: int = 40) -> list[str]:
    sim = PlexoSimulator(seed=seed)
    sim.faults.set_probability("error_before", 0.3)
    with httpx.Client(transport=SandboxTransport(sim), base_url=BASE, auth=AUTH) as http:
        customer = http.post("/v1/customers", json={"email": "a@b.uy"}).json()["id"]
        token = str(sim.add_instrument(customer, "4444333322221111")["token"])
        return [str(charge(http, token, f"r-{i}").status_code) for i in range(count)]


def test_probability_faults_are_deterministic_for_a_seed() -> None:
    first = outcome_sequence(seed=7)
    assert first == outcome_sequence(seed=7)
    assert {"200", "503"} == set(first)
    assert 4 <= first.count("503") <= 20  # about 30 % of 40
    assert first != outcome_sequence(seed=8)


def test_probability_zero_removes_the_rule(sim: PlexoSimulator) -> None:
    sim.faults.set_probability("error_before", 0.5)
    sim.faults.set_probability("error_before", 0)
    assert sim.faults.describe()["probabilities"] == []


def test_faults_over_http_control_routes(
    client: httpx.Client, sim: PlexoSimulator, token: str
) -> None:
    added = client.post("/sandbox/faults", json={"mode": "drop_after", "times": 1})
    assert added.status_code == 200
    assert added.json()["queued"][0]["route"] == "POST /v1/payments"
    with pytest.raises(httpx.RemoteProtocolError):
        charge(client, token, "r-1")
    client.post("/sandbox/faults", json={"mode": "error_before", "probability": 1})
    assert charge(client, token, "r-2").status_code == 503
    assert client.delete("/sandbox/faults").status_code == 204
    assert charge(client, token, "r-3").status_code == 200
    listing = client.get("/sandbox/payments").json()
    assert [p["referenceId"] for p in listing] == ["r-1", "r-3"]
    assert listing[0]["amount"]["total"] == "590.00"
    refused = client.post("/sandbox/faults", json={"mode": "explode"})
    assert refused.status_code == 400


def test_timeout_hang_seconds_come_from_the_plan_or_the_fault() -> None:
    plan = FaultPlan()
    plan.hang_seconds = 0.25
    plan.queue("timeout_after")
    plan.queue("timeout_after", hang_seconds=2)
    first = plan.pick("POST", "/v1/payments")
    second = plan.pick("POST", "/v1/payments")
    assert first is not None and first.params == {"hang_seconds": 0.25}
    assert second is not None and second.params == {"hang_seconds": 2}
    assert plan.pick("POST", "/v1/payments") is None


@pytest.mark.parametrize(
    ("mode", "params"),
    [("boom", {}), ("latency", {"status": 500}), ("error_after", {"status": 418})],
)
def test_bad_fault_requests_are_refused(mode: str, params: dict[str, int]) -> None:
    with pytest.raises(InvalidInput):
        FaultPlan().queue(mode, "POST /v1/payments", 1, **params)
    with pytest.raises(InvalidInput):
        FaultPlan().set_probability("error_before", 1.5)


def test_bare_faults_take_a_status_and_a_body_shape() -> None:
    from billing.sandbox.faults import BARE_BODIES, bare_answer

    plan = FaultPlan()
    plan.queue("bare_after", status=403, body="empty")
    fault = plan.pick("POST", "/v1/payments")
    assert fault is not None
    assert bare_answer(fault) == (403, "text/plain", b"")
    plan.queue("bare_before")
    fault = plan.pick("POST", "/v1/payments")
    assert fault is not None
    status, content_type, body = bare_answer(fault)
    assert (status, content_type) == (404, "text/html") and b"404" in body
    assert set(BARE_BODIES) >= {"html", "empty", "json", "truncated"}


@pytest.mark.parametrize(
    "params", [{"status": 200}, {"status": 600}, {"body": "xml"}, {"body": 3}, {"seconds": 1}]
)
def test_bare_fault_parameters_are_checked(params: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        FaultPlan().queue("bare_after", **params)
