"""Customer commands converge when retried after a failure Plexo already recorded.

Two kinds of failure: Plexo recorded the change but we never heard (timeout_after), and Plexo
answered but our own write failed afterwards (a commit that fails once).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlmodel import Session

from billing.engine import customers
from billing.errors import Conflict
from billing.plexo.errors import GatewayUnavailable, PlexoNotFound
from billing.store.db import session
from billing.store.models import Customer
from tests.integration.conftest import Env


def _data(env: Env, ref: str = "cus-1", **extra: Any) -> customers.CustomerInput:
    today = env.clock.now().astimezone(env.ctx.tz).date()
    return customers.validate_customer(
        {"reference_id": ref, "email": f"{ref}@example.com", **extra}, today
    )


def _fail_next_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our next commit that writes raises once (the local write failing after Plexo succeeded)."""
    real = Session.commit
    state = {"armed": True}

    def commit(self: Session) -> None:
        if state["armed"] and (self.new or self.dirty or self.deleted):
            state["armed"] = False
            raise RuntimeError("injected commit failure")
        real(self)

    monkeypatch.setattr(Session, "commit", commit)


def _plexo_refs(env: Env) -> list[str | None]:
    return [c.reference_id for c in env.ctx.plexo.list_customers()]


def _stored(env: Env, ref: str) -> Customer:
    with session(env.ctx.engine) as s:
        return customers.get_customer(s, ref, include_deleted=True)


def test_create_retried_after_a_timeout_adopts_the_customer_plexo_recorded(env: Env) -> None:
    env.simulator.faults.queue("timeout_after", route="POST /v1/customers")
    with pytest.raises(GatewayUnavailable):
        customers.create_customer(env.ctx, _data(env))
    assert _plexo_refs(env) == ["cus-1"]  # Plexo has it; we do not
    created = customers.create_customer(env.ctx, _data(env))  # was: 409 duplicate-reference-id
    [remote] = env.ctx.plexo.list_customers()
    assert created.plexo_id == remote.id
    assert _stored(env, "cus-1").plexo_id == remote.id


def test_create_refuses_to_adopt_a_customer_whose_fields_differ(env: Env) -> None:
    env.simulator.faults.queue("timeout_after", route="POST /v1/customers")
    with pytest.raises(GatewayUnavailable):
        customers.create_customer(env.ctx, _data(env, first_name="Ana"))
    with pytest.raises(Conflict) as refused:
        customers.create_customer(env.ctx, _data(env, first_name="Eva"))
    message = str(refused.value)
    assert "first_name" in message and "\n" not in message
    assert "email" not in message  # only what differs is named


def test_create_retried_after_our_write_and_the_compensation_failed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_next_commit(monkeypatch)
    env.simulator.faults.queue("error_before", route="DELETE /v1/customers/{id}")
    with pytest.raises(RuntimeError):
        customers.create_customer(env.ctx, _data(env))
    assert _plexo_refs(env) == ["cus-1"]  # the orphan the compensation could not remove
    created = customers.create_customer(env.ctx, _data(env))
    assert created.plexo_id == env.ctx.plexo.list_customers()[0].id


def test_delete_retried_after_our_write_failed_finishes_here(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    customers.create_customer(env.ctx, _data(env))
    _fail_next_commit(monkeypatch)
    with pytest.raises(RuntimeError):
        customers.delete_customer(env.ctx, "cus-1", None)
    assert _plexo_refs(env) == [] and _stored(env, "cus-1").status == "active"
    customers.delete_customer(env.ctx, "cus-1", None)  # was: 404 on every retry
    assert _stored(env, "cus-1").status == "deleted"


def test_delete_retried_after_a_timeout_finishes_here(env: Env) -> None:
    customers.create_customer(env.ctx, _data(env))
    env.simulator.faults.queue("timeout_after", route="DELETE /v1/customers/{id}")
    with pytest.raises(GatewayUnavailable):
        customers.delete_customer(env.ctx, "cus-1", None)
    customers.delete_customer(env.ctx, "cus-1", None)
    assert _stored(env, "cus-1").status == "deleted"


def test_update_retried_after_a_timeout_and_after_our_write_failed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    customers.create_customer(env.ctx, _data(env))
    env.simulator.faults.queue("timeout_after", route="PUT /v1/customers/{id}")
    with pytest.raises(GatewayUnavailable):
        customers.update_customer(env.ctx, "cus-1", {"first_name": "Ana"})
    _fail_next_commit(monkeypatch)
    with pytest.raises(RuntimeError):
        customers.update_customer(env.ctx, "cus-1", {"first_name": "Ana"})
    updated = customers.update_customer(env.ctx, "cus-1", {"first_name": "Ana"})
    assert updated.first_name == "Ana"
    [remote] = env.ctx.plexo.list_customers()
    assert remote.first_name == "Ana"


def test_instrument_removal_retried_after_our_write_failed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = customers.create_customer(env.ctx, _data(env))
    httpx.post(
        f"{env.sandbox_url}/sandbox/customers/{created.plexo_id}/instruments",
        json={"cardNumber": "4111111111111111", "expMonth": 12, "expYear": 2035},
    ).raise_for_status()
    [card] = customers.sync_instruments(env.ctx, "cus-1")
    _fail_next_commit(monkeypatch)
    with pytest.raises(RuntimeError):
        customers.remove_instrument(env.ctx, "cus-1", card.token)
    removed = customers.remove_instrument(env.ctx, "cus-1", card.token)  # was: 404 forever
    assert removed.status == "removed"
    assert customers.list_instruments(env.ctx, "cus-1") == []


@pytest.mark.parametrize("shape", ["html", "empty", "json", "nested", "spring"])
def test_delete_does_not_finish_on_a_bare_404(env: Env, shape: str) -> None:
    """A proxy's 404 is not Plexo saying "gone": the customer stays, here and at Plexo."""
    customers.create_customer(env.ctx, _data(env))
    env.simulator.faults.queue(
        "bare_before", route="* /v1/customers/{id}", times=2, status=404, body=shape
    )
    with pytest.raises(PlexoNotFound):
        customers.delete_customer(env.ctx, "cus-1", None)  # DELETE and the GET both bare 404
    assert _plexo_refs(env) == ["cus-1"] and _stored(env, "cus-1").status == "active"
    env.simulator.faults.queue("bare_before", route="DELETE /v1/customers/{id}", status=404)
    with pytest.raises(PlexoNotFound):
        customers.delete_customer(env.ctx, "cus-1", None)  # the GET finds it: not gone
    assert _stored(env, "cus-1").status == "active"
    customers.delete_customer(env.ctx, "cus-1", None)
    assert _plexo_refs(env) == [] and _stored(env, "cus-1").status == "deleted"


def test_card_link_retried_after_a_timeout_hands_out_the_session_plexo_opened(env: Env) -> None:
    customers.create_customer(env.ctx, _data(env))
    env.simulator.faults.queue("timeout_after", route="POST /v1/sessions")
    with pytest.raises(GatewayUnavailable):
        customers.link_instrument(env.ctx, "cus-1")
    url = customers.link_instrument(env.ctx, "cus-1")  # same referenceId -> 409 -> adopt
    sessions = env.ctx.plexo._call("GET", "/v1/sessions", "/v1/sessions")
    assert len(sessions) == 1 and sessions[0]["id"] in url
