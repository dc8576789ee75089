"""The wheel's package list stays equal to billing/'s packages, plus the shipped migrations."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_billing_package_and_the_migrations_are_in_the_wheel() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "billing").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk | {
        "billing._migrations",
        "billing._migrations.versions",
    }
    assert setuptools["package-dir"] == {"billing._migrations": "migrations"}
