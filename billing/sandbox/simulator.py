"""A faithful in-memory Plexo gateway: the REST contract of plexo-api.md sections 2-4 and 7.

One `PlexoSimulator` holds the state (customers, instruments, sessions, payments) behind a lock;
`handle()` turns one `SimRequest` into one `SimResponse`. The in-process httpx transport and the
loopback HTTP server both call it, so they can share one state.

API routes (HTTP Basic `client_id:api_key`, else 401 `unauthorized`/`authentication-error`):
  POST/GET /v1/customers, GET/PUT/DELETE /v1/customers/{id},
  GET /v1/customers/{id}/payment-instruments, DELETE /v1/customers/{id}/payment-instruments/{token},
  POST/GET /v1/sessions, GET /v1/sessions/{id},
  POST /v1/payments, GET /v1/payments/{id}, GET /v1/payments/query.
JSON is camelCase; PascalCase input keys are accepted (first letter lowered). Fractional numbers
are read as Decimal and written back with their digits, never through float.

Choices where Plexo's docs are silent (plexo-api.md section 7):
- Duplicate payment `referenceId` (per merchant): `duplicate_mode="reject"` answers 409
  `duplicate-reference-id` and creates nothing; `"replay"` answers 200 with the original payment.
- Declines: `decline_style="body"` answers 200 with `status:"denied"`; `"error"` answers 402
  `{code:"payment-declined", type:"card-error", declineCode}`; either way the payment is recorded.
- An unknown or deleted token, or a token of another customer than `customerId`, is a recorded
  decline "14" `invalid_card`. A stored card past its expiry month is a decline "54".
- `paymentMethod.source:"card"` (raw card number) is refused with 400 `pci-certification-required`.
- Payment query pages are 1-based (`page` default 1, `size` default 20, at most 100).
- Every created resource answers 200 (plexo-api.md section 7 #4).

Outcome by the card number typed at tokenization (only BIN and last four are kept):

| card number        | outcome                                                      |
|--------------------|--------------------------------------------------------------|
| 4444333322221111   | approved, resultCode "0" (visa)                              |
| 5555444433332222   | approved "0" (mastercard)                                    |
| 4507990000004905   | approved "0" (visa debit, UY issuer)                         |
| 5588220000000006   | approved "0" (mastercard, UY issuer)                         |
| 4000000000000010   | denied "51" insufficient_funds (soft)                        |
| 4000000000000002   | denied "05" card_declined (do not honor)                     |
| 4000000000000069   | denied "54" expired_card (hard)                              |
| 4000000000000119   | denied "43" stolen_card (hard)                               |
| 4000000000000259   | pending; approved "0" after `pending_polls` GETs             |
| 4000000000000267   | pending; denied "51" insufficient_funds after `pending_polls` GETs |
| 4000000000000028   | denied "96" processing_error (soft)                          |
| 4000000000000036   | denied "91" issuer_unavailable (soft)                        |
| 4000000000000127   | denied "41" lost_card (hard)                                 |
| 4000000000000143   | denied "04" pickup_card (hard)                               |
| 4000000000000150   | denied "62" restricted_card (hard)                           |
| 4000000000000168   | denied "R1" stop_recurring (hard)                            |
| 4000000000000341   | denied "51" on the first two charges of a token, then approved |
| 4000000000003220   | pending with an `approval_url` action (3-D Secure): never settles |
| 5555555555554445   | denied "96" processing_error                                 |
| other Luhn-valid   | approved "0"                                                 |

A GET of a pending payment (by id, or as an item of a query page) counts as one poll.

Sandbox control routes under /sandbox/ need NO authentication: they are a loopback test
affordance (drive faults, read what was charged), never part of Plexo's contract:
  GET /sandbox/health, GET /sandbox/payments, POST /sandbox/reset,
  POST /sandbox/payments/{id}/settle (a pending payment settles now; its callback goes out),
  GET /sandbox/callbacks (every callback POST made, with the answer's status),
  GET/POST/DELETE /sandbox/faults, GET/POST /sandbox/config,
  POST /sandbox/sessions/{id}/complete, POST /sandbox/customers/{id}/instruments,
  GET/POST /sandbox/checkout/{id} (the hosted page of a tokenization session).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import parse_qsl

from billing.clock import Clock, SystemClock
from billing.domain.money import CURRENCY_DIGITS, parse_amount
from billing.errors import BillingError, ConfigError, Conflict, InvalidInput, NotFound
from billing.sandbox.callbacks import CallbackSender
from billing.sandbox.cards import (
    APPROVED,
    EXPIRED_CARD,
    INVALID_CARD,
    CardOutcome,
    CardProfile,
    profile_card,
)
from billing.sandbox.checkout import checkout_page
from billing.sandbox.faults import DEFAULT_ROUTE, Fault, FaultPlan, bare_answer
from billing.sandbox.wire import BadJson, dumps, iso, loads_object

DuplicateMode = Literal["reject", "replay"]
DeclineStyle = Literal["body", "error"]

SESSION_LIFETIME = timedelta(minutes=30)
# Where a 3-D Secure challenge would be completed (never fetched: nobody can in a scheduler).
SANDBOX_3DS_URL = "https://sandbox.plexo.invalid/3ds"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_JSON_TYPE = "application/json; charset=utf-8"
_ERROR_AFTER_CODES = {
    500: "internal-error",
    502: "bad-gateway",
    503: "service-unavailable",
    504: "gateway-timeout",
}
_CUSTOMER_FIELDS = (
    "referenceId",
    "email",
    "firstName",
    "lastName",
    "phone",
    "document",
    "identification",
    "address",
    "birthdate",
    "metadata",
)


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One HTTP request as the simulator sees it (headers keyed in lower case)."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class SimResponse:
    """One answer; `fault` tells the transport or server to misbehave instead of answering.

    The state change (if any) is already recorded when a fault is set: "timeout" means hang
    `hang_seconds` then give no answer, "drop" means close the connection without a byte.
    `delay` is latency to add before answering.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    fault: Literal["timeout", "drop"] | None = None
    delay: float = 0.0
    hang_seconds: float = 0.0


