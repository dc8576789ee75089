"""Typed errors of the Plexo client for every call except `create_payment` (which never raises).

Messages are safe to show: the client scrubs its credentials out of anything it puts in them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from billing.errors import BillingError, Conflict, InvalidInput, NotFound


class PlexoError(BillingError):
    """Plexo answered with an error, or an answer the client could not read."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        trace_id: str | None = None,
        from_plexo: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.trace_id = trace_id
        # The body was Plexo's own error envelope in its documented shape, not a proxy's page:
        # only then can an error be taken as Plexo's word (e.g. that a customer is gone).
        self.from_plexo = from_plexo


class AuthenticationFailed(PlexoError):
    """401/403: the clientId/apiKey pair (or its right to this merchant) was refused."""


class GatewayUnavailable(PlexoError):
    """Network trouble, a timeout, 5xx or 429: Plexo's answer is not known; try again later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        trace_id: str | None = None,
        from_plexo: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, status=status, code=code, trace_id=trace_id, from_plexo=from_plexo
        )
        self.retry_after = retry_after


class ValidationRejected(PlexoError, InvalidInput):
    """400 validation error; `params` maps each refused field to Plexo's messages."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        trace_id: str | None = None,
        from_plexo: bool = False,
        params: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__(
            message, status=status, code=code, trace_id=trace_id, from_plexo=from_plexo
        )
        self.params: dict[str, list[str]] = {k: list(v) for k, v in (params or {}).items()}


class DuplicateReference(PlexoError, Conflict):
    """The referenceId is already used at Plexo (409)."""


class PlexoNotFound(PlexoError, NotFound):
    """404: Plexo does not know the customer, instrument or route."""


class PaymentNotFound(PlexoNotFound):
    """404 on GET /v1/payments/{id}: Plexo has no payment with that id."""
