"""The units in systemd/ under a real systemd: PID 1 of a container that follows docs/deployment.md.

The container is `systemd-nspawn --boot` on this machine's own root, read-only under a tmpfs
overlay (no image to build; nothing it writes reaches the host), with an empty
/etc/systemd/system so that none of the host's services start in it. It shares the host's
network: the sandbox and PostgreSQL are the host's, on loopback. Inside, the guide's commands
run as written (venv in /opt/plexo-billing, settings in /etc/plexo-billing, the API key as a
credential, `systemctl enable --now`), with the hardening of the units as shipped: DynamicUser,
StateDirectory, LoadCredential, SystemCallFilter, MemoryDenyWriteExecute, PrivateUsers, ...

Needs root, systemd-nspawn (Debian: systemd-container) and a system python3 with venv (Debian:
python3-venv). Without them the tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Sandbox,
    billing_context,
    json_records,
    seed_due,
    wait_all_paid,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

CHECKOUT = "/srv/plexo-src"  # this checkout, bound read-only into the machine
SRC = "/tmp/plexo-src"  # the guide's $SRC: a writable copy of it (building the wheel writes there)
GUIDE = ROOT / "docs" / "deployment.md"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a person's shell would pass on to pip (an index mirror, a proxy); nothing else crosses.
PASSED_ON = re.compile(r"PIP_\w+|(?i:https?_proxy|no_proxy)")
# Anything of this kind in the journal means the hardening got in the daemon's way.
SUSPECT = re.compile(
    r"permission denied|operation not permitted|bad system call|SIGSYS|seccomp|core.?dump"
    r"|read-only file system|watchdog timeout|status=2\d\d/",
    re.IGNORECASE,
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _cannot(reason: str) -> None:
    """Skip (a developer's machine may not be able to run a container) - but never in CI."""
    if _in_ci():
        pytest.fail(f"{reason} (CI must run this test; see .ci/run)")
    pytest.skip(reason)


def _missing_prerequisite() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (systemd-nspawn --boot)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                          ("unshare", "util-linux"), ("curl", "curl")):  # fmt: skip
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if not Path("/usr/bin/python3").exists():
        return "no system /usr/bin/python3 (Debian packages python3 python3-venv)"
    probe = "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))"
    if subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode != 0:
        return "/usr/bin/python3 is older than 3.11 or has no venv (Debian package python3-venv)"
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Machine:
    """A booted container: `sh` runs a bash script in it, as root, with a login-like environment."""

    name: str
    nspawn: subprocess.Popen[bytes]
    leader: int  # the container's systemd, as this host's pid
    log: Path

    def run(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = [f"{k}={v}" for k, v in os.environ.items() if PASSED_ON.fullmatch(k)]
        args = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}", "HOME=/root",
                "LANG=C.UTF-8", *env, "bash", "-euo", "pipefail", "-c", script]  # fmt: skip
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"in the machine, still running after {timeout:g} s:\n{script}")

    def sh(self, script: str, timeout: float = 120) -> str:
        """stdout of `script`; a failure shows its output and the journal's tail."""
        done = self.run(script, timeout)
        if done.returncode != 0:
            journal = self.run("journalctl -b --no-pager -n 60", 30).stdout
            pytest.fail(
                f"in the machine, exit {done.returncode}:\n{script}\n--- stdout\n"
                f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}\n--- journal\n{journal}"
            )
        return done.stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        """Where the journal is now: the tests look only at what came after it."""
        out = self.sh("journalctl -b -n 0 --show-cursor --no-pager")
        return out.strip().rsplit("-- cursor: ", 1)[1]

    def journal(self, since: str, *args: str) -> str:
        return self.sh(f"journalctl -b --no-pager --after-cursor='{since}' " + " ".join(args))

    def events(self, since: str, unit: str, event: str) -> list[dict[str, object]]:
        return [r for r in self.journal_records(since, unit) if r.get("event") == event]

    def journal_records(self, since: str, unit: str) -> list[dict[str, object]]:
        """The daemon's JSON log lines of `unit` (systemd's own lines are skipped)."""
        return json_records(self.journal(since, "-u", unit, "-o", "cat"))

    def suspect_journal_lines(self, since: str) -> list[str]:
        text = self.journal(since, "-o", "short-monotonic")
        return [ln for ln in text.splitlines() if "billing" in ln and SUSPECT.search(ln)]

    def shutdown(self) -> None:
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn: an orderly poweroff of the machine
            try:
                self.nspawn.wait(60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()  # its PID namespace goes with it
                self.nspawn.wait(10)
        # On a host whose /run is not a tmpfs nspawn leaves this behind (it refuses rm -rf there).
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)


