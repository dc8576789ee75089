"""billing customers import FILE and billing subscriptions import FILE.

Each line goes through the same engine calls as `customers create` / `subscriptions create`,
so an import accepts and refuses exactly what those commands do. A re-run skips what exists
(customers by reference_id; subscriptions by customer + plan while a live one exists), so an
interrupted import is finished by running the same command again.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import typer
from sqlmodel import select

from billing.cli.common import (
    ByOption,
    JsonOption,
    OptionalReasonOption,
    handle_errors,
    operator_name,
    progress,
    settings,
)
from billing.cli.customers import _raw_fields
from billing.cli.subscriptions import parse_start
from billing.domain.importfile import Columns, Row, file_format, flag, parse_rows
from billing.domain.lifecycle import SubscriptionStatus
from billing.domain.text import escape
from billing.engine import customers as customer_svc
from billing.engine import subscriptions as subscription_svc
from billing.engine.context import BillingContext
from billing.errors import BillingError, ConfigError, Conflict, InvalidInput, NotFound
from billing.store.db import session
from billing.store.models import Customer, Plan, Subscription
from billing.wiring import open_context

EXIT_FAILED, EXIT_REFUSED = 1, 2

# CSV columns / JSON Lines keys, named after the `create` options.
ADDRESS_COLUMNS = {
    "address_line1": "line1",
    "address_line2": "line2",
    "address_city": "city",
    "address_state": "state",
    "address_postal_code": "postal_code",
    "address_country": "country",
}
CUSTOMER_COLUMNS = Columns(
    required=("reference_id", "email"),
    optional=(
        "first_name",
        "last_name",
        "phone",
        "document_type",
        "document_number",
        *ADDRESS_COLUMNS,
        "birthdate",
        "status",
    ),
    metadata=True,
)
SUBSCRIPTION_COLUMNS = Columns(
    required=("customer", "plan"), optional=("start", "instrument"), flags=("backdate",)
)


@dataclass(frozen=True)
class LineResult:
    line: int
    status: str  # ok, skipped or error
    key: str | None
    reason: str
    failed: bool = False  # an error of ours or the gateway's, not of the line

    def view(self) -> dict[str, Any]:
        return {"line": self.line, "status": self.status, "key": self.key, "reason": self.reason}


def _refused(exc: BillingError) -> bool:
    return isinstance(exc, InvalidInput | NotFound | Conflict | ConfigError)


def _error(row: Row, key: str | None, exc: BillingError) -> LineResult:
    return LineResult(row.line, "error", key, str(exc), failed=not _refused(exc))


def import_customers(
    ctx: BillingContext, rows: Iterable[Row], *, dry_run: bool = False, reason: str | None = None
) -> Iterator[LineResult]:
    """Create each customer as `customers create` does; skip reference_ids already here.

    Up to ctx.concurrency customers are in flight at Plexo at once (the gateway round trip is
    most of the time); results come back in file order. Stopping the iteration lets the ones
    in flight finish (both writes) and starts no more.
    """
    today = ctx.clock.now().astimezone(ctx.tz).date()
    with session(ctx.engine) as s:
        existing = {c.reference_id: c for c in s.exec(select(Customer)).all()}
    seen: dict[str, int] = {}
    width = max(1, ctx.concurrency)
    pool = ThreadPoolExecutor(width, thread_name_prefix="import")
    pending: deque[Future[LineResult]] = deque()
    try:
        for row in rows:
            checked = _check_customer(row, today, existing, seen)
            if isinstance(checked, LineResult):
                pending.append(_done(checked))
            elif dry_run:
                pending.append(_done(LineResult(row.line, "ok", checked.reference_id, "valid")))
            else:
                pending.append(pool.submit(_create_customer, ctx, row, checked, reason))
            while len(pending) >= width or (pending and pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _done(result: LineResult) -> Future[LineResult]:
    future: Future[LineResult] = Future()
    future.set_result(result)
    return future


def _check_customer(
    row: Row, today: date, existing: dict[str, Customer], seen: dict[str, int]
) -> LineResult | customer_svc.CustomerInput:
    """The validated customer to create, or the line's result when there is nothing to do."""
    if row.error is not None:
        return LineResult(row.line, "error", row.fields.get("reference_id"), row.error)
    try:
        data = customer_svc.validate_customer(_customer_raw(row), today)
    except BillingError as exc:
        return _error(row, row.fields["reference_id"], exc)
    key = data.reference_id
    if key in seen:
        return LineResult(row.line, "skipped", key, f"same reference_id as line {seen[key]}")
    seen[key] = row.line
    found = existing.get(key)
    if found is not None:
        return LineResult(row.line, "skipped", key, _exists(found, data))
    return data


