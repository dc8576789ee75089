"""The systemd units in systemd/ pass `systemd-analyze verify` and an offline security review
with an exposure of 2.0 or better (issue 7, item 4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = [
    "billing.service",
    "billing-migrate.service",
    "billing@.service",
    "billing-migrate@.service",
]
INSTALLED = "/opt/plexo-billing/bin/billing"


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units as an operator installs them, pointing at this test run's `billing`."""
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("systemd-analyze is missing (.ci/run installs the systemd package)")
        pytest.skip("systemd-analyze is not installed")
    billing = Path(sys.executable).with_name("billing")
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text()
        assert INSTALLED in text, name
        (tmp_path / name).write_text(text.replace(INSTALLED, str(billing)))
    for template in ("billing@", "billing-migrate@"):
        (tmp_path / f"{template}a.service").symlink_to(tmp_path / f"{template}.service")
    return tmp_path


def _analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}
    return subprocess.run(
        ["systemd-analyze", *args], cwd=unit_dir, env=env, capture_output=True, text=True
    )


INSTANCES = ["billing.service", "billing-migrate.service", "billing@a.service",
             "billing-migrate@a.service"]  # fmt: skip


def test_units_verify(unit_dir: Path) -> None:
    done = _analyze(unit_dir, "verify", *INSTANCES)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.parametrize("unit", INSTANCES)
def test_unit_exposure_is_2_or_better(unit_dir: Path, unit: str) -> None:
    done = _analyze(unit_dir, "security", "--offline=yes", "--threshold=20", unit)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "Overall exposure level" in done.stdout


def test_the_daemon_unit_is_notify_with_a_watchdog_and_a_stop_budget() -> None:
    text = (ROOT / "systemd" / "billing.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "WatchdogSec=",
                 "LoadCredential=plexo_api_key:", "StateDirectory=plexo-billing"):  # fmt: skip
        assert line in text, line
    stop = int(text.split("TimeoutStopSec=")[1].split("s")[0])
    from billing.settings import Settings

    assert stop > Settings.model_fields["stop_budget_seconds"].default
