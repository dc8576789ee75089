"""What billing sends to and reads from Plexo, in billing's own (snake_case) terms.

Requests serialise to Plexo's camelCase. Responses are read tolerantly (`from_api`): camelCase
or PascalCase keys, unknown fields ignored, odd optional values dropped rather than fatal,
because a changed detail in a card listing must not stop a billing run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from billing.domain.money import check_currency, to_major
from billing.plexo.wire import camel_keys

_CAMEL_BOUNDARY = re.compile(r"_([a-z0-9])")
_SNAKE_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")


def to_camel(name: str) -> str:
    """`postal_code` -> `postalCode`."""
    return _CAMEL_BOUNDARY.sub(lambda m: m.group(1).upper(), name)


def to_snake(name: str) -> str:
    """`postalCode` / `PostalCode` -> `postal_code`."""
    return _SNAKE_BOUNDARY.sub(lambda m: "_" + m.group(1).lower(), name).lower()


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, Mapping | list | bool):
        return None
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _date(value: Any) -> date | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _utc(value: Any) -> datetime | None:
    """An ISO-8601 instant as aware UTC; a zone-less one is read as UTC (Plexo sends UTC)."""
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Document(_Model):
    """An identity document, e.g. type "CI" with value "12345672"."""

    type: str
    value: str

    @classmethod
    def from_api(cls, raw: Any) -> Document | None:
        if not isinstance(raw, Mapping):
            return None
        data = camel_keys(raw)
        kind = _text(data.get("type"))
        value = _text(data.get("value")) or _text(data.get("number"))
        return cls(type=kind, value=value) if kind and value else None


class PlexoCustomer(_Model):
    """A customer as Plexo holds it; `id` is Plexo's UUID (the `customerId` of later calls)."""

    id: str
    reference_id: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    document: Document | None = None
    address: dict[str, Any] | None = None
    birthdate: date | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    status: str | None = None

    @classmethod
    def from_api(cls, raw: Any) -> Self:
        """Read a customer body; raises ValueError only when it has no `id`."""
        if not isinstance(raw, Mapping):
            raise ValueError("customer is not a JSON object")
        data = camel_keys(raw)
        customer_id = _text(data.get("id"))
        if customer_id is None:
            raise ValueError("customer has no id")
        address = data.get("address")
        return cls(
            id=customer_id,
            reference_id=_text(data.get("referenceId")),
            email=_text(data.get("email")),
            first_name=_text(data.get("firstName")),
            last_name=_text(data.get("lastName")),
            phone=_text(data.get("phone")),
            document=Document.from_api(data.get("document"))
            or Document.from_api(data.get("identification")),
            address=(
                {to_snake(str(k)): v for k, v in address.items()}
                if isinstance(address, Mapping)
                else None
            ),
            birthdate=_date(data.get("birthdate")),
            metadata=_str_dict(data.get("metadata")),
            status=_text(data.get("status")),
        )


class CustomerPayload(_Model):
    """The body of POST/PUT /v1/customers (PUT replaces: send every field you want kept)."""

    reference_id: str
    email: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    document: Document | None = None
    address: dict[str, str] | None = None
    birthdate: date | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        """camelCase JSON body; absent optional fields are left out, birthdate as YYYY-MM-DD."""
        body: dict[str, Any] = {"referenceId": self.reference_id, "email": self.email}
        for key, value in (
            ("firstName", self.first_name),
            ("lastName", self.last_name),
            ("phone", self.phone),
        ):
            if value is not None:
                body[key] = value
        if self.document is not None:
            body["document"] = {"type": self.document.type, "value": self.document.value}
        if self.address:
            body["address"] = {to_camel(k): v for k, v in self.address.items()}
        if self.birthdate is not None:
            body["birthdate"] = self.birthdate.isoformat()
        body["metadata"] = dict(self.metadata)
        return body


class PlexoInstrument(_Model):
    """A saved card (token) of a customer. No card number beyond bin and last 4 ever arrives."""

    token: str
    status: str | None = None
    brand: str | None = None
    bin: str | None = None
    last4: str | None = None
    card_type: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None

    @classmethod
    def from_api(cls, raw: Any) -> Self:
        """Read one instrument (fields at the top or under `card`); ValueError if no token."""
        if not isinstance(raw, Mapping):
            raise ValueError("instrument is not a JSON object")
        data = camel_keys(raw)
        card = data.get("card")
        if isinstance(card, Mapping):
            data = {**camel_keys(card), **data}
        token = _text(data.get("token"))
        if token is None:
            raise ValueError("instrument has no token")
        card_name = _text(data.get("cardName")) or _text(data.get("name"))
        last4 = _text(data.get("last4")) or _text(data.get("lastFour"))
        if last4 is None and card_name and card_name[-4:].isdigit():
            last4 = card_name[-4:]
        exp_year = _int(data.get("expYear"))
        if exp_year is not None and exp_year < 100:
            exp_year += 2000  # "27" on a card means 2027
        exp_month = _int(data.get("expMonth"))
        if exp_month is not None and not 1 <= exp_month <= 12:
            exp_month = None
        return cls(
            token=token,
            status=(_text(data.get("status")) or "").lower() or None,
            brand=_brand(data),
            bin=_text(data.get("bin")),
            last4=last4,
            card_type=(_text(data.get("cardType")) or _text(data.get("type")) or "").lower()
            or None,
            exp_month=exp_month,
            exp_year=exp_year,
        )


