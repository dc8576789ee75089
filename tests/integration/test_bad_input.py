"""Issue 5 items 10-12, table-driven through the CLI on SQLite and PostgreSQL: card numbers in
any spelling, control characters and over-long text are refused with one clear line naming the
field, exit 2, and nothing is written here or at the gateway; what the store or the gateway
holds is shown escaped.

One seeded store per backend serves every case (a refusal changes nothing, which each case
checks), so the table stays cheap to run.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from billing.cli.main import app
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from billing.store.db import make_engine
from billing.store.migrate import upgrade
from tests.integration.conftest import table_counts
from tests.unit.test_cards import arabic_indic, fullwidth

AUTH = ("sandbox-client", "sandbox-key")


class Cli:
    def __init__(self, env: dict[str, str], db_url: str, sandbox_url: str, tmp: Path) -> None:
        self.env, self.db_url, self.sandbox_url, self.tmp = env, db_url, sandbox_url, tmp

    def __call__(self, *args: str) -> Any:
        return CliRunner().invoke(app, list(args), env=self.env)

    def ok(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def snapshot(self) -> dict[str, int]:
        counts = table_counts(self.db_url)
        with httpx.Client(base_url=self.sandbox_url) as http:
            counts["sandbox_customers"] = len(http.get("/v1/customers", auth=AUTH).json())
            counts["sandbox_payments"] = len(http.get("/sandbox/payments").json())
        return counts

    def file(self, name: str, content: str) -> str:
        path = self.tmp / name
        path.write_text(content, encoding="utf-8")
        return str(path)


def _database(backend: str, request: pytest.FixtureRequest, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'billing.sqlite3'}"
        return
    admin: str = request.getfixturevalue("pg_admin_url")
    name = f"billing_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def cli(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A migrated store with customer cus-1 (one card), plan basic and subscription 1."""
    tmp = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        for key in [k for k in os.environ if k.startswith("BILLING_")]:
            mp.delenv(key)
        for db_url in _database(request.param, request, tmp):
            upgrade(db_url)
            with SandboxServer(PlexoSimulator()) as server:
                env = {
                    "BILLING_DATABASE_URL": db_url,
                    "BILLING_PLEXO_BASE_URL": server.url,
                    "BILLING_TIMEZONE": "America/Montevideo",
                }
                cli = Cli(env, db_url, server.url, tmp)
                created = cli.ok(
                    "customers", "create", "--reference-id", "cus-1", "--email", "a@example.com"
                )
                httpx.post(
                    f"{server.url}/sandbox/customers/{created['plexo_id']}/instruments",
                    json={"cardNumber": "4111111111111111", "expMonth": 12, "expYear": 2035},
                ).raise_for_status()
                cli.ok("instruments", "sync", "cus-1")
                cli.ok(
                    "plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
                    "--currency", "UYU",
                )  # fmt: skip
                cli.ok("subscriptions", "create", "--customer", "cus-1", "--plan", "basic")
                yield cli


def refused(cli: Cli, args: list[str], message: str) -> str:
    """Exit 2, `message` in the one stderr line, nothing written anywhere; returns stderr."""
    before = cli.snapshot()
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].isprintable(), lines[0]
    assert "Traceback" not in result.output
    assert cli.snapshot() == before, "refused input changed something"
    return result.stderr


NEW = ["customers", "create", "--reference-id", "cus-9", "--email", "x@example.com"]
PLAN = ["plans", "create", "--amount", "5", "--currency", "UYU"]

# Item 10: card numbers in every spelling and every stored free-text field.
CARD_CASES = [
    ([*NEW, "--first-name", "4444  3333  2222  1111"], "first_name looks like a card number"),
    ([*NEW, "--last-name", fullwidth("4444333322221111")], "last_name looks like a card number"),
    ([*NEW, "--address-line1", "4444/3333/2222/1111"], "address_line1 looks like a card number"),
    ([*NEW, "--address-city", arabic_indic("4444333322221111")],
     "address_city looks like a card number"),
    ([*NEW, "--metadata", "note=4444,3333,2222,1111"], "metadata looks like a card number"),
    ([*NEW, "--metadata", "4444_3333_2222_1111=x"], "metadata looks like a card number"),
    (["customers", "create", "--reference-id", "4444_3333_2222_1111", "--email", "x@example.com"],
     "reference_id looks like a card number"),
    (["customers", "create", "--reference-id", "cus-9", "--email", "4444_3333_2222_1111@x.com"],
     "email looks like a card number"),
    (["customers", "update", "cus-1", "--first-name", "4507 - 9900 - 0000 - 4905"],
     "first_name looks like a card number"),
    ([*PLAN, "--code", "4444_3333_2222_1111", "--name", "P"], "plan code looks like a card number"),
    ([*PLAN, "--code", "p", "--name", "Gold 4444 - 3333 - 2222 - 1111"],
     "plan name looks like a card number"),
    (["customers", "delete", "cus-1", "--reason", "card 4444/3333/2222/1111"],
     "reason looks like a card number"),
    (["subscriptions", "pause", "1", "--reason", fullwidth("4444 3333 2222 1111")],
     "reason looks like a card number"),
    (["subscriptions", "cancel", "1", "--reason", "4444_3333_2222_1111"],
     "reason looks like a card number"),
    (["instruments", "default", "cus-1", "4444/3333/2222/1111"],
     "instrument looks like a card number"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), CARD_CASES)
