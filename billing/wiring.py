"""Build the engine context from settings: the one place that wires store, gateway and clock."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from billing.clock import Clock, SystemClock
from billing.domain.bounds import SafetyBounds
from billing.domain.retry import FinalAction, RetryPolicy, parse_days
from billing.engine.context import BillingContext
from billing.engine.store_rules import SCHEMA_BEHIND, check_clock, check_timezone
from billing.errors import ConfigError
from billing.settings import Settings
from billing.store.db import make_engine
from billing.store.migrate import is_at_head

if TYPE_CHECKING:
    from billing.plexo.client import PlexoClient

SANDBOX_DEFAULT_HOST = "127.0.0.1"
SANDBOX_DEFAULT_PORT = 8765


def plexo_base_url(cfg: Settings) -> str:
    """The configured gateway, or the address `billing sandbox` listens on by default."""
    return cfg.plexo_base_url or f"http://{SANDBOX_DEFAULT_HOST}:{SANDBOX_DEFAULT_PORT}"


def node_name(cfg: Settings) -> str:
    return cfg.node_name or f"{os.uname().nodename}-{os.getpid()}"


def make_plexo_client(
    cfg: Settings, base_url: str | None = None, clock: Clock | None = None
) -> PlexoClient:
    from billing.metrics import gateway_observer
    from billing.plexo.client import PlexoClient

    return PlexoClient(
        base_url or plexo_base_url(cfg),
        cfg.plexo_client_id,
        cfg.plexo_api_key.get_secret_value(),
        cfg.plexo_merchant_id,
        timeout=cfg.plexo_timeout_seconds,
        on_response=gateway_observer,
        clock=clock or SystemClock(),
    )


class DeferredPlexoClient:
    """The gateway client, built on its first use: most commands only read the database,
    and building the client imports httpx, TLS and the metrics (a third of a command's time)."""

    def __init__(self, build: Callable[[], PlexoClient]) -> None:
        self._build = build
        self._client: PlexoClient | None = None
        self._lock = threading.Lock()  # the engine calls Plexo from a thread pool

    @property
    def built(self) -> bool:
        return self._client is not None

    def _get(self) -> PlexoClient:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def retry_policy(cfg: Settings) -> RetryPolicy:
    return RetryPolicy(
        soft_days=parse_days(cfg.retry_soft_days),
        retry_hour=cfg.retry_hour,
        invalid_request_minutes=cfg.retry_invalid_request_minutes,
        invalid_request_max=cfg.retry_invalid_request_max,
        final_action=FinalAction(cfg.dunning_final_action),
        instrument_fallback=cfg.instrument_fallback,
    )


def safety_bounds(cfg: Settings) -> SafetyBounds:
    """The bounds of domain/bounds.py from the settings (0 or unset: off)."""
    factor = Decimal(str(cfg.max_increase_factor)) if cfg.max_increase_factor else None
    return SafetyBounds(
        ceilings=dict(cfg.ceiling_per_currency),
        max_increase_factor=factor,
        max_charges_per_day=cfg.max_charges_per_customer_per_day or None,
    )


@contextmanager
def open_context(
    cfg: Settings,
    *,
    actor: str = "cli",
    clock: Clock | None = None,
    plexo: PlexoClient | None = None,
    require_schema: bool = True,
    billing_work: bool = False,
) -> Iterator[BillingContext]:
    """Engine + gateway client + clock for one command or daemon; closes what it opened.

    The store's rules are checked here, so every command and the daemon obey them: the
    merchant zone recorded at first use (all commands: they compute or show periods; the
    zone is recorded before billing work starts, or after any other command succeeded), and
    the clock that only moves forward (a test clock always; the real clock for
    `billing_work`: the daemon and `run --once`). See engine/store_rules.py.
    """
    if clock is not None and not isinstance(clock, SystemClock) and cfg.is_production:
        raise ConfigError("a test clock is refused when BILLING_PLEXO_ENVIRONMENT is production")
    clock = clock or SystemClock()
    engine = make_engine(cfg.database_url)
    client = plexo or cast(
        "PlexoClient", DeferredPlexoClient(lambda: make_plexo_client(cfg, clock=clock))
    )
    try:
        if require_schema and not is_at_head(cfg.database_url):
            raise ConfigError(SCHEMA_BEHIND)
        if require_schema:
            check_timezone(engine, cfg.timezone, clock, record=billing_work)
            check_clock(engine, clock, billing_work=billing_work)
        yield BillingContext(
            engine=engine,
            plexo=client,
            clock=clock,
            tz=cfg.tz,
            node=node_name(cfg),
            actor=actor,
            concurrency=cfg.concurrency,
            lease_seconds=cfg.lease_seconds,
            resend_grace=timedelta(seconds=cfg.resend_grace_seconds),
            catchup_max_periods=cfg.catchup_max_periods,
            expiry_warn_days=cfg.expiry_warn_days_list,
            callback_url=cfg.callback_url,
            retry=retry_policy(cfg),
            pending_max=timedelta(days=cfg.pending_max_days),
            approval_required=cfg.approval_required,
            approval_expires_after=cfg.approval_expires_after_delta,
            bounds=safety_bounds(cfg),
        )
        if require_schema and not billing_work:
            # First use is the first command that succeeded (a refused one changes nothing);
            # billing work records it before it starts.
            check_timezone(engine, cfg.timezone, clock, record=True)
    finally:
        if plexo is None:
            client.close()
        engine.dispose()