class ApiError(Exception):
    """An answer in Plexo's flat error envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        type_: str = "invalid-request-error",
        *,
        params: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.params = params
        self.extra = extra or {}
        self.headers = headers or {}


def _validation(params: dict[str, list[str]]) -> ApiError:
    return ApiError(
        400, "request-validation-errors", "One or more validation errors occurred.", params=params
    )


@dataclass(slots=True)
class _Customer:
    id: str
    fields: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class _Instrument:
    token: str
    customer_id: str
    card: CardProfile
    exp_month: int
    exp_year: int
    fingerprint: str
    created_at: datetime
    charges: int = 0  # payments made with this token (cards that approve after N declines)

    def expired(self, now: datetime) -> bool:
        return (self.exp_year, self.exp_month) < (now.year, now.month)


@dataclass(slots=True)
class _Session:
    id: str
    type: str
    merchant_id: int
    customer_id: str
    reference_id: str
    settings: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None = None
    token: str | None = None

    def status(self, now: datetime) -> str:
        if self.completed_at is not None:
            return "completed"
        return "expired" if now >= self.expires_at else "open"


@dataclass(slots=True)
class _Payment:
    seq: int
    id: str
    token: str
    merchant_id: int
    reference_id: str
    invoice_number: str
    customer_id: str | None
    currency: str
    total: Decimal
    details: Any
    metadata: Any
    installments: int
    callback_url: str | None
    card_token: str
    card: CardProfile | None
    exp_month: int | None
    exp_year: int | None
    fingerprint: str | None
    outcome: CardOutcome
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None
    transaction_id: str
    authorization: str | None
    polls: int = 0


Handler = Callable[[SimRequest, dict[str, str]], SimResponse]


class PlexoSimulator:
    """The sandbox gateway: state, contract rules, card outcomes and the fault plan."""

    def __init__(
        self,
        client_id: str = "sandbox-client",
        api_key: str = "sandbox-key",
        merchant_id: int = 1,
        *,
        seed: int = 0,
        duplicate_mode: str = "reject",
        decline_style: str = "body",
        pending_polls: int = 1,
        clock: Clock | None = None,
        public_url: str | None = None,
    ) -> None:
        self.client_id = client_id
        self.api_key = api_key
        self.merchant_id = merchant_id
        self.clock: Clock = clock or SystemClock()
        self.public_url = public_url.rstrip("/") if public_url else None
        self.faults = FaultPlan(seed=seed)
        self.callbacks = CallbackSender()
        self._lock = threading.RLock()
        self._fingerprint_key = secrets.token_bytes(32)
        self._trace = itertools.count(1)
        self._trace_prefix = secrets.token_hex(6).upper()
        self._duplicate_mode: DuplicateMode = "reject"
        self._decline_style: DeclineStyle = "body"
        self._pending_polls = 1
        self.duplicate_mode = duplicate_mode
        self.decline_style = decline_style
        self.pending_polls = pending_polls
        self._customers: dict[str, _Customer] = {}
        self._instruments: dict[str, _Instrument] = {}
        self._sessions: dict[str, _Session] = {}
        self._payments: dict[str, _Payment] = {}
        self._payment_refs: dict[tuple[int, str], str] = {}
        self._payment_seq = itertools.count(1)
        self._api_routes = self._compile(
            [
                ("POST", "/v1/customers", self._create_customer),
                ("GET", "/v1/customers", self._list_customers),
                ("GET", "/v1/customers/{customer_id}", self._get_customer),
                ("PUT", "/v1/customers/{customer_id}", self._update_customer),
                ("DELETE", "/v1/customers/{customer_id}", self._delete_customer),
                (
                    "GET",
                    "/v1/customers/{customer_id}/payment-instruments",
                    self._list_instruments,
                ),
                (
                    "DELETE",
                    "/v1/customers/{customer_id}/payment-instruments/{token}",
                    self._delete_instrument,
                ),
                ("POST", "/v1/sessions", self._create_session),
                ("GET", "/v1/sessions", self._list_sessions),
                ("GET", "/v1/sessions/{session_id}", self._get_session),
                ("POST", "/v1/payments", self._create_payment),
                ("GET", "/v1/payments/query", self._query_payments),
                ("GET", "/v1/payments/{payment_id}", self._get_payment),
            ]
        )
        self._control_routes = self._compile(
            [
                ("GET", "/sandbox/health", self._health),
                ("GET", "/sandbox/payments", self._control_payments),
                ("POST", "/sandbox/payments/{payment_id}/settle", self._control_settle),
                ("GET", "/sandbox/callbacks", self._control_callbacks),
                ("POST", "/sandbox/reset", self._control_reset),
                ("GET", "/sandbox/faults", self._control_get_faults),
                ("POST", "/sandbox/faults", self._control_add_fault),
                ("DELETE", "/sandbox/faults", self._control_clear_faults),
                ("GET", "/sandbox/config", self._control_get_config),
                ("POST", "/sandbox/config", self._control_set_config),
                ("POST", "/sandbox/sessions/{session_id}/complete", self._control_complete),
                ("POST", "/sandbox/customers/{customer_id}/instruments", self._control_instrument),
                ("GET", "/sandbox/checkout/{session_id}", self._checkout_get),
                ("POST", "/sandbox/checkout/{session_id}", self._checkout_post),
            ]
        )

    # ----- configuration -------------------------------------------------------------------

    @property
    def duplicate_mode(self) -> DuplicateMode:
        return self._duplicate_mode

    @duplicate_mode.setter
    def duplicate_mode(self, value: str) -> None:
        if value == "reject":
            self._duplicate_mode = "reject"
        elif value == "replay":
            self._duplicate_mode = "replay"
        else:
            raise ConfigError(f"duplicate_mode must be 'reject' or 'replay', not {value!r}")

    @property
    def decline_style(self) -> DeclineStyle:
        return self._decline_style

    @decline_style.setter
    def decline_style(self, value: str) -> None:
        if value == "body":
            self._decline_style = "body"
        elif value == "error":
            self._decline_style = "error"
        else:
            raise ConfigError(f"decline_style must be 'body' or 'error', not {value!r}")

    @property
    def pending_polls(self) -> int:
        return self._pending_polls

    @pending_polls.setter
    def pending_polls(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError("pending_polls must be a non-negative integer")
        self._pending_polls = value

    # ----- Python helpers for tests --------------------------------------------------------

    def complete_tokenization(
        self, session_id: str, card_number: str, exp_month: int = 12, exp_year: int = 2030
    ) -> dict[str, Any]:
        """Act as the customer on the hosted page: save a card; return the instrument + token."""
        try:
            return self._complete(session_id, card_number, exp_month, exp_year)
        except ApiError as exc:
            raise _billing_error(exc) from None

    def add_instrument(
        self, customer_id: str, card_number: str, exp_month: int = 12, exp_year: int = 2030
    ) -> dict[str, Any]:
        """Shortcut: tokenize a card for a customer without a session; return the instrument."""
        try:
            return self._add_instrument(customer_id, card_number, exp_month, exp_year)
        except ApiError as exc:
            raise _billing_error(exc) from None

    def set_card_outcome(self, token: str, outcome: CardOutcome) -> None:
        """Test affordance (in-process only): what the next charges of this token do, e.g. a
        random decline sequence thrown at one card."""
        with self._lock:
            instrument = self._instruments[token]
            instrument.card = replace(instrument.card, outcome=outcome)

    def payments(self) -> list[dict[str, Any]]:
        """Every recorded payment (PaymentDto shape, amounts as text like "590.00"), oldest first.

        Reading this listing is not a poll: pending payments stay pending.
        """
        with self._lock:
            ordered = sorted(self._payments.values(), key=lambda p: p.seq)
            return [self._payment_dto(p, money_as_text=True) for p in ordered]

    def reset(self) -> None:
        """Forget all state and faults (configuration and credentials stay)."""
        with self._lock:
            self._customers.clear()
            self._instruments.clear()
            self._sessions.clear()
            self._payments.clear()
            self._payment_refs.clear()
            self.faults.reset()
            self.callbacks.clear()

    # ----- the one entry point -------------------------------------------------------------

    def handle(self, request: SimRequest) -> SimResponse:
        """Answer one request; faults are applied around the recorded state change."""
        path = "/" + request.path.strip("/")
        try:
            if path == "/sandbox" or path.startswith("/sandbox/"):
                return self._dispatch(self._control_routes, request, path)
            if not self._authorized(request.headers):
                raise ApiError(
                    401,
                    "unauthorized",
                    "Invalid client credentials.",
                    "authentication-error",
                    headers={"www-authenticate": 'Basic realm="plexo-sandbox"'},
                )
            fault = self.faults.pick(request.method, path)
            if fault is not None and fault.mode in {"error_before", "rate_limit", "bare_before"}:
                return self._fault_before(fault)
            if fault is not None and fault.mode == "query_lag":
                return self._json_response(200, {"items": [], "page": 1, "size": 0, "total": 0})
            response = self._dispatch(self._api_routes, request, path)
            return response if fault is None else self._fault_after(fault, response)
        except ApiError as exc:
            return self._error_response(exc)
        except Exception:  # the simulator must answer, like a real gateway's 500
            return self._error_response(
                ApiError(500, "internal-error", "Sandbox internal error.", "api-error")
            )

    def _fault_before(self, fault: Fault) -> SimResponse:
        if fault.mode == "bare_before":
            return self._bare(fault)
        if fault.mode == "rate_limit":
            retry_after = int(fault.number("retry_after"))
            return self._error_response(
                ApiError(
                    429,
                    "too-many-requests",
                    "Rate limit exceeded, retry later.",
                    "api-error",
                    headers={"retry-after": str(retry_after)},
                )
            )
        return self._error_response(
            ApiError(503, "service-unavailable", "Service temporarily unavailable.", "api-error")
        )

    def _fault_after(self, fault: Fault, response: SimResponse) -> SimResponse:
        if fault.mode == "latency":
            return replace(response, delay=fault.number("seconds"))
        if fault.mode == "error_after":
            status = int(fault.number("status"))
            code = _ERROR_AFTER_CODES[status]
            return self._error_response(
                ApiError(status, code, "Upstream processor error.", "api-error")
            )
        if fault.mode == "timeout_after":
            return replace(response, fault="timeout", hang_seconds=fault.number("hang_seconds"))
        if fault.mode == "drop_after":
            return replace(response, fault="drop")
        if fault.mode == "bare_after":
            return self._bare(fault)
        return response

    @staticmethod
    def _bare(fault: Fault) -> SimResponse:
        status, content_type, body = bare_answer(fault)
        return SimResponse(status, {"content-type": content_type}, body)

    # ----- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _compile(
        table: list[tuple[str, str, Handler]],
    ) -> list[tuple[str, re.Pattern[str], Handler]]:
        compiled = []
        for method, template, handler in table:
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            compiled.append((method, re.compile(pattern), handler))
        return compiled

    def _dispatch(
        self, routes: list[tuple[str, re.Pattern[str], Handler]], request: SimRequest, path: str
    ) -> SimResponse:
        path_known = False
        for method, pattern, handler in routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method == request.method.upper():
                return handler(request, match.groupdict())
            path_known = True
        if path_known:
            raise ApiError(405, "method-not-allowed", f"{request.method} is not allowed here.")
        raise ApiError(404, "not-found", f"No route for {request.method} {path}.")

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        user_ok = hmac.compare_digest(user.encode(), self.client_id.encode())
        key_ok = hmac.compare_digest(password.encode(), self.api_key.encode())
        return bool(sep) and user_ok and key_ok

    def _trace_id(self) -> str:
        return f"0H{self._trace_prefix}:{next(self._trace):08X}"

    def _json_response(self, status: int, payload: Any) -> SimResponse:
        return SimResponse(
            status,
            {"content-type": _JSON_TYPE, "x-correlation-id": str(uuid.uuid4())},
            dumps(payload).encode("utf-8"),
        )

    @staticmethod
    def _no_content() -> SimResponse:
        return SimResponse(204, {"x-correlation-id": str(uuid.uuid4())}, b"")

    def _error_response(self, exc: ApiError) -> SimResponse:
        envelope: dict[str, Any] = {
            "code": exc.code,
            "message": exc.message,
            "type": exc.type,
            "status": exc.status,
            "traceId": self._trace_id(),
        }
        if exc.params:
            envelope["params"] = exc.params
        envelope.update(exc.extra)
        response = self._json_response(exc.status, envelope)
        response.headers.update(exc.headers)
        return response

    @staticmethod
    def _body(request: SimRequest) -> dict[str, Any]:
        try:
            return loads_object(request.body)
        except BadJson as exc:
            raise _validation({"body": [str(exc)]}) from None

    def _base_url(self, request: SimRequest) -> str:
        if self.public_url:
            return self.public_url
        host = request.headers.get("host", "sandbox.invalid")
        return f"http://{host}"

    # ----- customers -------------------------------------------------------------------------

    def _customer_fields(self, body: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, list[str]] = {}
        email = body.get("email")
        if not isinstance(email, str) or not email.strip():
            params["email"] = ["The email field is required."]
        elif not _EMAIL.match(email.strip()):
            params["email"] = ["The email field is not a valid e-mail address."]
        for name in ("referenceId", "firstName", "lastName", "phone", "birthdate"):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                params[name] = [f"The {name} field must be a string."]
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            params["metadata"] = ["metadata must be an object of string values."]
        if params:
            raise _validation(params)
        fields = {name: body.get(name) for name in _CUSTOMER_FIELDS}
        fields["email"] = str(email).strip()
        return fields

    def _check_customer_reference(self, reference_id: Any, customer_id: str | None) -> None:
        if reference_id is None:
            return
        for other in self._customers.values():
            if other.id != customer_id and other.fields.get("referenceId") == reference_id:
                raise ApiError(
                    409,
                    "duplicate-reference-id",
                    f"A customer with referenceId {reference_id!r} already exists.",
                )

    def _customer(self, customer_id: str) -> _Customer:
        customer = self._customers.get(customer_id)
        if customer is None:
            raise ApiError(404, "customer-not-found", f"Customer {customer_id} was not found.")
        return customer

    @staticmethod
    def _customer_dto(customer: _Customer) -> dict[str, Any]:
        return {
            "id": customer.id,
            **customer.fields,
            "status": "active",
            "createdAt": iso(customer.created_at),
            "updatedAt": iso(customer.updated_at),
        }

    def _create_customer(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        fields = self._customer_fields(self._body(request))
        with self._lock:
            self._check_customer_reference(fields["referenceId"], None)
            now = self.clock.now()
            customer = _Customer(str(uuid.uuid4()), fields, now, now)
            self._customers[customer.id] = customer
            return self._json_response(200, self._customer_dto(customer))

    def _list_customers(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        wanted = {k: v for k, v in request.query.items() if k in {"referenceId", "email"}}
        with self._lock:
            items = [
                self._customer_dto(c)
                for c in self._customers.values()
                if all(c.fields.get(k) == v for k, v in wanted.items())
            ]
        return self._json_response(200, items)

    def _get_customer(self, _: SimRequest, args: dict[str, str]) -> SimResponse:
        with self._lock:
            return self._json_response(200, self._customer_dto(self._customer(args["customer_id"])))

    def _update_customer(self, request: SimRequest, args: dict[str, str]) -> SimResponse:
        fields = self._customer_fields(self._body(request))
        with self._lock:
            customer = self._customer(args["customer_id"])
            self._check_customer_reference(fields["referenceId"], customer.id)
            customer.fields = fields
            customer.updated_at = self.clock.now()
            return self._json_response(200, self._customer_dto(customer))

    def _delete_customer(self, _: SimRequest, args: dict[str, str]) -> SimResponse:
        with self._lock:
            customer = self._customer(args["customer_id"])
            del self._customers[customer.id]
            for token in [t for t, i in self._instruments.items() if i.customer_id == customer.id]:
                del self._instruments[token]
        return self._no_content()

    # ----- instruments -----------------------------------------------------------------------

    @staticmethod
    def _instrument_dto(instrument: _Instrument) -> dict[str, Any]:
        card = instrument.card
        return {
            "token": instrument.token,
            "status": "active",
            "cardName": card.masked,
            "bin": card.bin,
            "last4": card.last4,
            "brand": card.brand,
            "cardType": card.card_type,
            "expMonth": instrument.exp_month,
            "expYear": instrument.exp_year,
            "issuer": {"id": _issuer_id(card.issuer), "name": card.issuer},
            "fingerprint": instrument.fingerprint,
            "createdAt": iso(instrument.created_at),
        }

    def _list_instruments(self, _: SimRequest, args: dict[str, str]) -> SimResponse:
        with self._lock:
            customer = self._customer(args["customer_id"])
            items = [
                self._instrument_dto(i)
                for i in self._instruments.values()
                if i.customer_id == customer.id
            ]
        return self._json_response(200, items)

    def _delete_instrument(self, _: SimRequest, args: dict[str, str]) -> SimResponse:
        with self._lock:
            customer = self._customer(args["customer_id"])
            instrument = self._instruments.get(args["token"])
            if instrument is None or instrument.customer_id != customer.id:
                raise ApiError(
                    404, "payment-instrument-not-found", "Payment instrument was not found."
                )
            del self._instruments[instrument.token]
        return self._no_content()

    def _tokenize(
        self, customer_id: str, card_number: str, exp_month: Any, exp_year: Any
    ) -> _Instrument:
        """Create an instrument from a typed card; the number goes no further than this call."""
        params: dict[str, list[str]] = {}
        try:
            card = profile_card(str(card_number))
        except InvalidInput as exc:
            params["cardNumber"] = [str(exc)]
        month = _as_int(exp_month)
        year = _as_int(exp_year)
        if year is not None and 0 <= year < 100:
            year += 2000
        if month is None or not 1 <= month <= 12:
            params["expMonth"] = ["expMonth must be an integer from 1 to 12."]
        if year is None or not 2000 <= year <= 2100:
            params["expYear"] = ["expYear must be a four-digit year."]
        now = self.clock.now()
        now_ym = (now.year, now.month)
        if month is not None and year is not None and not params and (year, month) < now_ym:
            params["expYear"] = ["The card has expired."]
        if params:
            raise _validation(params)
        assert month is not None and year is not None
        digits = "".join(ch for ch in card_number if ch.isdigit())
        fingerprint = hmac.new(self._fingerprint_key, digits.encode(), hashlib.sha256).hexdigest()
        fingerprint = fingerprint[:32]
        instrument = _Instrument(
            secrets.token_hex(16), customer_id, card, month, year, fingerprint, now
        )
        self._instruments[instrument.token] = instrument
        return instrument

    def _add_instrument(
        self, customer_id: str, card_number: str, exp_month: Any, exp_year: Any
    ) -> dict[str, Any]:
        with self._lock:
            customer = self._customer(customer_id)
            instrument = self._tokenize(customer.id, card_number, exp_month, exp_year)
            return self._instrument_dto(instrument)

    # ----- sessions --------------------------------------------------------------------------

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise ApiError(404, "session-not-found", f"Session {session_id} was not found.")
        return session

    def _session_dto(self, session: _Session, base_url: str) -> dict[str, Any]:
        dto: dict[str, Any] = {
            "id": session.id,
            "type": session.type,
            "status": session.status(self.clock.now()),
            "merchantId": session.merchant_id,
            "referenceId": session.reference_id,
            "customerId": session.customer_id,
            "settings": session.settings,
            "createdAt": iso(session.created_at),
            "expiresAt": iso(session.expires_at),
            "actions": [
                {
                    "rel": "REDIRECT",
                    "href": f"{base_url}/sandbox/checkout/{session.id}",
                    "method": "GET",
                }
            ],
        }
        if session.token is not None:
            dto["paymentInstrument"] = {"token": session.token}
            dto["completedAt"] = iso(session.completed_at) if session.completed_at else None
        return dto

    def _create_session(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        body = self._body(request)
        params: dict[str, list[str]] = {}
        if body.get("type") != "tokenization":
            params["type"] = ["The sandbox supports only type 'tokenization'."]
        customer_id = body.get("customerId")
        if not isinstance(customer_id, str) or not customer_id:
            params["customerId"] = ["The customerId field is required."]
        reference_id = body.get("referenceId")
        if not isinstance(reference_id, str) or not reference_id:
            params["referenceId"] = ["The referenceId field is required."]
        merchant_id = body.get("merchantId", self.merchant_id)
        if _as_int(merchant_id) is None:
            params["merchantId"] = ["The merchantId field must be an integer."]
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            params["settings"] = ["settings must be an object."]
        if params:
            raise _validation(params)
        if _as_int(merchant_id) != self.merchant_id:
            raise _merchant_not_found(merchant_id)
        with self._lock:
            customer = self._customer(str(customer_id))
            if any(
                x.reference_id == reference_id and x.merchant_id == self.merchant_id
                for x in self._sessions.values()
            ):
                raise ApiError(
                    409,
                    "duplicate-reference-id",
                    f"A session with referenceId {reference_id!r} already exists.",
                )
            now = self.clock.now()
            session = _Session(
                str(uuid.uuid4()),
                "tokenization",
                self.merchant_id,
                customer.id,
                str(reference_id),
                settings,
                now,
                now + SESSION_LIFETIME,
            )
            self._sessions[session.id] = session
            return self._json_response(200, self._session_dto(session, self._base_url(request)))

    def _list_sessions(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        base = self._base_url(request)
        with self._lock:
            items = [self._session_dto(s, base) for s in self._sessions.values()]
        return self._json_response(200, items)

    def _get_session(self, request: SimRequest, args: dict[str, str]) -> SimResponse:
        with self._lock:
            session = self._session(args["session_id"])
            return self._json_response(200, self._session_dto(session, self._base_url(request)))

    def _complete(
        self, session_id: str, card_number: str, exp_month: Any, exp_year: Any
    ) -> dict[str, Any]:
        with self._lock:
            session = self._session(session_id)
            status = session.status(self.clock.now())
            if status == "completed":
                raise ApiError(409, "session-completed", "The session was already completed.")
            if status == "expired":
                raise ApiError(400, "session-expired", "The session has expired.")
            customer = self._customer(session.customer_id)
            instrument = self._tokenize(customer.id, card_number, exp_month, exp_year)
            session.completed_at = self.clock.now()
            session.token = instrument.token
            return self._instrument_dto(instrument)

    # ----- payments --------------------------------------------------------------------------

    def _create_payment(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        body = self._body(request)
        params: dict[str, list[str]] = {}
        merchant_id = _as_int(body.get("merchantId"))
        if merchant_id is None:
            params["merchantId"] = ["The merchantId field is required and must be an integer."]
        reference_id = _required_text(body, "referenceId", params)
        invoice_number = _required_text(body, "invoiceNumber", params)
        currency, total = _read_amount(body.get("amount"), params)
        source, token = _read_payment_method(body.get("paymentMethod"), params)
        customer_id = body.get("customerId")
        if customer_id is not None and (not isinstance(customer_id, str) or not customer_id):
            params["customerId"] = ["customerId must be a customer id string."]
        installments = _as_int(body.get("installments", 1))
        if installments is None or installments < 1:
            params["installments"] = ["installments must be a positive integer."]
        capture = body.get("capture") or {}
        if not isinstance(capture, dict) or capture.get("method", "automatic") != "automatic":
            params["capture.method"] = ["The sandbox supports only automatic capture."]
        callback_url = body.get("callbackUrl")
        if callback_url is not None and not isinstance(callback_url, str):
            params["callbackUrl"] = ["callbackUrl must be a string."]
        if params:
            raise _validation(params)
        if source == "card":
            raise ApiError(
                400,
                "pci-certification-required",
                "Raw card data requires PCI certification; charge a token instead.",
            )
        if merchant_id != self.merchant_id:
            raise _merchant_not_found(merchant_id)
        assert reference_id is not None and invoice_number is not None and merchant_id is not None
        assert currency is not None and total is not None and token is not None
        with self._lock:
            existing_id = self._payment_refs.get((merchant_id, reference_id))
            if existing_id is not None:
                if self._duplicate_mode == "replay":
                    return self._json_response(200, self._payment_dto(self._payments[existing_id]))
                raise ApiError(
                    409,
                    "duplicate-reference-id",
                    f"A payment with referenceId {reference_id!r} already exists.",
                )
            if customer_id is not None:
                self._customer(customer_id)
            now = self.clock.now()
            instrument = self._instruments.get(token)
            if instrument is None or (
                customer_id is not None and instrument.customer_id != customer_id
            ):
                outcome, instrument = INVALID_CARD, None
            elif instrument.expired(now):
                outcome = EXPIRED_CARD
            else:
                outcome = instrument.card.outcome
                instrument.charges += 1
                if outcome.approve_after and instrument.charges > outcome.approve_after:
                    outcome = APPROVED
            payment = _Payment(
                seq=next(self._payment_seq),
                id=f"{int(now.timestamp()) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}",
                token=str(uuid.uuid4()),
                merchant_id=merchant_id,
                reference_id=reference_id,
                invoice_number=invoice_number,
                customer_id=customer_id,
                currency=currency,
                total=total,
                details=body["amount"].get("details"),
                metadata=body.get("metadata"),
                installments=installments or 1,
                callback_url=callback_url,
                card_token=token,
                card=instrument.card if instrument else None,
                exp_month=instrument.exp_month if instrument else None,
                exp_year=instrument.exp_year if instrument else None,
                fingerprint=instrument.fingerprint if instrument else None,
                outcome=outcome,
                created_at=now,
                updated_at=now,
                processed_at=None if outcome.status == "pending" else now,
                transaction_id=secrets.token_hex(12),
                authorization=_auth_code() if outcome.status == "approved" else None,
            )
            self._payments[payment.id] = payment
            self._payment_refs[(merchant_id, reference_id)] = payment.id
            dto = self._payment_dto(payment)
            if outcome.status != "pending":
                self._notify(payment)
        if outcome.status == "denied" and self._decline_style == "error":
            raise ApiError(
                402,
                "payment-declined",
                f"The payment was declined: {outcome.message}.",
                "card-error",
                extra={
                    "declineCode": outcome.decline_code,
                    "resultCode": outcome.result_code,
                    "paymentId": payment.id,
                },
            )
        return self._json_response(200, dto)

    def _poll(self, payment: _Payment) -> None:
        """A GET of a pending payment: settle it once it has been polled `pending_polls` times."""
        if payment.outcome.status != "pending" or payment.outcome.settles_to is None:
            return
        payment.polls += 1
        if payment.polls >= self._pending_polls:
            self._settle(payment)

    def _settle(self, payment: _Payment) -> None:
        """A pending payment reaches its final state, and its callback goes out."""
        if payment.outcome.status != "pending" or payment.outcome.settles_to is None:
            return
        now = self.clock.now()
        payment.outcome = payment.outcome.settles_to
        payment.updated_at = now
        payment.processed_at = now
        if payment.outcome.status == "approved":
            payment.authorization = _auth_code()
        self._notify(payment)

    def _notify(self, payment: _Payment) -> None:
        """POST the PaymentDto to the payment's callbackUrl, if it gave one (at least once)."""
        if payment.callback_url:
            dto = self._payment_dto(payment)
            self.callbacks.send(payment.callback_url, dumps(dto), dto)

    def settle(self, payment_id: str) -> dict[str, Any]:
        """Settle a pending payment now, as the processor would in time (sends its callback)."""
        with self._lock:
            payment = self._payments.get(payment_id)
            if payment is None:
                raise ApiError(404, "payment-not-found", f"Payment {payment_id} was not found.")
            if payment.outcome.status != "pending":
                raise ApiError(409, "payment-not-pending", f"Payment {payment_id} is final.")
            self._settle(payment)
            return self._payment_dto(payment, money_as_text=True)

    def _get_payment(self, _: SimRequest, args: dict[str, str]) -> SimResponse:
        with self._lock:
            payment = self._payments.get(args["payment_id"])
            if payment is None:
                raise ApiError(
                    404, "payment-not-found", f"Payment {args['payment_id']} was not found."
                )
            self._poll(payment)
            return self._json_response(200, self._payment_dto(payment))

    def _query_payments(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        query = request.query
        params: dict[str, list[str]] = {}
        merchant_id = _as_int(query["merchantId"]) if "merchantId" in query else self.merchant_id
        if merchant_id is None:
            params["merchantId"] = ["merchantId must be an integer."]
        page = _as_int(query.get("page", "1"))
        if page is None or page < 1:
            params["page"] = ["page must be a positive integer (pages start at 1)."]
        size = _as_int(query.get("size", "20"))
        if size is None or not 1 <= size <= 100:
            params["size"] = ["size must be an integer from 1 to 100."]
        if params:
            raise _validation(params)
        if merchant_id != self.merchant_id:
            raise _merchant_not_found(merchant_id)
        assert page is not None and size is not None
        with self._lock:
            matching = [
                p
                for p in sorted(self._payments.values(), key=lambda p: p.seq)
                if ("referenceId" not in query or p.reference_id == query["referenceId"])
                and ("customerId" not in query or p.customer_id == query["customerId"])
                and ("status" not in query or p.outcome.status == query["status"])
            ]
            window = matching[(page - 1) * size : page * size]
            for payment in window:
                self._poll(payment)
            items = [self._payment_dto(p) for p in window]
        return self._json_response(
            200, {"items": items, "page": page, "size": size, "total": len(matching)}
        )

    def _payment_dto(self, payment: _Payment, *, money_as_text: bool = False) -> dict[str, Any]:
        digits = CURRENCY_DIGITS[payment.currency]
        shown = payment.total.quantize(Decimal(1).scaleb(-digits))
        total: Decimal | str = str(shown) if money_as_text else shown
        outcome = payment.outcome
        card = payment.card
        processed = iso(payment.processed_at) if payment.processed_at else None
        return {
            "id": payment.id,
            "token": payment.token,
            "referenceId": payment.reference_id,
            "invoiceNumber": payment.invoice_number,
            "status": outcome.status,
            "processingMethod": "api",
            "createdAt": iso(payment.created_at),
            "updatedAt": iso(payment.updated_at),
            "processedAt": processed,
            "merchant": {"id": payment.merchant_id, "name": "Sandbox merchant"},
            "client": {"id": self.client_id, "name": "Sandbox client"},
            "customerId": payment.customer_id,
            "amount": {
                "currency": payment.currency,
                "total": total,
                "details": _text_decimals(payment.details, money_as_text),
            },
            "installments": payment.installments,
            "capture": {"method": "automatic"},
            "paymentMethod": {
                "id": card.brand if card else None,
                "name": card.brand.upper() if card else None,
                "type": "card",
                "source": "token",
                "card": {
                    "name": card.masked if card else None,
                    "bin": card.bin if card else None,
                    "last4": card.last4 if card else None,
                    "expMonth": payment.exp_month,
                    "expYear": payment.exp_year,
                    "type": card.card_type if card else None,
                    "brand": card.brand if card else None,
                    "origin": "token",
                    "token": payment.card_token,
                    "fingerprint": payment.fingerprint,
                },
            },
            "issuer": (
                {"id": _issuer_id(card.issuer), "name": card.issuer, "type": "bank"}
                if card
                else None
            ),
            "processor": {"id": 1, "acquirer": "sandbox"},
            "metadata": payment.metadata,
            "callbackUrl": payment.callback_url,
            "actions": (
                [{"type": "approval_url", "url": f"{SANDBOX_3DS_URL}/{payment.id}"}]
                if outcome.action_required and outcome.status == "pending"
                else []
            ),
            "transactions": [
                {
                    "id": payment.transaction_id,
                    "uniqueId": str(payment.seq),
                    "parentId": payment.token,
                    "traceId": payment.transaction_id[:16],
                    "referenceId": payment.reference_id,
                    "type": "purchase",
                    "status": outcome.status,
                    "resultCode": outcome.result_code,
                    "resultMessage": outcome.message,
                    "declineCode": outcome.decline_code,
                    "authorization": payment.authorization,
                    "ticket": str(100000 + payment.seq),
                    "amount": total,
                    "createdAt": iso(payment.created_at),
                    "processedAt": processed,
                }
            ],
        }

    # ----- /sandbox control routes (no auth: loopback test affordance) -----------------------

    def _health(self, _: SimRequest, __: dict[str, str]) -> SimResponse:
        return self._json_response(200, {"status": "ok"})

    def _control_payments(self, _: SimRequest, __: dict[str, str]) -> SimResponse:
        return self._json_response(200, self.payments())

    def _control_settle(self, _: SimRequest, args: dict[str, str]) -> SimResponse:
        return self._json_response(200, self.settle(args["payment_id"]))

    def _control_callbacks(self, _: SimRequest, __: dict[str, str]) -> SimResponse:
        deliveries = [
            {
                "paymentId": d.payment_id,
                "referenceId": d.reference_id,
                "status": d.status,
                "try": d.try_number,
                "httpStatus": d.http_status,
            }
            for d in self.callbacks.deliveries()
        ]
        return self._json_response(200, deliveries)

    def _control_reset(self, _: SimRequest, __: dict[str, str]) -> SimResponse:
        self.reset()
        return self._no_content()

    def _control_get_faults(self, _: SimRequest, __: dict[str, str]) -> SimResponse:
        return self._json_response(200, self.faults.describe())

    def _control_add_fault(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        body = self._body(request)
        mode = body.pop("mode", None)
        route = body.pop("route", DEFAULT_ROUTE)
        probability = body.pop("probability", None)
        times = body.pop("times", 1)
        fault_params = _floats({_snake(k): v for k, v in body.items()})
        try:
            if not isinstance(mode, str):
                raise InvalidInput("mode is required")
            if route is not None and not isinstance(route, str):
                raise InvalidInput("route must be a string like 'POST /v1/payments' or null")
            if probability is not None:
                if isinstance(probability, Decimal):
                    probability = float(probability)  # a chance, not money
                self.faults.set_probability(mode, probability, route=route, **fault_params)
            else:
                self.faults.queue(mode, route=route, times=times, **fault_params)
        except BillingError as exc:
            raise _validation({"fault": [str(exc)]}) from None
        return self._json_response(200, self.faults.describe())

    def _control_clear_faults(self, _: SimRequest, __: dict[str, str]) -> SimResponse:
        self.faults.clear()
        return self._no_content()

    def _config_dto(self) -> dict[str, Any]:
        return {
            "merchantId": self.merchant_id,
            "duplicateMode": self._duplicate_mode,
            "declineStyle": self._decline_style,
            "pendingPolls": self._pending_polls,
            "callbacks": self.callbacks.enabled,
            "callbackDuplicates": self.callbacks.duplicates,
            "hangSeconds": self.faults.hang_seconds,
        }

    def _control_get_config(self, _: SimRequest, __: dict[str, str]) -> SimResponse:
        return self._json_response(200, self._config_dto())

    def _control_set_config(self, request: SimRequest, _: dict[str, str]) -> SimResponse:
        body = self._body(request)
        try:
            if "duplicateMode" in body:
                self.duplicate_mode = body["duplicateMode"]
            if "declineStyle" in body:
                self.decline_style = body["declineStyle"]
            if "pendingPolls" in body:
                self.pending_polls = body["pendingPolls"]
            if "callbacks" in body:
                if not isinstance(body["callbacks"], bool):
                    raise InvalidInput("callbacks must be true or false")
                self.callbacks.enabled = body["callbacks"]
            if "callbackDuplicates" in body:
                extra = body["callbackDuplicates"]
                if isinstance(extra, bool) or not isinstance(extra, int) or not 0 <= extra <= 5:
                    raise InvalidInput("callbackDuplicates must be an integer from 0 to 5")
                self.callbacks.duplicates = extra
            if "hangSeconds" in body:
                hang = body["hangSeconds"]
                if isinstance(hang, bool) or not isinstance(hang, int | Decimal):
                    raise InvalidInput("hangSeconds must be a number")
                self.faults.hang_seconds = float(hang)
        except BillingError as exc:
            raise _validation({"config": [str(exc)]}) from None
        return self._json_response(200, self._config_dto())

    def _control_complete(self, request: SimRequest, args: dict[str, str]) -> SimResponse:
        body = self._body(request)
        card_number = body.get("cardNumber")
        if not isinstance(card_number, str):
            raise _validation({"cardNumber": ["cardNumber is required (a string of digits)."]})
        instrument = self._complete(
            args["session_id"], card_number, body.get("expMonth", 12), body.get("expYear", 2030)
        )
        return self._json_response(200, instrument)

    def _control_instrument(self, request: SimRequest, args: dict[str, str]) -> SimResponse:
        body = self._body(request)
        card_number = body.get("cardNumber")
        if not isinstance(card_number, str):
            raise _validation({"cardNumber": ["cardNumber is required (a string of digits)."]})
        instrument = self._add_instrument(
            args["customer_id"], card_number, body.get("expMonth", 12), body.get("expYear", 2030)
        )
        return self._json_response(200, instrument)

    def _html(self, status: int, page: str) -> SimResponse:
        return SimResponse(
            status, {"content-type": "text/html; charset=utf-8"}, page.encode("utf-8")
        )

    def _checkout_get(self, _: SimRequest, args: dict[str, str]) -> SimResponse:
        with self._lock:
            session = self._sessions.get(args["session_id"])
            if session is None:
                return self._html(404, checkout_page(args["session_id"], "not found"))
            return self._html(200, checkout_page(session.id, session.status(self.clock.now())))

    def _checkout_post(self, request: SimRequest, args: dict[str, str]) -> SimResponse:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        try:
            instrument = self._complete(
                args["session_id"],
                form.get("cardNumber", ""),
                form.get("expMonth", "12"),
                form.get("expYear", "2030"),
            )
        except ApiError as exc:
            problems = "; ".join(m for ms in (exc.params or {}).values() for m in ms)
            with self._lock:
                session = self._sessions.get(args["session_id"])
                status = session.status(self.clock.now()) if session else "not found"
            page = checkout_page(args["session_id"], status, problems or exc.message)
            return self._html(exc.status, page)
        note = f"Card {instrument['cardName']} saved."
        return self._html(200, checkout_page(args["session_id"], "completed", note))


# ----- small helpers -------------------------------------------------------------------------


def _billing_error(exc: ApiError) -> BillingError:
    detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in (exc.params or {}).items())
    message = f"{exc.message} {detail}".strip() if detail else exc.message
    if exc.status == 404:
        return NotFound(message)
    if exc.status == 409:
        return Conflict(message)
    return InvalidInput(message)


def _merchant_not_found(merchant_id: Any) -> ApiError:
    return ApiError(400, "merchant-not-found", f"Merchant {merchant_id} was not found.")


def _as_int(value: Any) -> int | None:
    """An integer from JSON or a query string; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _required_text(body: dict[str, Any], name: str, params: dict[str, list[str]]) -> str | None:
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        params[name] = [f"The {name} field is required."]
        return None
    return value


def _read_amount(value: Any, params: dict[str, list[str]]) -> tuple[str | None, Decimal | None]:
    """Validate `amount{currency,total}`: a supported currency, a positive JSON number."""
    if not isinstance(value, dict):
        params["amount"] = ["The amount field is required: {total, currency}."]
        return None, None
    currency = value.get("currency")
    if not isinstance(currency, str) or currency not in CURRENCY_DIGITS:
        supported = ", ".join(sorted(CURRENCY_DIGITS))
        params["amount.currency"] = [f"currency must be one of {supported}."]
        currency = None
    total = value.get("total")
    if isinstance(total, bool) or not isinstance(total, int | Decimal):
        params["amount.total"] = ["amount.total must be a decimal number in major units."]
        return currency, None
    amount = Decimal(total)
    try:
        parse_amount(amount, currency or "UYU")
    except InvalidInput as exc:
        params["amount.total"] = [str(exc)]
        return currency, None
    return currency, amount


def _read_payment_method(value: Any, params: dict[str, list[str]]) -> tuple[str | None, str | None]:
    """The token to charge: `paymentInstrument.token`, leniently also `paymentMethod.token`."""
    if not isinstance(value, dict):
        params["paymentMethod"] = ["The paymentMethod field is required."]
        return None, None
    source = value.get("source", "token")
    if source == "card":
        return "card", None
    if source != "token":
        params["paymentMethod.source"] = ["The sandbox supports source 'token' only."]
        return None, None
    instrument = value.get("paymentInstrument")
    token = instrument.get("token") if isinstance(instrument, dict) else None
    token = token if token is not None else value.get("token")
    if not isinstance(token, str) or not token:
        params["paymentMethod.paymentInstrument.token"] = ["The token field is required."]
        return "token", None
    return "token", token


def _text_decimals(value: Any, as_text: bool) -> Any:
    if not as_text:
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _text_decimals(v, as_text) for k, v in value.items()}
    if isinstance(value, list):
        return [_text_decimals(v, as_text) for v in value]
    return value


def _auth_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def _issuer_id(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:4], 16)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _floats(params: dict[str, Any]) -> dict[str, Any]:
    """JSON fractions arrive as Decimal; fault parameters are durations, so floats are fine."""
    return {k: float(v) if isinstance(v, Decimal) else v for k, v in params.items()}