def _create_customer(
    ctx: BillingContext, row: Row, data: customer_svc.CustomerInput, reason: str | None
) -> LineResult:
    key = data.reference_id
    try:
        customer = customer_svc.create_customer(ctx, data, reason)
    except BillingError as exc:
        return _error(row, key, exc)
    return LineResult(row.line, "ok", key, f"created (plexo {customer.plexo_id})")


def _customer_raw(row: Row) -> dict[str, Any]:
    """The row as the raw fields `customers create` hands to validate_customer."""
    given = dict(row.fields)
    ref = given.pop("reference_id")
    options: dict[str, Any] = {ADDRESS_COLUMNS.get(k, k): v for k, v in given.items()}
    raw = _raw_fields(**{**dict.fromkeys(_RAW_OPTIONS), **options, "metadata": []})
    if row.metadata:
        raw["metadata"] = dict(row.metadata)
    raw["reference_id"] = ref
    return raw


_RAW_OPTIONS = tuple(
    ADDRESS_COLUMNS.get(c, c) for c in CUSTOMER_COLUMNS.known if c != "reference_id"
)


def _exists(found: Customer, data: customer_svc.CustomerInput) -> str:
    if found.status == "deleted":
        return "already exists (deleted; its history is kept)"
    if customer_svc.current_input(found) != data:
        return "already exists with other fields (not changed; use `customers update`)"
    return "already exists"


def import_subscriptions(
    ctx: BillingContext, rows: Iterable[Row], *, dry_run: bool = False, reason: str | None = None
) -> Iterator[LineResult]:
    """Create each subscription as `subscriptions create` does; skip a customer + plan pair
    that already has a live (not canceled) subscription."""
    with session(ctx.engine) as s:
        live = {
            (ref, code): sub_id
            for sub_id, ref, code in s.exec(
                select(Subscription.id, Customer.reference_id, Plan.code)
                .join(Customer, Customer.id == Subscription.customer_id)  # type: ignore[arg-type]
                .join(Plan, Plan.id == Subscription.plan_id)  # type: ignore[arg-type]
                .where(Subscription.status != SubscriptionStatus.canceled)
            ).all()
        }
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.error is not None:
            yield LineResult(row.line, "error", None, row.error)
            continue
        customer, plan = row.fields["customer"], row.fields["plan"]
        start, instrument = row.fields.get("start"), row.fields.get("instrument")
        key = f"{customer}/{plan}"
        pair = (customer, plan)
        if pair in seen:
            why = f"same customer and plan as line {seen[pair]}"
            yield LineResult(row.line, "skipped", key, why)
            continue
        if pair in live:
            yield LineResult(
                row.line, "skipped", key, f"already has live subscription {live[pair]} to this plan"
            )
            continue
        try:
            backdate = flag(row.fields, "backdate")
            begin = parse_start(start, ctx.tz) if start else None
            if dry_run:
                periods = _resolve(ctx, customer, plan, instrument, begin, backdate)
            else:
                sub = subscription_svc.create_subscription(
                    ctx,
                    customer_ref=customer,
                    plan_code=plan,
                    start=begin,
                    instrument=instrument,
                    backdate=backdate,
                    reason=reason,
                )
                periods = subscription_svc.backdated_periods(ctx, plan_code=plan, start=begin)
        except BillingError as exc:
            yield _error(row, key, exc)
            continue
        seen[pair] = row.line
        # The same rule and the same count as `subscriptions create --backdate`.
        backdated = f"; backdated: bills {periods:,} periods" if periods > 1 else ""
        if dry_run:
            yield LineResult(row.line, "ok", key, f"valid{backdated}")
        else:
            yield LineResult(
                row.line, "ok", key, f"created subscription {sub.id} ({sub.status}){backdated}"
            )


