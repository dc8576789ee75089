"""What the benchmark scripts share: the machine and commit lines, a fresh PostgreSQL database,
the sandbox as a real HTTP server in its own process, fast bulk seeding, statement counting and
/proc readings. Not product code: nothing in billing/ imports this.

Seeding writes rows straight into the tables (Core executemany; COPY on PostgreSQL for the
large filler sets) because going through the engine one customer at a time costs more than
the passes being measured. Only the sandbox's own state (customers, tokens) goes over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Engine, event, insert, select, text

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
APPROVING_CARD = "4444333322221111"
PLAN_CODE = "bench-monthly"


# -- the machine and the code being measured ---------------------------------------------------


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    cores = os.cpu_count()
    try:
        meminfo = Path("/proc/meminfo").read_text().split()
        memory = f"{int(meminfo[meminfo.index('MemTotal:') + 1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "unknown memory"
    return f"{cores} cores, {memory}, load {load()}; Python {sys.version.split()[0]}"


def commit() -> str:
    """The commit of the `billing` package being measured (PYTHONPATH may point elsewhere)."""
    import billing

    where = Path(billing.__file__).resolve().parents[1]
    done = subprocess.run(
        ["git", "-C", str(where), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return f"{done.stdout.strip() or 'not a git checkout'} ({where})"


def header() -> None:
    print(f"machine: {machine()}")
    print(f"commit:  {commit()}", flush=True)


# -- databases ---------------------------------------------------------------------------------


def _fresh_pg(admin_url: str) -> str | None:
    """A new empty database on the server of `admin_url` (None: no server reachable)."""
    try:
        name = f"billing_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return admin_url.rsplit("/", 1)[0] + f"/{name}"
    except psycopg.Error:
        return None


def drop_pg(admin_url: str, url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@contextlib.contextmanager
def databases(pg_admin: str | None, which: str = "both") -> Iterator[Iterator[tuple[str, str]]]:
    """Yield an iterator of (label, url): a SQLite file and/or a fresh PostgreSQL database,
    each made only when reached (and dropped afterwards)."""
    made: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:

        def urls() -> Iterator[tuple[str, str]]:
            if which in ("both", "sqlite"):
                yield "sqlite", f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.sqlite3"
            if which in ("both", "pg") and pg_admin:
                url = _fresh_pg(pg_admin)
                if url is None:
                    print("postgres: skipped (no server reachable)", flush=True)
                    return
                made.append(url)
                yield "postgres", url

        try:
            yield urls()
        finally:
            for url in made:
                assert pg_admin is not None
                drop_pg(pg_admin, url)


def fresh_store(url: str) -> Engine:
    from billing.store.db import make_engine
    from billing.store.migrate import upgrade

    upgrade(url)
    return make_engine(url)


# -- the sandbox in its own process ------------------------------------------------------------


@dataclass
class SandboxProcess:
    """`python -m billing.sandbox --port 0`; its request log goes to a file, not a pipe (a
    full pipe would stall it)."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def cpu_seconds(self) -> float:
        return proc_cpu(self.proc.pid)

    def set_latency(self, seconds: float) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            http.delete("/sandbox/faults").raise_for_status()
            if seconds > 0:
                http.post(
                    "/sandbox/faults",
                    json={
                        "mode": "latency",
                        "seconds": seconds,
                        "probability": 1.0,
                        "route": "POST /v1/payments",
                    },
                ).raise_for_status()

    def approved(self) -> int:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            payments = http.get("/sandbox/payments").json()
        return sum(1 for p in payments if p["status"] == "approved")


@contextlib.contextmanager
def sandbox_process() -> Iterator[SandboxProcess]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sandbox.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "billing.sandbox", "--port", "0"],
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env={k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")},
            )
        try:
            deadline = time.monotonic() + 30
            url = None
            while url is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"sandbox did not start: {log.read_text()[-2000:]}")
                for line in log.read_text().splitlines():
                    if '"sandbox.started"' in line:
                        url = str(json.loads(line)["url"])
                time.sleep(0.05)
            yield SandboxProcess(proc, url, log)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- seeding -----------------------------------------------------------------------------------