def _boot(tmp: Path) -> Machine:
    root, units = tmp / "root", tmp / "etc-systemd-system"
    for path in (root, units):
        path.mkdir()
    name = f"plexo-test-{os.getpid()}"
    # nspawn refuses the host's "/" itself with an overlay; a bind mount of it (in a mount
    # namespace of its own, so the host never sees it) is accepted.
    script = (
        f"mount --bind / {root} && exec systemd-nspawn --quiet --directory={root}"
        f" --volatile=overlay --boot --register=no --keep-unit --machine={name}"
        f" --console=passive --bind={units}:/etc/systemd/system"
        f" --bind-ro={ROOT}:{CHECKOUT}"
    )
    log = tmp / "nspawn.log"
    with log.open("wb") as out:
        nspawn = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def gone() -> str | None:
        if nspawn.poll() is None:
            return None
        return f"systemd-nspawn exited with {nspawn.returncode}: {log.read_text()[-2000:]}"

    deadline = time.monotonic() + 90
    leader = None
    while leader is None:
        if (why := gone()) is not None:
            _cannot(f"cannot boot a container systemd here: {why}")
        if time.monotonic() > deadline:
            nspawn.kill()
            _cannot(f"the container's systemd did not start in 90 s: {log.read_text()[-2000:]}")
        for child in _children(nspawn.pid):
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                leader = child
        time.sleep(0.1)
    machine = Machine(name, nspawn, leader, log)
    try:
        while True:
            state = machine.run("systemctl is-system-running || true", 30).stdout.strip()
            if state in ("running", "degraded"):  # degraded: some host unit failed in here
                return machine
            if (why := gone()) is not None or time.monotonic() > deadline:
                _cannot(f"the container's systemd did not finish booting ({state}): {why}")
            time.sleep(0.2)
    except BaseException:
        machine.shutdown()
        raise


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """A booted machine with the wheel built and installed by the guide's step 1, verbatim."""
    if (missing := _missing_prerequisite()) is not None:
        _cannot(missing)
    started = time.monotonic()
    booted = _boot(tmp_path_factory.mktemp("machine"))
    try:
        boot_seconds = time.monotonic() - started
        copy = (f"mkdir {SRC} && tar -C {CHECKOUT} --exclude=./.venv --exclude=./.git"
                f" --exclude='./.*cache' -cf - . | tar -C {SRC} -xf -")  # fmt: skip
        booted.sh(f"{copy}\nexport SRC={SRC}\n{_guide_block('## 1. Install')}", timeout=240)
        installed = time.monotonic() - started
        print(f"machine booted in {boot_seconds:.1f} s, wheel installed at {installed:.1f} s")
        yield booted
    finally:
        booted.shutdown()


def _settings(machine: Machine, sandbox_url: str, metrics_port: int | None) -> None:
    """The guide's step 2: the example file plus the keys it names, the key as a credential."""
    extra = f"metrics_port = {metrics_port}\n" if metrics_port is not None else ""
    machine.sh(
        f"""
        install -d -m 0755 /etc/plexo-billing
        cp "{SRC}/config/billing.example.toml" /etc/plexo-billing/billing.toml
        cat >> /etc/plexo-billing/billing.toml <<'EOF'
plexo_environment = "sandbox"
plexo_base_url = "{sandbox_url}"
plexo_client_id = "sandbox-client"
plexo_merchant_id = 1
timezone = "America/Montevideo"
tick_seconds = 2
reconcile_seconds = 2
{extra}EOF
        install -m 0600 /dev/null /etc/plexo-billing/plexo_api_key
        printf '%s' 'sandbox-key' > /etc/plexo-billing/plexo_api_key
        """
    )