def _resolve(
    ctx: BillingContext,
    customer_ref: str,
    plan_code: str,
    which: str | None,
    start: datetime | None,
    backdate: bool,
) -> int:
    """A dry run looks up what the line names and checks its start, with the engine's own
    lookups and rules, writing nothing; returns the periods the start bills at once."""
    now = ctx.clock.now()
    with session(ctx.engine) as s:
        customer = customer_svc.get_customer(s, customer_ref)
        plan = subscription_svc.get_plan(s, plan_code)
        if not plan.active:
            raise Conflict(f"plan {plan_code!r} is not active")
        begin = subscription_svc.begin_at(start, now)
        periods = subscription_svc.check_backdate(ctx, plan, begin, now, backdate)
        if which is not None:
            customer_svc._find_instrument(s, customer, which)
        return periods


Importer = Callable[..., Iterator[LineResult]]

PathArg = typer.Argument(..., help="A .csv or .jsonl file (see README: Bulk import).")
FormatOpt = typer.Option(None, "--format", help="csv or jsonl (default: from the extension).")
DryRunOpt = typer.Option(False, "--dry-run", help="Check every line; change nothing anywhere.")


@handle_errors
def customers_import(
    path: str = PathArg,
    fmt: str | None = FormatOpt,
    dry_run: bool = DryRunOpt,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Create customers from a file; a re-run skips reference_ids that exist."""
    _run("customers", import_customers, CUSTOMER_COLUMNS, path, fmt, dry_run, as_json, reason, by)


@handle_errors
def subscriptions_import(
    path: str = PathArg,
    fmt: str | None = FormatOpt,
    dry_run: bool = DryRunOpt,
    reason: str | None = OptionalReasonOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Create subscriptions from a file; a re-run skips customer + plan pairs already live."""
    _run(
        "subscriptions",
        import_subscriptions,
        SUBSCRIPTION_COLUMNS,
        *(path, fmt, dry_run, as_json, reason, by),
    )


def _run(
    what: str,
    importer: Importer,
    columns: Columns,
    path: str,
    fmt: str | None,
    dry_run: bool,
    as_json: bool,
    reason: str | None = None,
    by: str | None = None,
) -> None:
    """Report every line as it is done (JSON Lines with --json) and exit 0, 2 or 1."""
    from billing.engine.subscriptions import checked_reason

    actor = operator_name(by)
    reason = checked_reason(reason)  # refused before any line is read or written
    kind = file_format(path, fmt)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = parse_rows(data, kind, columns)
    counts = {"ok": 0, "skipped": 0, "error": 0}
    failed = False
    done = 0
    step = max(1, len(rows) // 20)
    with open_context(settings(), actor=actor) as ctx:
        try:
            for result in importer(ctx, rows, dry_run=dry_run, reason=reason):
                counts[result.status] += 1
                failed = failed or result.failed
                done += 1
                if as_json:
                    typer.echo(json.dumps(result.view()))
                else:
                    key = f" {escape(result.key)}" if result.key else ""
                    reason = escape(result.reason)
                    typer.echo(f"line {result.line}: {result.status}{key}: {reason}")
                if done % step == 0 or done == len(rows):
                    progress(_bar(what, done, len(rows)))
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted after {done} of {len(rows)} lines; run the same command again "
                "to resume (what exists is skipped)",
                err=True,
            )
            raise typer.Exit(EXIT_FAILED) from None
    verb = "would import" if dry_run else "imported"
    summary = (
        f"{what}: {verb} {counts['ok']}, skipped {counts['skipped']}, "
        f"refused {counts['error']} of {len(rows)} lines"
    )
    typer.echo(summary, err=as_json)
    if failed:
        raise typer.Exit(EXIT_FAILED)
    if counts["error"]:
        raise typer.Exit(EXIT_REFUSED)


def _bar(what: str, done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else width
    percent = 100 * done // total if total else 100
    return f"{what} [{'#' * filled}{'.' * (width - filled)}] {percent:3d}% {done}/{total}"
