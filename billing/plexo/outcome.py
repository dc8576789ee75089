"""What a charge came to: approved, declined, pending or unknown — never a guess.

Only `approved` means money was taken. `declined` means it was not (with `not_charged=True`
when the gateway refused the request itself: validation, auth, unknown token). `pending` and
`unknown` leave the attempt for the reconciler, which asks Plexo before anything is resent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from billing.plexo.models import ErrorEnvelope
from billing.plexo.wire import camel_keys

OutcomeKind = Literal["approved", "declined", "pending", "unknown"]

# The money was taken; a later (partial) refund is the merchant's act on a charged period.
APPROVED_STATUSES = frozenset({"approved", "refunded", "partially-refunded"})
DECLINED_STATUSES = frozenset({"denied", "failed", "cancelled", "expired"})
# `authorized` on an automatic capture should not happen; it is unresolved, not paid.
PENDING_STATUSES = frozenset({"pending", "created", "authorized"})

DUPLICATE_REFERENCE = "duplicate-reference-id"
# A Retry-After beyond this is treated as this: a typo at the gateway must not park a charge
# for years (or overflow a datetime).
MAX_RETRY_AFTER_SECONDS = 3600.0
VALIDATION_CODES = frozenset({"request-validation-errors"})
VALIDATION_TYPES = frozenset({"invalid-request-error"})


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    kind: OutcomeKind
    payment_id: str | None = None
    status: str | None = None
    decline_code: str | None = None
    decline_message: str | None = None
    http_status: int | None = None
    retry_after: float | None = None
    duplicate: bool = False
    not_charged: bool = False
    detail: str = ""


def _text(value: Any) -> str | None:
    """A scalar field as stripped text; None for absent, empty or structured values."""
    if value is None or isinstance(value, Mapping | list | bool):
        return None
    text = str(value).strip()
    return text or None


def outcome_from_payment(
    body: Mapping[str, Any], *, http_status: int | None, reference_id: str | None = None
) -> ChargeOutcome:
    """Classify a PaymentDto by its `status`; anything unrecognised is `unknown`.

    With `reference_id`, a body that names another referenceId is `unknown` (not ours to adopt).
    """
    data = camel_keys(body)
    payment_id = _text(data.get("id"))
    status = (_text(data.get("status")) or "").lower() or None
    echoed = _text(data.get("referenceId"))
    if reference_id is not None and echoed is not None and echoed != reference_id:
        # Not ours: keep no payment id, or a later GET would adopt another payment's state.
        return ChargeOutcome(
            "unknown",
            status=status,
            http_status=http_status,
            detail=f"Plexo answered with payment for referenceId {echoed!r}, not {reference_id!r}",
        )
    if status in APPROVED_STATUSES:
        return ChargeOutcome("approved", payment_id, status, http_status=http_status)
    if status in PENDING_STATUSES:
        return ChargeOutcome(
            "pending", payment_id, status, http_status=http_status, detail=f"payment {status}"
        )
    if status in DECLINED_STATUSES:
        code, message = _decline_reason(data)
        return ChargeOutcome(
            "declined",
            payment_id,
            status,
            decline_code=code or status,
            decline_message=message,
            http_status=http_status,
        )
    return ChargeOutcome(
        "unknown",
        payment_id,
        status,
        http_status=http_status,
        detail=f"unrecognised payment status {status!r}" if status else "payment has no status",
    )


def _decline_reason(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The decline's code and message: the last refused transaction, else the envelope fields.

    The last transaction of a cancelled payment is an approved cancellation (resultCode "0"),
    so the last transaction that was not approved is preferred over `transactions[-1]`.
    """
    transactions = [camel_keys(t) for t in data.get("transactions") or [] if isinstance(t, Mapping)]
    refused = [t for t in transactions if (_text(t.get("status")) or "").lower() != "approved"]
    chosen = refused[-1] if refused else (transactions[-1] if transactions else {})
    code = _text(chosen.get("resultCode")) or _text(data.get("declineCode"))
    message = (
        _text(chosen.get("resultMessage"))
        or _text(data.get("declineMessage"))
        or _text(data.get("message"))
    )
    return code, message


def outcome_from_error(
    http_status: int, body: Any, *, retry_after: float | None = None
) -> ChargeOutcome:
    """Classify a non-2xx answer to POST /v1/payments (`body` is the parsed JSON or None).

    "Not charged" only where the request clearly never reached a processor; everything
    ambiguous is `unknown` so the reconciler asks Plexo before anything is resent.
    """
    envelope = ErrorEnvelope.parse(body)
    code = envelope.code if envelope else None
    where = f"HTTP {http_status}" + (f" {code}" if code else "")
    if envelope and envelope.trace_id:
        where += f" (trace {envelope.trace_id})"
    message = envelope.message if envelope else None

    def unknown(why: str, *, duplicate: bool = False) -> ChargeOutcome:
        return ChargeOutcome(
            "unknown",
            http_status=http_status,
            retry_after=retry_after,  # 429 and 503 may carry one; honour it either way
            duplicate=duplicate,
            detail=f"{why}: {where}",
        )

    def declined(decline_code: str, *, not_charged: bool) -> ChargeOutcome:
        return ChargeOutcome(
            "declined",
            decline_code=decline_code,
            decline_message=message,
            http_status=http_status,
            not_charged=not_charged,
            detail=where,
        )

    if http_status == 429:
        return unknown("rate limited")
    if _says_duplicate(code, envelope.decline_code if envelope else None):
        # However it is spelled, "duplicate" means a payment may exist: never "declined".
        return unknown("a payment with this referenceId exists", duplicate=True)
    if http_status >= 500 or http_status < 400:
        return unknown("gateway error")
    if envelope and envelope.decline_code:
        return declined(envelope.decline_code, not_charged=False)
    if http_status == 402 and envelope:
        return declined(code or "payment-required", not_charged=False)
    if http_status in (401, 403):
        return declined(
            code or ("unauthorized" if http_status == 401 else "forbidden"), not_charged=True
        )
    if http_status == 404:
        return declined(code or "not-found", not_charged=True)
    if (
        http_status in (400, 422)
        and envelope
        and (code in VALIDATION_CODES or envelope.type in VALIDATION_TYPES)
    ):
        return declined(code or "request-validation-errors", not_charged=True)
    return unknown("unclassified gateway answer")


def _says_duplicate(code: str | None, decline_code: str | None) -> bool:
    words = " ".join(w for w in (code, decline_code) if w).lower()
    return code == DUPLICATE_REFERENCE or "duplicate" in words


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return min(MAX_RETRY_AFTER_SECONDS, max(0.0, (when - now).total_seconds()))
    if not seconds.is_finite():
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, float(seconds)))