def test_card_numbers_in_any_spelling_are_refused(cli: Cli, args: list[str], message: str) -> None:
    stderr = refused(cli, args, message)
    digits = "".join(ch for ch in stderr if ch.isdigit())
    assert "4444" not in digits and "4507" not in digits, "the number must never be echoed"


# Item 11: control, bidi and invisible characters in every text input, lookups included.
CONTROL_CASES = [
    ([*NEW, "--first-name", "Ana\x1b[2J"], "first_name contains a control character (U+001B)"),
    ([*NEW, "--last-name", "ab\u202edc"],
     "last_name contains a bidirectional-text control character (U+202E)"),
    ([*NEW, "--address-city", "Montevideo\n"], "address_city contains a control character"),
    ([*NEW, "--address-line2", "apto\u2066 5"], "address_line2 contains a bidirectional"),
    ([*NEW, "--metadata", "k=v\x07"], "metadata value for 'k' contains a control character"),
    ([*NEW, "--metadata", "k\u200b=v"], "metadata key contains an invisible character"),
    ([*NEW, "--phone", "099\t123 456"], "phone contains a control character (U+0009)"),
    (["customers", "create", "--reference-id", "cus\x00", "--email", "x@example.com"],
     "reference_id contains a control character (U+0000)"),
    (["customers", "create", "--reference-id", "cus-9", "--email", "x\x1b@example.com"],
     "email contains a control character (U+001B)"),
    (["customers", "update", "cus-1", "--last-name", "a\x85b"],
     "last_name contains a control character (U+0085)"),
    ([*PLAN, "--code", "basic2\n", "--name", "P"], "plan code contains a control character"),
    ([*PLAN, "--code", "p", "--name", "Basic\u2028Plus"], "plan name contains a line separator"),
    (["customers", "delete", "cus-1", "--reason", "moved\rout"],
     "reason contains a control character (U+000D)"),
    (["customers", "show", "cus\x1b[31m"], "customer reference contains a control character"),
    (["subscriptions", "create", "--customer", "cus-1", "--plan", "basic\x00"],
     "plan code contains a control character (U+0000)"),
    (["instruments", "remove", "cus-1", "tok\x00"], "instrument contains a control character"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), CONTROL_CASES)
def test_control_characters_are_refused_naming_the_field(
    cli: Cli, args: list[str], message: str
) -> None:
    refused(cli, args, message)


