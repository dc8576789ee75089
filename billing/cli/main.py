"""The `billing` command: one sub-app per noun, all thin shells over billing.engine.

Sub-apps are imported only when their name is invoked (billing.cli.lazy): `billing --help`
and the read-only commands must not pay for Alembic, the engine or the HTTP client.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import typer

from billing.cli.lazy import EAGER, Lazy, LazyGroup
from billing.cli.shell import OneLineGroup, quiet_help_types


def _attr(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


def _with_import(module: str, name: str, importer: str) -> Callable[[], Any]:
    """A noun's sub-app plus its `import FILE` command (billing.cli.imports)."""

    def load() -> Any:
        sub: typer.Typer = getattr(importlib.import_module(module), name)
        if not any(c.name == "import" for c in sub.registered_commands):
            sub.command("import")(getattr(importlib.import_module("billing.cli.imports"), importer))
        return sub

    return load


def _with_approval(module: str, name: str) -> Callable[[], Any]:
    """The runs sub-app plus the approval gate's approve/reject/plan (billing.cli.run_approval)."""

    def load() -> Any:
        sub: typer.Typer = getattr(importlib.import_module(module), name)
        commands = importlib.import_module("billing.cli.run_approval").COMMANDS
        have = {c.name for c in sub.registered_commands}
        for command_name, command in commands.items():
            if command_name not in have:
                sub.command(command_name)(command)
        return sub

    return load


class QuietLazyGroup(LazyGroup):
    """A lazy group whose commands, loaded late, show flags without type noise like the rest."""

    def load(self, name: str) -> Any:
        command = super().load(name)
        if command is not None:
            quiet_help_types(command)  # loaded after main() relabelled the eager ones
        return command


class CustomersGroup(QuietLazyGroup):
    """`billing customers`: each command's module is imported when it runs (`list` is light)."""

    lazy = {
        "create": Lazy(
            "Create a customer at Plexo and here.", _attr("billing.cli.customers", "create")
        ),
        "update": Lazy(
            "Change fields (the whole customer is PUT to Plexo).",
            _attr("billing.cli.customers", "update"),
        ),
        "show": Lazy("Show one customer with their cards.", _attr("billing.cli.customers", "show")),
        "list": Lazy("List customers.", _attr("billing.cli.customer_list", "list_customers")),
        "delete": Lazy(
            "Delete at Plexo and cancel the customer's subscriptions; billing history is kept.",
            _attr("billing.cli.customers", "delete"),
        ),
        "import": Lazy(
            "Create customers from a file; a re-run skips reference_ids that exist.",
            _attr("billing.cli.imports", "customers_import"),
        ),
    }


customers_app = typer.Typer(
    cls=CustomersGroup, help="Customers, mirrored at Plexo.", no_args_is_help=True
)


class BillingGroup(QuietLazyGroup, OneLineGroup):
    """Lazy sub-commands (start-up time) whose failures are one line (OneLineGroup)."""

    lazy = {
        "check": Lazy(
            "Verify config, database, schema, gateway reachability and credentials.",
            _attr("billing.cli.ops", "check"),
        ),
        "run": Lazy(
            "Run one billing pass and a reconciler sweep, and print their summary.",
            _attr("billing.cli.run", "run"),
        ),
        "sandbox": Lazy(
            "Serve the Plexo simulator over HTTP; its state is in memory (test cards: README).",
            _attr("billing.cli.ops", "sandbox"),
        ),
        "daemon": Lazy(
            "Run the billing daemon until SIGTERM (systemd Type=notify aware).",
            _attr("billing.cli.ops", "daemon"),
        ),
        "demo": EAGER,
        "customers": Lazy("Customers, mirrored at Plexo.", lambda: customers_app),
        "instruments": Lazy(
            "Saved cards (Plexo tokens) of a customer.",
            _attr("billing.cli.customers", "instruments_app"),
        ),
        "plans": Lazy(
            "Plans: price, currency and billing interval.",
            _attr("billing.cli.subscriptions", "plans_app"),
        ),
        "subscriptions": Lazy(
            "Subscriptions of customers to plans.",
            _with_import("billing.cli.subscriptions", "app", "subscriptions_import"),
        ),
        "invoices": Lazy(
            "Invoices: one per billed period.", _attr("billing.cli.ledger", "invoices_app")
        ),
        "runs": Lazy(
            "Billing runs: every pass or reconciler sweep that did work.",
            _with_approval("billing.cli.ledger", "runs_app"),
        ),
        "preview": Lazy(
            "Dry run: the charges a billing pass up to DATE would attempt (writes nothing).",
            _attr("billing.cli.preview", "preview"),
        ),
        "report": Lazy(
            "Revenue per currency for a range: collected, failed, recovered, churn, MRR "
            "(HTML too).",
            _attr("billing.cli.report", "report"),
        ),
        "reconcile": Lazy(
            "Compare the ledger with Plexo's payments for a range and keep the findings "
            "(not the reconciler of unknown charges).",
            _attr("billing.cli.reconcile_cmd", "app"),
        ),
        "events": Lazy(
            "The audit log: every state change, with who made it and why.",
            _attr("billing.cli.events", "app"),
        ),
        "notifications": Lazy(
            "Notifications (webhooks, email) and their deliveries.",
            _attr("billing.cli.notifications", "app"),
        ),
        "config": Lazy("Inspect settings.", _attr("billing.cli.ops", "config_app")),
        "db": Lazy("Database schema.", _attr("billing.cli.ops", "db_app")),
    }


app = typer.Typer(
    cls=BillingGroup,  # usage errors and anything unexpected: one line on stderr
    name="billing",  # the program name in messages, also under CliRunner
    help="plexo-billing: recurring billing through Plexo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    config: str | None = typer.Option(
        None, "--config", envvar="BILLING_CONFIG", help="TOML settings file."
    ),
) -> None:
    from billing.cli.common import GLOBALS

    GLOBALS.config_path = config


@app.command("demo")
def demo(
    months: int = typer.Option(4, "--months", help="How many months to run on the test clock."),
    as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
) -> None:
    """Seed a sandbox and a SQLite store, then bill a few months on the test clock."""
    from billing.cli.common import handle_errors
    from billing.cli.demo import run_demo

    if not 1 <= months <= 36:
        typer.echo(f"error: --months must be between 1 and 36 (got {months})", err=True)
        raise typer.Exit(2)
    handle_errors(run_demo)(months=months, as_json=as_json)


def main() -> None:
    app()
