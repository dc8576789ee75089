"""The Prometheus alert rules (config/prometheus/billing-alerts.yml) load in promtool, pass their
unit tests (billing-alerts.test.yml: each alert fires and does not fire) and carry what the
runbook and a pager need (issue 7 item 3)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_dashboard import declared_sample_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "prometheus"
RULES = CONFIG / "billing-alerts.yml"
RULE_TESTS = CONFIG / "billing-alerts.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
# The runbook (docs/runbook.md) has one heading per alert; these names are its anchors.
ALERTS = {
    "BillingPassStale",
    "BillingDaemonAbsent",
    "BillingNotReady",
    "BillingApprovalRateLow",
    "BillingDeclineRateHigh",
    "BillingGatewayErrors",
    "BillingUnknownOutcomesOld",
    "BillingDueBacklogGrowing",
    "BillingOutboxBacklogGrowing",
    "BillingNotificationDeliveriesFailing",
    "BillingJobErrors",
    "BillingSubscriptionsHeld",
    "BillingInvoicesParked",
}
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if _in_ci():
            pytest.fail("promtool is missing (.ci/run installs the prometheus package)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=CONFIG, capture_output=True, text=True, timeout=120
    )


def _rules() -> list[dict[str, Any]]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_check_rules(promtool: str) -> None:
    done = _run(promtool, "check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout, done.stdout


def test_promtool_test_rules(promtool: str) -> None:
    done = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_example_prometheus_config_is_valid_and_loads_the_rules(promtool: str) -> None:
    done = _run(promtool, "check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == [RULES.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "billing"
    assert "127.0.0.1:9464" in job["static_configs"][0]["targets"]


def test_every_alert_is_named_labelled_and_linked_to_its_runbook_section() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    assert len(rules) == len(ALERTS)
    headings = set(re.findall(r"^## (\w+)\s*$", RUNBOOK.read_text(encoding="utf-8"), re.M))
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert notes["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
        assert name in headings, f"docs/runbook.md has no '## {name}' section"


def test_every_rule_names_only_declared_metrics() -> None:
    declared = declared_sample_names() | SYNTHETIC
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names and names <= declared, (rule["alert"], sorted(names - declared))


def test_the_unit_tests_fire_and_do_not_fire_every_alert() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == ALERTS, sorted(ALERTS - fired)
    assert quiet == ALERTS, sorted(ALERTS - quiet)
