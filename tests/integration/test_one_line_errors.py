"""Every failure of the `billing` command is one line on stderr with a documented exit code, and
a refused command changes nothing: neither the store (on SQLite and PostgreSQL) nor the sandbox.

Exit codes (README "Using it"): 2 refused input or usage, 1 a failure (a port in use, the
gateway or the database unreachable), 70 an unexpected internal error.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from billing.cli.main import app
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from tests.integration.conftest import table_counts

BILLING = Path(sys.executable).with_name("billing")  # the installed console script


@dataclass
class Shell:
    env: dict[str, str]
    db_url: str
    sandbox_url: str
    sandbox_port: int
    tmp: Path

    def __call__(self, *args: str, extra_env: dict[str, str] | None = None) -> Any:
        return CliRunner().invoke(app, list(args), env={**self.env, **(extra_env or {})})

    def ok(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> Any:
        """The installed `billing` in a child process: the real entry point."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
        return subprocess.run(
            [str(BILLING), *args],
            env={**env, **self.env, **(extra_env or {})},
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def snapshot(self) -> dict[str, Any]:
        """Row counts of every table and what the sandbox holds."""
        state: dict[str, Any] = dict(table_counts(self.db_url))
        with httpx.Client(base_url=self.sandbox_url) as http:
            state["sandbox_payments"] = http.get("/sandbox/payments").json()
            auth = ("sandbox-client", "sandbox-key")
            state["sandbox_customers"] = http.get("/v1/customers", auth=auth).json()
        return state


@pytest.fixture
def shell(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shell]:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    with SandboxServer(PlexoSimulator()) as server:
        env = {
            "BILLING_DATABASE_URL": db_url,
            "BILLING_PLEXO_BASE_URL": server.url,
            "BILLING_TIMEZONE": "America/Montevideo",
            "BILLING_METRICS_PORT": "0",
        }
        sh = Shell(env, db_url, server.url, server.port, tmp_path)
        sh.ok("customers", "create", "--reference-id", "cus-1", "--email", "ana@example.com")
        sh.ok("plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
              "--currency", "UYU")  # fmt: skip
        sh.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")
        yield sh


def _not_utf8(tmp: Path) -> str:
    path = tmp / "latin1.toml"
    path.write_bytes('node_name = "café"\n'.encode("latin-1"))
    return str(path)


CREATE = ["subscriptions", "create", "--customer", "cus-1", "--plan", "basic"]

# (case id, arguments, extra environment, exit code, a fragment of the one line)
# "{port}" is the sandbox's own port (in use), "{tmp}" the test's directory.
CASES: list[tuple[str, list[str], dict[str, str], int, str]] = [
    ("as-of-year-1", ["run", "--once", "--as-of", "0001-01-01T00:00:00+05:00"], {}, 2,
     "--as-of 0001-01-01T00:00:00+05:00 is out of range"),
    ("as-of-year-9999", ["run", "--once", "--as-of", "9999-12-31T23:00:00-05:00"], {}, 2,
     "out of range"),
    ("start-year-1", [*CREATE, "--allow-duplicate", "--start", "0001-01-01T00:00:00+05:00"],
     {}, 2, "start 0001-01-01T00:00:00+05:00 is out of range"),
    ("start-year-9999", [*CREATE, "--allow-duplicate", "--start", "9999-12-31"], {}, 2,
     "out of range"),
    ("amount-beyond-the-integer-column", ["plans", "create", "--code", "big", "--name", "Big",
     "--amount", "21474836.48", "--currency", "UYU"], {}, 2,
     "amount must be at most 21474836.47 UYU"),
    ("id-beyond-64-bit", ["subscriptions", "show", "99999999999999999999"], {}, 2,
     "no subscription 99999999999999999999"),
    ("id-beyond-pg-integer", ["subscriptions", "cancel", "2147483648"], {}, 2,
     "no subscription 2147483648"),
    ("id-beyond-63-bit", ["subscriptions", "pause", "9223372036854775808"], {}, 2,
     "no subscription"),
    ("instrument-id-beyond-pg-integer", ["instruments", "default", "cus-1", "99999999999"], {},
     2, "has no active instrument '99999999999'"),
    ("revision-bogus", ["db", "upgrade", "--revision", "bogus"], {}, 2,
     "cannot upgrade to revision 'bogus'"),
    ("revision-base", ["db", "upgrade", "--revision", "base"], {}, 2,
     "cannot upgrade to revision 'base'"),
    ("sandbox-port-out-of-range", ["sandbox", "--port", "99999"], {}, 2,
     "Invalid value for '--port'"),
    ("sandbox-port-in-use", ["sandbox", "--port", "{port}"], {}, 1,
     "the sandbox cannot listen on 127.0.0.1:{port}"),
    ("sandbox-host-unknown", ["sandbox", "--host", "nosuch.invalid", "--port", "0",
     "--allow-unauthenticated-control"], {}, 1, "the sandbox cannot listen on nosuch.invalid"),
    ("metrics-port-out-of-range", ["daemon"], {"BILLING_METRICS_PORT": "70000"}, 2,
     "BILLING_METRICS_PORT: must be between 0 and 65535 (got 70000)"),
    ("driver-asyncpg", ["customers", "list"],
     {"BILLING_DATABASE_URL": "postgresql+asyncpg://u:SECRET@127.0.0.1/x"}, 2,
     "unsupported driver 'asyncpg'"),
    ("driver-psycopg2", ["customers", "list"],
     {"BILLING_DATABASE_URL": "postgresql+psycopg2://127.0.0.1/x"}, 2,
     "unsupported driver 'psycopg2'"),
    ("driver-sqlite-unknown", ["customers", "list"],
     {"BILLING_DATABASE_URL": "sqlite+pysqlcipher:///{tmp}/x.db"}, 2,
     "unsupported driver 'pysqlcipher'"),
    ("database-url-unparsable", ["customers", "list"],
     {"BILLING_DATABASE_URL": "postgresql://u:SECRET@[::1/x"}, 2,
     "BILLING_DATABASE_URL: must be a database URL"),
    ("sqlite-directory-impossible", ["customers", "list"],
     {"BILLING_DATABASE_URL": "sqlite:////proc/no-such-dir/b.sqlite3"}, 2,
     "BILLING_DATABASE_URL: cannot create /proc/no-such-dir for the SQLite file"),
    ("toml-not-utf8", ["--config", "{tmp}/latin1.toml", "customers", "list"], {}, 2,
     "config file {tmp}/latin1.toml: not UTF-8 text"),
    ("several-bad-settings", ["customers", "list"],
     {"BILLING_CONCURRENCY": "0", "BILLING_TIMEZONE": "Nowhere"}, 2,
     "(got Nowhere); BILLING_CONCURRENCY: must be between 1 and 64"),
    ("no-such-option", ["customers", "list", "--frob"], {}, 2,
     "error: No such option: --frob (try 'billing customers list --help')"),
    ("no-such-command", ["frob"], {}, 2, "No such command 'frob'"),
    ("not-an-integer", ["subscriptions", "show", "abc"], {}, 2,
     "Invalid value for 'subscription_id'"),
    ("missing-option", ["plans", "create"], {}, 2, "Missing option '--code'"),
    ("extra-argument", ["customers", "list", "surplus"], {}, 2, "Got unexpected extra argument"),
]  # fmt: skip


def _fill(text: str, shell: Shell) -> str:
    return text.replace("{port}", str(shell.sandbox_port)).replace("{tmp}", str(shell.tmp))


def _assert_one_line(stderr: str, code: int, expected_code: int, fragment: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert fragment in lines[0], stderr
    assert "Traceback" not in stderr and "SECRET" not in stderr
    assert code == expected_code, stderr


@pytest.mark.parametrize(
    ("args", "extra_env", "code", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_each_failure_is_one_line_with_its_exit_code_and_changes_nothing(
    shell: Shell, args: list[str], extra_env: dict[str, str], code: int, fragment: str
) -> None:
    _not_utf8(shell.tmp)
    before = shell.snapshot()
    env = {k: _fill(v, shell) for k, v in extra_env.items()}
    result = shell(*(_fill(a, shell) for a in args), extra_env=env)
    assert result.stdout == "", result.stdout
    _assert_one_line(result.stderr, result.exit_code, code, _fill(fragment, shell))
    assert shell.snapshot() == before, "a refused command changed something"


@pytest.mark.parametrize(
    "case", ["no-such-option", "as-of-year-1", "id-beyond-pg-integer", "toml-not-utf8"]
)
def test_the_installed_command_prints_the_same_one_line(shell: Shell, case: str) -> None:
    _, args, extra_env, code, fragment = next(c for c in CASES if c[0] == case)
    _not_utf8(shell.tmp)
    before = shell.snapshot()
    env = {k: _fill(v, shell) for k, v in extra_env.items()}
    result = shell.run(*(_fill(a, shell) for a in args), extra_env=env)
    _assert_one_line(result.stderr, result.returncode, code, _fill(fragment, shell))
    assert shell.snapshot() == before


def test_a_second_daemon_on_the_metrics_port_is_one_line(shell: Shell) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = shell.snapshot()
        result = shell.run("daemon", extra_env={"BILLING_METRICS_PORT": str(port)})
    _assert_one_line(
        result.stderr,
        result.returncode,
        1,
        f"the metrics endpoint cannot listen on 127.0.0.1:{port}",
    )
    assert "BILLING_METRICS_PORT" in result.stderr
    assert shell.snapshot() == before


def test_an_unexpected_exception_is_one_line_without_its_text(
    shell: Shell, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_settings: object) -> dict[str, object]:
        raise RuntimeError("postgresql://billing:SECRET@db/billing\nsecond line")

    monkeypatch.setattr("billing.cli.ops.describe", broken)
    result = shell("config", "show", "--json")
    _assert_one_line(
        result.stderr, result.exit_code, 70, "unexpected internal error (RuntimeError at"
    )
    assert "at billing/cli/ops.py:" in result.stderr  # where, for the bug report
    assert "second line" not in result.stderr


def _command_paths(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name in getattr(command, "lazy", {}):
        command.load(name)  # the root group imports a sub-command only when it is used
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*prefix, name))


def test_help_shows_no_type_noise() -> None:
    from typer.main import get_command

    paths = list(_command_paths(get_command(app)))
    assert len(paths) > 30
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        for noise in ("<bool>", "<str>", "<int>", "<list[str]>"):
            assert noise not in result.output, (path, result.output)
    flags = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--as-of" in flags and "TEXT" in flags
