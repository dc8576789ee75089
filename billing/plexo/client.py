"""The Plexo REST client: one httpx.Client, Basic auth, typed errors, charge outcomes.

`create_payment` never raises for gateway or network trouble: it returns a `ChargeOutcome`,
and anything ambiguous is `unknown`. Every other call raises a `PlexoError` subclass.
Safe to share between threads (httpx.Client is; this class keeps no other mutable state).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from billing.clock import Clock, SystemClock
from billing.plexo.errors import (
    AuthenticationFailed,
    DuplicateReference,
    GatewayUnavailable,
    PaymentNotFound,
    PlexoError,
    PlexoNotFound,
    ValidationRejected,
)
from billing.plexo.models import (
    CustomerPayload,
    ErrorEnvelope,
    PaymentRequest,
    PlexoCustomer,
    PlexoInstrument,
    TokenizationSession,
)
from billing.plexo.outcome import (
    DUPLICATE_REFERENCE,
    VALIDATION_CODES,
    VALIDATION_TYPES,
    ChargeOutcome,
    outcome_from_error,
    outcome_from_payment,
    parse_retry_after,
    plexo_envelope,
)
from billing.plexo.wire import decode_json, encode_json, field, unwrap_list

log = logging.getLogger(__name__)

ResponseHook = Callable[[str, int | None, float], None]
T = TypeVar("T")

# How many payments the referenceId query asks for; matching is done here, exactly.
QUERY_PAGE_SIZE = 5
# Largest page the payment listing asks for (the sandbox's limit too).
LIST_PAGE_SIZE = 100
# Longest piece of gateway text copied into an error message.
MAX_GATEWAY_TEXT = 300

# Bounded route labels for metrics (never an id in a label).
ROUTE_CUSTOMERS = "/v1/customers"
ROUTE_CUSTOMER = "/v1/customers/{customerId}"
ROUTE_INSTRUMENTS = "/v1/customers/{customerId}/payment-instruments"
ROUTE_INSTRUMENT = "/v1/customers/{customerId}/payment-instruments/{token}"
ROUTE_SESSIONS = "/v1/sessions"
ROUTE_PAYMENTS = "/v1/payments"
ROUTE_PAYMENT = "/v1/payments/{paymentId}"
ROUTE_QUERY = "/v1/payments/query"


@dataclass(frozen=True, slots=True)
class ListedPayment:
    """One payment of Plexo's listing, read tolerantly: a field Plexo left out or sent in an
    odd shape is None (the amount, its currency, the time), never a guess."""

    payment_id: str | None
    reference_id: str | None
    kind: str  # approved | declined | pending | unknown, as outcome_from_payment classifies
    status: str | None  # Plexo's own word ("approved", "refunded", "denied"...)
    total: Decimal | None  # major units, as sent
    currency: str | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class PaymentPage:
    items: list[ListedPayment]
    total: int | None  # how many payments Plexo says match, when it says


def listed_payment(item: Any) -> ListedPayment:
    """A listing item as a ListedPayment; ValueError when it is not a payment object at all."""
    if not isinstance(item, Mapping):
        raise ValueError("a listed payment is not an object")
    outcome = outcome_from_payment(item, http_status=200)
    reference = field(item, "referenceId")
    amount = field(item, "amount")
    total: Decimal | None = None
    currency: str | None = None
    if isinstance(amount, Mapping):
        raw_total = field(amount, "total")
        if isinstance(raw_total, Decimal | int | str) and not isinstance(raw_total, bool):
            try:
                total = Decimal(str(raw_total).strip())
            except InvalidOperation:
                total = None
            if total is not None and not total.is_finite():
                total = None
        raw_currency = field(amount, "currency")
        currency = raw_currency.strip().upper() or None if isinstance(raw_currency, str) else None
    return ListedPayment(
        payment_id=outcome.payment_id,
        reference_id=reference.strip() or None if isinstance(reference, str) else None,
        kind=outcome.kind,
        status=outcome.status,
        total=total,
        currency=currency,
        created_at=_instant(field(item, "createdAt")),
    )


def _instant(value: Any) -> datetime | None:
    """An ISO-8601 time from Plexo (UTC when it names no offset); None when unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


def _segment(value: str) -> str:
    """One path segment, escaped so an id can never change the route."""
    if not value:
        raise ValueError("empty id in a Plexo path")
    return quote(value, safe="")


