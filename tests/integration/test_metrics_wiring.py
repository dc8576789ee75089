"""The counters issue 7's dashboard and alerts read, moved by the real engine on the test clock
against the sandbox over HTTP (SQLite and PostgreSQL). Dunning steps count only once their
transaction committed: a commit that fails counts nothing, the retry that succeeds counts once.

Counters are process-wide, so every assertion is on the difference a journey made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlmodel
from sqlalchemy import event

from billing import metrics
from billing.engine.billing_pass import run_billing_pass
from billing.engine.invoices import mark_uncollectible
from billing.engine.invoicing import create_due_invoices
from billing.engine.reconcile import reconcile
from billing.notify.deliver import Notifier
from billing.store import aftercommit
from tests.integration.conftest import START, Env
from tests.integration.test_dunning import (
    SLOTS,
    SOFT,
    SOFT_TWICE,
    STOLEN,
    invoices_of,
    one_subscription,
    pass_at,
    sub_of,
)
from tests.integration.test_notifications import decline_one, hooks
from tests.receivers import WebhookReceiver, webhook_receiver

AMOUNT = 59000  # ensure_plan: 590.00 UYU


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Counters:
    """A snapshot of the wired counters; `moved()` is what changed since."""

    NAMES: tuple[tuple[str, dict[str, str]], ...] = (
        *(("billing_dunning_transitions_total", {"stage": s}) for s in metrics.DUNNING_STAGES),
        *(
            ("billing_retries_scheduled_total", {"decline_class": c})
            for c in ("soft", "hard", "technical", "invalid_request")
        ),
        ("billing_dunning_final_actions_total", {"action": "mark_unpaid"}),
        *(
            ("billing_charge_amount_minor_total", {"currency": "UYU", "outcome": o})
            for o in ("approved", "declined")
        ),
        ("billing_runs_total", {"kind": "pass", "state": "completed"}),
        ("billing_run_invoices_processed_count", {}),
        ("billing_run_invoices_processed_sum", {}),
        ("billing_run_charge_attempts_sum", {}),
    )

    def __init__(self) -> None:
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        return {self._key(n, labels): sample(n, **labels) for n, labels in self.NAMES}

    @staticmethod
    def _key(name: str, labels: dict[str, str]) -> str:
        short = name.removeprefix("billing_").removesuffix("_total")
        return short + "".join(f"{{{v}}}" for v in labels.values())

    def moved(self) -> dict[str, float]:
        now = self._read()
        return {k: now[k] - self.before[k] for k in now if now[k] != self.before[k]}


def test_a_soft_decline_recovered_by_a_retry_moves_the_funnel_once_each(env: Env) -> None:
    counters = Counters()
    sub_id = one_subscription(env, SOFT_TWICE)
    run_billing_pass(env.ctx)
    pass_at(env, SLOTS[0] - timedelta(minutes=1))  # nothing due: a pass that processed 0
    pass_at(env, SLOTS[0])
    pass_at(env, SLOTS[1])
    assert sub_of(env, sub_id).status == "active"
    assert counters.moved() == {
        "dunning_transitions{past_due}": 1,
        "dunning_transitions{recovered}": 1,
        "retries_scheduled{soft}": 2,
        "charge_amount_minor{UYU}{declined}": 2 * AMOUNT,
        "charge_amount_minor{UYU}{approved}": AMOUNT,
        "runs{pass}{completed}": 4,
        "run_invoices_processed_count": 4,
        "run_invoices_processed_sum": 3,
        "run_charge_attempts_sum": 3,
    }


def test_a_hard_decline_with_no_other_card_ends_uncollectible_with_the_final_action(
    env: Env,
) -> None:
    counters = Counters()
    sub_id = one_subscription(env, STOLEN)
    run_billing_pass(env.ctx)
    assert sub_of(env, sub_id).status == "unpaid"
    moved = counters.moved()
    assert moved["dunning_transitions{past_due}"] == 1
    assert moved["dunning_transitions{uncollectible}"] == 1
    assert moved["dunning_final_actions{mark_unpaid}"] == 1
    assert "retries_scheduled{hard}" not in moved, "nothing was scheduled"
    assert "dunning_transitions{recovered}" not in moved


def test_a_person_writing_an_invoice_off_counts_as_uncollectible(env: Env) -> None:
    sub_id = one_subscription(env, SOFT)
    create_due_invoices(env.ctx, env.clock.now())
    counters = Counters()
    [invoice] = invoices_of(env, sub_id)
    mark_uncollectible(env.ctx, invoice.number, reason="customer went bankrupt")
    assert counters.moved() == {"dunning_transitions{uncollectible}": 1}


@contextmanager
def commits_that_count_fail() -> Iterator[list[str]]:
    """Every commit of a transaction that queued a count fails (as if the database died at
    that moment): the transaction rolls back."""
    failed: list[str] = []

    def fail(s: sqlmodel.Session) -> None:
        if s.info.get(aftercommit._QUEUE):
            failed.append("commit")
            raise RuntimeError("the database went away at commit")

    event.listen(sqlmodel.Session, "before_commit", fail)
    try:
        yield failed
    finally:
        event.remove(sqlmodel.Session, "before_commit", fail)


def test_a_decline_whose_commit_fails_counts_nothing_until_it_is_recorded(env: Env) -> None:
    sub_id = one_subscription(env, SOFT)
    counters = Counters()
    with commits_that_count_fail() as failed:
        run_billing_pass(env.ctx)  # the charge's outcome could not be recorded: rolled back
    assert failed, "the outcome's transaction was tried"
    assert sub_of(env, sub_id).status == "active", "the rollback left nothing behind"
    moved: dict[str, Any] = counters.moved()
    assert not any(k.startswith(("dunning", "retries")) for k in moved), moved
    # The attempt stayed `sending`: once its lease is gone the reconciler asks Plexo, which
    # says declined, and this time the transaction commits: each step is counted once.
    env.clock.set(START + timedelta(minutes=5))
    reconcile(env.ctx)
    assert sub_of(env, sub_id).status == "past_due"
    moved = counters.moved()
    assert moved["dunning_transitions{past_due}"] == 1
    assert moved["retries_scheduled{soft}"] == 1


@pytest.fixture(autouse=True)
def _labels() -> None:
    metrics.precreate_labels()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as r:
        yield r


def test_the_outbox_gauges_show_the_backlog_and_its_oldest_pending_age(
    env: Env, receiver: WebhookReceiver
) -> None:
    decline_one(env)  # payment_failed and past_due: two webhook deliveries to make
    notifier = Notifier(env.ctx, hooks(receiver))
    try:
        empty = notifier.gauge_samples()
        assert empty[metrics.OUTBOX_OLDEST_AGE.name] == {("webhook",): 0, ("email",): 0}
        receiver.fail_next = 1000
        notifier.run()  # fanned out, tried once, failed: pending with a backoff
        env.clock.advance(timedelta(minutes=10))
        gauges = notifier.gauge_samples()
        assert gauges[metrics.OUTBOX_BACKLOG.name][("webhook", "pending")] == 2
        assert gauges[metrics.OUTBOX_BACKLOG.name][("email", "pending")] == 0
        assert gauges[metrics.OUTBOX_OLDEST_AGE.name] == {("webhook",): 600, ("email",): 0}
    finally:
        notifier.close()
