"""Issue 6 item 5: the operator's invoice commands (show, void, mark-uncollectible, resolve)
and `subscriptions uncancel`, through the CLI against the sandbox over HTTP, on SQLite and
PostgreSQL. Every change is in the event log with --by and --reason; a refusal is one line
and writes nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlmodel import col, select
from typer.testing import CliRunner

from billing.cli.main import app
from billing.engine.billing_pass import run_billing_pass
from billing.engine.invoices import resolve_invoice
from billing.store.db import session
from billing.store.models import ChargeAttempt, Event, Invoice, Subscription
from billing.testing import ensure_plan, invoice_refs_charged, seed_subscriptions
from tests.integration.conftest import START, Env, table_counts

DECLINING_CARD = "4000000000000010"  # "51" insufficient funds (soft)


def invoke(env: Env, db_url: str, *args: str) -> Any:
    environ = {
        "BILLING_DATABASE_URL": db_url,
        "BILLING_PLEXO_BASE_URL": env.sandbox_url,
        "BILLING_TIMEZONE": "America/Montevideo",
    }
    return CliRunner().invoke(app, list(args), env=environ)


def ok(env: Env, db_url: str, *args: str) -> Any:
    result = invoke(env, db_url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(env: Env, db_url: str, args: list[str], message: str) -> None:
    before = table_counts(db_url)
    with session(env.ctx.engine) as s:
        rows_before = [i.model_dump() for i in s.exec(select(Invoice)).all()]
    result = invoke(env, db_url, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert table_counts(db_url) == before
    with session(env.ctx.engine) as s:
        assert [i.model_dump() for i in s.exec(select(Invoice)).all()] == rows_before


def only_invoice(env: Env) -> Invoice:
    with session(env.ctx.engine) as s:
        [invoice] = s.exec(select(Invoice)).all()
        return invoice


def events(env: Env, name: str) -> list[Event]:
    with session(env.ctx.engine) as s:
        return list(s.exec(select(Event).where(Event.event == name).order_by(col(Event.id))))


def test_show_prints_the_timeline_of_every_attempt(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, card=DECLINING_CARD, start=START)
    run_billing_pass(env.ctx)
    invoice = only_invoice(env)
    with session(env.ctx.engine) as s:  # a second attempt, as a retry would make one
        row = s.get(Invoice, invoice.id)
        assert row is not None
        row.next_attempt_at = env.clock.now()
        s.add(row)
    env.clock.advance(timedelta(hours=1))
    run_billing_pass(env.ctx)
    with session(env.ctx.engine) as s:  # and the retry the policy scheduled
        row = s.get(Invoice, invoice.id)
        assert row is not None
        row.next_attempt_at = START + timedelta(days=3)
        s.add(row)

    by_number = ok(env, db_url, "invoices", "show", invoice.number)
    by_id = ok(env, db_url, "invoices", "show", str(invoice.id))
    assert by_number == by_id
    assert by_number["status"] == "open"
    assert by_number["next_attempt_at"] == (START + timedelta(days=3)).isoformat()
    lines = by_number["timeline"]
    assert [a["attempt"] for a in lines] == [1, 2]
    with session(env.ctx.engine) as s:
        attempts = s.exec(select(ChargeAttempt).order_by(col(ChargeAttempt.attempt_number))).all()
    for line, attempt in zip(lines, attempts, strict=True):
        assert line["reference_id"] == attempt.reference_id
        assert line["plexo_payment_id"] == attempt.plexo_payment_id is not None
        assert line["at"] == attempt.created_at.isoformat()
        assert (line["state"], line["decline_code"], line["result_code"]) == (
            "declined",
            "insufficient_funds",
            "51",
        )
        assert line["decline_class"] == "soft"
        assert line["instrument"] == "visa *0010"
    assert lines[1]["at"] == (START + timedelta(hours=1)).isoformat()

    text = invoke(env, db_url, "invoices", "show", invoice.number)
    assert text.exit_code == 0, text.output
    # 12:00 UTC is 09:00 in Montevideo; the next attempt is named in the merchant zone
    assert "2026-03-01 09:00" in text.stdout and "2026-03-01 10:00" in text.stdout
    assert "next attempt: 2026-03-04 09:00 -03" in text.stdout
    assert "visa *0010" in text.stdout and attempts[1].reference_id in text.stdout
    assert "+00:00" not in text.stdout

    missing = invoke(env, db_url, "invoices", "show", "INV-nope")
    assert missing.exit_code == 2 and missing.stderr == "error: no invoice INV-nope\n"
    huge = invoke(env, db_url, "invoices", "show", "99999999999")
    assert huge.exit_code == 2 and "no invoice" in huge.stderr


def test_void_and_mark_uncollectible_record_who_and_why(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx, code="daily", interval="day")
    seed_subscriptions(env.ctx, env.sandbox_url, 1, plan_code="daily", card=DECLINING_CARD,
                       start=START)  # fmt: skip
    run_billing_pass(env.ctx)
    env.clock.advance(timedelta(days=1))
    run_billing_pass(env.ctx)
    with session(env.ctx.engine) as s:
        first, second = s.exec(select(Invoice).order_by(col(Invoice.period_index))).all()
    assert first.status == second.status == "open"

    voided = ok(env, db_url, "invoices", "void", first.number, "--reason", "goodwill",
                "--by", "ana")  # fmt: skip
    assert voided["status"] == "void"
    [event] = events(env, "invoice.voided")
    assert (event.entity_id, event.actor, event.reason) == (first.id, "ana", "goodwill")
    assert event.data["previous"] == "open"

    written_off = ok(env, db_url, "invoices", "mark-uncollectible", str(second.id),
                     "--reason", "customer gone")  # fmt: skip
    assert written_off["status"] == "uncollectible"
    [event] = events(env, "invoice.uncollectible")
    assert event.reason == "customer gone" and event.actor  # the OS user
    with session(env.ctx.engine) as s:
        row = s.get(Invoice, second.id)
        assert row is not None and row.next_attempt_at is None

    # void -> anything, uncollectible -> uncollectible: the lifecycle table refuses
    refused(env, db_url, ["invoices", "void", first.number, "--reason", "x"], "final state")
    refused(env, db_url, ["invoices", "mark-uncollectible", second.number, "--reason", "x"],
            "invoice cannot go from uncollectible to uncollectible")  # fmt: skip
    refused(env, db_url, ["invoices", "void", first.number, "--reason", "  "], "--reason")


def test_an_invoice_being_charged_is_never_voided(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx)
    seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    env.simulator.faults.queue("error_after", route="POST /v1/payments", status=502)
    run_billing_pass(env.ctx)  # charged at Plexo, but the answer was a 502: unknown
    invoice = only_invoice(env)
    assert invoice.status == "charging"
    for command in ("void", "mark-uncollectible"):
        refused(env, db_url, ["invoices", command, invoice.number, "--reason", "oops"],
                "is charging")  # fmt: skip


def test_resolve_paid_advances_the_period_once(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    env.simulator.faults.queue("error_after", route="POST /v1/payments", status=502)
    run_billing_pass(env.ctx)
    invoice = only_invoice(env)
    assert invoice.status == "charging"

    # A node holding the lease (a check with Plexo in flight): refused, nothing written
    with session(env.ctx.engine) as s:
        row = s.get(Invoice, invoice.id)
        assert row is not None
        row.lease_owner, row.lease_until = "other-node", START + timedelta(days=3650)
        s.add(row)
    refused(env, db_url, ["invoices", "resolve", invoice.number, "--paid", "--reason", "x"],
            "being worked on by other-node")  # fmt: skip
    with session(env.ctx.engine) as s:
        row = s.get(Invoice, invoice.id)
        assert row is not None
        row.lease_owner = row.lease_until = None
        s.add(row)
    refused(env, db_url, ["invoices", "resolve", invoice.number, "--reason", "x"],
            "exactly one of --paid or --not-charged")  # fmt: skip
    refused(env, db_url, ["invoices", "resolve", invoice.number, "--paid", "--not-charged",
                          "--reason", "x"], "exactly one")  # fmt: skip

    done = ok(env, db_url, "invoices", "resolve", invoice.number, "--paid",
              "--reason", "Plexo support confirmed the payment", "--by", "ana")  # fmt: skip
    assert done["status"] == "paid" and done["attempt_state"] == "approved"
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        row = s.get(Invoice, invoice.id)
        assert sub is not None and row is not None
        assert (sub.current_period_start, sub.current_period_end) == (
            row.period_start,
            row.period_end,
        )
    [paid] = events(env, "invoice.paid")
    assert paid.actor == "ana" and paid.data["reference_id"]
    [resolved] = events(env, "attempt.resolved")
    assert (resolved.actor, resolved.reason) == ("ana", "Plexo support confirmed the payment")
    assert resolved.data["outcome"] == "paid" and resolved.data["previous"] == "unknown"

    # Settled: a second resolve, either way, is refused
    refused(env, db_url, ["invoices", "resolve", invoice.number, "--not-charged", "--reason",
                          "x"], "not unresolved")  # fmt: skip
    # ...and the reconciler has nothing left to do: the period is never advanced twice
    from billing.engine.reconcile import reconcile

    assert reconcile(env.ctx).examined == 0
    assert len(events(env, "invoice.paid")) == 1


def test_resolve_not_charged_reopens_and_the_next_pass_charges_again(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    env.simulator.faults.queue("error_before", route="POST /v1/payments")  # 503, nothing made
    run_billing_pass(env.ctx)
    invoice = only_invoice(env)
    assert invoice.status == "charging"
    # on the test clock (the CLI runs on the real one): the engine call the command makes
    resolve_invoice(env.ctx, str(invoice.id), paid=False, reason="Plexo has no such payment")

    reopened = only_invoice(env)
    assert reopened.status == "open" and reopened.last_decline_code == "operator-not-charged"
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None and sub.status == "active"  # not the customer's fault
    env.clock.advance(timedelta(minutes=1))
    summary = run_billing_pass(env.ctx)
    assert summary.count("approved") == 1
    final = only_invoice(env)
    assert final.status == "paid" and final.attempt_count == 2
    payments = env.simulator.payments()
    assert invoice_refs_charged(payments) == {invoice.number: 1}
    refused(env, db_url, ["invoices", "resolve", invoice.number, "--paid", "--reason", "x"],
            "not unresolved")  # fmt: skip


def test_uncancel_undoes_a_cancel_at_period_end(env: Env, db_url: str) -> None:
    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    run_billing_pass(env.ctx)  # period 1 paid
    sub = str(sub_id)
    refused(env, db_url, ["subscriptions", "uncancel", sub, "--reason", "x"],
            "has no cancel scheduled")  # fmt: skip
    ok(env, db_url, "subscriptions", "cancel", sub, "--at-period-end")
    back = ok(env, db_url, "subscriptions", "uncancel", sub, "--reason", "changed mind",
              "--by", "ana")  # fmt: skip
    assert back["cancel_at_period_end"] is False and back["status"] == "active"
    [event] = events(env, "subscription.cancel_unscheduled")
    assert (event.actor, event.reason) == ("ana", "changed mind")

    env.clock.advance(timedelta(days=32))
    summary = run_billing_pass(env.ctx)  # the next period is billed: not canceled
    assert summary.count("approved") == 1
    with session(env.ctx.engine) as s:
        row = s.get(Subscription, sub_id)
        assert row is not None and row.status == "active"

    ok(env, db_url, "subscriptions", "cancel", sub)  # now
    refused(env, db_url, ["subscriptions", "uncancel", sub, "--reason", "x"], "already canceled")
    refused(env, db_url, ["subscriptions", "uncancel", "99999999999", "--reason", "x"],
            "no subscription")  # fmt: skip


def test_resolve_settles_the_attempt_plexo_answers_409_for_and_cannot_find(env: Env) -> None:
    """The case `resolve` exists for: the first send was charged but its answer lost, the
    query finds nothing (its index lags), the resend of the same referenceId gets 409."""
    from billing.engine.reconcile import reconcile

    ensure_plan(env.ctx)
    [sub_id] = seed_subscriptions(env.ctx, env.sandbox_url, 1, start=START)
    env.simulator.faults.queue("error_after", route="POST /v1/payments", status=502)
    env.simulator.faults.queue("query_lag", route="GET /v1/payments/query", times=50)
    run_billing_pass(env.ctx)
    env.clock.advance(env.ctx.resend_grace + timedelta(seconds=1))
    swept = reconcile(env.ctx)
    assert swept.resent == 1  # Plexo "has no such payment": the same referenceId again...
    stuck = only_invoice(env)
    with session(env.ctx.engine) as s:
        [attempt] = s.exec(select(ChargeAttempt)).all()
    assert (stuck.status, attempt.state, attempt.send_count) == ("charging", "unknown", 2)
    assert len(env.simulator.payments()) == 1  # ...refused as a duplicate (409): one payment

    resolve_invoice(env.ctx, stuck.number, paid=True, reason="Plexo support: payment approved")
    paid = only_invoice(env)
    assert paid.status == "paid"
    with session(env.ctx.engine) as s:
        sub = s.get(Subscription, sub_id)
        assert sub is not None and sub.current_period_end == paid.period_end
    env.clock.advance(timedelta(hours=2))
    assert reconcile(env.ctx).examined == 0  # nothing left: no resend, no second advance
    assert invoice_refs_charged(env.simulator.payments()) == {paid.number: 1}
