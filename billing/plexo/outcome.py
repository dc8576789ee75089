"""What a charge came to: approved, declined, pending or unknown — never a guess.

Only `approved` means money was taken. `declined` means it was not, and only a recognised Plexo
body can say so: a payment body naming our referenceId, or Plexo's flat error envelope (`code`
and `type`, and `status` equal to the HTTP status when present) with a processor decline or a
validation/auth refusal (`not_charged=True`). Anything else — any status with an HTML page, an
empty or truncated body, a JSON that is not Plexo's envelope — is `unknown`: something in front
of Plexo may have answered after Plexo recorded the payment, so the reconciler asks Plexo before
anything is resent.
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
MAX_PAYMENT_ID = 64  # charge_attempt.plexo_payment_id
VALIDATION_CODES = frozenset({"request-validation-errors"})
VALIDATION_TYPES = frozenset({"invalid-request-error"})
# A refusal of the request itself proves no money moved only with one of these envelope types
# (or codes), at one of these statuses: 409 (a conflict: something exists) and 429 never do.
REFUSAL_TYPES = frozenset({"invalid-request-error", "authentication-error"})
REFUSAL_CODES = frozenset({"request-validation-errors", "unauthorized", "forbidden"})
REFUSAL_STATUSES = frozenset({400, 401, 403, 404, 422})


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    kind: OutcomeKind
    payment_id: str | None = None
    status: str | None = None
    decline_code: str | None = None  # the word ("stolen_card"), else the processor code
    result_code: str | None = None  # the processor's resultCode ("43"), when sent
    decline_message: str | None = None
    http_status: int | None = None
    retry_after: float | None = None
    duplicate: bool = False
    not_charged: bool = False
    # A pending payment whose body lists `actions` (a 3-D Secure approval_url...): the customer
    # must act; a server-initiated charge cannot, so it is not retried (plexo-api.md 6).
    action_required: bool = False
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
    if payment_id is not None and not _storable_id(payment_id):
        # We could neither store it nor ask Plexo about it later: not an outcome we can keep.
        return ChargeOutcome(
            "unknown",
            status=status,
            http_status=http_status,
            detail=f"Plexo answered with an unusable payment id ({len(payment_id)} characters)",
        )
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
        actions = data.get("actions")
        action_required = isinstance(actions, list) and any(isinstance(a, Mapping) for a in actions)
        return ChargeOutcome(
            "pending",
            payment_id,
            status,
            http_status=http_status,
            action_required=action_required,
            detail=f"payment {status}" + (", customer action required" * action_required),
        )
    if status in DECLINED_STATUSES:
        if reference_id is not None and echoed is None:
            # "Not charged" reopens the invoice: only a body that names our charge may say it.
            return ChargeOutcome(
                "unknown",
                payment_id,
                status,
                http_status=http_status,
                detail=f"payment {status} without a referenceId: not proven ours",
            )
        word, result_code, message = _decline_reason(data)
        return ChargeOutcome(
            "declined",
            payment_id,
            status,
            decline_code=word or result_code or status,
            result_code=result_code,
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


def _storable_id(value: str) -> bool:
    """A gateway id we can keep and send back in a path: 1-64 visible ASCII characters."""
    return len(value) <= MAX_PAYMENT_ID and all("!" <= ch <= "~" for ch in value)


def _decline_reason(data: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """The decline's word, processor code and message: the last refused transaction first.

    The last transaction of a cancelled payment is an approved cancellation (resultCode "0"),
    so the last transaction that was not approved is preferred over `transactions[-1]`.
    """
    raw = data.get("transactions")
    transactions = (
        [camel_keys(t) for t in raw if isinstance(t, Mapping)] if isinstance(raw, list) else []
    )
    refused = [t for t in transactions if (_text(t.get("status")) or "").lower() != "approved"]
    chosen = refused[-1] if refused else (transactions[-1] if transactions else {})
    word = _text(chosen.get("declineCode")) or _text(data.get("declineCode"))
    result_code = _text(chosen.get("resultCode")) or _text(data.get("resultCode"))
    message = (
        _text(chosen.get("resultMessage"))
        or _text(data.get("declineMessage"))
        or _text(data.get("message"))
    )
    return word, result_code, message


def plexo_envelope(body: Any, http_status: int) -> ErrorEnvelope | None:
    """Plexo's own error envelope in `body`, or None for any other answer.

    Recognised only in its documented shape (plexo-api.md 3.3): flat, with a `code` and a
    `type`, and a `status` that agrees with the HTTP status when it is present. A proxy's HTML,
    an empty body or another server's JSON (`{"message": "Forbidden"}`, `{"error": {...}}`,
    Spring's `{"status", "error", "path"}`) is not Plexo speaking.
    """
    if not isinstance(body, Mapping):
        return None
    data = camel_keys(body)
    if "error" in data or not all(isinstance(data.get(k), str) for k in ("code", "type")):
        return None
    envelope = ErrorEnvelope.parse(body)
    if envelope is None or envelope.code is None or envelope.type is None:
        return None
    status = data.get("status", http_status)
    if isinstance(status, bool) or not isinstance(status, int) or status != http_status:
        return None
    return envelope


def outcome_from_error(
    http_status: int,
    body: Any,
    *,
    retry_after: float | None = None,
    reference_id: str | None = None,
) -> ChargeOutcome:
    """Classify a non-2xx answer to POST /v1/payments (`body` is the parsed JSON or None).

    Declined only on a recognised Plexo body (see the module docstring); everything else is
    `unknown` so the reconciler asks Plexo before anything is resent.
    """
    if reference_id is not None and _is_payment_for(body, reference_id):
        # A payment body for our own charge under an error status: its status decides.
        return outcome_from_payment(body, http_status=http_status, reference_id=reference_id)
    loose = ErrorEnvelope.parse(body)
    envelope = plexo_envelope(body, http_status)
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
        assert envelope is not None
        return ChargeOutcome(
            "declined",
            payment_id=_envelope_payment_id(body),
            decline_code=decline_code,
            result_code=_text(camel_keys(body).get("resultCode")),
            decline_message=message,
            http_status=http_status,
            retry_after=retry_after,  # advice on a decline is honoured too (domain/retry.py)
            not_charged=not_charged,
            detail=where,
        )

    if http_status == 429:
        return unknown("rate limited")
    if loose is not None and _says_duplicate(loose.code, loose.decline_code):
        # However it is spelled, "duplicate" means a payment may exist: never "declined".
        return unknown("a payment with this referenceId exists", duplicate=True)
    if http_status >= 500 or http_status < 400:
        return unknown("gateway error")
    if envelope is None:
        return unknown("not a Plexo answer, so not proof that nothing was charged")
    if http_status == 409:
        return unknown("conflict")
    if envelope.decline_code:
        return declined(envelope.decline_code, not_charged=False)
    if http_status == 402:
        return declined(envelope.code or "payment-required", not_charged=False)
    if http_status in REFUSAL_STATUSES and (
        envelope.type in REFUSAL_TYPES or envelope.code in REFUSAL_CODES
    ):
        return declined(envelope.code or "request-refused", not_charged=True)
    return unknown("unclassified gateway answer")


def _is_payment_for(body: Any, reference_id: str) -> bool:
    """A payment body (a status, no error `code`) that names our referenceId."""
    if not isinstance(body, Mapping):
        return False
    data = camel_keys(body)
    return (
        _text(data.get("referenceId")) == reference_id
        and _text(data.get("status")) is not None
        and "code" not in data
    )


def _envelope_payment_id(body: Any) -> str | None:
    """The payment id a decline envelope carries (`paymentId`, or a nested `payment.id`)."""
    data = camel_keys(body)
    payment = data.get("payment")
    nested = _text(camel_keys(payment).get("id")) if isinstance(payment, Mapping) else None
    found = _text(data.get("paymentId")) or nested
    return found if found is not None and _storable_id(found) else None


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