class PlexoClient:
    """Synchronous client for the calls billing makes; see plexo-api.md for the contract."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        api_key: str,
        merchant_id: int,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "plexo-billing/0.1",
        on_response: ResponseHook | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.merchant_id = merchant_id
        self._on_response = on_response
        self._clock: Clock = clock or SystemClock()
        basic = base64.b64encode(f"{client_id}:{api_key}".encode()).decode("ascii")
        # Longest first, so a secret inside another is not half-replaced.
        self._secrets = sorted(
            {s for s in (api_key, basic, f"{client_id}:{api_key}") if len(s) >= 4},
            key=len,
            reverse=True,
        )
        self._http = httpx.Client(
            base_url=base_url,
            auth=httpx.BasicAuth(client_id, api_key),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            follow_redirects=False,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- customers ---------------------------------------------------------------------------

    def create_customer(self, payload: CustomerPayload) -> PlexoCustomer:
        body = self._call("POST", ROUTE_CUSTOMERS, "/v1/customers", body=payload.to_body())
        return self._read(PlexoCustomer.from_api, body, ROUTE_CUSTOMERS)

    def get_customer(self, customer_id: str) -> PlexoCustomer:
        path = f"/v1/customers/{_segment(customer_id)}"
        body = self._call("GET", ROUTE_CUSTOMER, path)
        return self._read(PlexoCustomer.from_api, body, ROUTE_CUSTOMER)

    def update_customer(self, customer_id: str, payload: CustomerPayload) -> PlexoCustomer:
        """PUT replaces the whole customer; an empty 2xx body is answered with a fresh GET."""
        path = f"/v1/customers/{_segment(customer_id)}"
        body = self._call("PUT", ROUTE_CUSTOMER, path, body=payload.to_body())
        if body is None:
            return self.get_customer(customer_id)
        return self._read(PlexoCustomer.from_api, body, ROUTE_CUSTOMER)

    def delete_customer(self, customer_id: str) -> None:
        self._call("DELETE", ROUTE_CUSTOMER, f"/v1/customers/{_segment(customer_id)}")

    def list_customers(self) -> list[PlexoCustomer]:
        """One page as Plexo returns it (its pagination parameters are not documented)."""
        body = self._call("GET", ROUTE_CUSTOMERS, "/v1/customers")
        items = self._read(unwrap_list, body, ROUTE_CUSTOMERS)
        return [self._read(PlexoCustomer.from_api, item, ROUTE_CUSTOMERS) for item in items]

    def find_customer(self, reference_id: str) -> PlexoCustomer | None:
        """The customer with this referenceId, filtered here (the query filter is undocumented)."""
        body = self._call(
            "GET", ROUTE_CUSTOMERS, "/v1/customers", params={"referenceId": reference_id}
        )
        items = self._read(unwrap_list, body, ROUTE_CUSTOMERS)
        for item in items:
            customer = self._read(PlexoCustomer.from_api, item, ROUTE_CUSTOMERS)
            if customer.reference_id == reference_id:
                return customer
        return None

    def customer_gone(self, customer_id: str) -> bool:
        """True only when Plexo itself says the customer does not exist (its 404 envelope).

        A bare 404 (a proxy, a wrong base URL) proves nothing, so it counts as "not known gone".
        """
        try:
            self.get_customer(customer_id)
        except PlexoNotFound as exc:
            return exc.from_plexo
        return False

    def verify_credentials(self) -> None:
        """Cheap authenticated call; raises AuthenticationFailed or GatewayUnavailable."""
        self._call("GET", ROUTE_CUSTOMERS, "/v1/customers")

    # -- instruments and tokenization ----------------------------------------------------------

    def list_instruments(self, customer_id: str) -> list[PlexoInstrument]:
        path = f"/v1/customers/{_segment(customer_id)}/payment-instruments"
        body = self._call("GET", ROUTE_INSTRUMENTS, path)
        items = self._read(unwrap_list, body, ROUTE_INSTRUMENTS)
        return [self._read(PlexoInstrument.from_api, item, ROUTE_INSTRUMENTS) for item in items]

    def delete_instrument(self, customer_id: str, token: str) -> None:
        path = f"/v1/customers/{_segment(customer_id)}/payment-instruments/{_segment(token)}"
        self._call("DELETE", ROUTE_INSTRUMENT, path)

    def find_session(self, customer_id: str, reference_id: str) -> TokenizationSession | None:
        """The session opened for this customer under this referenceId, if Plexo lists it."""
        body = self._call("GET", ROUTE_SESSIONS, "/v1/sessions")
        for item in self._read(unwrap_list, body, ROUTE_SESSIONS):
            if (
                isinstance(item, Mapping)
                and field(item, "referenceId") == reference_id
                and field(item, "customerId") == customer_id
            ):
                return self._read(TokenizationSession.from_api, item, ROUTE_SESSIONS)
        return None

    def create_tokenization_session(
        self,
        customer_id: str,
        reference_id: str,
        *,
        callback_url: str | None = None,
        redirect_url: str | None = None,
    ) -> TokenizationSession:
        """Open a hosted page where the customer saves a card as a `store` token."""
        settings: dict[str, Any] = {
            "tokenization": {
                "type": "store",
                "allowedCardTypes": ["credit", "debit"],
                "features": ["create", "list", "select", "delete"],
            },
            "paymentMethodTypes": ["card"],
        }
        if callback_url is not None:
            settings["callbacks"] = {"tokenizationCallbackUrl": callback_url}
        if redirect_url is not None:
            settings["redirects"] = {"defaultUrl": redirect_url, "cancelUrl": redirect_url}
        body = self._call(
            "POST",
            ROUTE_SESSIONS,
            "/v1/sessions",
            body={
                "merchantId": self.merchant_id,
                "referenceId": reference_id,
                "type": "tokenization",
                "customerId": customer_id,
                "settings": settings,
            },
        )
        return self._read(TokenizationSession.from_api, body, ROUTE_SESSIONS)

    # -- payments ----------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> ChargeOutcome:
        """Charge a saved card. Never raises for gateway trouble: ambiguity is `unknown`."""
        content = encode_json(request.to_body(self.merchant_id))  # before anything is sent
        route = f"POST {ROUTE_PAYMENTS}"
        try:
            response = self._exchange("POST", route, "/v1/payments", content=content)
        except httpx.TimeoutException as exc:
            return ChargeOutcome("unknown", detail=self._scrub(f"timeout: {type(exc).__name__}"))
        except httpx.HTTPError as exc:
            return ChargeOutcome("unknown", detail=self._scrub(f"transport error: {exc!r}"))
        except Exception as exc:  # the request may have left: only Plexo can tell
            detail = self._scrub(f"send failed: {exc!r}")
            log.warning(detail, extra={"event": "plexo.payment_send_failed"})
            return ChargeOutcome("unknown", detail=detail)
        try:
            return self._payment_outcome(response, request.reference_id)
        except Exception as exc:  # a surprise in the answer must not lose the attempt
            detail = self._scrub(f"unreadable answer: {exc!r}")
            log.warning(detail, extra={"event": "plexo.payment_answer_unreadable"})
            return ChargeOutcome("unknown", http_status=response.status_code, detail=detail)

    def _payment_outcome(self, response: httpx.Response, reference_id: str) -> ChargeOutcome:
        status = response.status_code
        try:
            body = decode_json(response.content) if response.content else None
        except ValueError:
            body = None
        if 200 <= status < 300:
            if not isinstance(body, Mapping):
                return ChargeOutcome("unknown", http_status=status, detail="2xx without a payment")
            return self._scrub_outcome(
                outcome_from_payment(body, http_status=status, reference_id=reference_id)
            )
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock.now())
        return self._scrub_outcome(
            outcome_from_error(status, body, retry_after=retry_after, reference_id=reference_id)
        )

    def get_payment(self, payment_id: str, reference_id: str | None = None) -> ChargeOutcome:
        """The payment's current state. Raises PaymentNotFound (404) or another PlexoError.

        With `reference_id`, a payment that names another referenceId is `unknown`, not ours.
        """
        path = f"/v1/payments/{_segment(payment_id)}"
        body = self._call("GET", ROUTE_PAYMENT, path, not_found=PaymentNotFound)
        if not isinstance(body, Mapping):
            raise self._malformed(ROUTE_PAYMENT, "no payment in the answer")
        outcome = outcome_from_payment(body, http_status=200, reference_id=reference_id)
        return self._scrub_outcome(outcome)

    def find_payment(self, reference_id: str) -> ChargeOutcome | None:
        """The payment with exactly this referenceId, or None when Plexo has none.

        Raises (GatewayUnavailable and the rest) whenever the answer is not a readable list,
        so that "don't know" can never be mistaken for "absent".
        """
        params = {
            "merchantId": str(self.merchant_id),
            "referenceId": reference_id,
            "size": str(QUERY_PAGE_SIZE),
        }
        body = self._call("GET", ROUTE_QUERY, "/v1/payments/query", params=params)
        items = self._read(unwrap_list, body, ROUTE_QUERY)
        matches = [
            outcome_from_payment(item, http_status=200)
            for item in items
            if isinstance(item, Mapping) and field(item, "referenceId") == reference_id
        ]
        if not matches:
            return None
        # Two payments under one reference should not exist; if they do, money taken wins.
        rank = {"approved": 0, "pending": 1, "unknown": 2, "declined": 3}
        return self._scrub_outcome(min(matches, key=lambda o: rank[o.kind]))

    def list_payments(self, page: int, size: int = LIST_PAGE_SIZE) -> PaymentPage:
        """One page (1-based) of the merchant's payments, oldest first, as the query returns it.

        Raises a PlexoError when the answer is not a recognisable list (a bare array, or one
        under items/data/results), or an item is not a payment object: never a short page.
        """
        params = {"merchantId": str(self.merchant_id), "page": str(page), "size": str(size)}
        body = self._call("GET", ROUTE_QUERY, "/v1/payments/query", params=params)
        items = self._read(unwrap_list, body, ROUTE_QUERY)
        payments = [self._read(listed_payment, item, ROUTE_QUERY) for item in items]
        total = field(body, "total") if isinstance(body, Mapping) else None
        counted = total if isinstance(total, int) and not isinstance(total, bool) else None
        return PaymentPage(payments, counted)

    # -- plumbing ----------------------------------------------------------------------------

    def _exchange(
        self,
        method: str,
        route: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request and report its latency (status None when no answer came)."""
        headers = {"Content-Type": "application/json"} if content is not None else None
        started = time.perf_counter()
        status: int | None = None
        try:
            response = self._http.request(
                method, path, content=content, params=params, headers=headers
            )
            status = response.status_code
            return response
        finally:
            self._report(route, status, time.perf_counter() - started)

    def _report(self, route: str, status: int | None, seconds: float) -> None:
        if self._on_response is None:
            return
        try:
            self._on_response(route, status, seconds)
        except Exception:  # metrics must never break a call
            log.exception("plexo.metrics_hook_failed", extra={"event": "plexo.hook_failed"})

    def _call(
        self,
        method: str,
        route_path: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        not_found: type[PlexoNotFound] = PlexoNotFound,
    ) -> Any:
        """A non-payment call: the parsed 2xx body (None if empty), else a typed PlexoError."""
        route = f"{method} {route_path}"
        content = encode_json(body) if body is not None else None
        try:
            response = self._exchange(method, route, path, content=content, params=params)
        except httpx.TimeoutException as exc:
            raise GatewayUnavailable(
                f"Plexo {route}: timed out ({type(exc).__name__})", code="timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(
                self._scrub(f"Plexo {route}: {type(exc).__name__}: {exc}"), code="network"
            ) from None
        if 200 <= response.status_code < 300:
            if not response.content.strip():
                return None
            try:
                return decode_json(response.content)
            except ValueError:
                raise self._malformed(route, "answer is not JSON", response) from None
        raise self._error_for(route, response, not_found)

    def _error_for(
        self, route: str, response: httpx.Response, not_found: type[PlexoNotFound]
    ) -> PlexoError:
        status = response.status_code
        try:
            body = decode_json(response.content)
        except ValueError:
            body = None
        envelope = ErrorEnvelope.parse(body)
        code = envelope.code if envelope else None
        trace_id = (envelope.trace_id if envelope else None) or response.headers.get(
            "x-correlation-id"
        )
        text = f"Plexo {route}: HTTP {status}"
        if code:
            text += f" {code}"
        if envelope and envelope.message:
            text += f": {envelope.message[:MAX_GATEWAY_TEXT]}"
        if envelope and envelope.params:
            fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in envelope.params.items())
            text += f" [{fields[:MAX_GATEWAY_TEXT]}]"
        if trace_id:
            text += f" (trace {trace_id})"
        message = self._scrub(text)
        common: dict[str, Any] = {
            "status": status,
            "code": code,
            "trace_id": trace_id,
            "from_plexo": plexo_envelope(body, status) is not None,
        }
        if status in (401, 403):
            return AuthenticationFailed(message, **common)
        if status == 404:
            return not_found(message, **common)
        if status == 409 or code == DUPLICATE_REFERENCE:
            return DuplicateReference(message, **common)
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock.now())
            return GatewayUnavailable(message, retry_after=retry_after, **common)
        if (
            status in (400, 422)
            and envelope
            and (code in VALIDATION_CODES or envelope.type in VALIDATION_TYPES or envelope.params)
        ):
            return ValidationRejected(message, params=envelope.params, **common)
        return PlexoError(message, **common)

    def _read(self, parse: Callable[[Any], T], body: Any, route: str) -> T:
        """Apply a tolerant parser; a body it cannot read becomes a PlexoError."""
        try:
            return parse(body)
        except (ValueError, TypeError) as exc:
            raise self._malformed(route, str(exc)) from None

    def _malformed(
        self, route: str, why: str, response: httpx.Response | None = None
    ) -> PlexoError:
        return PlexoError(
            self._scrub(f"Plexo {route}: unexpected answer: {why}"),
            status=response.status_code if response is not None else None,
            code="malformed-response",
        )

    def _scrub(self, text: str) -> str:
        """Remove the credentials from text headed for a message or log."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _scrub_outcome(self, outcome: ChargeOutcome) -> ChargeOutcome:
        return replace(
            outcome,
            detail=self._scrub(outcome.detail),
            decline_message=self._scrub(outcome.decline_message)
            if outcome.decline_message
            else None,
        )