# Item 12: text longer than its column (or than the JSON limits) is refused before the
# database, with the same message on SQLite (which would store it) and PostgreSQL (which fails).
LENGTH_CASES = [
    ([*PLAN, "--code", "p", "--name", "x" * 5000], "plan name must be at most 200 characters"),
    ([*PLAN, "--code", "p" * 65, "--name", "P"], "plan code must be at most 64 characters"),
    ([*NEW, "--address-line1", "x" * 100_000], "address_line1 must be at most 200 characters"),
    ([*NEW, "--address-postal-code", "1" * 21], "address_postal_code must be at most 20"),
    ([*NEW, "--first-name", "x" * 101], "first_name must be at most 100 characters (got 101)"),
    ([*NEW, "--last-name", "ñ" * 101], "last_name must be at most 100 characters"),
    (["customers", "create", "--reference-id", "r" * 101, "--email", "x@example.com"],
     "reference_id must be at most 100 characters"),
    ([*NEW, "--metadata", "k" * 41 + "=v"], "metadata key must be at most 40 characters"),
    ([*NEW, *[a for i in range(17) for a in ("--metadata", f"k{i:02d}={'v' * 497}")]],
     "metadata keys and values must be at most 8000 characters in all"),
    (["customers", "update", "cus-1", "--address-state", "s" * 101],
     "address_state must be at most 100 characters"),
    (["customers", "delete", "cus-1", "--reason", "r" * 501],
     "reason must be at most 500 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), LENGTH_CASES)
def test_over_long_text_is_refused_the_same_on_both_backends(
    cli: Cli, args: list[str], message: str
) -> None:
    refused(cli, args, message)


def test_the_longest_accepted_values_are_stored_on_both_backends(cli: Cli) -> None:
    """At the limit is fine on PostgreSQL too (it would fail if the limits were too generous)."""
    view = cli.ok(
        "customers", "create", "--reference-id", "r" * 100, "--email", "x@example.com",
        "--first-name", "ñ" * 100, "--address-line1", "l" * 200, "--address-postal-code", "1" * 20,
    )  # fmt: skip
    assert view["first_name"] == "ñ" * 100
    plan = cli.ok("plans", "create", "--code", "p" * 64, "--name", "n" * 200, *PLAN[2:])
    assert plan["name"] == "n" * 200


IMPORT_CASES = [
    ("reference_id,email,first_name\ncus-8,h@example.com," + fullwidth("4444333322221111") + "\n",
     "first_name looks like a card number"),
    ('{"reference_id": "cus-8", "email": "h@example.com", "metadata": {"k": "a\\u001b[2Jb"}}\n',
     "metadata value for 'k' contains a control character (U+001B)"),
    ('{"reference_id": "cus-8", "email": "h@example.com", "last_name": "x\\u202ey"}\n',
     "last_name contains a bidirectional-text control character (U+202E)"),
    ('reference_id,email,address_line1\ncus-8,h@example.com,"' + "x" * 300 + '"\n',
     "address_line1 must be at most 200 characters"),
    ('{"reference_id": "cus-8", "email": "h@example.com", "first_name": "\\ud800"}\n',
     "first_name contains a lone surrogate"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "message"), IMPORT_CASES)
def test_import_files_get_the_same_refusals(cli: Cli, content: str, message: str) -> None:
    path = cli.file("bad.jsonl" if content.startswith("{") else "bad.csv", content)
    before = cli.snapshot()
    result = cli("customers", "import", path)
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.stdout.splitlines() if x.startswith("line ")]
    assert line.startswith("line 2: error cus-8: " if "," in content[:20] else "line 1: error")
    assert message in line and line.isprintable(), line
    assert cli.snapshot() == before


def test_what_the_store_holds_is_shown_escaped(cli: Cli) -> None:
    """Rows written before these checks (or by hand) cannot drive the terminal or split rows."""
    engine = make_engine(cli.db_url)
    evil = "Eve\x1b[2J\nFAKE ROW\u202e"
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE customer SET first_name = :v, last_name = :v WHERE reference_id = 'cus-1'"
            ),
            {"v": evil},
        )
    engine.dispose()
    try:
        listing = cli("customers", "list")
        assert listing.exit_code == 0, listing.output
        assert "\x1b" not in listing.stdout and "\u202e" not in listing.stdout
        assert "Eve\\x1b[2J\\nFAKE ROW\\u202e" in listing.stdout
        assert not any(line.startswith("FAKE ROW") for line in listing.stdout.splitlines())
        shown = cli("customers", "show", "cus-1")
        assert "\x1b" not in shown.stdout and "first_name   Eve\\x1b[2J\\nFAKE" in shown.stdout
        as_json = cli.ok("customers", "list")
        assert as_json[0]["first_name"] == evil  # JSON keeps the value, escaped by JSON itself
    finally:
        engine = make_engine(cli.db_url)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE customer SET first_name = NULL, last_name = NULL"
                     " WHERE reference_id = 'cus-1'")
            )  # fmt: skip
        engine.dispose()


def test_an_error_line_escapes_what_it_quotes(cli: Cli) -> None:
    """A message quoting input (or the gateway) is one line whatever that text holds."""
    result = cli("subscriptions", "create", "--customer", "cus-1", "--plan", "nope",
                 "--start", "2026-01-01\n\x1b[31mx")  # fmt: skip
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.isprintable() and line.startswith("error: start"), line


def test_legitimate_values_are_not_taken_for_card_numbers(cli: Cli) -> None:
    """Phone numbers, documents, timestamps and long non-Luhn references are stored as given."""
    view = cli.ok(
        "customers", "create", "--reference-id", "4444333322221113", "--email", "p@example.com",
        "--phone", "+86 138 0013 8002",  # 13 digits that pass Luhn, but a phone number
        "--document-type", "RUT", "--document-number", "21-100342-001-7",
        "--address-line1", "Av. 18 de Julio 1234, apto 501",
        "--metadata", "imported_at=2025-07-01 09:00:00",  # 14 Luhn-valid digits: a timestamp
        "--metadata", "crm=12345678901234567890123",  # one 23-digit identifier
    )  # fmt: skip
    assert view["phone"] == "+8613800138002"
    assert view["metadata"]["imported_at"] == "2025-07-01 09:00:00"
