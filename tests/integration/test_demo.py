"""`billing demo` works on a fresh directory with no configuration at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from billing.cli.demo import MARKER
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
    # Carla's card declines twice (soft) and the retry recovers her; Elena's is stolen (hard):
    # never retried, the chain ends and the default final action marks her unpaid.
    assert summary["subscriptions"] == {"active": 4, "unpaid": 1}
    assert summary["unpaid_invoices"] == 1
    stories = {d["customer"]: d for d in summary["dunning"]}
    assert set(stories) == {"cus-carla", "cus-elena"}
    assert stories["cus-carla"]["recovered"] is True
    assert stories["cus-carla"]["status"] == "active"
    assert stories["cus-elena"]["recovered"] is False
    assert stories["cus-elena"]["declines"] == ["stolen_card (hard)"]
    assert (stories["cus-elena"]["status"], stories["cus-elena"]["uncollectible_invoices"]) == (
        "unpaid",
        1,
    )
    assert set(summary["charged"]) == {"UYU", "USD"}
    # Signed webhooks to the demo's own receiver, one per distinct event id.
    sent = summary["notifications_sent"]
    assert sent["invoice.paid"] >= 4 and sent["invoice.payment_failed"] >= 2
    assert sent["subscription.recovered"] == 1 and sent["subscription.unpaid"] == 1
    assert Path(summary["data"]["directory"]) == tmp_path / ".state" / "demo"
    assert (tmp_path / ".state" / "demo" / "billing.sqlite3").exists()
    assert (tmp_path / ".state" / "demo" / MARKER).is_file()


def _run_demo(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    for key in [k for k in os.environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    return CliRunner().invoke(
        app, ["demo", "--json", "--months", "1"], env={"BILLING_DEMO_DIR": str(directory)}
    )


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_demo_refuses_a_non_empty_directory_it_did_not_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    keep = target / "thesis.tex" if kind == "file" else target / "photos"
    if kind == "file":
        keep.write_text("years of work")
    else:
        keep.mkdir()
    result = _run_demo(target, monkeypatch)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {target} is not empty and was not made by `billing demo`")
    assert result.stdout == ""
    assert sorted(p.name for p in target.iterdir()) == [keep.name]  # untouched


def test_demo_refuses_a_file_or_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.write_text("keep")
    link = tmp_path / "link"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("keep")
    link.symlink_to(tmp_path / "elsewhere")
    for target in (plain, link):
        result = _run_demo(target, monkeypatch)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1
    assert plain.read_text() == "keep"
    assert (tmp_path / "elsewhere" / "keep.txt").read_text() == "keep"


def test_demo_reuses_only_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "empty"
    target.mkdir()  # an empty directory is adopted
    first = _run_demo(target, monkeypatch)
    assert first.exit_code == 0, first.output
    assert (target / MARKER).is_file() and (target / "billing.sqlite3").exists()
    (target / "leftover.txt").write_text("from the last run")
    again = _run_demo(target, monkeypatch)  # its own directory: emptied and run again
    assert again.exit_code == 0, again.output
    assert not (target / "leftover.txt").exists()
    assert json.loads(again.stdout)["ledger_matches_sandbox"] is True
