"""PlexoClient against canned Plexo answers (httpx.MockTransport), shaped as plexo-api.md."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from billing.clock import TestClock
from billing.errors import Conflict, InvalidInput, NotFound
from billing.plexo import (
    AuthenticationFailed,
    ChargeOutcome,
    CustomerPayload,
    DuplicateReference,
    GatewayUnavailable,
    PaymentNotFound,
    PaymentRequest,
    PlexoClient,
    PlexoError,
    PlexoNotFound,
    ValidationRejected,
)

BASE = "https://api.testing.plexo.com.uy"
CLIENT_ID = "4217"
API_KEY = "sk_test_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
MERCHANT = 12345
TOKEN = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
CUSTOMER_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
PAYMENT_ID = "6305dd2d000d6ed5d1ecf79b"
REF = "INV-7Q2-000042-1"
NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport whose answer a test sets, keeping every request it saw."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.handler: Handler = lambda request: httpx.Response(500)
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        with self.lock:
            self.requests.append(request)
        return self.handler(request)

    def answer(self, status: int, body: Any = None, **kwargs: Any) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            if body is None:
                return httpx.Response(status, **kwargs)
            if isinstance(body, bytes):
                return httpx.Response(status, content=body, **kwargs)
            return httpx.Response(status, json=body, **kwargs)

        self.handler = handler

    def fail(self, exc: Exception) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise exc

        self.handler = handler

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_json(self) -> Any:
        return json.loads(self.last.content, parse_float=Decimal)


class Timings:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, float]] = []

    def __call__(self, route: str, status: int | None, seconds: float) -> None:
        self.calls.append((route, status, seconds))


@pytest.fixture
def gateway() -> Recorder:
    return Recorder()


@pytest.fixture
def timings() -> Timings:
    return Timings()


@pytest.fixture
def client(gateway: Recorder, timings: Timings) -> Iterator[PlexoClient]:
    with PlexoClient(
        BASE,
        CLIENT_ID,
        API_KEY,
        MERCHANT,
        transport=httpx.MockTransport(gateway),
        on_response=timings,
        clock=TestClock(NOW),
    ) as plexo:
        yield plexo


def payment_request(
    amount_minor: int = 59050, currency: str = "UYU", **changes: Any
) -> PaymentRequest:
    fields: dict[str, Any] = {
        "reference_id": REF,
        "invoice_number": "INV-7Q2-000042",
        "customer_id": CUSTOMER_ID,
        "amount_minor": amount_minor,
        "currency": currency,
        "token": TOKEN,
        "metadata": {"subscription": "42", "period": "2025-07-01"},
    }
    fields.update(changes)
    return PaymentRequest(**fields)


def payment_dto(status: str, **changes: Any) -> dict[str, Any]:
    """A PaymentDto as recorded from the testing sandbox (trimmed)."""
    result_code = "0" if status == "approved" else "96"
    body: dict[str, Any] = {
        "id": PAYMENT_ID,
        "token": "7d2b1c3e-0000-4000-8000-000000000001",
        "referenceId": REF,
        "status": status,
        "processingMethod": "api",
        "createdAt": "2025-07-01T12:00:00Z",
        "merchant": {"id": MERCHANT, "name": "ACME"},
        "paymentMethod": {
            "id": "mastercard",
            "type": "card",
            "card": {"bin": "555555", "last4": "4444", "token": TOKEN, "type": "credit"},
        },
        "installments": 1,
        "amount": {"currency": "UYU", "total": 590.50},
        "transactions": [
            {
                "id": "tx1",
                "type": "purchase",
                "status": "approved" if status == "approved" else "denied",
                "resultCode": result_code,
                "resultMessage": "Aprobada" if status == "approved" else "Denegada",
                "referenceId": REF,
            }
        ],
    }
    body.update(changes)
    return body


def envelope(code: str, status: int, **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "message": extra.pop("message", f"{code} happened"),
        "type": extra.pop("type", "invalid-request-error"),
        "status": status,
        "traceId": "0HMVG9K3R5T4J:00000001",
        **extra,
    }


# -- request shape -------------------------------------------------------------------------------


def test_payment_body_and_headers_are_exact(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, payment_dto("approved"))
    client.create_payment(payment_request())
    request = gateway.last
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v1/payments"
    expected = base64.b64encode(f"{CLIENT_ID}:{API_KEY}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "plexo-billing/0.1"
    assert b'"total": 590.50' in request.content
    assert b"590.5," not in request.content
    assert gateway.last_json() == {
        "merchantId": MERCHANT,
        "referenceId": REF,
        "invoiceNumber": "INV-7Q2-000042",
        "customerId": CUSTOMER_ID,
        "amount": {"total": Decimal("590.50"), "currency": "UYU"},
        "paymentMethod": {"source": "token", "paymentInstrument": {"token": TOKEN}},
        "capture": {"method": "automatic"},
        "installments": 1,
        "metadata": {"subscription": "42", "period": "2025-07-01"},
    }


@pytest.mark.parametrize(
    ("minor", "currency", "wire"),
    [
        (100, "UYU", b'"total": 1.00'),
        (1, "USD", b'"total": 0.01'),
        (59000, "UYU", b'"total": 590.00'),
    ],
)
def test_amount_is_major_units_with_currency_decimals(
    client: PlexoClient, gateway: Recorder, minor: int, currency: str, wire: bytes
) -> None:
    gateway.answer(200, payment_dto("approved"))
    client.create_payment(payment_request(minor, currency))
    assert wire in gateway.last.content
    assert f'"currency": "{currency}"'.encode() in gateway.last.content


def test_custom_user_agent(gateway: Recorder) -> None:
    gateway.answer(200, [])
    with PlexoClient(
        BASE, CLIENT_ID, API_KEY, MERCHANT, transport=httpx.MockTransport(gateway), user_agent="x/9"
    ) as plexo:
        plexo.verify_credentials()
    assert gateway.last.headers["User-Agent"] == "x/9"


# -- create_payment: 2xx PaymentDto ------------------------------------------------------------


@pytest.mark.parametrize("http_status", [200, 201])
def test_approved(client: PlexoClient, gateway: Recorder, http_status: int) -> None:
    gateway.answer(http_status, payment_dto("approved"))
    outcome = client.create_payment(payment_request())
    assert outcome == ChargeOutcome(
        "approved", payment_id=PAYMENT_ID, status="approved", http_status=http_status
    )


def test_denied_takes_code_and_message_from_last_transaction(
    client: PlexoClient, gateway: Recorder
) -> None:
    body = payment_dto("denied")
    body["transactions"].append(
        {"type": "purchase", "status": "denied", "resultCode": "51", "resultMessage": "Fondos"}
    )
    gateway.answer(200, body)
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "declined"
    assert outcome.payment_id == PAYMENT_ID
    assert outcome.status == "denied"
    assert outcome.decline_code == "51"
    assert outcome.decline_message == "Fondos"
    assert outcome.not_charged is False


@pytest.mark.parametrize("status", ["denied", "failed", "cancelled", "expired", "DENIED"])
def test_declined_statuses(client: PlexoClient, gateway: Recorder, status: str) -> None:
    gateway.answer(200, payment_dto(status))
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "declined"
    assert outcome.status == status.lower()
    assert outcome.decline_code == "96"
    assert outcome.decline_message == "Denegada"


def test_decline_code_from_envelope_field_when_no_transactions(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(200, payment_dto("denied", transactions=[], declineCode="insufficient_funds"))
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.decline_code) == ("declined", "insufficient_funds")


def test_cancelled_payment_reports_refused_transaction_not_the_cancellation(
    client: PlexoClient, gateway: Recorder
) -> None:
    body = payment_dto("cancelled")
    body["transactions"].append({"type": "cancellation", "status": "approved", "resultCode": "0"})
    gateway.answer(200, body)
    assert client.create_payment(payment_request()).decline_code == "96"


@pytest.mark.parametrize("status", ["pending", "created", "authorized"])
def test_pending_statuses(client: PlexoClient, gateway: Recorder, status: str) -> None:
    gateway.answer(200, payment_dto(status))
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.payment_id, outcome.status) == ("pending", PAYMENT_ID, status)


@pytest.mark.parametrize("status", ["refunded", "partially-refunded"])
def test_refunded_payments_were_charged(
    client: PlexoClient, gateway: Recorder, status: str
) -> None:
    body = payment_dto("approved")
    body["status"] = status
    gateway.answer(200, body)
    assert client.create_payment(payment_request()).kind == "approved"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"code": "DuplicateTransaction", "type": "invalid-request-error", "status": 400}),
        (402, {"code": "payment-declined", "declineCode": "duplicate_transaction", "status": 402}),
        (409, {"code": "conflict", "declineCode": "DuplicateTransaction", "status": 409}),
    ],
)
def test_a_duplicate_however_spelled_is_unknown_never_declined(
    client: PlexoClient, gateway: Recorder, status: int, body: dict[str, object]
) -> None:
    gateway.answer(status, body)
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.duplicate) == ("unknown", True)


def test_a_huge_retry_after_is_capped(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(
        429, envelope("too-many-requests", 429), headers={"Retry-After": "10000000000000"}
    )
    assert client.create_payment(payment_request()).retry_after == 3600.0


@pytest.mark.parametrize("status", ["mystery", None])
def test_other_statuses_are_unknown(
    client: PlexoClient, gateway: Recorder, status: str | None
) -> None:
    body = payment_dto("approved")
    if status is None:
        del body["status"]
    else:
        body["status"] = status
    gateway.answer(200, body)
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "unknown"
    assert outcome.payment_id == PAYMENT_ID


def test_pascal_case_payment(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, {"Id": PAYMENT_ID, "ReferenceId": REF, "Status": "Approved"})
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.payment_id) == ("approved", PAYMENT_ID)


def test_answer_for_another_reference_is_unknown(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, payment_dto("approved", referenceId="someone-else"))
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "unknown"
    assert outcome.payment_id is None  # never adopt another payment's id
    assert "someone-else" in outcome.detail


@pytest.mark.parametrize("content", [b"<html>OK</html>", b"", b"[]", b'"approved"'])
def test_unreadable_2xx_is_unknown(client: PlexoClient, gateway: Recorder, content: bytes) -> None:
    gateway.answer(200, content)
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.http_status, outcome.not_charged) == ("unknown", 200, False)


# -- create_payment: error answers -------------------------------------------------------------


@pytest.mark.parametrize("http_status", [402, 400, 422])
def test_decline_in_error_envelope(
    client: PlexoClient, gateway: Recorder, http_status: int
) -> None:
    gateway.answer(
        http_status,
        envelope(
            "payment-declined",
            http_status,
            declineCode="insufficient_funds",
            message="Insufficient funds",
            type="card-error",
        ),
    )
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "declined"
    assert outcome.decline_code == "insufficient_funds"
    assert outcome.decline_message == "Insufficient funds"
    assert outcome.http_status == http_status
    assert outcome.not_charged is False


def test_402_without_decline_code_is_declined(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(402, envelope("card_declined", 402, type="card-error"))
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.decline_code) == ("declined", "card_declined")


def test_validation_error_is_declined_and_not_charged(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(
        400,
        envelope(
            "request-validation-errors",
            400,
            params={"invoiceNumber": ["The invoiceNumber field is required."]},
        ),
    )
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "declined"
    assert outcome.not_charged is True
    assert outcome.decline_code == "request-validation-errors"
    assert outcome.http_status == 400


def test_invalid_request_type_is_not_charged(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(400, envelope("merchant-not-found", 400))
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.decline_code, outcome.not_charged) == (
        "declined",
        "merchant-not-found",
        True,
    )


@pytest.mark.parametrize(
    ("http_status", "body", "code"),
    [
        (401, envelope("unauthorized", 401, type="authentication-error"), "unauthorized"),
        (403, envelope("forbidden", 403, type="authentication-error"), "forbidden"),
        (404, envelope("token-not-found", 404), "token-not-found"),
    ],
)
def test_auth_and_unknown_token_are_not_charged(
    client: PlexoClient, gateway: Recorder, http_status: int, body: Any, code: str
) -> None:
    gateway.answer(http_status, body)
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.decline_code, outcome.not_charged) == ("declined", code, True)


def test_duplicate_reference_is_unknown_with_duplicate_flag(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(409, envelope("duplicate-reference-id", 409))
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "unknown"
    assert outcome.duplicate is True
    assert outcome.not_charged is False
    assert outcome.http_status == 409


def test_other_409_is_unknown_without_duplicate(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(409, envelope("state-conflict", 409))
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.duplicate) == ("unknown", False)


@pytest.mark.parametrize(
    ("header", "seconds"), [("7", 7.0), ("Tue, 01 Jul 2025 12:01:00 GMT", 60.0), (None, None)]
)
def test_rate_limited_is_unknown_with_retry_after(
    client: PlexoClient, gateway: Recorder, header: str | None, seconds: float | None
) -> None:
    headers = {"Retry-After": header} if header else {}
    gateway.answer(429, envelope("rate-limited", 429, type="api-error"), headers=headers)
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.retry_after, outcome.not_charged) == ("unknown", seconds, False)
    assert outcome.http_status == 429


def test_unavailable_with_retry_after_is_unknown_and_keeps_the_hint(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(503, None, headers={"Retry-After": "120"})
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.retry_after, outcome.http_status) == ("unknown", 120.0, 503)


@pytest.mark.parametrize(
    ("http_status", "body"),
    [
        (500, envelope("internal-error", 500, type="api-error")),
        (502, b"<html>Bad Gateway</html>"),
        (503, None),
        (504, envelope("gateway-timeout", 504, declineCode="91")),  # 5xx never declines
        (400, envelope("internal-error", 400, type="api-error")),  # seen on unknown ids
        (400, b"not json"),
        (405, None),
        (418, envelope("teapot", 418, type="api-error")),
        (302, None),
    ],
)
def test_ambiguous_answers_are_unknown(
    client: PlexoClient, gateway: Recorder, http_status: int, body: Any
) -> None:
    gateway.answer(http_status, body)
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "unknown"
    assert outcome.not_charged is False
    assert outcome.http_status == http_status
    assert outcome.duplicate is False


# -- bare answers: only Plexo's own body proves that nothing was charged (issue 5, item 1) ------

NGINX_404 = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>"
)
FOREIGN_JSON: list[Any] = [
    {"message": "Forbidden"},  # AWS API Gateway
    {"timestamp": "2025-07-01T12:00:00Z", "status": 404, "error": "Not Found", "path": "/"},
    {"error": {"code": "unauthorized", "message": "Unauthorized"}},  # nested: not Plexo's
    {"type": "about:blank", "title": "Forbidden", "status": 403},  # RFC 9457 problem
    {"code": "unauthorized", "message": "no type"},  # half an envelope
    {"code": "unauthorized", "type": "authentication-error", "status": 200},  # wrong status
    ["unauthorized"],
    "Forbidden",
]
BARE_BODIES: list[Any] = [
    None,
    NGINX_404,
    b"Forbidden",
    b'{"code":"unauthorized","type":"authentication-err',  # truncated
    b"\xff\xfe not utf-8",
    *FOREIGN_JSON,
]


@pytest.mark.parametrize("http_status", [401, 403, 404, 405, 410, 413, 418, 421])
@pytest.mark.parametrize("body", BARE_BODIES, ids=lambda b: repr(b)[:30])
def test_a_bare_answer_is_unknown_never_a_decline(
    client: PlexoClient, gateway: Recorder, http_status: int, body: Any
) -> None:
    """Something in front of Plexo may answer after Plexo recorded the payment."""
    gateway.answer(http_status, body)
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "unknown", outcome
    assert outcome.not_charged is False
    assert outcome.http_status == http_status


def _is_proof(status: int, body: Any) -> bool:
    """The rule, written independently of the classifier: what may say "not charged"."""
    if not isinstance(body, dict) or "error" in body or not 400 <= status < 500:
        return False
    if status in (409, 429) or "duplicate" in json.dumps(body).lower():
        return False
    if body.get("referenceId") == REF and isinstance(body.get("status"), str):
        return False  # a payment body: judged by its status, not by this rule
    code, type_ = body.get("code"), body.get("type")
    if not (isinstance(code, str) and code.strip() and isinstance(type_, str) and type_.strip()):
        return False
    return "status" not in body or body["status"] == status


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.sampled_from(
        [
            "unauthorized",
            "forbidden",
            "authentication-error",
            "invalid-request-error",
            "request-validation-errors",
            "card-error",
            "api-error",
            "not-found",
            "",
        ]
    ),
    st.text(max_size=12),
)
_bodies = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from(BARE_BODIES),
    st.dictionaries(
        st.sampled_from(
            [
                "code",
                "type",
                "status",
                "message",
                "declineCode",
                "traceId",
                "error",
                "title",
                "params",
                "paymentId",
            ]
        ),
        _scalars,
        max_size=6,
    ),
    st.lists(_scalars, max_size=3),
)


@hypothesis.given(
    http_status=st.one_of(st.integers(100, 599), st.sampled_from([401, 402, 403, 404, 422])),
    body=_bodies,
)
@hypothesis.settings(max_examples=400, suppress_health_check=list(hypothesis.HealthCheck))
def test_property_only_a_plexo_body_can_say_not_charged(http_status: int, body: Any) -> None:
    gateway = Recorder()
    gateway.answer(http_status, body)
    with PlexoClient(
        BASE,
        CLIENT_ID,
        API_KEY,
        MERCHANT,
        transport=httpx.MockTransport(gateway),
        clock=TestClock(NOW),
    ) as plexo:
        outcome = plexo.create_payment(payment_request())
    if outcome.kind == "declined":
        assert _is_proof(http_status, body), (http_status, body, outcome)
    else:
        assert not outcome.not_charged
    if 200 <= http_status < 300:
        assert outcome.kind != "declined"  # no 2xx body here names our referenceId


def test_a_decline_body_that_does_not_name_our_reference_is_unknown(
    client: PlexoClient, gateway: Recorder
) -> None:
    body = payment_dto("denied")
    del body["referenceId"]
    gateway.answer(200, body)
    assert client.create_payment(payment_request()).kind == "unknown"


def test_a_decline_envelope_keeps_both_codes_and_the_payment_id(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(
        402,
        envelope(
            "payment-declined",
            402,
            type="card-error",
            declineCode="stolen_card",
            resultCode="43",
            paymentId=PAYMENT_ID,
        ),
    )
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.decline_code, outcome.result_code, outcome.payment_id) == (
        "declined",
        "stolen_card",
        "43",
        PAYMENT_ID,
    )


@pytest.mark.parametrize("status", ["approved", "denied"])
@pytest.mark.parametrize("payment_id", ["x" * 65, "has space", "new\nline", "ü" * 8])
def test_an_unusable_payment_id_is_unknown(
    client: PlexoClient, gateway: Recorder, status: str, payment_id: str
) -> None:
    """It could not be stored (64 characters) nor sent back in a path: nothing to adopt."""
    gateway.answer(200, payment_dto(status, id=payment_id))
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.payment_id) == ("unknown", None)


def test_a_decline_body_keeps_both_codes(client: PlexoClient, gateway: Recorder) -> None:
    body = payment_dto("denied")
    body["transactions"][0].update(resultCode="43", declineCode="stolen_card")
    gateway.answer(200, body)
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.decline_code, outcome.result_code) == (
        "declined",
        "stolen_card",
        "43",
    )


def test_a_payment_body_under_an_error_status_is_judged_by_its_status(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(402, payment_dto("denied"))
    outcome = client.create_payment(payment_request())
    assert (outcome.kind, outcome.payment_id, outcome.result_code) == ("declined", PAYMENT_ID, "96")


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset by peer"),
        RuntimeError("surprise inside the transport"),
    ],
)
def test_network_trouble_is_unknown(client: PlexoClient, gateway: Recorder, exc: Exception) -> None:
    gateway.fail(exc)
    outcome = client.create_payment(payment_request())
    assert outcome.kind == "unknown"
    assert outcome.http_status is None
    assert outcome.not_charged is False
    assert outcome.detail


def test_latency_is_reported_per_route(
    client: PlexoClient, gateway: Recorder, timings: Timings
) -> None:
    gateway.answer(200, payment_dto("approved"))
    client.create_payment(payment_request())
    gateway.fail(httpx.ReadTimeout("slow"))
    client.create_payment(payment_request())
    gateway.answer(200, payment_dto("approved"))
    client.get_payment(PAYMENT_ID)
    assert [(route, status) for route, status, _ in timings.calls] == [
        ("POST /v1/payments", 200),
        ("POST /v1/payments", None),
        ("GET /v1/payments/{paymentId}", 200),
    ]
    assert all(seconds >= 0 for _, _, seconds in timings.calls)


def test_failing_metrics_hook_does_not_break_a_charge(gateway: Recorder) -> None:
    def broken(route: str, status: int | None, seconds: float) -> None:
        raise RuntimeError("metrics down")

    gateway.answer(200, payment_dto("approved"))
    with PlexoClient(
        BASE,
        CLIENT_ID,
        API_KEY,
        MERCHANT,
        transport=httpx.MockTransport(gateway),
        on_response=broken,
    ) as plexo:
        assert plexo.create_payment(payment_request()).kind == "approved"


def test_concurrent_charges_from_a_thread_pool(client: PlexoClient, gateway: Recorder) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        ref = json.loads(request.content)["referenceId"]
        return httpx.Response(
            200, json={"id": f"p-{ref}", "referenceId": ref, "status": "approved"}
        )

    gateway.handler = handler
    refs = [f"INV-{n}-1" for n in range(24)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(
            pool.map(lambda r: client.create_payment(payment_request(reference_id=r)), refs)
        )
    assert [o.payment_id for o in outcomes] == [f"p-{r}" for r in refs]
    assert len(gateway.requests) == len(refs)


# -- get_payment / find_payment ----------------------------------------------------------------


def test_get_payment(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, payment_dto("denied"))
    outcome = client.get_payment(PAYMENT_ID)
    assert gateway.last.method == "GET"
    assert gateway.last.url.path == f"/v1/payments/{PAYMENT_ID}"
    assert (outcome.kind, outcome.payment_id, outcome.decline_code) == (
        "declined",
        PAYMENT_ID,
        "96",
    )


def test_get_payment_escapes_the_id(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, payment_dto("approved"))
    client.get_payment("../customers")
    assert gateway.last.url.raw_path == b"/v1/payments/..%2Fcustomers"


def test_get_payment_unknown_id(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(404, envelope("payment-not-found", 404))
    with pytest.raises(PaymentNotFound) as caught:
        client.get_payment(PAYMENT_ID)
    assert isinstance(caught.value, PlexoNotFound) and isinstance(caught.value, NotFound)
    assert caught.value.status == 404
    assert caught.value.code == "payment-not-found"
    assert caught.value.trace_id == "0HMVG9K3R5T4J:00000001"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((503, None), GatewayUnavailable),
        ((429, None), GatewayUnavailable),
        ((401, None), AuthenticationFailed),
        ((200, b"<html>"), PlexoError),
        ((200, [1]), PlexoError),
    ],
)
def test_get_payment_trouble_raises(
    client: PlexoClient, gateway: Recorder, answer: tuple[int, Any], error: type[PlexoError]
) -> None:
    gateway.answer(*answer)
    with pytest.raises(error):
        client.get_payment(PAYMENT_ID)


def test_get_payment_timeout_raises_gateway_unavailable(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.fail(httpx.ReadTimeout("slow"))
    with pytest.raises(GatewayUnavailable) as caught:
        client.get_payment(PAYMENT_ID)
    assert caught.value.status is None and caught.value.code == "timeout"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda items: items,
        lambda items: {"items": items, "page": 0, "size": 5, "total": len(items)},
        lambda items: {"data": items},
        lambda items: {"results": items},
    ],
)
def test_find_payment_matches_reference_exactly(
    client: PlexoClient, gateway: Recorder, wrap: Callable[[list[Any]], Any]
) -> None:
    gateway.answer(
        200,
        wrap(
            [
                payment_dto("approved", id="other", referenceId=REF + "0"),
                payment_dto("denied", id="mine"),
            ]
        ),
    )
    outcome = client.find_payment(REF)
    assert outcome is not None
    assert (outcome.kind, outcome.payment_id) == ("declined", "mine")
    request = gateway.last
    assert request.url.path == "/v1/payments/query"
    assert dict(request.url.params) == {
        "merchantId": str(MERCHANT),
        "referenceId": REF,
        "size": "5",
    }


def test_find_payment_absent(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, {"items": [payment_dto("approved", referenceId="INV-X-1")], "total": 1})
    assert client.find_payment(REF) is None
    gateway.answer(200, [])
    assert client.find_payment(REF) is None


def test_find_payment_prefers_money_taken(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, [payment_dto("denied", id="a"), payment_dto("approved", id="b")])
    outcome = client.find_payment(REF)
    assert outcome is not None and (outcome.kind, outcome.payment_id) == ("approved", "b")


def test_find_payment_pascal_case_items(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, {"Items": [{"Id": "p", "ReferenceId": REF, "Status": "pending"}]})
    outcome = client.find_payment(REF)
    assert outcome is not None and (outcome.kind, outcome.payment_id) == ("pending", "p")


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda g: g.answer(502, b"<html>Bad Gateway</html>"), GatewayUnavailable),
        (
            lambda g: g.answer(500, envelope("internal-error", 500, type="api-error")),
            GatewayUnavailable,
        ),
        (lambda g: g.fail(httpx.ReadTimeout("slow")), GatewayUnavailable),
        (lambda g: g.fail(httpx.RemoteProtocolError("dropped")), GatewayUnavailable),
        (lambda g: g.answer(401, envelope("unauthorized", 401)), AuthenticationFailed),
        (lambda g: g.answer(200, {"total": 0}), PlexoError),  # unknown shape is not "absent"
        (lambda g: g.answer(200, b"garbage"), PlexoError),
    ],
)
def test_find_payment_never_confuses_dont_know_with_absent(
    client: PlexoClient,
    gateway: Recorder,
    setup: Callable[[Recorder], None],
    error: type[PlexoError],
) -> None:
    setup(gateway)
    with pytest.raises(error):
        client.find_payment(REF)


# -- customers ---------------------------------------------------------------------------------

CUSTOMER = {
    "id": CUSTOMER_ID,
    "referenceId": "cust-1",
    "email": "ana@example.com",
    "firstName": "Ana",
    "metadata": {},
    "status": "active",
}


def customer_payload() -> CustomerPayload:
    return CustomerPayload(reference_id="cust-1", email="ana@example.com", first_name="Ana")


def test_create_customer(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(201, CUSTOMER)
    customer = client.create_customer(customer_payload())
    assert gateway.last.method == "POST" and gateway.last.url.path == "/v1/customers"
    assert gateway.last_json() == {
        "referenceId": "cust-1",
        "email": "ana@example.com",
        "firstName": "Ana",
        "metadata": {},
    }
    assert (customer.id, customer.reference_id, customer.status) == (
        CUSTOMER_ID,
        "cust-1",
        "active",
    )


def test_create_customer_validation_error(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(
        400,
        envelope(
            "request-validation-errors",
            400,
            message="Customer profile validation failed",
            params={"email": ["The email field is required."]},
        ),
    )
    with pytest.raises(ValidationRejected) as caught:
        client.create_customer(customer_payload())
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert error.params == {"email": ["The email field is required."]}
    assert error.code == "request-validation-errors" and error.status == 400
    assert "Customer profile validation failed" in str(error)
    assert "email" in str(error)


def test_create_customer_duplicate(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(409, envelope("duplicate-reference-id", 409))
    with pytest.raises(DuplicateReference) as caught:
        client.create_customer(customer_payload())
    assert isinstance(caught.value, Conflict)


def test_other_4xx_is_plain_plexo_error(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(400, envelope("internal-error", 400, type="api-error"))
    with pytest.raises(PlexoError) as caught:
        client.create_customer(customer_payload())
    assert type(caught.value) is PlexoError
    assert caught.value.code == "internal-error"


def test_get_customer_and_not_found(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, CUSTOMER)
    assert client.get_customer(CUSTOMER_ID).email == "ana@example.com"
    assert gateway.last.url.path == f"/v1/customers/{CUSTOMER_ID}"
    gateway.answer(404, None, headers={"x-correlation-id": "corr-1"})
    with pytest.raises(PlexoNotFound) as caught:
        client.get_customer(CUSTOMER_ID)
    assert not isinstance(caught.value, PaymentNotFound)
    assert caught.value.trace_id == "corr-1"


def test_update_customer_puts_full_body(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, {**CUSTOMER, "firstName": "Ana María"})
    updated = client.update_customer(CUSTOMER_ID, customer_payload())
    assert gateway.last.method == "PUT"
    assert gateway.last.url.path == f"/v1/customers/{CUSTOMER_ID}"
    assert gateway.last_json()["referenceId"] == "cust-1"
    assert updated.first_name == "Ana María"


def test_update_customer_with_empty_answer_reads_back(
    client: PlexoClient, gateway: Recorder
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return (
            httpx.Response(204) if request.method == "PUT" else httpx.Response(200, json=CUSTOMER)
        )

    gateway.handler = handler
    assert client.update_customer(CUSTOMER_ID, customer_payload()).id == CUSTOMER_ID
    assert [r.method for r in gateway.requests] == ["PUT", "GET"]


def test_delete_customer(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(204)
    client.delete_customer(CUSTOMER_ID)
    assert (gateway.last.method, gateway.last.url.path) == (
        "DELETE",
        f"/v1/customers/{CUSTOMER_ID}",
    )


@pytest.mark.parametrize(
    "body",
    [
        [CUSTOMER, {**CUSTOMER, "id": "u2"}],
        {"items": [CUSTOMER, {**CUSTOMER, "id": "u2"}], "page": 0},
        {"Results": [{"Id": CUSTOMER_ID, "Email": "ana@example.com"}, {"Id": "u2"}]},
    ],
)
def test_list_customers_shapes(client: PlexoClient, gateway: Recorder, body: Any) -> None:
    gateway.answer(200, body)
    assert [c.id for c in client.list_customers()] == [CUSTOMER_ID, "u2"]


def test_list_customers_item_without_id_is_an_error(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, [{"email": "x@example.com"}])
    with pytest.raises(PlexoError, match="no id"):
        client.list_customers()


# -- instruments and sessions ------------------------------------------------------------------

INSTRUMENT = {
    "token": TOKEN,
    "status": "active",
    "cardName": "555555XXXXXX4444",
    "bin": "555555",
    "cardType": "credit",
    "expMonth": 12,
    "expYear": 2027,
    "issuer": "mastercard",
    "createdAt": "2025-06-01T00:00:00Z",
}


@pytest.mark.parametrize("wrap", [lambda x: x, lambda x: {"items": x}, lambda x: {"data": x}])
def test_list_instruments(
    client: PlexoClient, gateway: Recorder, wrap: Callable[[Any], Any]
) -> None:
    gateway.answer(200, wrap([INSTRUMENT]))
    [card] = client.list_instruments(CUSTOMER_ID)
    assert gateway.last.url.path == f"/v1/customers/{CUSTOMER_ID}/payment-instruments"
    assert (card.token, card.last4, card.brand, card.exp_year) == (
        TOKEN,
        "4444",
        "mastercard",
        2027,
    )


def test_delete_instrument(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(204)
    client.delete_instrument(CUSTOMER_ID, TOKEN)
    assert gateway.last.method == "DELETE"
    assert gateway.last.url.path == f"/v1/customers/{CUSTOMER_ID}/payment-instruments/{TOKEN}"
    gateway.answer(404, envelope("instrument-not-found", 404))
    with pytest.raises(PlexoNotFound):
        client.delete_instrument(CUSTOMER_ID, TOKEN)


def test_tokenization_session(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(
        200,
        {
            "id": "sess-1",
            "expiresAt": "2025-07-01T12:30:00Z",
            "actions": [
                {
                    "rel": "self",
                    "href": "https://checkout.testing.plexo.com.uy/e/1",
                    "method": "EMBEDDED",
                },
                {
                    "rel": "REDIRECT",
                    "href": "https://checkout.testing.plexo.com.uy/r/1",
                    "method": "GET",
                },
            ],
        },
    )
    session = client.create_tokenization_session(
        CUSTOMER_ID,
        "setup-1",
        callback_url="https://billing/cb/x",
        redirect_url="https://shop/back",
    )
    assert session.url == "https://checkout.testing.plexo.com.uy/r/1"
    assert session.expires_at == datetime(2025, 7, 1, 12, 30, tzinfo=UTC)
    assert (gateway.last.method, gateway.last.url.path) == ("POST", "/v1/sessions")
    assert gateway.last_json() == {
        "merchantId": MERCHANT,
        "referenceId": "setup-1",
        "type": "tokenization",
        "customerId": CUSTOMER_ID,
        "settings": {
            "tokenization": {
                "type": "store",
                "allowedCardTypes": ["credit", "debit"],
                "features": ["create", "list", "select", "delete"],
            },
            "paymentMethodTypes": ["card"],
            "callbacks": {"tokenizationCallbackUrl": "https://billing/cb/x"},
            "redirects": {"defaultUrl": "https://shop/back", "cancelUrl": "https://shop/back"},
        },
    }


def test_tokenization_session_without_urls(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, {"id": "s", "actions": [{"rel": "self", "href": "https://e"}]})
    assert client.create_tokenization_session(CUSTOMER_ID, "setup-2").url == "https://e"
    settings = gateway.last_json()["settings"]
    assert "callbacks" not in settings and "redirects" not in settings


# -- verify_credentials ------------------------------------------------------------------------


def test_verify_credentials_ok(client: PlexoClient, gateway: Recorder) -> None:
    gateway.answer(200, [])
    client.verify_credentials()
    assert (gateway.last.method, gateway.last.url.path) == ("GET", "/v1/customers")


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (
            lambda g: g.answer(401, envelope("unauthorized", 401, type="authentication-error")),
            AuthenticationFailed,
        ),
        (lambda g: g.answer(403, None), AuthenticationFailed),
        (lambda g: g.answer(503, None, headers={"Retry-After": "30"}), GatewayUnavailable),
        (lambda g: g.fail(httpx.ConnectError("refused")), GatewayUnavailable),
        (lambda g: g.fail(httpx.ConnectTimeout("slow")), GatewayUnavailable),
    ],
)
def test_verify_credentials_failures(
    client: PlexoClient,
    gateway: Recorder,
    setup: Callable[[Recorder], None],
    error: type[PlexoError],
) -> None:
    setup(gateway)
    with pytest.raises(error):
        client.verify_credentials()


def test_rate_limit_on_other_calls_carries_retry_after(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(
        429, envelope("rate-limited", 429, type="api-error"), headers={"Retry-After": "12"}
    )
    with pytest.raises(GatewayUnavailable) as caught:
        client.list_customers()
    assert caught.value.retry_after == 12.0
    assert caught.value.status == 429


# -- secrets -----------------------------------------------------------------------------------

BASIC = base64.b64encode(f"{CLIENT_ID}:{API_KEY}".encode()).decode()
LEAKY = f"bad credentials for Authorization: Basic {BASIC} (key {API_KEY})"


def assert_no_secret(text: str) -> None:
    assert API_KEY not in text
    assert BASIC not in text
    assert API_KEY[:20] not in text


@pytest.mark.parametrize(
    "setup",
    [
        lambda g: g.answer(401, envelope("unauthorized", 401, message=LEAKY)),
        lambda g: g.answer(400, envelope("request-validation-errors", 400, params={"k": [LEAKY]})),
        lambda g: g.answer(500, envelope("internal-error", 500, message=LEAKY)),
        lambda g: g.answer(404, envelope("not-found", 404, message=LEAKY)),
        lambda g: g.fail(httpx.ConnectError(LEAKY)),
        lambda g: g.fail(httpx.ReadTimeout(LEAKY)),
        lambda g: g.answer(200, {"message": LEAKY}),
    ],
)
def test_secrets_never_in_error_messages(
    client: PlexoClient, gateway: Recorder, setup: Callable[[Recorder], None]
) -> None:
    setup(gateway)
    with pytest.raises(PlexoError) as caught:
        client.get_customer(CUSTOMER_ID)
    assert_no_secret(str(caught.value))
    assert_no_secret(repr(caught.value))
    assert caught.value.__cause__ is None or API_KEY not in str(caught.value.__cause__)


@pytest.mark.parametrize(
    "setup",
    [
        lambda g: g.answer(401, envelope("unauthorized", 401, message=LEAKY)),
        lambda g: g.answer(402, envelope("declined", 402, declineCode="05", message=LEAKY)),
        lambda g: g.fail(httpx.ConnectError(LEAKY)),
        lambda g: g.fail(RuntimeError(LEAKY)),
        lambda g: g.answer(
            200,
            payment_dto(
                "denied",
                transactions=[{"status": "denied", "resultCode": "05", "resultMessage": LEAKY}],
            ),
        ),
    ],
)
def test_secrets_never_in_charge_outcomes(
    client: PlexoClient, gateway: Recorder, setup: Callable[[Recorder], None]
) -> None:
    setup(gateway)
    outcome = client.create_payment(payment_request())
    assert_no_secret(repr(outcome))


def test_close_closes_the_http_client(gateway: Recorder) -> None:
    plexo = PlexoClient(BASE, CLIENT_ID, API_KEY, MERCHANT, transport=httpx.MockTransport(gateway))
    plexo.close()
    gateway.answer(200, [])
    with pytest.raises(RuntimeError, match="closed"):
        plexo.verify_credentials()


def test_get_payment_refuses_to_adopt_another_reference(
    client: PlexoClient, gateway: Recorder
) -> None:
    gateway.answer(200, payment_dto("denied", referenceId="someone-else"))
    outcome = client.get_payment(PAYMENT_ID, reference_id=REF)
    assert (outcome.kind, outcome.payment_id) == ("unknown", None)
