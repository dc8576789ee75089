"""Rules a store keeps across processes (issue 5 items 4 and 5), on SQLite and PostgreSQL.

- One merchant zone per store: recorded at first use; a different BILLING_TIMEZONE is refused
  with one line naming the key and both zones.
- The clock only moves forward per store: a test clock earlier than the latest reading is
  refused, and the real clock is refused for billing work while a test clock has driven the
  store ahead of it (an unknown attempt parked at that future time would be stranded).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from billing.clock import SystemClock, TestClock
from billing.engine.billing_pass import run_billing_pass
from billing.errors import ConfigError
from billing.settings import Settings, load_settings
from billing.store.db import session
from billing.store.meta import TIMEZONE, get_meta, latest_clock
from billing.store.models import BillingRun, ChargeAttempt
from billing.testing import ensure_plan, seed_subscriptions
from billing.wiring import open_context
from tests.integration.conftest import Env

MONTEVIDEO = "America/Montevideo"


def config(db_url: str, zone: str = MONTEVIDEO, base_url: str | None = None) -> Settings:
    environ = {"BILLING_DATABASE_URL": db_url, "BILLING_TIMEZONE": zone}
    if base_url is not None:
        environ["BILLING_PLEXO_BASE_URL"] = base_url
    return load_settings(None, environ=environ)


def refusal(cfg: Settings, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught, open_context(cfg, **kwargs):
        pass
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- item 4: one merchant zone per store -------------------------------------------------


def test_the_zone_is_recorded_at_first_use_and_a_different_one_is_refused(db_url: str) -> None:
    assert get_meta_zone(db_url) is None
    with open_context(config(db_url), billing_work=True):
        pass
    assert get_meta_zone(db_url) == MONTEVIDEO

    for billing_work in (True, False):  # the daemon / run --once, and every other command
        message = refusal(config(db_url, "Europe/Madrid"), billing_work=billing_work)
        assert "BILLING_TIMEZONE" in message
        assert "Europe/Madrid" in message and MONTEVIDEO in message
    assert get_meta_zone(db_url) == MONTEVIDEO  # the refused zone was not recorded
    with open_context(config(db_url)):  # the recorded zone still works
        pass


def test_a_command_that_fails_records_no_zone(db_url: str) -> None:
    """First use is the first command that succeeds: a refused one changes nothing."""
    with pytest.raises(RuntimeError), open_context(config(db_url, "UTC")):
        raise RuntimeError("refused input")
    assert get_meta_zone(db_url) is None
    with open_context(config(db_url, "UTC")):
        pass
    assert get_meta_zone(db_url) == "UTC"
    assert "BILLING_TIMEZONE is America/Montevideo" in refusal(config(db_url))


def get_meta_zone(db_url: str) -> str | None:
    from billing.store.db import make_engine

    engine = make_engine(db_url)
    try:
        return get_meta(engine, TIMEZONE)
    finally:
        engine.dispose()


# --- item 5: the clock only moves forward per store ---------------------------------------


def store_clock(db_url: str) -> tuple[datetime, str] | None:
    from billing.store.db import make_engine

    engine = make_engine(db_url)
    try:
        reading = latest_clock(engine)
    finally:
        engine.dispose()
    return None if reading is None else (reading.at, reading.source)


def test_a_test_clock_earlier_than_the_store_clock_is_refused(db_url: str) -> None:
    later = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    with open_context(config(db_url), clock=TestClock(later), billing_work=True) as ctx:
        run_billing_pass(ctx)
    assert store_clock(db_url) == (later, "test")

    message = refusal(config(db_url), clock=TestClock(later - timedelta(days=1)))
    assert "only moves forward" in message and later.isoformat() in message
    assert store_clock(db_url) == (later, "test")
    with open_context(config(db_url), clock=TestClock(later), billing_work=True) as ctx:
        run_billing_pass(ctx)  # the same instant again, or later, is fine
    assert store_clock(db_url) == (later, "test")


def test_the_real_clock_is_recorded_and_an_earlier_test_clock_refused(db_url: str) -> None:
    before = SystemClock().now()
    with open_context(config(db_url), billing_work=True) as ctx:
        run_billing_pass(ctx)
    recorded = store_clock(db_url)
    assert recorded is not None and recorded[1] == "system" and recorded[0] >= before
    message = refusal(config(db_url), clock=TestClock(before - timedelta(days=1)))
    assert "system clock" in message


def test_real_clock_work_behind_a_future_test_clock_is_refused(env: Env, db_url: str) -> None:
    """The reported case: `run --once --as-of <future>` parks an unknown attempt at that
    future; a later real-clock run would leave it stranded there. It is refused, in one line
    saying where the test clock drove the store and how to go on."""
    future = SystemClock().now().replace(microsecond=0) + timedelta(days=40)
    env.clock.set(future - timedelta(days=1))
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1)
    env.simulator.faults.queue("drop_after", route="POST /v1/payments", times=1)
    cfg = config(db_url, base_url=env.sandbox_url)
    with open_context(cfg, clock=TestClock(future), billing_work=True) as ctx:
        summary = run_billing_pass(ctx)
    assert summary.count("unknown") == 1
    with session(env.ctx.engine) as s:
        [attempt] = s.exec(select(ChargeAttempt)).all()
    assert attempt.next_check_at is not None and attempt.next_check_at > future  # parked there

    message = refusal(cfg, billing_work=True)  # the daemon and `run --once` on the real clock
    assert f"driven to {future.isoformat()} by a test clock" in message
    assert "--as-of" in message
    with open_context(cfg) as ctx:  # inspecting and fixing the store stays possible
        assert ctx.clock.now() < future
    # Going on with the test clock from where it is works.
    with open_context(cfg, clock=TestClock(future + timedelta(minutes=5))) as ctx:
        assert ctx.clock.now() > future


def test_a_pass_already_running_on_the_real_clock_stops_when_a_test_clock_overtakes_it(
    env: Env, db_url: str
) -> None:
    """A daemon started before someone ran `--as-of` in the future: its passes are refused
    from then on (each logged as a failed job), writing nothing."""
    env.ctx.clock = SystemClock()
    assert run_billing_pass(env.ctx).run_id is None  # works, records the real clock
    future = SystemClock().now() + timedelta(days=3)
    with open_context(config(db_url), clock=TestClock(future), billing_work=True) as ctx:
        run_billing_pass(ctx)

    with pytest.raises(ConfigError, match=r"driven to .* by a test clock"):
        run_billing_pass(env.ctx)
    env.ctx.clock = TestClock(future - timedelta(seconds=1))  # an in-process test clock too
    with pytest.raises(ConfigError, match="only moves forward"):
        run_billing_pass(env.ctx)
    assert store_clock(db_url) == (future, "test")
    with session(env.ctx.engine) as s:
        assert s.exec(select(BillingRun)).all() == []
