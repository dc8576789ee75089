"""Wire format and tolerant response models of the Plexo client (no HTTP)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from billing.errors import InvalidInput
from billing.plexo.models import (
    CustomerPayload,
    Document,
    ErrorEnvelope,
    PaymentRequest,
    PlexoCustomer,
    PlexoInstrument,
    TokenizationSession,
)
from billing.plexo.outcome import parse_retry_after
from billing.plexo.wire import camel_keys, decode_json, encode_json, unwrap_list

# -- encode_json / decode_json -------------------------------------------------------------------


def test_decimal_is_written_as_a_number_with_its_exact_digits() -> None:
    raw = encode_json({"amount": {"total": Decimal("590.50"), "currency": "UYU"}})
    assert raw == b'{"amount": {"total": 590.50, "currency": "UYU"}}'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1.00"), b"1.00"),
        (Decimal("0.10"), b"0.10"),
        (Decimal("10000.00"), b"10000.00"),
        (Decimal("1E+2"), b"100"),  # never scientific notation on the wire
        (Decimal("-3.5"), b"-3.5"),
    ],
)
def test_decimal_forms(value: Decimal, text: bytes) -> None:
    assert encode_json(value) == text


def test_other_json_values_match_stdlib() -> None:
    value = {"s": 'a"b\\ñ', "i": 3, "b": True, "n": None, "l": [1, "x", False], "t": ("y",)}
    assert json.loads(encode_json(value)) == {**value, "t": ["y"]}
    assert encode_json(value).decode() == json.dumps({**value, "t": ["y"]})


def test_round_trip_keeps_decimal_exact() -> None:
    body = {"total": Decimal("590.50"), "nested": [Decimal("0.01")]}
    assert decode_json(encode_json(body)) == body
    assert isinstance(decode_json(b'{"x": 1.10}')["x"], Decimal)
    assert str(decode_json(b'{"x": 1.10}')["x"]) == "1.10"


@pytest.mark.parametrize("bad", [1.5, {"total": 590.5}, [0.1]])
def test_float_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="float"):
        encode_json(bad)


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity")])
def test_non_finite_decimal_is_refused(bad: Decimal) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        encode_json({"total": bad})


def test_unencodable_values_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_json({1: "x"})
    with pytest.raises(TypeError):
        encode_json({"when": date(2025, 1, 1)})


# -- tolerant shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        [{"a": 1}],
        {"items": [{"a": 1}], "page": 0, "size": 5, "total": 1},
        {"data": [{"a": 1}]},
        {"results": [{"a": 1}]},
        {"Items": [{"a": 1}]},
    ],
)
def test_unwrap_list_shapes(body: object) -> None:
    assert unwrap_list(body) == [{"a": 1}]


@pytest.mark.parametrize("body", [{"total": 0}, "text", None, {"items": "x"}])
def test_unwrap_list_refuses_what_is_not_a_list(body: object) -> None:
    with pytest.raises(ValueError, match="not a list"):
        unwrap_list(body)


def test_camel_keys_prefers_camel_on_clash() -> None:
    assert camel_keys({"ReferenceId": "P", "referenceId": "c", "Id": 1}) == {
        "referenceId": "c",
        "id": 1,
    }
    assert camel_keys({"referenceId": "c", "ReferenceId": "P"})["referenceId"] == "c"


# -- customers ---------------------------------------------------------------------------------


def test_customer_payload_body_is_camel_case() -> None:
    payload = CustomerPayload(
        reference_id="cust-1",
        email="ana@example.com",
        first_name="Ana",
        last_name="Pérez",
        phone="+59899123456",
        document={"type": "CI", "value": "12345672"},
        address={"line1": "Av. 18 de Julio 1234", "postal_code": "11200"},
        birthdate=date(1990, 5, 1),
        metadata={"plan": "gold"},
    )
    assert payload.to_body() == {
        "referenceId": "cust-1",
        "email": "ana@example.com",
        "firstName": "Ana",
        "lastName": "Pérez",
        "phone": "+59899123456",
        "document": {"type": "CI", "value": "12345672"},
        "address": {"line1": "Av. 18 de Julio 1234", "postalCode": "11200"},
        "birthdate": "1990-05-01",
        "metadata": {"plan": "gold"},
    }


def test_customer_payload_leaves_out_absent_fields() -> None:
    body = CustomerPayload(reference_id="c", email="e@example.com").to_body()
    assert body == {"referenceId": "c", "email": "e@example.com", "metadata": {}}


def test_customer_payload_refuses_unknown_field() -> None:
    with pytest.raises(ValidationError):
        CustomerPayload(reference_id="c", email="e@x.uy", nickname="x")  # type: ignore[call-arg]


def test_customer_from_camel_case() -> None:
    customer = PlexoCustomer.from_api(
        {
            "id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "referenceId": "cust-1",
            "email": "ana@example.com",
            "firstName": "Ana",
            "lastName": "Pérez",
            "phone": "+59899123456",
            "document": {"type": "CI", "value": "12345672"},
            "address": {"line1": "x", "postalCode": "11200"},
            "birthdate": "1990-05-01",
            "metadata": {"plan": "gold", "seats": 3},
            "status": "active",
            "createdAt": "2025-01-01T00:00:00Z",
            "somethingNew": {"x": 1},
        }
    )
    assert customer.id == "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert customer.reference_id == "cust-1"
    assert customer.first_name == "Ana" and customer.last_name == "Pérez"
    assert customer.document == Document(type="CI", value="12345672")
    assert customer.address == {"line1": "x", "postal_code": "11200"}
    assert customer.birthdate == date(1990, 5, 1)
    assert customer.metadata == {"plan": "gold", "seats": "3"}
    assert customer.status == "active"


def test_customer_from_pascal_case_and_identification() -> None:
    customer = PlexoCustomer.from_api(
        {
            "Id": "u-1",
            "ReferenceId": "cust-2",
            "Email": "b@example.com",
            "Identification": {"Type": "RUT", "Value": "211234560018"},
            "Birthdate": "1985-12-31T00:00:00",
            "Metadata": None,
        }
    )
    assert customer.reference_id == "cust-2"
    assert customer.email == "b@example.com"
    assert customer.document == Document(type="RUT", value="211234560018")
    assert customer.birthdate == date(1985, 12, 31)
    assert customer.metadata == {}
    assert customer.address is None


def test_customer_odd_optional_values_are_dropped_not_fatal() -> None:
    customer = PlexoCustomer.from_api({"id": "u", "birthdate": "not a date", "document": "CI"})
    assert customer.birthdate is None and customer.document is None


def test_customer_without_id_is_refused() -> None:
    with pytest.raises(ValueError, match="no id"):
        PlexoCustomer.from_api({"referenceId": "x"})


# -- instruments -------------------------------------------------------------------------------


def test_instrument_last4_from_card_name() -> None:
    item = PlexoInstrument.from_api(
        {
            "token": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
            "status": "active",
            "cardName": "555555XXXXXX4444",
            "bin": "555555",
            "cardType": "credit",
            "expMonth": 12,
            "expYear": 2027,
            "issuer": {"id": "mastercard", "name": "Mastercard"},
            "createdAt": "2025-01-01T00:00:00Z",
        }
    )
    assert item.token == "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
    assert item.last4 == "4444"
    assert item.bin == "555555"
    assert item.brand == "Mastercard"
    assert item.card_type == "credit"
    assert (item.exp_month, item.exp_year) == (12, 2027)
    assert item.status == "active"


def test_instrument_last4_field_wins_and_pascal_case_and_short_year() -> None:
    item = PlexoInstrument.from_api(
        {
            "Token": "t",
            "Last4": "1111",
            "CardName": "444433XXXXXX9999",
            "ExpMonth": "03",
            "ExpYear": "27",
            "Brand": "visa",
            "Status": "ACTIVE",
        }
    )
    assert item.last4 == "1111"
    assert (item.exp_month, item.exp_year) == (3, 2027)
    assert item.brand == "visa"
    assert item.status == "active"


def test_instrument_fields_under_card() -> None:
    item = PlexoInstrument.from_api(
        {"token": "t", "card": {"bin": "450799", "last4": "4905", "type": "debit", "expYear": 30}}
    )
    assert (item.bin, item.last4, item.card_type, item.exp_year) == (
        "450799",
        "4905",
        "debit",
        2030,
    )


def test_instrument_masked_name_without_digits_has_no_last4() -> None:
    item = PlexoInstrument.from_api({"token": "t", "cardName": "VISA", "expMonth": 13})
    assert item.last4 is None and item.exp_month is None


def test_instrument_without_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        PlexoInstrument.from_api({"cardName": "555555XXXXXX4444"})


# -- sessions ----------------------------------------------------------------------------------


def test_session_prefers_redirect_action() -> None:
    session = TokenizationSession.from_api(
        {
            "id": "sess-1",
            "expiresAt": "2025-07-01T12:30:00Z",
            "actions": [
                {"rel": "self", "href": "https://checkout/embedded", "method": "EMBEDDED"},
                {"rel": "REDIRECT", "href": "https://checkout/redirect", "method": "GET"},
            ],
        }
    )
    assert session.url == "https://checkout/redirect"
    assert session.expires_at == datetime(2025, 7, 1, 12, 30, tzinfo=UTC)


def test_session_redirect_named_by_method_and_offset_converted_to_utc() -> None:
    session = TokenizationSession.from_api(
        {
            "Id": "s",
            "ExpiresAt": "2025-07-01T09:30:00-03:00",
            "Actions": [
                {"Rel": "pay", "Href": "https://a"},
                {"method": "redirect", "href": "https://b"},
            ],
        }
    )
    assert session.url == "https://b"
    assert session.expires_at == datetime(2025, 7, 1, 12, 30, tzinfo=UTC)
    assert session.expires_at is not None and session.expires_at.tzinfo is UTC


def test_session_falls_back_to_first_action_with_href() -> None:
    session = TokenizationSession.from_api(
        {"id": "s", "actions": [{"rel": "x"}, {"rel": "self", "href": "https://first"}]}
    )
    assert session.url == "https://first"
    assert session.expires_at is None


def test_session_without_url_is_refused() -> None:
    with pytest.raises(ValueError, match="URL"):
        TokenizationSession.from_api({"id": "s", "actions": []})


# -- payment request ---------------------------------------------------------------------------


def _request(**changes: object) -> PaymentRequest:
    fields: dict[str, object] = {
        "reference_id": "INV-1-1",
        "invoice_number": "INV-1",
        "customer_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "amount_minor": 59000,
        "currency": "UYU",
        "token": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
        "metadata": {"subscription": "42", "period": "2025-07-01"},
    }
    fields.update(changes)
    return PaymentRequest(**fields)


def test_payment_body_is_the_minimal_recurring_charge() -> None:
    body = _request().to_body(12345)
    assert body == {
        "merchantId": 12345,
        "referenceId": "INV-1-1",
        "invoiceNumber": "INV-1",
        "customerId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "amount": {"total": Decimal("590.00"), "currency": "UYU"},
        "paymentMethod": {
            "source": "token",
            "paymentInstrument": {"token": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"},
        },
        "capture": {"method": "automatic"},
        "installments": 1,
        "metadata": {"subscription": "42", "period": "2025-07-01"},
    }
    assert b'"total": 590.00' in encode_json(body)


def test_payment_body_optional_fields() -> None:
    body = _request(customer_id=None, description="Plan oro", statement_descriptor="ACME").to_body(
        1
    )
    assert "customerId" not in body
    assert body["description"] == "Plan oro"
    assert body["statementDescriptor"] == "ACME"


@pytest.mark.parametrize("amount", [590.0, "59000", True, 0, -1])
def test_payment_amount_must_be_positive_int_minor_units(amount: object) -> None:
    with pytest.raises(ValidationError):
        _request(amount_minor=amount)


def test_payment_currency_is_checked_and_normalised() -> None:
    assert _request(currency="usd").currency == "USD"
    with pytest.raises((ValidationError, InvalidInput)):
        _request(currency="EUR")


# -- error envelope and Retry-After ------------------------------------------------------------


def test_error_envelope_fields() -> None:
    env = ErrorEnvelope.parse(
        {
            "code": "request-validation-errors",
            "message": "One or more validation errors occurred",
            "type": "invalid-request-error",
            "status": 400,
            "traceId": "0HMVG9K3R5T4J:00000001",
            "params": {"invoiceNumber": ["The invoiceNumber field is required."]},
        }
    )
    assert env is not None
    assert env.code == "request-validation-errors"
    assert env.type == "invalid-request-error"
    assert env.status == 400
    assert env.trace_id == "0HMVG9K3R5T4J:00000001"
    assert env.params == {"invoiceNumber": ["The invoiceNumber field is required."]}
    assert env.decline_code is None


@pytest.mark.parametrize("body", [None, [], "oops", {"id": "x"}])
def test_error_envelope_absent(body: object) -> None:
    assert ErrorEnvelope.parse(body) is None


NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Tue, 01 Jul 2025 12:00:30 GMT", 30.0),
        ("Tue, 01 Jul 2025 11:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("NaN", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds
