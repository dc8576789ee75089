"""The CLI imports only what a command needs (item 17): not timed, the import structure itself.

`billing --help` must not import Alembic, the engine, SQLAlchemy or the HTTP client; a command
that only reads the store must not import Alembic, httpx or the metrics. Each case runs the
real entry point in a fresh interpreter and lists what ended up in sys.modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from billing.cli.lazy import EAGER, build_command
from billing.cli.main import BillingGroup, app
from billing.store import migrate
from billing.wiring import DeferredPlexoClient

PROBE = """
import json, sys
from billing.cli.main import main
sys.argv = ["billing", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def modules_after(args: list[str], env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )
    last = done.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    return report["code"], set(report["modules"])


def imported(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_help_imports_no_engine_store_alembic_or_http_client() -> None:
    code, modules = modules_after(["--help"])
    assert code == 0
    assert imported(modules, "alembic", "httpx", "billing.engine", "billing.store") == []
    assert imported(modules, "sqlalchemy", "sqlmodel", "billing.plexo", "prometheus_client") == []


def test_reading_the_store_builds_no_gateway_client(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'billing.sqlite3'}"
    migrate.upgrade(url)
    code, modules = modules_after(["invoices", "list"], {"BILLING_DATABASE_URL": url})
    assert code == 0
    assert imported(modules, "alembic", "httpx", "billing.plexo.client", "prometheus_client") == []
    assert "billing.engine.invoices" in modules  # the command did run


def test_listing_customers_reads_through_the_driver(tmp_path: Path) -> None:
    """Item 17: `customers list` on a used store imports neither SQLAlchemy nor the engine."""
    url = f"sqlite:///{tmp_path / 'billing.sqlite3'}"
    migrate.upgrade(url)
    env = {"BILLING_DATABASE_URL": url, "BILLING_TIMEZONE": "America/Montevideo"}
    code, modules = modules_after(["customers", "list"], env)  # first use: the normal path
    assert code == 0 and "sqlalchemy" in modules
    code, modules = modules_after(["customers", "list", "--json"], env)
    assert code == 0
    assert imported(modules, "sqlalchemy", "sqlmodel", "alembic", "httpx", "billing.store.db") == []
    assert "billing.engine.quickread" in modules


def test_every_customers_command_is_listed_in_the_lazy_group() -> None:
    from billing.cli import customers
    from billing.cli.main import CustomersGroup

    written = {c.name for c in customers.app.registered_commands}
    assert written | {"list", "import"} == set(CustomersGroup.lazy)
    for name, entry in CustomersGroup.lazy.items():
        real = build_command(name, entry.load())
        assert (real.short_help or real.help or "").strip().splitlines()[0] == entry.help, name


def test_the_gateway_client_is_built_once_on_first_use() -> None:
    built: list[FakeClient] = []

    class FakeClient:
        closed = False

        def ping(self) -> str:
            return "pong"

        def close(self) -> None:
            self.closed = True

    def build() -> Any:
        built.append(FakeClient())
        return built[-1]

    unused = DeferredPlexoClient(build)
    unused.close()
    assert built == [] and not unused.built

    used = DeferredPlexoClient(build)
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: used.ping(), range(64))) == {"pong"}
    assert len(built) == 1 and used.built
    used.close()
    assert built[0].closed


def test_every_command_is_listed_with_its_own_one_line_help() -> None:
    """The one-line help in main.py is what the command says about itself."""
    from typer.main import get_command

    group = get_command(app)
    assert isinstance(group, BillingGroup)
    for name, entry in BillingGroup.lazy.items():
        if entry is EAGER:
            continue
        real = build_command(name, entry.load())
        assert (real.short_help or real.help or "").strip().splitlines()[0] == entry.help, name


@pytest.mark.parametrize(
    "files",
    [
        {"a": None},
        {"a": None, "b": "'a'", "c": "'b'"},
        {"a": None, "b": "'a'", "c": "'a'"},  # two heads
        {"a": None, "b": "'a'", "c": "'a'", "d": "('b', 'c')"},  # a merge
    ],
)
def test_script_heads_match_alembic(tmp_path: Path, files: dict[str, str | None]) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    for rev, down in files.items():
        (versions / f"{rev}_x.py").write_text(
            f'"""Revision ID: {rev}"""\n'
            f'revision: str = "{rev}"\n'
            f"down_revision: str | tuple[str, ...] | None = {down}\n"
            "branch_labels = None\n"
            "depends_on = None\n"
        )
    assert migrate.script_heads(versions) == migrate.alembic_heads(versions)


def test_script_heads_of_this_repository_match_alembic() -> None:
    assert migrate.script_heads() == migrate.alembic_heads() == {migrate.head_revision()}