def ensure_bench_plan(engine: Engine, at: datetime) -> int:
    """A monthly 590.00 UYU plan (Core insert: no context needed)."""
    from billing.store.models import Plan

    with engine.begin() as conn:
        found = conn.execute(select(Plan.id).where(Plan.code == PLAN_CODE)).scalar()
        if found is not None:
            return int(found)
        conn.execute(
            insert(Plan).values(
                code=PLAN_CODE, name="Bench", amount_minor=59000, currency="UYU",
                interval="month", interval_count=1, trial_days=0, active=True, created_at=at,
            )
        )  # fmt: skip
        return int(conn.execute(select(Plan.id).where(Plan.code == PLAN_CODE)).scalar_one())


def sandbox_tokens(
    sandbox_url: str, n: int, prefix: str, threads: int = 8
) -> list[tuple[str, str]]:
    """n (plexo customer id, card token) pairs created at the sandbox over its HTTP API."""

    def one_share(indices: range) -> list[tuple[str, str]]:
        out = []
        with httpx.Client(
            base_url=sandbox_url, timeout=30, auth=("sandbox-client", "sandbox-key")
        ) as http:
            for i in indices:
                ref = f"{prefix}-{i:07d}"
                customer = http.post(
                    "/v1/customers", json={"referenceId": ref, "email": f"{ref}@example.com"}
                )
                customer.raise_for_status()
                plexo_id = str(customer.json()["id"])
                card = http.post(
                    f"/sandbox/customers/{plexo_id}/instruments",
                    json={"cardNumber": APPROVING_CARD, "expMonth": 12, "expYear": 2035},
                )
                card.raise_for_status()
                out.append((plexo_id, str(card.json()["token"])))
        return out

    step = max(1, -(-n // threads))
    shares = [range(b, min(b + step, n)) for b in range(0, n, step)]
    with ThreadPoolExecutor(len(shares) or 1) as pool:
        return [pair for part in pool.map(one_share, shares) for pair in part]


def plant_due(
    engine: Engine,
    sandbox_url: str,
    n: int,
    *,
    at: datetime,
    prefix: str = "due",
    chunk: int = 2000,
) -> None:
    """n customers, each with a sandbox card and one active monthly subscription whose first
    period started a day before `at` (due at once): rows as the engine would have written
    them (customer, payment_instrument default card, subscription), bulk Core inserts."""
    from billing.store.models import Customer, PaymentInstrument, Subscription

    plan_id = ensure_bench_plan(engine, at)
    pairs = sandbox_tokens(sandbox_url, n, prefix)
    anchor = at - timedelta(days=1)
    for begin in range(0, n, chunk):
        part = pairs[begin : begin + chunk]
        refs = [f"{prefix}-{begin + i:07d}" for i in range(len(part))]
        with engine.begin() as conn:
            conn.execute(
                insert(Customer),
                [
                    {
                        "reference_id": ref, "plexo_id": plexo_id, "email": f"{ref}@example.com",
                        "address": {}, "attributes": {}, "status": "active",
                        "created_at": at, "updated_at": at,
                    }
                    for ref, (plexo_id, _) in zip(refs, part, strict=True)
                ],
            )  # fmt: skip
            ids = dict(
                conn.execute(
                    select(Customer.reference_id, Customer.id).where(
                        Customer.reference_id.in_(refs)
                    )
                ).all()
            )
            conn.execute(
                insert(PaymentInstrument),
                [
                    {
                        "customer_id": ids[ref], "token": token, "brand": "visa", "bin": "444433",
                        "last4": "1111", "card_type": "credit", "exp_month": 12, "exp_year": 2035,
                        "status": "active", "is_default": True, "created_at": at, "updated_at": at,
                    }
                    for ref, (_, token) in zip(refs, part, strict=True)
                ],
            )  # fmt: skip
            conn.execute(
                insert(Subscription),
                [
                    {
                        "customer_id": ids[ref], "plan_id": plan_id, "status": "active",
                        "anchor_at": anchor, "next_period_index": 0, "next_billing_at": anchor,
                        "cancel_at_period_end": False, "created_at": at, "updated_at": at,
                    }
                    for ref in refs
                ],
            )  # fmt: skip


def plant_stored(engine: Engine, n: int, *, at: datetime, prefix: str = "stored") -> None:
    """n customers with one active subscription each that is NOT due (its next period starts
    a year after `at`): the stored rows a pass must not pay for. No cards (never charged).
    PostgreSQL: COPY; SQLite: executemany in chunks."""
    plan_id = ensure_bench_plan(engine, at)
    later = at + timedelta(days=365)
    anchor = at - timedelta(days=30)
    ts = at.isoformat()
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            first = _next_id(cur, "customer")
            with cur.copy(
                "COPY customer (id, reference_id, email, address, attributes, status,"
                " created_at, updated_at) FROM STDIN"
            ) as copy:
                for i in range(n):
                    copy.write_row(
                        (first + i, f"{prefix}-{i:07d}", f"{prefix}{i}@example.com", "{}", "{}",
                         "active", ts, ts)
                    )  # fmt: skip
            with cur.copy(
                "COPY subscription (customer_id, plan_id, status, anchor_at, next_period_index,"
                " next_billing_at, cancel_at_period_end, created_at, updated_at) FROM STDIN"
            ) as copy:
                for i in range(n):
                    copy.write_row(
                        (first + i, plan_id, "active", anchor.isoformat(), 1, later.isoformat(),
                         False, ts, ts)
                    )  # fmt: skip
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('customer', 'id'),"
                " (SELECT MAX(id) FROM customer))"
            )
            cur.execute("ANALYZE customer")
            cur.execute("ANALYZE subscription")
            raw.commit()
        finally:
            raw.close()
        return
    from billing.store.models import Customer, Subscription

    chunk = 20_000
    for begin in range(0, n, chunk):
        refs = [f"{prefix}-{i:07d}" for i in range(begin, min(begin + chunk, n))]
        with engine.begin() as conn:
            next_id = text("SELECT COALESCE(MAX(id), 0) + 1 FROM customer")
            first = int(conn.execute(next_id).scalar_one())
            conn.execute(
                insert(Customer),
                [
                    {
                        "id": first + j, "reference_id": ref, "email": f"{ref}@example.com",
                        "address": {}, "attributes": {}, "status": "active",
                        "created_at": at, "updated_at": at,
                    }
                    for j, ref in enumerate(refs)
                ],
            )  # fmt: skip
            conn.execute(
                insert(Subscription),
                [
                    {
                        "customer_id": first + j, "plan_id": plan_id, "status": "active",
                        "anchor_at": anchor, "next_period_index": 1, "next_billing_at": later,
                        "cancel_at_period_end": False, "created_at": at, "updated_at": at,
                    }
                    for j in range(len(refs))
                ],
            )  # fmt: skip


def _next_id(cur: Any, table: str) -> int:
    cur.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
    return int(cur.fetchone()[0])


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


# -- counting and /proc ------------------------------------------------------------------------


@dataclass
class Counts:
    statements: int = 0
    transactions: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def count_statements(engine: Engine) -> Counts:
    """Count every statement sent (SQLAlchemy before_cursor_execute, our SQLite BEGIN
    IMMEDIATE included) and every transaction begun, on `engine` from now on."""
    counts = Counts()

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts.statements += 1
        kind = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        counts.by_kind[kind] = counts.by_kind.get(kind, 0) + 1

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        counts.transactions += 1

    return counts


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- daemon processes --------------------------------------------------------------------------

WORKER = Path(__file__).with_name("_pass_worker.py")


def run_passes(
    url: str,
    sandbox_url: str,
    nodes: list[str],
    concurrency: int,
    *extra: str,
) -> list[dict[str, Any]]:
    """One billing pass in each of len(nodes) processes (tests/benchmarks/_pass_worker.py),
    started together once all are set up; returns their JSON reports."""

    def argv(node: str) -> list[str]:
        return [sys.executable, str(WORKER), "--url", url, "--sandbox", sandbox_url,
                "--concurrency", str(concurrency), "--node", node, "--wait-go", *extra]  # fmt: skip

    procs = [
        subprocess.Popen(argv(node), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for node in nodes
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"worker exited before the pass ({proc.wait()})")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            assert proc.stdout is not None
            out = proc.stdout.read()
            if proc.wait() != 0:
                raise SystemExit(f"worker failed ({proc.returncode})")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def throughput(reports: list[dict[str, Any]]) -> tuple[int, float]:
    """(approved charges, wall seconds from the first start to the last end) of passes."""
    approved = sum(int(r["approved"]) for r in reports)
    wall = max(r["t_end"] for r in reports) - min(r["t_start"] for r in reports)
    return approved, wall