def _guide_block(heading: str) -> str:
    """The first shell block of docs/deployment.md after `heading`, to run as written."""
    text = GUIDE.read_text()
    assert heading in text, f"docs/deployment.md has no {heading!r}"
    found = re.search(r"^```sh\n(.*?)^```", text.split(heading, 1)[1], re.MULTILINE | re.DOTALL)
    assert found, f"no shell block after {heading!r}"
    return found.group(1)


def _billing_ctl() -> str:
    """The guide's `billing-ctl` shell function, taken from docs/deployment.md itself."""
    found = re.search(r"^billing-ctl\(\) \{\n.*?^\}\n", GUIDE.read_text(), re.MULTILINE | re.DOTALL)
    assert found, "docs/deployment.md no longer defines billing-ctl() { ... }"
    return found.group(0)


def _install_units(machine: Machine, *names: str) -> None:
    files = " ".join(f'"$SRC"/systemd/{name}' for name in names)
    machine.sh(f"SRC={SRC}\ncp {files} /etc/systemd/system/\nsystemctl daemon-reload")


def _approved(sandbox: Sandbox) -> int:
    return len([p for p in sandbox.payments() if p["status"] == "approved"])


def _assert_stopped_gracefully(machine: Machine, since: str, unit: str) -> None:
    after = machine.show(unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    expected = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0",
                "NRestarts": "0"}  # fmt: skip
    assert after == expected, (unit, after)
    stopped = machine.events(since, unit, "daemon.stopped")
    assert stopped and stopped[-1]["graceful"] is True, (unit, stopped)
    suspect = machine.suspect_journal_lines(since)
    assert not suspect, "\n".join(suspect)
    records = machine.journal_records(since, unit)
    bad = [r for r in records if r.get("level") in ("error", "critical")]
    assert not bad, bad


