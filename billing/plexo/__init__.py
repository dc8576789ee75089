"""The Plexo gateway client: request/response models, error mapping, charge outcomes.

The names below load on first use: the engine imports `billing.plexo.errors` and
`billing.plexo.models`, and that must not import the HTTP client (httpx, TLS) for commands
that never call Plexo.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from billing.plexo.client import PlexoClient
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
        Document,
        PaymentRequest,
        PlexoCustomer,
        PlexoInstrument,
        TokenizationSession,
    )
    from billing.plexo.outcome import ChargeOutcome, OutcomeKind

_HOME = {
    "PlexoClient": "client",
    **dict.fromkeys(
        [
            "AuthenticationFailed",
            "DuplicateReference",
            "GatewayUnavailable",
            "PaymentNotFound",
            "PlexoError",
            "PlexoNotFound",
            "ValidationRejected",
        ],
        "errors",
    ),
    **dict.fromkeys(
        [
            "CustomerPayload",
            "Document",
            "PaymentRequest",
            "PlexoCustomer",
            "PlexoInstrument",
            "TokenizationSession",
        ],
        "models",
    ),
    "ChargeOutcome": "outcome",
    "OutcomeKind": "outcome",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "AuthenticationFailed",
    "ChargeOutcome",
    "CustomerPayload",
    "Document",
    "DuplicateReference",
    "GatewayUnavailable",
    "OutcomeKind",
    "PaymentNotFound",
    "PaymentRequest",
    "PlexoClient",
    "PlexoCustomer",
    "PlexoError",
    "PlexoInstrument",
    "PlexoNotFound",
    "TokenizationSession",
    "ValidationRejected",
]
