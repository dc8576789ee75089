"""An operator's install: build the wheel, install it into a fresh venv (not editable), and
run `billing db upgrade` and `billing demo` from an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from billing.store import migrate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout + done.stderr


@pytest.mark.timeout(900)
def test_the_wheel_installs_and_migrates_and_runs_the_demo_from_an_empty_folder(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, ROOT], tmp_path)
    (wheel,) = dist.glob("plexo_billing-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    # The dependencies come from this test run's environment (a .pth line, not a site dir, so
    # its editable install of billing is not picked up); billing itself only from the wheel.
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env["PYTHONPATH"] = ""
    billing = venv / "bin" / "billing"
    where = _run([venv / "bin" / "python", "-c", "import billing; print(billing.__file__)"], empty)
    assert str(site) in where, where
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _run([billing, "db", "upgrade"], empty, {**env, "BILLING_DATABASE_URL": url})
    current = _run([billing, "db", "current"], empty, {**env, "BILLING_DATABASE_URL": url})
    head = migrate.head_revision()
    assert f"current {head}, head {head}" in current, current
    demo = _run([billing, "demo", "--months", "2"], empty, env)
    assert "paid" in demo or "approved" in demo, demo
    # The email templates are package data: the wheel carries them.
    probe = (
        "from billing.notify.email import render\n"
        "print(render('invoice.payment_failed', 'en', {})[0])"
    )
    subject = _run([venv / "bin" / "python", "-c", probe], empty, env)
    assert "We could not charge" in subject, subject