def test_one_sqlite_node_as_the_guide_installs_it(machine: Machine, sandbox: Sandbox) -> None:
    since = machine.cursor()
    port = _free_port()
    _settings(machine, sandbox.url, port)
    shown = machine.sh(_guide_block("Check it before starting anything"))
    assert re.search(r"BILLING_PLEXO_API_KEY +=.*\(credential\)", shown), shown
    assert "sandbox-key" not in shown

    # Type=notify: `enable --now` returns once the daemon sent READY=1.
    _install_units(machine, "billing.service", "billing-migrate.service")
    machine.sh("systemctl enable --now billing.service")
    props = machine.show("billing", "ActiveState", "SubState", "Type", "WatchdogUSec",
                         "WatchdogTimestampMonotonic", "StatusText")  # fmt: skip
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["StatusText"].startswith("billing on "), props
    migrate = machine.show("billing-migrate", "ActiveState", "Result")
    assert migrate == {"ActiveState": "active", "Result": "success"}, migrate

    # The CLI as the service's user (the guide's billing-ctl): two customers with saved cards.
    ctl = _billing_ctl() + "billing-ctl "
    machine.sh(f"{ctl}plans create --code basic --name Basic --amount 590.00 --currency UYU"
               " --interval month")  # fmt: skip
    for n in (1, 2):
        machine.sh(f"{ctl}customers create --reference-id cus-{n} --email c{n}@example.com")
        customer = json.loads(machine.sh(f"{ctl}customers show cus-{n} --json"))
        sandbox.http.post(
            f"/sandbox/customers/{customer['plexo_id']}/instruments",
            json={"cardNumber": "4444333322221111", "expMonth": 12, "expYear": 2035},
        ).raise_for_status()
        machine.sh(f"{ctl}instruments sync cus-{n}")
        machine.sh(f"{ctl}subscriptions create --customer cus-{n} --plan basic")
    wait_until(lambda: _approved(sandbox) == 2, 60, "both subscriptions charged", interval=0.5)

    status = machine.sh("systemctl status billing --no-pager --full")
    assert re.search(r'Status: "last pass .*approved', status), status
    metrics = machine.sh(f"curl -sf http://127.0.0.1:{port}/metrics")
    assert 'billing_charges_total{decline_class="",outcome="approved"} 2.0' in metrics, metrics
    # The store is the dynamic user's and private (StateDirectoryMode=0700, UMask=0077), also
    # after billing-ctl ran as that user.
    store = machine.sh("stat -c '%a %U' /var/lib/private/plexo-billing"
                       " /var/lib/private/plexo-billing/billing.sqlite3").split()  # fmt: skip
    assert store[0::2] == ["700", "600"] and "root" not in store, store

    # WATCHDOG=1 reaches systemd (the daemon pings at most every 15 s with WatchdogSec=30s).
    def pinged() -> bool:
        now = machine.show("billing", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        return now != props["WatchdogTimestampMonotonic"]

    wait_until(pinged, 40, "a WATCHDOG=1 ping after READY", interval=1)

    # The guide's upgrade restart: the migrations run again, then a new daemon.
    machine.sh("systemctl restart billing-migrate billing")
    assert machine.show("billing", "ActiveState")["ActiveState"] == "active"
    assert len(machine.events(since, "billing", "daemon.ready")) == 2

    machine.sh("systemctl stop billing")
    _assert_stopped_gracefully(machine, since, "billing")


@pytest.mark.postgres
def test_two_postgresql_instances_share_the_work(
    machine: Machine, sandbox: Sandbox, pg_url: str
) -> None:
    """billing@a and billing@b on one database; after the SQLite test, on a host that also has
    billing.service's state directory (the two layouts must not collide)."""
    since = machine.cursor()
    _settings(machine, sandbox.url, None)
    ports = {"a": _free_port(), "b": _free_port()}
    machine.sh(
        f"""
        for node in a b; do
          install -m 0600 /dev/null /etc/plexo-billing/$node.database_url
          printf '%s' '{pg_url}' > /etc/plexo-billing/$node.database_url
          cp /etc/plexo-billing/billing.toml /etc/plexo-billing/$node.toml
        done
        echo 'metrics_port = {ports["a"]}' >> /etc/plexo-billing/a.toml
        echo 'metrics_port = {ports["b"]}' >> /etc/plexo-billing/b.toml
        """
    )
    _install_units(machine, "billing@.service", "billing-migrate@.service")
    machine.sh("systemctl enable --now billing@a billing@b")
    host = machine.sh("hostname").strip()
    for node in ("a", "b"):
        props = machine.show(f"billing@{node}", "ActiveState", "SubState")
        assert props == {"ActiveState": "active", "SubState": "running"}, (node, props)
        ready = machine.events(since, f"billing@{node}", "daemon.ready")
        assert ready and ready[-1]["node"] == f"{host}-{node}", ready

    total = 6
    with billing_context(pg_url, sandbox.url) as ctx:
        seed_due(ctx, sandbox.url, total)
        wait_all_paid(ctx, total, 90)
    assert _approved(sandbox) == total  # one charge per invoice, whichever node sent it
    for node, port in ports.items():
        metrics = machine.sh(f"curl -sf http://127.0.0.1:{port}/metrics")
        assert "billing_charges_total" in metrics, node

    machine.sh("systemctl stop billing@a billing@b")
    for node in ("a", "b"):
        _assert_stopped_gracefully(machine, since, f"billing@{node}")


def test_a_frozen_daemon_is_killed_by_the_watchdog_and_restarted(
    machine: Machine, sandbox: Sandbox
) -> None:
    """WatchdogSec=30s and Restart=on-failure as shipped (a SIGSTOPped daemon stands for a stuck
    one: no more WATCHDOG=1)."""
    since = machine.cursor()
    _settings(machine, sandbox.url, _free_port())
    _install_units(machine, "billing.service", "billing-migrate.service")
    machine.sh("systemctl restart billing")
    frozen = machine.show("billing", "MainPID")["MainPID"]
    machine.sh(f"kill -STOP {frozen}")

    def restarted() -> dict[str, str] | None:
        now = machine.show("billing", "NRestarts", "MainPID", "SubState")
        fresh = now["MainPID"] not in ("0", frozen) and now["SubState"] == "running"
        return now if fresh and now["NRestarts"] == "1" else None

    wait_until(restarted, 90, "systemd to restart the frozen daemon", interval=1)
    journal = machine.journal(since, "-u", "billing", "-o", "cat")
    assert "Watchdog timeout (limit 30s)!" in journal, journal[-3000:]
    assert "Failed with result 'watchdog'" in journal, journal[-3000:]
    machine.sh("systemctl stop billing")
