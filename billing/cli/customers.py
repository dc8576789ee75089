"""billing customers ... and billing instruments ...

`billing customers` is a lazy group (cli/main.py CustomersGroup lists its commands): `list`
lives in cli/customer_list.py so that it need not import what the writing commands do.
"""

from __future__ import annotations

from typing import Any

import typer

from billing.cli.common import (
    ByOption,
    JsonOption,
    OptionalReasonOption,
    cell,
    handle_errors,
    operator_name,
    output,
    settings,
    table,
)
from billing.cli.customer_list import customer_fields
from billing.engine import customers as svc
from billing.errors import InvalidInput
from billing.store.db import session
from billing.store.models import Customer, PaymentInstrument
from billing.wiring import open_context

app = typer.Typer(help="Customers, mirrored at Plexo.", no_args_is_help=True)
instruments_app = typer.Typer(
    help="Saved cards (Plexo tokens) of a customer.", no_args_is_help=True
)


def customer_view(c: Customer) -> dict[str, Any]:
    return customer_fields(c.model_dump())


def instrument_view(i: PaymentInstrument) -> dict[str, Any]:
    return {
        "id": i.id,
        "token": i.token,
        "brand": i.brand,
        "last4": i.last4,
        "expiry": f"{i.exp_month:02d}/{i.exp_year}" if i.exp_month and i.exp_year else None,
        "card_type": i.card_type,
        "default": i.is_default,
        "status": i.status,
    }


