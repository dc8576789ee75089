"""Work that must happen only once a transaction commits (counting a dunning step, say).

Queued in `session.info` and run from SQLAlchemy's `after_commit` event; when the outermost
transaction ends any other way (rollback, close) the queue is dropped, so a counter never
counts a change that did not happen. Light on purpose: no metrics import until a commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)

_QUEUE = "billing.after_commit"
_LISTENING = "billing.after_commit.listening"


def after_commit(s: Session, action: Callable[[], None]) -> None:
    """Run `action` after the transaction of `s` now open commits; dropped if it does not."""
    if not s.info.get(_LISTENING):
        event.listen(s, "after_commit", _run_queue)
        event.listen(s, "after_transaction_end", _drop_queue)
        s.info[_LISTENING] = True
    if not s.in_transaction():
        s.begin()  # the one this belongs to (else a rollback now would not drop it)
    s.info.setdefault(_QUEUE, []).append(action)


def count_after_commit(s: Session, counter: str, amount: float = 1, **labels: str) -> None:
    """Increment billing.metrics.<counter>{labels} once this transaction commits.

    The metrics module (prometheus_client) is imported at that commit, so a command that
    only reads the store never loads it; a wrong name fails the first test that commits it.
    """

    def count() -> None:
        from billing import metrics

        getattr(metrics, counter).labels(**labels).inc(amount)

    after_commit(s, count)


def _run_queue(s: Session) -> None:
    if s.in_nested_transaction():  # a savepoint released: the outer transaction may still fail
        return
    queue: list[Callable[[], None]] = s.info.pop(_QUEUE, [])
    for action in queue:
        try:
            action()
        except Exception as exc:  # the commit happened; a metric must not turn it into an error
            log.error("after-commit action failed: %s", type(exc).__name__)


def _drop_queue(s: Session, transaction: SessionTransaction, *_: Any) -> None:
    if transaction.parent is None:  # the outermost one: a savepoint's end is not the end
        s.info.pop(_QUEUE, None)
