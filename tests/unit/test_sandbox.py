"""The Plexo simulator's REST contract, driven in-process through SandboxTransport."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from billing.clock import TestClock
from billing.errors import ConfigError, Conflict, InvalidInput, NotFound
from billing.sandbox import PlexoSimulator, SandboxTransport
from billing.sandbox.wire import dumps

BASE = "https://api.testing.plexo.com.uy"
AUTH = ("sandbox-client", "sandbox-key")


@pytest.fixture
def clock() -> TestClock:
    return TestClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))


@pytest.fixture
def sim(clock: TestClock) -> PlexoSimulator:
    return PlexoSimulator(clock=clock)


@pytest.fixture
def client(sim: PlexoSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(transport=SandboxTransport(sim), base_url=BASE, auth=AUTH) as http:
        yield http


def make_customer(client: httpx.Client, reference: str = "cust-1") -> str:
    response = client.post(
        "/v1/customers", json={"email": "ana@example.uy", "referenceId": reference}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def card_token(sim: PlexoSimulator, customer_id: str, number: str) -> str:
    return str(sim.add_instrument(customer_id, number)["token"])


def pay_body(token: str, reference: str = "inv-1-a1", total: str = "590.00", **extra: Any) -> bytes:
    """A raw JSON body, so the amount goes over the wire as the exact number text."""
    body = (
        '{"merchantId": 1, "referenceId": "REF", "invoiceNumber": "inv-1",'
        ' "amount": {"total": TOTAL, "currency": "UYU"},'
        ' "paymentMethod": {"source": "token", "paymentInstrument": {"token": "TOKEN"}}}'
    )
    body = body.replace("REF", reference).replace("TOTAL", total).replace("TOKEN", token)
    if extra:
        merged = json.loads(body, parse_float=Decimal)
        merged.update(extra)
        return dumps(merged).encode()
    return body.encode()


def pay(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/v1/payments", content=body, headers={"content-type": "application/json"})


# ----- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, ("sandbox-client", "wrong"), ("other", "sandbox-key")])
def test_api_routes_need_the_client_credentials(
    sim: PlexoSimulator, auth: tuple[str, str] | None
) -> None:
    with httpx.Client(transport=SandboxTransport(sim), base_url=BASE, auth=auth) as http:
        response = http.get("/v1/customers")
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "unauthorized"
    assert body["type"] == "authentication-error"
    assert body["status"] == 401
    assert body["message"] and body["traceId"]


def test_sandbox_control_routes_need_no_auth(sim: PlexoSimulator) -> None:
    with httpx.Client(transport=SandboxTransport(sim), base_url=BASE) as http:
        assert http.get("/sandbox/health").json() == {"status": "ok"}
        assert http.get("/sandbox/payments").json() == []


def test_unknown_route_is_404_and_wrong_method_405(client: httpx.Client) -> None:
    assert client.get("/v1/nothing").status_code == 404
    assert client.patch("/v1/customers").status_code == 405


# ----- customers ----------------------------------------------------------------------------


def test_customer_lifecycle(client: httpx.Client, sim: PlexoSimulator) -> None:
    created = client.post(
        "/v1/customers",
        json={"email": "ana@example.uy", "referenceId": "c-1", "metadata": {"Plan": "gold"}},
    ).json()
    assert re.fullmatch(r"[0-9a-f-]{36}", created["id"])
    assert created["metadata"] == {"Plan": "gold"}  # caller's keys kept as sent

    listed = client.get("/v1/customers").json()
    assert isinstance(listed, list) and [c["id"] for c in listed] == [created["id"]]
    assert client.get("/v1/customers", params={"referenceId": "nope"}).json() == []

    updated = client.put(
        f"/v1/customers/{created['id']}",
        json={"email": "ana@new.uy", "referenceId": "c-1", "firstName": "Ana"},
    )
    assert updated.status_code == 200
    assert updated.json()["firstName"] == "Ana"
    assert client.get(f"/v1/customers/{created['id']}").json()["email"] == "ana@new.uy"

    token = card_token(sim, created["id"], "4444333322221111")
    assert client.delete(f"/v1/customers/{created['id']}").status_code == 204
    missing = client.get(f"/v1/customers/{created['id']}")
    assert missing.status_code == 404 and missing.json()["code"] == "customer-not-found"
    # the deleted customer's token no longer charges
    denied = pay(client, pay_body(token)).json()
    assert denied["status"] == "denied"
    assert denied["transactions"][0]["resultCode"] == "14"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"referenceId": "x"}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b.uy", "metadata": {"k": 1}}, "metadata"),
    ],
)
def test_customer_validation(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = client.post("/v1/customers", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "request-validation-errors"
    assert field in response.json()["params"]
    assert client.get("/v1/customers").json() == []


def test_customer_reference_is_unique_per_client(client: httpx.Client) -> None:
    first = make_customer(client, "c-1")
    other = make_customer(client, "c-2")
    duplicate = client.post("/v1/customers", json={"email": "b@b.uy", "referenceId": "c-1"})
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "duplicate-reference-id"
    clash = client.put(f"/v1/customers/{other}", json={"email": "b@b.uy", "referenceId": "c-1"})
    assert clash.status_code == 409
    same = client.put(f"/v1/customers/{first}", json={"email": "b@b.uy", "referenceId": "c-1"})
    assert same.status_code == 200


def test_pascal_case_input_is_accepted(client: httpx.Client) -> None:
    response = client.post(
        "/v1/customers", json={"Email": "ana@example.uy", "ReferenceId": "c-9", "FirstName": "Ana"}
    )
    assert response.status_code == 200
    assert response.json()["referenceId"] == "c-9"
    assert response.json()["firstName"] == "Ana"


def test_unknown_customer_is_404(client: httpx.Client) -> None:
    for method in ("GET", "DELETE"):
        response = client.request(method, "/v1/customers/3fa85f64-5717-4562-b3fc-2c963f66afa6")
        assert response.status_code == 404
        assert response.json()["code"] == "customer-not-found"


# ----- sessions and instruments -------------------------------------------------------------


def test_tokenization_session_to_instrument(client: httpx.Client, sim: PlexoSimulator) -> None:
    customer = make_customer(client)
    session = client.post(
        "/v1/sessions",
        json={
            "merchantId": 1,
            "type": "tokenization",
            "customerId": customer,
            "referenceId": "setup-1",
            "settings": {"tokenization": {"type": "store"}},
        },
    ).json()
    assert session["status"] == "open"
    assert session["actions"] == [
        {
            "rel": "REDIRECT",
            "href": f"http://api.testing.plexo.com.uy/sandbox/checkout/{session['id']}",
            "method": "GET",
        }
    ]
    assert session["expiresAt"] == "2026-03-10T12:30:00.000Z"
    page = client.get(f"/sandbox/checkout/{session['id']}")
    assert page.status_code == 200 and "Plexo sandbox checkout" in page.text
    assert "4000000000000010" in page.text  # the test-card table

    instrument = sim.complete_tokenization(session["id"], "4444333322221111", 11, 2031)
    assert re.fullmatch(r"[0-9a-f]{32}", instrument["token"])
    assert client.get(f"/v1/sessions/{session['id']}").json()["status"] == "completed"

    listed = client.get(f"/v1/customers/{customer}/payment-instruments").json()
    assert len(listed) == 1
    item = listed[0]
    assert item["token"] == instrument["token"]
    assert item["status"] == "active"
    assert item["cardName"] == "444433XXXXXX1111"
    assert (item["bin"], item["last4"], item["brand"], item["cardType"]) == (
        "444433",
        "1111",
        "visa",
        "credit",
    )
    assert (item["expMonth"], item["expYear"]) == (11, 2031)
    assert "4444333322221111" not in json.dumps(listed)

    with pytest.raises(Conflict, match="already completed"):
        sim.complete_tokenization(session["id"], "4444333322221111")

    gone = client.delete(f"/v1/customers/{customer}/payment-instruments/{instrument['token']}")
    assert gone.status_code == 204
    assert client.get(f"/v1/customers/{customer}/payment-instruments").json() == []
    again = client.delete(f"/v1/customers/{customer}/payment-instruments/{instrument['token']}")
    assert again.status_code == 404


def test_session_expires_after_thirty_minutes(
    client: httpx.Client, sim: PlexoSimulator, clock: TestClock
) -> None:
    customer = make_customer(client)
    session = client.post(
        "/v1/sessions", json={"type": "tokenization", "customerId": customer, "referenceId": "s"}
    ).json()
    clock.advance(timedelta(minutes=31))
    assert client.get(f"/v1/sessions/{session['id']}").json()["status"] == "expired"
    with pytest.raises(InvalidInput, match="expired"):
        sim.complete_tokenization(session["id"], "4444333322221111")


def test_session_validation(client: httpx.Client) -> None:
    response = client.post("/v1/sessions", json={"type": "checkout"})
    assert response.status_code == 400
    assert set(response.json()["params"]) >= {"type", "customerId", "referenceId"}
    unknown = client.post(
        "/v1/sessions",
        json={"type": "tokenization", "customerId": "nobody", "referenceId": "s"},
    )
    assert unknown.status_code == 404


def test_card_checks_at_tokenization(client: httpx.Client, sim: PlexoSimulator) -> None:
    customer = make_customer(client)
    with pytest.raises(InvalidInput, match="Luhn") as bad:
        sim.add_instrument(customer, "4444333322221112")
    assert "4444333322221112" not in str(bad.value)
    with pytest.raises(InvalidInput, match="expired"):
        sim.add_instrument(customer, "4444333322221111", exp_month=2, exp_year=2026)
    with pytest.raises(NotFound):
        sim.add_instrument("nobody", "4444333322221111")
    # any other Luhn-valid number approves
    token = card_token(sim, customer, "4111111111111111")
    assert pay(client, pay_body(token)).json()["status"] == "approved"


def test_checkout_form_completes_the_session(client: httpx.Client) -> None:
    customer = make_customer(client)
    session = client.post(
        "/v1/sessions", json={"type": "tokenization", "customerId": customer, "referenceId": "s"}
    ).json()
    saved = client.post(
        f"/sandbox/checkout/{session['id']}",
        data={"cardNumber": "5555444433332222", "expMonth": "1", "expYear": "2029"},
    )
    assert saved.status_code == 200
    assert "555544XXXXXX2222" in saved.text and "5555444433332222</code></td><td>mastercard" in (
        saved.text
    )  # the number appears only in the static test-card table
    [instrument] = client.get(f"/v1/customers/{customer}/payment-instruments").json()
    assert instrument["brand"] == "mastercard"


# ----- payments -----------------------------------------------------------------------------

OUTCOMES = [
    ("4444333322221111", "approved", "0"),
    ("5555444433332222", "approved", "0"),
    ("4507990000004905", "approved", "0"),
    ("5588220000000006", "approved", "0"),
    ("4000000000000010", "denied", "51"),
    ("4000000000000002", "denied", "05"),
    ("4000000000000069", "denied", "54"),
    ("4000000000000119", "denied", "43"),
    ("4000000000000028", "denied", "96"),
    ("4000000000000168", "denied", "R1"),
]


@pytest.mark.parametrize(("number", "status", "code"), OUTCOMES)
def test_card_outcomes(
    client: httpx.Client, sim: PlexoSimulator, number: str, status: str, code: str
) -> None:
    customer = make_customer(client)
    token = card_token(sim, customer, number)
    response = pay(client, pay_body(token, customerId=customer))
    assert response.status_code == 200
    payment = response.json()
    assert payment["status"] == status
    [transaction] = payment["transactions"]
    assert transaction["type"] == "purchase"
    assert transaction["status"] == status
    assert transaction["resultCode"] == code
    assert sim.payments()[0]["status"] == status


def test_payment_dto_shape(client: httpx.Client, sim: PlexoSimulator) -> None:
    customer = make_customer(client)
    token = card_token(sim, customer, "4507990000004905")
    payment = pay(client, pay_body(token, customerId=customer)).json()
    assert re.fullmatch(r"[0-9a-f]{24}", payment["id"])
    assert re.fullmatch(r"[0-9a-f-]{36}", payment["token"])
    assert payment["referenceId"] == "inv-1-a1"
    assert payment["invoiceNumber"] == "inv-1"
    assert payment["customerId"] == customer
    assert payment["createdAt"] == "2026-03-10T12:00:00.000Z"
    assert payment["processedAt"] == payment["updatedAt"] == payment["createdAt"]
    card = payment["paymentMethod"]["card"]
    assert payment["paymentMethod"]["type"] == "card"
    assert (card["bin"], card["last4"], card["token"], card["type"]) == (
        "450799",
        "4905",
        token,
        "debit",
    )
    assert payment["transactions"][0]["parentId"] == payment["token"]
    assert payment["transactions"][0]["referenceId"] == "inv-1-a1"


def test_amount_is_exact_decimal_end_to_end(client: httpx.Client, sim: PlexoSimulator) -> None:
    customer = make_customer(client)
    token = card_token(sim, customer, "4444333322221111")
    response = pay(client, pay_body(token, total="1234567.89"))
    assert b'"total":1234567.89' in response.content
    assert sim.payments()[0]["amount"] == {
        "currency": "UYU",
        "total": "1234567.89",
        "details": None,
    }
    pay(client, pay_body(token, reference="r-2", total="590"))
    assert sim.payments()[1]["amount"]["total"] == "590.00"
    fetched = client.get(f"/v1/payments/{sim.payments()[1]['id']}")
    assert fetched.json(parse_float=Decimal)["amount"]["total"] == Decimal("590.00")


@pytest.mark.parametrize(
    ("total", "currency"),
    [("0", "UYU"), ("-5.00", "UYU"), ("10.001", "UYU"), ('"10.00"', "UYU"), ("10.00", "EUR")],
)
def test_amount_validation(
    client: httpx.Client, sim: PlexoSimulator, total: str, currency: str
) -> None:
    token = card_token(sim, make_customer(client), "4444333322221111")
    body = pay_body(token, total=total).replace(b'"UYU"', f'"{currency}"'.encode())
    response = pay(client, body)
    assert response.status_code == 400
    envelope = response.json()
    assert envelope["code"] == "request-validation-errors"
    assert envelope["type"] == "invalid-request-error"
    assert set(envelope["params"]) & {"amount.total", "amount.currency"}
    assert sim.payments() == []


def test_payment_requires_reference_invoice_and_token(
    client: httpx.Client, sim: PlexoSimulator
) -> None:
    response = client.post("/v1/payments", json={"merchantId": 1, "paymentMethod": {}})
    assert response.status_code == 400
    assert set(response.json()["params"]) >= {
        "referenceId",
        "invoiceNumber",
        "amount",
        "paymentMethod.paymentInstrument.token",
    }
    bad_json = pay(client, b"{not json")
    assert bad_json.status_code == 400
    assert sim.payments() == []


def test_merchant_must_match(client: httpx.Client, sim: PlexoSimulator) -> None:
    token = card_token(sim, make_customer(client), "4444333322221111")
    body = pay_body(token).replace(b'"merchantId": 1', b'"merchantId": 2')
    response = pay(client, body)
    assert response.status_code == 400
    assert response.json()["code"] == "merchant-not-found"
    assert sim.payments() == []


def test_raw_card_needs_pci(client: httpx.Client, sim: PlexoSimulator) -> None:
    body = pay_body("x", paymentMethod={"source": "card", "card": {"number": "4444333322221111"}})
    response = pay(client, body)
    assert response.status_code == 400
    assert response.json()["code"] == "pci-certification-required"
    assert sim.payments() == []


def test_pascal_case_payment_and_flat_token(client: httpx.Client, sim: PlexoSimulator) -> None:
    token = card_token(sim, make_customer(client), "4444333322221111")
    body = (
        '{"MerchantId": 1, "ReferenceId": "p-1", "InvoiceNumber": "i-1",'
        ' "Amount": {"Total": 147.5, "Currency": "USD"},'
        ' "PaymentMethod": {"Source": "token", "Token": "TOKEN"}}'
    ).replace("TOKEN", token)
    response = pay(client, body.encode())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    assert sim.payments()[0]["amount"] == {"currency": "USD", "total": "147.50", "details": None}


def test_unknown_token_or_other_customers_token_is_invalid_card(
    client: httpx.Client, sim: PlexoSimulator
) -> None:
    ana = make_customer(client, "ana")
    bob = make_customer(client, "bob")
    token = card_token(sim, ana, "4444333322221111")
    unknown = pay(client, pay_body("0" * 32, reference="r-1")).json()
    foreign = pay(client, pay_body(token, reference="r-2", customerId=bob)).json()
    for payment in (unknown, foreign):
        assert payment["status"] == "denied"
        assert payment["transactions"][0]["resultCode"] == "14"
        assert payment["transactions"][0]["resultMessage"] == "invalid_card"
    assert len(sim.payments()) == 2


def test_stored_card_past_expiry_declines_54(
    client: httpx.Client, sim: PlexoSimulator, clock: TestClock
) -> None:
    customer = make_customer(client)
    token = str(
        sim.add_instrument(customer, "4444333322221111", exp_month=4, exp_year=2026)["token"]
    )
    assert pay(client, pay_body(token, reference="r-1")).json()["status"] == "approved"
    clock.set(datetime(2026, 5, 1, tzinfo=UTC))
    late = pay(client, pay_body(token, reference="r-2")).json()
    assert late["status"] == "denied"
    assert late["transactions"][0]["resultCode"] == "54"


def test_decline_style_error_answers_402_and_still_records(
    client: httpx.Client, sim: PlexoSimulator
) -> None:
    sim.decline_style = "error"
    token = card_token(sim, make_customer(client), "4000000000000010")
    response = pay(client, pay_body(token))
    assert response.status_code == 402
    envelope = response.json()
    assert envelope["code"] == "payment-declined"
    assert envelope["type"] == "card-error"
    assert envelope["status"] == 402
    assert envelope["declineCode"] == "insufficient_funds"
    assert envelope["message"]
    [recorded] = sim.payments()
    assert recorded["status"] == "denied"
    assert recorded["referenceId"] == "inv-1-a1"


def test_duplicate_reference_rejected_by_default(client: httpx.Client, sim: PlexoSimulator) -> None:
    token = card_token(sim, make_customer(client), "4444333322221111")
    assert pay(client, pay_body(token)).status_code == 200
    again = pay(client, pay_body(token, total="10.00"))
    assert again.status_code == 409
    assert again.json()["code"] == "duplicate-reference-id"
    assert again.json()["type"] == "invalid-request-error"
    assert again.json()["status"] == 409
    assert len(sim.payments()) == 1


def test_duplicate_reference_replays_original_in_replay_mode(
    client: httpx.Client, sim: PlexoSimulator
) -> None:
    sim.duplicate_mode = "replay"
    token = card_token(sim, make_customer(client), "4444333322221111")
    first = pay(client, pay_body(token)).json()
    again = pay(client, pay_body(token, total="10.00"))
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["amount"]["total"] == 590
    assert len(sim.payments()) == 1


@pytest.mark.parametrize(
    ("number", "settled", "code"),
    [
        ("4000000000000259", "approved", "0"),
        ("4000000000000267", "denied", "51"),
    ],
)
def test_pending_settles_after_polls(
    clock: TestClock, number: str, settled: str, code: str
) -> None:
    sim = PlexoSimulator(clock=clock, pending_polls=2)
    with httpx.Client(transport=SandboxTransport(sim), base_url=BASE, auth=AUTH) as client:
        token = card_token(sim, make_customer(client), number)
        created = pay(client, pay_body(token)).json()
        assert created["status"] == "pending"
        assert created["processedAt"] is None
        assert created["transactions"][0]["resultCode"] is None
        assert sim.payments()[0]["status"] == "pending"  # the listing is not a poll
        first = client.get(f"/v1/payments/{created['id']}").json()
        assert first["status"] == "pending"
        clock.advance(timedelta(seconds=5))
        second = client.get("/v1/payments/query", params={"referenceId": "inv-1-a1"}).json()
        [item] = second["items"]
        assert item["status"] == settled
        assert item["transactions"][0]["resultCode"] == code
        assert item["processedAt"] == "2026-03-10T12:00:05.000Z"
        assert client.get(f"/v1/payments/{created['id']}").json()["status"] == settled


def test_get_unknown_payment_is_404(client: httpx.Client) -> None:
    response = client.get("/v1/payments/6305dd2d000d6ed5d1ecf79b")
    assert response.status_code == 404
    assert response.json()["code"] == "payment-not-found"


def test_query_filters_and_pages(client: httpx.Client, sim: PlexoSimulator) -> None:
    ana = make_customer(client, "ana")
    good = card_token(sim, ana, "4444333322221111")
    bad = card_token(sim, ana, "4000000000000002")
    for index in range(5):
        pay(client, pay_body(good, reference=f"ok-{index}", customerId=ana))
    pay(client, pay_body(bad, reference="ko-1"))

    everything = client.get("/v1/payments/query", params={"merchantId": "1"}).json()
    assert (everything["page"], everything["size"], everything["total"]) == (1, 20, 6)
    by_ref = client.get("/v1/payments/query", params={"referenceId": "ok-3"}).json()
    assert [p["referenceId"] for p in by_ref["items"]] == ["ok-3"]
    denied = client.get("/v1/payments/query", params={"status": "denied"}).json()
    assert [p["referenceId"] for p in denied["items"]] == ["ko-1"]
    mine = client.get("/v1/payments/query", params={"customerId": ana}).json()
    assert mine["total"] == 5
    page2 = client.get("/v1/payments/query", params={"page": "2", "size": "2"}).json()
    assert [p["referenceId"] for p in page2["items"]] == ["ok-2", "ok-3"]
    assert page2["total"] == 6
    nothing = client.get("/v1/payments/query", params={"referenceId": "missing"}).json()
    assert nothing == {"items": [], "page": 1, "size": 20, "total": 0}
    other = client.get("/v1/payments/query", params={"merchantId": "7"})
    assert other.status_code == 400 and other.json()["code"] == "merchant-not-found"
    assert client.get("/v1/payments/query", params={"size": "0"}).status_code == 400


def test_reset_forgets_everything(client: httpx.Client, sim: PlexoSimulator) -> None:
    token = card_token(sim, make_customer(client), "4444333322221111")
    pay(client, pay_body(token))
    sim.faults.queue("error_before")
    assert client.post("/sandbox/reset").status_code == 204
    assert sim.payments() == []
    assert client.get("/v1/customers").json() == []
    assert sim.faults.describe()["queued"] == []


def test_sandbox_http_helpers(client: httpx.Client) -> None:
    customer = make_customer(client)
    added = client.post(
        f"/sandbox/customers/{customer}/instruments", json={"cardNumber": "4000000000000119"}
    )
    assert added.status_code == 200
    assert added.json()["last4"] == "0119"
    assert "4000000000000119" not in added.text
    session = client.post(
        "/v1/sessions", json={"type": "tokenization", "customerId": customer, "referenceId": "s"}
    ).json()
    completed = client.post(
        f"/sandbox/sessions/{session['id']}/complete",
        json={"cardNumber": "5588220000000006", "expMonth": 6, "expYear": 2030},
    )
    assert completed.status_code == 200 and completed.json()["brand"] == "mastercard"
    assert len(client.get(f"/v1/customers/{customer}/payment-instruments").json()) == 2
    bad = client.post(f"/sandbox/customers/{customer}/instruments", json={"cardNumber": "12"})
    assert bad.status_code == 400
    config = client.post("/sandbox/config", json={"duplicateMode": "replay", "pendingPolls": 3})
    assert config.json()["duplicateMode"] == "replay" and config.json()["pendingPolls"] == 3
    assert client.post("/sandbox/config", json={"declineStyle": "loud"}).status_code == 400


def test_ctor_refuses_unknown_modes() -> None:
    with pytest.raises(ConfigError, match="duplicate_mode"):
        PlexoSimulator(duplicate_mode="ignore")
    with pytest.raises(ConfigError, match="decline_style"):
        PlexoSimulator(decline_style="402")
    with pytest.raises(ConfigError, match="pending_polls"):
        PlexoSimulator(pending_polls=-1)
