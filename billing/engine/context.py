"""What every engine operation needs, built once by the CLI or the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from billing.clock import Clock
from billing.domain.bounds import SafetyBounds
from billing.domain.retry import RetryPolicy

if TYPE_CHECKING:  # the client (httpx, TLS) is imported only by commands that call Plexo
    from billing.plexo.client import PlexoClient


@dataclass
class BillingContext:
    engine: Engine
    plexo: PlexoClient
    clock: Clock
    tz: ZoneInfo
    node: str
    actor: str
    concurrency: int = 4
    lease_seconds: int = 300
    # How long an attempt Plexo has no record of waits before its referenceId is sent again.
    resend_grace: timedelta = timedelta(seconds=120)
    # More due periods than this for one subscription in one pass: held for review, not billed.
    catchup_max_periods: int = 12
    # Pre-dunning: warn this many days before a card expires (largest first); () = never.
    expiry_warn_days: tuple[int, ...] = (30, 7)
    # Sent as every payment's callbackUrl (it holds the receiver's secret token); None = off.
    callback_url: str | None = field(default=None, repr=False)
    # What happens after a decline (domain/retry.py); snapshotted into invoices.
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # A payment pending longer than this is flagged for a person instead of polled forever.
    pending_max: timedelta = timedelta(days=3)
    # Approval gate (engine/approval.py): passes freeze plans; only approved ones are charged.
    approval_required: bool = False
    approval_expires_after: timedelta = timedelta(hours=24)
    # Over one of these an invoice is parked, not charged (domain/bounds.py, engine/bounds.py).
    bounds: SafetyBounds = field(default_factory=SafetyBounds)
