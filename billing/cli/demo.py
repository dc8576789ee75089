"""`billing demo`: a fresh SQLite store, the sandbox over real HTTP, a few customers (one whose
card declines), and several months of billing on the test clock."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import typer
from pydantic import SecretStr
from sqlmodel import col, func, select

from billing.cli.common import GLOBALS, print_json, progress, table
from billing.cli.run import render_summary
from billing.clock import TestClock
from billing.daemon.service import Daemon
from billing.domain.money import to_major
from billing.engine import customers, subscriptions
from billing.engine.context import BillingContext
from billing.errors import ConfigError, InvalidInput
from billing.notify.config import NotifyConfig
from billing.notify.deliver import Notifier
from billing.notify.sink import WebhookSink
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from billing.settings import load_settings
from billing.store.db import session
from billing.store.migrate import upgrade
from billing.store.models import ChargeAttempt, Invoice, Subscription
from billing.wiring import make_plexo_client, open_context

DEMO_WEBHOOK_SECRET = "demo-webhook-secret-not-for-production"
DEMO_START = datetime(2026, 1, 31, 13, 0, tzinfo=UTC)  # 10:00 in Montevideo, a month end

CUSTOMERS: list[dict[str, Any]] = [
    {
        "reference_id": "cus-ana",
        "email": "ana@example.com.uy",
        "first_name": "Ana",
        "last_name": "Pereira",
        "phone": "+59899123456",
        "document_type": "CI",
        "document_number": "1.234.567-2",
        "card": "4444333322221111",
        "plan": "basic-monthly",
    },
    {
        "reference_id": "cus-bruno",
        "email": "bruno@example.com",
        "first_name": "Bruno",
        "last_name": "Silva",
        "card": "5555444433332222",
        "plan": "pro-monthly-usd",
    },
    {
        "reference_id": "cus-carla",
        "email": "carla@example.com.uy",
        "first_name": "Carla",
        "last_name": "Gómez",
        # The sandbox declines it twice (insufficient funds, "51"), then approves: a soft
        # decline recovered by the retry policy.
        "card": "4000000000000341",
        "plan": "basic-monthly",
    },
    {
        "reference_id": "cus-elena",
        "email": "elena@example.com.uy",
        "first_name": "Elena",
        "last_name": "Martínez",
        "card": "4000000000000119",  # reported stolen ("43"): a hard decline, never retried
        "plan": "basic-monthly",
    },
    {
        "reference_id": "cus-diego",
        "email": "diego@example.com.uy",
        "first_name": "Diego",
        "last_name": "Rodríguez",
        "card": "4507990000004905",
        "plan": "weekly-box",
    },
]

PLANS: list[dict[str, Any]] = [
    {"code": "basic-monthly", "name": "Basic", "amount": "590.00", "currency": "UYU",
     "interval": "month"},
    {"code": "pro-monthly-usd", "name": "Pro", "amount": "19.90", "currency": "USD",
     "interval": "month", "trial_days": 14},
    {"code": "weekly-box", "name": "Weekly box", "amount": "1250.50", "currency": "UYU",
     "interval": "week", "interval_count": 2},
]  # fmt: skip


_QUIET_STDOUT = {"on": False}  # with --json, narration goes to stderr and stdout stays JSON


def _say(message: str) -> None:
    typer.echo(message, err=_QUIET_STDOUT["on"])


MARKER = ".billing-demo"
"""Written into the directory the demo works in: only a directory holding it is ever emptied."""


def prepare_directory(state_dir: Path) -> None:
    """Make ``state_dir`` an empty demo directory, deleting only what an earlier demo left.

    A directory that does not exist is created; an empty one is adopted; one that holds the
    marker is emptied; anything else (a file, or a directory with other contents) is refused,
    so that ``BILLING_DEMO_DIR=$HOME`` can never delete a home directory.
    """
    if state_dir.is_dir() and not state_dir.is_symlink():
        if (state_dir / MARKER).is_file():
            for child in state_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif any(state_dir.iterdir()):
            raise InvalidInput(
                f"{state_dir} is not empty and was not made by `billing demo` (no {MARKER} "
                "file in it): set BILLING_DEMO_DIR to a new or empty directory"
            )
    elif state_dir.exists() or state_dir.is_symlink():
        raise InvalidInput(
            f"{state_dir} is a symbolic link or not a directory: point BILLING_DEMO_DIR elsewhere"
        )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / MARKER).write_text(
            "Made by `billing demo`, which empties this directory on every run.\n",
            encoding="utf-8",
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare the demo directory {state_dir}: {exc.strerror}"
        ) from None


def run_demo(months: int = 4, as_json: bool = False) -> None:
    _QUIET_STDOUT["on"] = as_json
    state_dir = Path(os.environ.get("BILLING_DEMO_DIR", ".state/demo")).absolute()
    prepare_directory(state_dir)
    database_url = f"sqlite:///{state_dir / 'billing.sqlite3'}"
    cfg = load_settings(
        None,
        environ={
            "BILLING_DATABASE_URL": database_url,
            "BILLING_TIMEZONE": "America/Montevideo",
            "BILLING_NODE_NAME": "demo",
            "BILLING_CONCURRENCY": "4",
        },
    )
    GLOBALS.display_tz = cfg.tz  # the summaries show Montevideo time, like every command
    upgrade(database_url)
    simulator = PlexoSimulator(
        cfg.plexo_client_id, cfg.plexo_api_key.get_secret_value(), cfg.plexo_merchant_id
    )
    clock = TestClock(DEMO_START)
    with SandboxServer(simulator) as server, WebhookSink(DEMO_WEBHOOK_SECRET) as sink:
        plexo = make_plexo_client(cfg, server.url, clock)
        with (
            plexo,
            open_context(cfg, actor="demo", clock=clock, plexo=plexo, billing_work=True) as ctx,
        ):
            _say(f"sandbox listening on {server.url}; store {database_url}")
            _seed(ctx, server.url)
            hooks = NotifyConfig(
                webhook_urls=(sink.url,), webhook_secret=SecretStr(DEMO_WEBHOOK_SECRET)
            )
            notifier = Notifier(ctx, hooks)
            daemon = Daemon(ctx, notifier=notifier)
            try:
                runs = _simulate(ctx, daemon, simulator, clock, months, as_json)
            finally:
                notifier.close()
            summary = _final_summary(ctx, simulator, runs, state_dir, database_url)
            summary["notifications_sent"] = sink.counts()
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


def _seed(ctx: BillingContext, sandbox_url: str) -> None:
    today = ctx.clock.now().astimezone(ctx.tz).date()
    for plan in PLANS:
        subscriptions.create_plan(ctx, **plan)
    with httpx.Client(base_url=sandbox_url, timeout=10) as http:
        for spec in CUSTOMERS:
            fields = {k: v for k, v in spec.items() if k not in ("card", "plan")}
            customer = customers.create_customer(ctx, customers.validate_customer(fields, today))
            # The customer "types the card" on the sandbox's hosted page.
            session_url = customers.link_instrument(ctx, customer.reference_id)
            session_id = session_url.rstrip("/").rsplit("/", 1)[-1]
            http.post(
                f"/sandbox/sessions/{session_id}/complete",
                json={"cardNumber": spec["card"], "expMonth": 12, "expYear": 2030},
            ).raise_for_status()
            customers.sync_instruments(ctx, customer.reference_id)
            subscriptions.create_subscription(
                ctx, customer_ref=customer.reference_id, plan_code=spec["plan"]
            )
    _say(f"seeded {len(PLANS)} plans and {len(CUSTOMERS)} customers with saved cards")


def _simulate(
    ctx: BillingContext,
    daemon: Daemon,
    simulator: PlexoSimulator,
    clock: TestClock,
    months: int,
    as_json: bool,
) -> list[dict[str, Any]]:
    from billing.cli.run import summary_view

    runs: list[dict[str, Any]] = []
    days = months * 30
    # One lost response on the way: Plexo takes the money, the answer never arrives.
    simulator.faults.queue("drop_after", route="POST /v1/payments", times=1)
    for day in range(days + 1):
        clock.set(DEMO_START + timedelta(days=day))
        for summary in (daemon.billing_pass(), daemon.reconcile()):
            if summary.did_work:
                runs.append(summary_view(summary))
                if not as_json:
                    _say("")
                    _say(render_summary(summary))
        clock.advance(timedelta(minutes=5))  # let the reconciler look again
        extra = daemon.reconcile()
        if extra.did_work:
            runs.append(summary_view(extra))
            if not as_json:
                _say("")
                _say(render_summary(extra))
        daemon.notify()  # webhooks to the demo's own loopback receiver
        if day % 30 == 0:
            progress(f"... simulated day {day} of {days}")
    return runs


def _final_summary(
    ctx: BillingContext,
    simulator: PlexoSimulator,
    runs: list[dict[str, Any]],
    state_dir: Path,
    database_url: str,
) -> dict[str, Any]:
    with session(ctx.engine) as s:
        paid = s.exec(
            select(Invoice.currency, func.count(col(Invoice.id)), func.sum(Invoice.amount_minor))
            .where(Invoice.status == "paid")
            .group_by(col(Invoice.currency))
        ).all()
        open_invoices = s.exec(
            select(func.count(col(Invoice.id))).where(Invoice.status != "paid")
        ).one()
        states = Counter(s.exec(select(Subscription.status)).all())
        approved_refs = set(
            s.exec(
                select(ChargeAttempt.reference_id).where(ChargeAttempt.state == "approved")
            ).all()
        )
        dunning = _dunning_story(s)
    sandbox_approved = {p["referenceId"] for p in simulator.payments() if p["status"] == "approved"}
    return {
        "dunning": dunning,
        "billing_runs": len(runs),
        "charged": {
            cur: {"invoices": n, "amount": str(to_major(int(total or 0), cur))}
            for cur, n, total in paid
        },
        "unpaid_invoices": open_invoices,
        "subscriptions": dict(states),
        "ledger_matches_sandbox": approved_refs == sandbox_approved,
        "data": {"database": database_url, "directory": str(state_dir)},
    }


def _dunning_story(s: Any) -> list[dict[str, Any]]:
    """Each customer whose renewal was declined: what the retries came to."""
    from billing.store.models import Customer, Event

    rows: list[dict[str, Any]] = []
    for sub in s.exec(select(Subscription).order_by(col(Subscription.id))).all():
        invoices = s.exec(select(Invoice).where(Invoice.subscription_id == sub.id)).all()
        ids = [i.id for i in invoices]
        attempts = s.exec(select(ChargeAttempt).where(col(ChargeAttempt.invoice_id).in_(ids))).all()
        declined = [a for a in attempts if a.state == "declined"]
        if not declined:
            continue
        events = set(
            s.exec(
                select(Event.event)
                .where(Event.entity_type == "subscription")
                .where(Event.entity_id == sub.id)
            ).all()
        )
        customer = s.get(Customer, sub.customer_id)
        rows.append(
            {
                "customer": customer.reference_id if customer else str(sub.customer_id),
                "declines": [f"{a.decline_code} ({a.decline_class})" for a in declined],
                "recovered": "subscription.recovered" in events,
                "status": sub.status,
                "uncollectible_invoices": sum(i.status == "uncollectible" for i in invoices),
            }
        )
    return rows


def _print_summary(summary: dict[str, Any]) -> None:
    _say("")
    _say("=== demo summary ===")
    rows = [{"currency": c, **v} for c, v in summary["charged"].items()]
    _say("charged:")
    _say(table(rows, ["currency", "invoices", "amount"]))
    _say(f"unpaid invoices: {summary['unpaid_invoices']}")
    for story in summary["dunning"]:
        declines = ", ".join(story["declines"])
        if story["recovered"]:
            ending = f"recovered by a retry, now {story['status']}"
        else:
            ending = (
                f"retries ended: final action left the subscription {story['status']}, "
                f"{story['uncollectible_invoices']} invoice(s) uncollectible"
            )
        _say(f"dunning: {story['customer']}: declined {declines}; {ending}")
    states = ", ".join(f"{n} {status}" for status, n in sorted(summary["subscriptions"].items()))
    _say(f"subscriptions by status: {states}")
    matches = "yes" if summary["ledger_matches_sandbox"] else "NO"
    _say(f"ledger equals the sandbox's approved payments: {matches}")
    sent = ", ".join(f"{n} {kind}" for kind, n in summary["notifications_sent"].items())
    _say(f"webhooks sent (signed, to a loopback receiver): {sent or 'none'}")
    _say(f"data lives in {summary['data']['directory']} ({summary['data']['database']})")
