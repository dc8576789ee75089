"""The Plexo gateway client: request/response models, error mapping, charge outcomes."""

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
