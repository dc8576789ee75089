"""`billing demo` works on a fresh directory with no configuration at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing.cli.main import app


def test_demo_bills_months_and_matches_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    result = CliRunner().invoke(app, ["demo", "--json", "--months", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ledger_matches_sandbox"] is True
    assert summary["subscriptions"] == {"active": 3, "past_due": 1}  # one card declines
    assert summary["unpaid_invoices"] >= 3
    assert set(summary["charged"]) == {"UYU", "USD"}
    assert Path(summary["data"]["directory"]) == tmp_path / ".state" / "demo"
    assert (tmp_path / ".state" / "demo" / "billing.sqlite3").exists()