def _parse_metadata(pairs: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput("--metadata must look like key=value (a key, '=', then the value)")
        result[key] = value
    return result


def _raw_fields(
    *,
    email: str | None,
    first_name: str | None,
    last_name: str | None,
    phone: str | None,
    document_type: str | None,
    document_number: str | None,
    line1: str | None,
    line2: str | None,
    city: str | None,
    state: str | None,
    postal_code: str | None,
    country: str | None,
    birthdate: str | None,
    metadata: list[str],
    status: str | None,
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "email": email,
        "first_name": first_name,
        "last_name": last_name,
        "phone": phone,
        "document_type": document_type,
        "document_number": document_number,
        "birthdate": birthdate,
        "status": status,
    }
    address = {
        "line1": line1,
        "line2": line2,
        "city": city,
        "state": state,
        "postal_code": postal_code,
        "country": country,
    }
    if any(address.values()):
        raw["address"] = {k: v for k, v in address.items() if v}
    if metadata:
        raw["metadata"] = _parse_metadata(metadata)
    return {k: v for k, v in raw.items() if v is not None}


EmailOpt = typer.Option(None, "--email", help="Required on create.")
FirstOpt = typer.Option(None, "--first-name")
LastOpt = typer.Option(None, "--last-name")
PhoneOpt = typer.Option(None, "--phone", help="E.164, e.g. +59899123456")
DocTypeOpt = typer.Option(None, "--document-type", help="CI, RUT, CPF, PASSPORT or OTHER")
DocNumOpt = typer.Option(None, "--document-number", help="Checked with its check digit.")
Line1Opt = typer.Option(None, "--address-line1")
Line2Opt = typer.Option(None, "--address-line2")
CityOpt = typer.Option(None, "--address-city")
StateOpt = typer.Option(None, "--address-state")
PostalOpt = typer.Option(None, "--address-postal-code")
CountryOpt = typer.Option(None, "--address-country")
BirthOpt = typer.Option(None, "--birthdate", help="YYYY-MM-DD")
MetaOpt = typer.Option([], "--metadata", help="key=value, repeatable")
StatusOpt = typer.Option(None, "--status", help="active or inactive")
NOT_FIELDS = ("reference_id", "as_json", "reason", "by")


@app.command("create")
@handle_errors
def create(
    reference_id: str = typer.Option(..., "--reference-id", help="Your unique customer id."),
    email: str | None = EmailOpt,
    first_name: str | None = FirstOpt,
    last_name: str | None = LastOpt,
    phone: str | None = PhoneOpt,
    document_type: str | None = DocTypeOpt,
    document_number: str | None = DocNumOpt,
    line1: str | None = Line1Opt,
    line2: str | None = Line2Opt,
    city: str | None = CityOpt,
    state: str | None = StateOpt,
    postal_code: str | None = PostalOpt,
    country: str | None = CountryOpt,
    birthdate: str | None = BirthOpt,
    metadata: list[str] = MetaOpt,
    status: str | None = StatusOpt,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a customer at Plexo and here."""
    raw = _raw_fields(**{k: v for k, v in locals().items() if k not in NOT_FIELDS})
    raw["reference_id"] = reference_id
    with open_context(settings(), actor=operator_name(by)) as ctx:
        data = svc.validate_customer(raw, ctx.clock.now().astimezone(ctx.tz).date())
        customer = svc.create_customer(ctx, data, reason)
    view = customer_view(customer)
    output(view, as_json, f"created customer {customer.reference_id} (plexo {customer.plexo_id})")


@app.command("update")
@handle_errors
def update(
    reference_id: str = typer.Argument(..., help="The customer's reference id."),
    email: str | None = EmailOpt,
    first_name: str | None = FirstOpt,
    last_name: str | None = LastOpt,
    phone: str | None = PhoneOpt,
    document_type: str | None = DocTypeOpt,
    document_number: str | None = DocNumOpt,
    line1: str | None = Line1Opt,
    line2: str | None = Line2Opt,
    city: str | None = CityOpt,
    state: str | None = StateOpt,
    postal_code: str | None = PostalOpt,
    country: str | None = CountryOpt,
    birthdate: str | None = BirthOpt,
    metadata: list[str] = MetaOpt,
    status: str | None = StatusOpt,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Change fields (the whole customer is PUT to Plexo)."""
    changes = _raw_fields(**{k: v for k, v in locals().items() if k not in NOT_FIELDS})
    if not changes:
        raise InvalidInput("nothing to update: give at least one field option")
    with open_context(settings(), actor=operator_name(by)) as ctx:
        customer = svc.update_customer(ctx, reference_id, changes, reason)
    output(customer_view(customer), as_json, f"updated customer {reference_id}")


@app.command("show")
@handle_errors
def show(reference_id: str, as_json: bool = JsonOption) -> None:
    """Show one customer with their cards."""
    with open_context(settings()) as ctx:
        with session(ctx.engine) as s:
            customer = svc.get_customer(s, reference_id, include_deleted=True)
        deleted = customer.status == "deleted"
        cards = [] if deleted else svc.list_instruments(ctx, reference_id)
    view = customer_view(customer)
    view["instruments"] = [instrument_view(i) for i in cards]
    lines = [f"{k:<12} {_plain(v)}" for k, v in view.items() if k != "instruments" and v]
    lines.append("instruments:")
    lines.append(table(view["instruments"], ["id", "brand", "last4", "expiry", "default"]))
    output(view, as_json, "\n".join(lines))


def _plain(value: Any) -> str:
    """Nested values as `key: value` pairs, not Python reprs."""
    if isinstance(value, dict):
        return ", ".join(f"{cell(k)}: {cell(v)}" for k, v in value.items())
    return cell(value)


@app.command("delete")
@handle_errors
def delete(
    reference_id: str,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete at Plexo and cancel the customer's subscriptions; billing history is kept."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        customer = svc.delete_customer(ctx, reference_id, reason)
    output(customer_view(customer), as_json, f"deleted customer {reference_id}")


@instruments_app.command("link")
@handle_errors
def link(reference_id: str, as_json: bool = JsonOption) -> None:
    """Open a Plexo tokenization session and print the hosted page's URL."""
    with open_context(settings()) as ctx:
        url = svc.link_instrument(ctx, reference_id)
    output({"customer": reference_id, "url": url}, as_json, url)


@instruments_app.command("sync")
@handle_errors
def sync(
    reference_id: str,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Pull the customer's saved cards from Plexo."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        rows = [instrument_view(i) for i in svc.sync_instruments(ctx, reference_id, reason)]
    output(rows, as_json, table(rows, ["id", "brand", "last4", "expiry", "default", "token"]))


@instruments_app.command("list")
@handle_errors
def list_instruments(
    reference_id: str,
    include_removed: bool = typer.Option(False, "--include-removed"),
    as_json: bool = JsonOption,
) -> None:
    """List a customer's saved cards."""
    with open_context(settings()) as ctx:
        items = svc.list_instruments(ctx, reference_id, include_removed=include_removed)
    rows = [instrument_view(i) for i in items]
    output(rows, as_json, table(rows, ["id", "brand", "last4", "expiry", "default", "status"]))


@instruments_app.command("remove")
@handle_errors
def remove(
    reference_id: str,
    instrument: str,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete a saved card at Plexo (by our id or its token)."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        row = svc.remove_instrument(ctx, reference_id, instrument, reason)
    output(instrument_view(row), as_json, f"removed card ••••{row.last4}")


@instruments_app.command("default")
@handle_errors
def default(
    reference_id: str,
    instrument: str,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Make a saved card the customer's default."""
    with open_context(settings(), actor=operator_name(by)) as ctx:
        row = svc.set_default_instrument(ctx, reference_id, instrument, reason)
    output(instrument_view(row), as_json, f"default card is now ••••{row.last4}")
