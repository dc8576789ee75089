"""Engine fixtures: a migrated store, the sandbox over real HTTP, a test clock, a context."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import MetaData, func, select

from billing.clock import TestClock
from billing.engine.context import BillingContext
from billing.plexo.client import PlexoClient
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from billing.store.db import make_engine

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Env:
    ctx: BillingContext
    clock: TestClock
    simulator: PlexoSimulator
    sandbox_url: str


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    """Billing against a real-HTTP sandbox, on SQLite and on PostgreSQL (via db_url)."""
    simulator = PlexoSimulator()
    simulator.faults.hang_seconds = 1.0
    clock = TestClock(START)
    engine = make_engine(db_url)
    with SandboxServer(simulator) as server:
        client = PlexoClient(
            server.url, "sandbox-client", "sandbox-key", 1, timeout=0.5, connect_timeout=1.0
        )
        ctx = BillingContext(
            engine=engine,
            plexo=client,
            clock=clock,
            tz=ZoneInfo("America/Montevideo"),
            node="test-node",
            actor="test",
            concurrency=4,
            lease_seconds=60,
        )
        try:
            yield Env(ctx, clock, simulator, server.url)
        finally:
            client.close()
            engine.dispose()


def table_counts(db_url: str) -> dict[str, int]:
    """Row counts of every table of the store (schema version aside): "nothing written" evidence."""
    engine = make_engine(db_url)
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        counts = {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in meta.tables.items()
            if name != "alembic_version"
        }
    engine.dispose()
    return counts
