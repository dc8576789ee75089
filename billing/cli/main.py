"""The `billing` command: one sub-app per noun, all thin shells over billing.engine."""

from __future__ import annotations

import typer

from billing.cli import customers, imports, ledger, ops, run, subscriptions
from billing.cli.common import GLOBALS, handle_errors
from billing.cli.shell import OneLineGroup

app = typer.Typer(
    cls=OneLineGroup,  # usage errors and anything unexpected: one line on stderr
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
    GLOBALS.config_path = config


customers.app.command("import")(imports.customers_import)
subscriptions.app.command("import")(imports.subscriptions_import)
app.add_typer(customers.app, name="customers")
app.add_typer(customers.instruments_app, name="instruments")
app.add_typer(subscriptions.plans_app, name="plans")
app.add_typer(subscriptions.app, name="subscriptions")
app.add_typer(ledger.invoices_app, name="invoices")
app.add_typer(ledger.runs_app, name="runs")
app.add_typer(ops.config_app, name="config")
app.add_typer(ops.db_app, name="db")
app.command("check")(ops.check)
app.command("run")(run.run)
app.command("sandbox")(ops.sandbox)
app.command("daemon")(ops.daemon)


@app.command("demo")
@handle_errors
def demo(
    months: int = typer.Option(4, "--months", help="How many months to run on the test clock."),
    as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
) -> None:
    """Seed a sandbox and a SQLite store, then bill a few months on the test clock."""
    from billing.cli.demo import run_demo

    if not 1 <= months <= 36:
        typer.echo(f"error: --months must be between 1 and 36 (got {months})", err=True)
        raise typer.Exit(2)
    run_demo(months=months, as_json=as_json)


def main() -> None:
    app()