def _brand(data: Mapping[str, Any]) -> str | None:
    for key in ("brand", "cardBrand", "issuer", "paymentMethod"):
        value = data.get(key)
        if isinstance(value, Mapping):
            inner = camel_keys(value)
            text = _text(inner.get("name")) or _text(inner.get("id"))
        else:
            text = _text(value)
        if text:
            return text
    return None


class TokenizationSession(_Model):
    """A hosted card-entry page; `url` is where the customer goes to save a card."""

    id: str
    url: str
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return value

    @classmethod
    def from_api(cls, raw: Any) -> Self:
        """Read a SessionDto: the REDIRECT action's href, else the first action with an href."""
        if not isinstance(raw, Mapping):
            raise ValueError("session is not a JSON object")
        data = camel_keys(raw)
        session_id = _text(data.get("id"))
        if session_id is None:
            raise ValueError("session has no id")
        actions = [camel_keys(a) for a in data.get("actions") or [] if isinstance(a, Mapping)]
        with_href = [a for a in actions if _text(a.get("href"))]
        redirect = [a for a in with_href if _is_redirect(a)]
        chosen = (redirect or with_href)[0] if with_href else None
        url = _text(chosen.get("href")) if chosen is not None else _text(data.get("url"))
        if url is None:
            raise ValueError("session has no action with a URL")
        return cls(id=session_id, url=url, expires_at=_utc(data.get("expiresAt")))


def _is_redirect(action: Mapping[str, Any]) -> bool:
    """Plexo marks the full-page action with rel (or method) "REDIRECT"; match loosely."""
    labels = (_text(action.get("rel")) or "", _text(action.get("method")) or "")
    return any(label.lower() == "redirect" for label in labels)


class PaymentRequest(_Model):
    """One charge of a saved card: the POST /v1/payments of an attempt (and of its resends)."""

    reference_id: str = Field(min_length=1)
    invoice_number: str = Field(min_length=1)
    customer_id: str | None
    amount_minor: StrictInt = Field(gt=0)
    currency: str
    token: str = Field(min_length=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    statement_descriptor: str | None = None
    # Where Plexo POSTs the payment when it settles (a hint we confirm with a GET).
    callback_url: str | None = Field(default=None, repr=False)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return check_currency(value)

    def to_body(self, merchant_id: int) -> dict[str, Any]:
        """The "minimal recurring charge" body; `amount.total` is a Decimal in major units."""
        body: dict[str, Any] = {
            "merchantId": merchant_id,
            "referenceId": self.reference_id,
            "invoiceNumber": self.invoice_number,
        }
        if self.customer_id is not None:
            body["customerId"] = self.customer_id
        body["amount"] = {
            "total": to_major(self.amount_minor, self.currency),
            "currency": self.currency,
        }
        body["paymentMethod"] = {"source": "token", "paymentInstrument": {"token": self.token}}
        body["capture"] = {"method": "automatic"}
        body["installments"] = 1
        if self.description is not None:
            body["description"] = self.description
        if self.statement_descriptor is not None:
            body["statementDescriptor"] = self.statement_descriptor
        body["metadata"] = dict(self.metadata)
        if self.callback_url is not None:
            body["callbackUrl"] = self.callback_url
        return body


@dataclass(frozen=True, slots=True)
class ErrorEnvelope:
    """Plexo's flat error body: code, message, type, status, traceId, params, declineCode."""

    code: str | None
    message: str | None
    type: str | None
    status: int | None
    trace_id: str | None
    params: dict[str, list[str]]
    decline_code: str | None

    @classmethod
    def parse(cls, body: Any) -> ErrorEnvelope | None:
        """The envelope in a parsed body, or None when the body is not one."""
        if not isinstance(body, Mapping):
            return None
        data = camel_keys(body)
        error = data.get("error")
        if isinstance(error, Mapping) and "code" not in data:  # tolerate {"error": {...}}
            data = camel_keys(error)
        params: dict[str, list[str]] = {}
        raw_params = data.get("params") or data.get("errors")
        if isinstance(raw_params, Mapping):
            for key, value in raw_params.items():
                items = value if isinstance(value, list) else [value]
                params[str(key)] = [str(v) for v in items if v is not None]
        envelope = cls(
            code=_text(data.get("code")),
            message=_text(data.get("message")) or _text(data.get("title")),
            type=_text(data.get("type")),
            status=_int(data.get("status")),
            trace_id=_text(data.get("traceId")),
            params=params,
            decline_code=_text(data.get("declineCode")),
        )
        if envelope.code is None and envelope.message is None and envelope.decline_code is None:
            return None
        return envelope
