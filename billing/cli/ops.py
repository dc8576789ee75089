"""Operator commands: config show, check, db upgrade, sandbox, daemon."""

from __future__ import annotations

from typing import Any

import typer

from billing.cli.common import EXIT_FAILED, JsonOption, cell, handle_errors, output, settings
from billing.errors import BillingError, ConfigError, InvalidInput
from billing.settings import describe, describe_text, is_loopback_host, redact_url

config_app = typer.Typer(help="Inspect settings.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@config_app.command("show")
@handle_errors
def config_show(as_json: bool = JsonOption) -> None:
    """Print every setting and where it came from; secrets are masked."""
    cfg = settings()
    output(describe(cfg), as_json, describe_text(cfg))


@db_app.command("upgrade")
@handle_errors
def db_upgrade(
    revision: str = typer.Option("head", "--revision"), as_json: bool = JsonOption
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from billing.store.migrate import current_revision, upgrade

    cfg = settings()
    upgrade(cfg.database_url, revision)
    now = current_revision(cfg.database_url)
    output({"revision": now}, as_json, f"database at revision {now}")


@db_app.command("current")
@handle_errors
def db_current(as_json: bool = JsonOption) -> None:
    """Print the database's schema revision and the code's head."""
    from billing.store.migrate import current_revision, head_revision

    cfg = settings()
    data = {"current": current_revision(cfg.database_url), "head": head_revision()}
    output(data, as_json, f"current {data['current']}, head {data['head']}")


@handle_errors
def check(as_json: bool = JsonOption) -> None:
    """Verify config, database, schema, gateway reachability and credentials."""
    checks: list[dict[str, Any]] = []

    def record(name: str, ok: bool, detail: str) -> bool:
        checks.append({"check": name, "ok": ok, "detail": detail})
        return ok

    try:
        cfg = settings()
        record("config", True, f"environment {cfg.plexo_environment}")
    except BillingError as exc:
        record("config", False, str(exc))
        _report(checks, as_json)
        raise typer.Exit(EXIT_FAILED) from None
    from sqlalchemy import text

    from billing.store.db import make_engine
    from billing.store.migrate import current_revision, head_revision
    from billing.wiring import make_plexo_client, plexo_base_url

    db_ok = False
    try:
        engine = make_engine(cfg.database_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        db_ok = record("database", True, redact_url(cfg.database_url))
    except Exception as exc:
        record("database", False, f"unreachable: {type(exc).__name__}: {_short(exc)}")
    if db_ok:
        current, head = current_revision(cfg.database_url), head_revision()
        record(
            "schema",
            current == head,
            f"at head {head}"
            if current == head
            else f"at {current or 'an empty schema'}, head is {head}: run `billing db upgrade`",
        )
        if current == head:
            record("timezone", *_zone_check(cfg.database_url, cfg.timezone))
    else:
        record("schema", False, "skipped: database unreachable")
    with make_plexo_client(cfg) as client:
        try:
            client.verify_credentials()
            record("gateway", True, f"reachable at {plexo_base_url(cfg)}")
            record("credentials", True, "accepted")
        except BillingError as exc:
            code = getattr(exc, "status", None)
            if code in (401, 403):
                record("gateway", True, f"reachable at {plexo_base_url(cfg)}")
                record("credentials", False, "rejected by the gateway (HTTP 401/403)")
            else:
                hint = " (start it with `billing sandbox`)" if cfg.sandbox_builtin else ""
                record("gateway", False, f"{plexo_base_url(cfg)}: {exc}{hint}")
                record("credentials", False, "skipped: gateway unreachable")
    _report(checks, as_json)
    if not all(c["ok"] for c in checks):
        raise typer.Exit(EXIT_FAILED)


def _zone_check(database_url: str, setting: str) -> tuple[bool, str]:
    """The store keeps the zone it was first used with (engine/store_rules.py)."""
    from billing.store.db import make_engine
    from billing.store.meta import TIMEZONE, get_meta

    engine = make_engine(database_url)
    try:
        recorded = get_meta(engine, TIMEZONE)
    finally:
        engine.dispose()
    if recorded is None:
        return True, f"{setting} (recorded at first use)"
    if recorded == setting:
        return True, f"{setting}, as recorded by the store"
    return False, f"BILLING_TIMEZONE is {setting} but the store's periods are in {recorded}"


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def _report(checks: list[dict[str, Any]], as_json: bool) -> None:
    lines = [
        f"{'ok' if c['ok'] else 'FAIL':<4} {c['check']:<12} {cell(c['detail'])}" for c in checks
    ]
    output({"ok": all(c["ok"] for c in checks), "checks": checks}, as_json, "\n".join(lines))


@handle_errors
def sandbox(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8765, "--port", min=0, max=65535),
    duplicate_mode: str = typer.Option("reject", "--duplicate-mode", help="reject (409) or replay"),
    decline_style: str = typer.Option("body", "--decline-style", help="body (200) or error (402)"),
    allow_unauthenticated_control: bool = typer.Option(
        False,
        "--allow-unauthenticated-control",
        help="Listen off loopback although /sandbox/* (faults, payments) has no authentication.",
    ),
) -> None:
    """Serve the Plexo simulator over HTTP; its state is in memory (test cards: README)."""
    from billing.sandbox.server import serve
    from billing.sandbox.simulator import PlexoSimulator

    cfg = settings()
    if cfg.is_production:
        raise ConfigError(
            "BILLING_PLEXO_ENVIRONMENT is production: the sandbox would take the real "
            "credentials and fake payments; run it with a sandbox or testing configuration"
        )
    if not is_loopback_host(host) and not allow_unauthenticated_control:
        raise InvalidInput(
            f"--host {host} is not a loopback address, and anyone who reaches it can set "
            "faults and read payments (/sandbox/* has no authentication): add "
            "--allow-unauthenticated-control to do it anyway"
        )
    simulator = PlexoSimulator(
        cfg.plexo_client_id,
        cfg.plexo_api_key.get_secret_value(),
        cfg.plexo_merchant_id,
        duplicate_mode=duplicate_mode,
        decline_style=decline_style,
    )
    serve(host, port, simulator)


@handle_errors
def daemon() -> None:
    """Run the billing daemon until SIGTERM (systemd Type=notify aware)."""
    from billing.daemon.main import run_daemon

    raise typer.Exit(run_daemon(settings()))
