"""`billing sandbox` only serves its unauthenticated control routes (/sandbox/*) on loopback,
unless told in so many words, and never with the production environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from billing.cli.main import app

BILLING = Path(sys.executable).with_name("billing")
PRODUCTION = {
    "BILLING_PLEXO_ENVIRONMENT": "production",
    "BILLING_PLEXO_BASE_URL": "https://api.plexo.com.uy",
    "BILLING_PLEXO_CLIENT_ID": "4711",
    "BILLING_PLEXO_API_KEY": "0123456789abcdef",
}


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("BILLING_DATABASE_URL", f"sqlite:///{tmp_path / 'b.sqlite3'}")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_off_loopback_needs_the_flag(host: str) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--host", host, "--port", "0"])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: --host {host} is not a loopback address")
    assert "--allow-unauthenticated-control" in line


@pytest.mark.parametrize("flag", [[], ["--allow-unauthenticated-control"]])
def test_production_is_refused_even_with_the_flag(flag: list[str]) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--port", "0", *flag], env=PRODUCTION)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: BILLING_PLEXO_ENVIRONMENT is production")
    assert PRODUCTION["BILLING_PLEXO_API_KEY"] not in result.output


def test_python_m_sandbox_refuses_off_loopback_too() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "billing.sandbox", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --host 0.0.0.0 is not a loopback address and /sandbox/* has no "
        "authentication: add --allow-unauthenticated-control to do it anyway"
    ]


def test_the_flag_lets_it_listen_on_all_addresses() -> None:
    with subprocess.Popen(
        [str(BILLING), "sandbox", "--host", "0.0.0.0", "--port", "0",
         "--allow-unauthenticated-control"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:  # fmt: skip
        try:
            assert process.stderr is not None
            started = json.loads(process.stderr.readline())
            port = started["url"].rsplit(":", 1)[1]
            assert httpx.get(f"http://127.0.0.1:{port}/sandbox/payments", timeout=5).json() == []
        finally:
            process.terminate()
            process.wait(timeout=10)
