"""`billing customers import` / `billing subscriptions import`: in-process CLI, the sandbox over
real HTTP, on SQLite and PostgreSQL.

Good lines are imported and bad ones reported with their line number; a dry run writes nothing
here or at the gateway; a re-run skips what exists, so an interrupted import is finished by
running it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from typer.testing import CliRunner

from billing.cli.imports import CUSTOMER_COLUMNS, import_customers
from billing.cli.main import app
from billing.clock import SystemClock
from billing.domain.importfile import parse_rows
from billing.engine.context import BillingContext
from billing.plexo.client import PlexoClient
from billing.plexo.models import CustomerPayload
from billing.sandbox.server import SandboxServer
from billing.sandbox.simulator import PlexoSimulator
from billing.store.db import make_engine
from tests.integration.conftest import table_counts

AUTH = ("sandbox-client", "sandbox-key")


@dataclass
class Cli:
    env: dict[str, str]
    db_url: str
    sandbox_url: str
    tmp: Path

    def __call__(self, *args: str) -> Any:
        return CliRunner().invoke(app, list(args), env=self.env)

    def ok(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def file(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def run_import(self, *args: str) -> tuple[int, list[dict[str, Any]], str]:
        """Exit code, the per-line JSON report, and stderr."""
        result = self(*args, "--json")
        lines = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
        return result.exit_code, lines, result.stderr

    def snapshot(self) -> dict[str, int]:
        counts = table_counts(self.db_url)
        with httpx.Client(base_url=self.sandbox_url) as http:
            counts["sandbox_customers"] = len(http.get("/v1/customers", auth=AUTH).json())
        return counts

    def context(self, concurrency: int) -> BillingContext:
        return BillingContext(
            engine=make_engine(self.db_url),
            plexo=PlexoClient(self.sandbox_url, *AUTH, 1),
            clock=SystemClock(),
            tz=ZoneInfo("America/Montevideo"),
            node="test",
            actor="test",
            concurrency=concurrency,
        )


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    with SandboxServer(PlexoSimulator()) as server:
        env = {
            "BILLING_DATABASE_URL": db_url,
            "BILLING_PLEXO_BASE_URL": server.url,
            "BILLING_TIMEZONE": "America/Montevideo",
        }
        yield Cli(env, db_url, server.url, tmp_path)


def statuses(report: list[dict[str, Any]]) -> dict[int, str]:
    return {r["line"]: r["status"] for r in report}


CSV = (
    "reference_id,email,first_name,document_type,document_number,address_city,metadata.tier\n"
    "cus-1,ana@example.com,Ana,CI,1.234.567-2,Montevideo,gold\n"
    "cus-2,not-an-email,Bo,,,,\n"
    'cus-3,carla@example.com,"Carla",,,,\n'
    "cus-4,dan@example.com,Dan,CI,1.234.567-3,,\n"
    "cus-5,eva@example.com\n"
    "cus-6,fede@example.com,Fede,,,,silver\n"
)


def test_csv_imports_good_lines_and_reports_bad_ones(cli: Cli) -> None:
    code, report, _ = cli.run_import("customers", "import", cli.file("c.csv", CSV))
    assert code == 2  # some lines refused, the rest imported
    assert statuses(report) == {
        2: "ok",
        3: "error",
        4: "ok",
        5: "error",
        6: "error",
        7: "ok",
    }
    reasons = {r["line"]: r["reason"] for r in report}
    assert "email" in reasons[3]
    assert "check digit" in reasons[5] or "document" in reasons[5]
    assert "cells" in reasons[6]
    listed = {c["reference_id"] for c in cli.ok("customers", "list")}
    assert listed == {"cus-1", "cus-3", "cus-6"}
    assert cli.snapshot()["sandbox_customers"] == 3


def test_an_imported_customer_equals_one_made_by_customers_create(cli: Cli) -> None:
    cli.ok(
        "customers", "create", "--reference-id", "by-hand", "--email", " Ana@Example.COM ",
        "--first-name", "Ana", "--phone", "099 123 456", "--document-type", "ci",
        "--document-number", "12345672", "--address-line1", "Av. Italia 1234",
        "--address-country", "UY", "--birthdate", "1990-05-17", "--metadata", "tier=gold",
        "--status", "inactive",
    )  # fmt: skip
    line = {
        "reference_id": "by-file",
        "email": " Ana@Example.COM ",
        "first_name": "Ana",
        "phone": "099 123 456",
        "document_type": "ci",
        "document_number": 12345672,
        "address_line1": "Av. Italia 1234",
        "address_country": "UY",
        "birthdate": "1990-05-17",
        "metadata": {"tier": "gold"},
        "status": "inactive",
    }
    code, report, _ = cli.run_import(
        "customers", "import", cli.file("c.jsonl", json.dumps(line) + "\n")
    )
    assert (code, statuses(report)) == (0, {1: "ok"})
    differs = ("reference_id", "plexo_id", "created_at", "instruments")
    by_hand, by_file = (
        {k: v for k, v in cli.ok("customers", "show", ref).items() if k not in differs}
        for ref in ("by-hand", "by-file")
    )
    assert by_file == by_hand


def test_jsonl_lines_are_reported_one_by_one(cli: Cli) -> None:
    text = (
        '{"reference_id": "j-1", "email": "a@example.com", "metadata": {"plan": "x"}}\n'
        "\n"
        '{"reference_id": "j-2", "email": "b@example.com", "favourite": "blue"}\n'
        "{not json\n"
        '["j-4"]\n'
        '{"reference_id": "j-5"}\n'
        '{"reference_id": "j-6", "email": "f@example.com", "first_name": {"a": 1}}\n'
        '{"reference_id": "j-7", "email": "g@example.com"}\n'
    )
    code, report, _ = cli.run_import("customers", "import", cli.file("c.jsonl", text))
    assert code == 2
    assert statuses(report) == {
        1: "ok", 3: "error", 4: "error", 5: "error", 6: "error", 7: "error", 8: "ok"
    }  # fmt: skip
    reasons = {r["line"]: r["reason"] for r in report}
    assert "favourite" in reasons[3]
    assert "JSON" in reasons[4]
    assert "email is required" in reasons[6]
    assert {c["reference_id"] for c in cli.ok("customers", "list")} == {"j-1", "j-7"}
    assert cli.ok("customers", "show", "j-1")["metadata"] == {"plan": "x"}


def test_dry_run_writes_nothing_here_or_at_plexo(cli: Cli) -> None:
    cli.ok("customers", "create", "--reference-id", "cus-1", "--email", "ana@example.com")
    before = cli.snapshot()
    code, report, _ = cli.run_import("customers", "import", cli.file("c.csv", CSV), "--dry-run")
    assert code == 2
    assert statuses(report) == {2: "skipped", 3: "error", 4: "ok", 5: "error", 6: "error", 7: "ok"}
    assert cli.snapshot() == before
    good = cli.file("good.csv", "reference_id,email\nn-1,n1@example.com\nn-2,n2@example.com\n")
    code, report, _ = cli.run_import("customers", "import", good, "--dry-run")
    assert (code, statuses(report)) == (0, {2: "ok", 3: "ok"})
    assert cli.snapshot() == before


def test_a_rerun_after_an_interruption_skips_what_exists(cli: Cli) -> None:
    rows = "".join(f"r-{i},r{i}@example.com\n" for i in range(6))
    path = cli.file("c.csv", "reference_id,email\n" + rows)
    ctx = cli.context(concurrency=1)  # nothing read ahead: the kill point is exact
    try:
        results = import_customers(
            ctx, parse_rows(Path(path).read_bytes(), "csv", CUSTOMER_COLUMNS)
        )
        assert [next(results).status for _ in range(3)] == ["ok"] * 3
        results.close()  # killed after the third line
        # The next customer reached Plexo but not our store (killed between the two writes).
        ctx.plexo.create_customer(CustomerPayload(reference_id="r-3", email="r3@example.com"))
    finally:
        ctx.plexo.close()
        ctx.engine.dispose()
    code, report, _ = cli.run_import("customers", "import", path)
    # The customer at Plexo but not here is adopted (its fields match): create converges.
    assert statuses(report) == {2: "skipped", 3: "skipped", 4: "skipped", 5: "ok", 6: "ok", 7: "ok"}
    assert code == 0
    assert cli.snapshot()["sandbox_customers"] == 6  # nothing duplicated at Plexo
    # A second re-run changes nothing more.
    before = cli.snapshot()
    code, report, _ = cli.run_import("customers", "import", path)
    assert [r["status"] for r in report] == ["skipped"] * 6
    assert cli.snapshot() == before


def test_existing_customer_with_other_fields_is_skipped_and_says_so(cli: Cli) -> None:
    cli.ok("customers", "create", "--reference-id", "cus-1", "--email", "old@example.com")
    path = cli.file("c.csv", "reference_id,email\ncus-1,new@example.com\n")
    code, report, _ = cli.run_import("customers", "import", path)
    assert code == 0 and report[0]["status"] == "skipped"
    assert "customers update" in report[0]["reason"]
    assert cli.ok("customers", "show", "cus-1")["email"] == "old@example.com"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"reference_id,emial\nx,y\n", "unknown column(s) emial"),
        (b"email\nx@example.com\n", "missing required column(s) reference_id"),
        (b"reference_id,email\nx,caf\xe9@example.com\n", "line 2: the file is not UTF-8"),
        (b"", "empty"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_whole(
    cli: Cli, content: bytes, message: str
) -> None:
    before = cli.snapshot()
    result = cli("customers", "import", cli.file("c.csv", content))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert cli.snapshot() == before


def test_format_from_extension_or_flag(cli: Cli) -> None:
    path = cli.file("customers.txt", '{"reference_id": "f-1", "email": "f@example.com"}\n')
    result = cli("customers", "import", path)
    assert result.exit_code == 2 and "--format" in result.stderr
    code, report, _ = cli.run_import("customers", "import", path, "--format", "jsonl")
    assert (code, statuses(report)) == (0, {1: "ok"})


def basic_plan(cli: Cli) -> None:
    cli.ok("plans", "create", "--code", "basic", "--name", "Basic", "--amount", "590",
           "--currency", "UYU")  # fmt: skip


def test_subscriptions_import_dry_run_then_real_then_rerun(cli: Cli) -> None:
    for ref in ("s-1", "s-2", "s-3"):
        cli.ok("customers", "create", "--reference-id", ref, "--email", f"{ref}@example.com")
    basic_plan(cli)
    text = (
        "customer,plan,start\n"
        "s-1,basic,\n"
        "s-2,basic,2030-01-01T10:00:00\n"  # no offset: refused as `subscriptions create` does
        "s-9,basic,\n"
        "s-3,gold,\n"
        "s-3,basic,2030-01-01\n"
        "s-1,basic,\n"
    )
    path = cli.file("subs.csv", text)
    before = cli.snapshot()
    code, report, _ = cli.run_import("subscriptions", "import", path, "--dry-run")
    expected = {2: "ok", 3: "error", 4: "error", 5: "error", 6: "ok", 7: "skipped"}
    assert (code, statuses(report)) == (2, expected)
    assert cli.snapshot() == before
    code, report, _ = cli.run_import("subscriptions", "import", path)
    assert (code, statuses(report)) == (2, expected)
    reasons = {r["line"]: r["reason"] for r in report}
    assert "timezone offset" in reasons[3]
    assert "s-9" in reasons[4] and "gold" in reasons[5]
    subs = cli.ok("subscriptions", "list")
    assert sorted((s["customer"], s["plan"]) for s in subs) == [("s-1", "basic"), ("s-3", "basic")]
    code, report, _ = cli.run_import("subscriptions", "import", path)
    assert statuses(report) == {**expected, 2: "skipped", 6: "skipped"}
    assert len(cli.ok("subscriptions", "list")) == 2


def test_subscriptions_import_jsonl_all_ok_exits_zero(cli: Cli) -> None:
    cli.ok("customers", "create", "--reference-id", "s-1", "--email", "s1@example.com")
    basic_plan(cli)
    path = cli.file("subs.jsonl", '{"customer": "s-1", "plan": "basic", "start": "2030-01-01"}\n')
    code, report, _ = cli.run_import("subscriptions", "import", path)
    assert (code, statuses(report)) == (0, {1: "ok"})
    (sub,) = cli.ok("subscriptions", "list")
    assert sub["anchor_at"].startswith("2030-01-01T03:00:00")  # local midnight, Montevideo


def test_subscriptions_import_applies_the_backdate_rule_of_subscriptions_create(cli: Cli) -> None:
    """Issue 5 item 2: a start one interval or more ago needs `backdate` in the file too."""
    for ref in ("s-1", "s-2", "s-3", "s-4"):
        cli.ok("customers", "create", "--reference-id", ref, "--email", f"{ref}@example.com")
    basic_plan(cli)
    text = (
        '{"customer": "s-1", "plan": "basic", "start": "1926-12-01"}\n'
        '{"customer": "s-2", "plan": "basic", "start": "2020-01-01", "backdate": true}\n'
        '{"customer": "s-3", "plan": "basic", "start": "2020-01-01", "backdate": "maybe"}\n'
        '{"customer": "s-4", "plan": "basic", "start": "2020-01-01", "backdate": false}\n'
    )
    path = cli.file("subs.jsonl", text)
    before = cli.snapshot()
    expected = {1: "error", 2: "ok", 3: "error", 4: "error"}
    code, dry, _ = cli.run_import("subscriptions", "import", path, "--dry-run")
    assert (code, statuses(dry)) == (2, expected)
    assert cli.snapshot() == before, "a dry run writes nothing"
    code, report, _ = cli.run_import("subscriptions", "import", path)
    assert (code, statuses(report)) == (2, expected)
    reasons = {r["line"]: r["reason"] for r in report}
    assert "--backdate" in reasons[1] and "periods at once" in reasons[1]
    assert "backdate must be true or false" in reasons[3]
    assert "--backdate" in reasons[4]
    counted = reasons[2].removeprefix("created subscription 1 (active); ")
    assert counted.startswith("backdated: bills ") and counted.endswith(" periods")
    assert dry[1]["reason"] == f"valid; {counted}", "the dry run says the same count"
    assert [s["customer"] for s in cli.ok("subscriptions", "list")] == ["s-2"]
    csv_path = cli.file("subs.csv", "customer,plan,start,backdate\ns-3,basic,2020-01-01,yes\n")
    code, report, _ = cli.run_import("subscriptions", "import", csv_path)
    assert (code, statuses(report)) == (0, {2: "ok"})
