"""The daemon's wiring, without running scheduler threads: jobs, sd_notify, logs, metrics."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from billing.daemon.scheduler import build_scheduler
from billing.daemon.sdnotify import notify
from billing.logs import EventFormatter, log_event


class FakeDaemon:
    def billing_pass(self) -> None: ...
    def reconcile(self) -> None: ...
    def lease_reaper(self) -> None: ...
    def expiry_warnings(self) -> None: ...
    def notify(self) -> None: ...


def test_jobs_are_coalesced_single_instance_with_a_real_grace_time() -> None:
    scheduler = build_scheduler(
        FakeDaemon(),  # type: ignore[arg-type]
        tick_seconds=60,
        reconcile_seconds=30,
        reaper_seconds=45,
        expiry_seconds=3600,
        notify_seconds=15,
    )
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"billing_pass", "reconcile", "lease_reaper", "expiry_warnings", "notify"}
    schedule = [
        ("billing_pass", 60),
        ("reconcile", 30),
        ("lease_reaper", 45),
        ("expiry_warnings", 3600),
        ("notify", 15),
    ]
    for job_id, seconds in schedule:
        job = jobs[job_id]
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time == seconds
        assert job.trigger.interval.total_seconds() == seconds
    assert str(scheduler.timezone) == "UTC"


def test_sd_notify_sends_to_the_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1") is True
        assert server.recv(64) == b"READY=1"


def test_sd_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_one_parsable_line_per_event(fmt: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter(fmt))
    logger = logging.getLogger(f"test.logs.{fmt}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    log_event(logger, "billing.pass", attempts=3, note="two words")
    [line] = stream.getvalue().splitlines()
    if fmt == "json":
        entry: dict[str, Any] = json.loads(line)
        assert entry["event"] == "billing.pass" and entry["attempts"] == 3
    else:
        assert "event=billing.pass" in line and 'note="two words"' in line
