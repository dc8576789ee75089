"""Secrets in no channel (issue 7, item 6): a daemon and the CLI, run the ways an operator runs
them with a distinctive Plexo API key, SMTP password, webhook secret, callback token and a
PostgreSQL password, never show any of them (nor their URL-quoted or base64 forms) in stdout,
stderr, a log line at any level, /metrics, a webhook or an email.

Real processes throughout: `billing sandbox` holding the same key, `billing daemon` billing
charges on PostgreSQL with webhooks to a loopback receiver, email through a loopback SMTP server
that requires the login, Plexo callbacks on its receiver and /metrics scraped; then `billing
config show`, `check`, `db upgrade`, `run` and failing commands (bad URLs, unreachable database
and gateway, a wrong key, typos in a variable, a config file and a secret's value). The project
logs at INFO and has no log-level setting, so one more run forces DEBUG on every logger
(SQLAlchemy, httpx, httpcore, psycopg, APScheduler included) to cover "every level".
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from sqlalchemy.engine import make_url

from billing.clock import SystemClock
from billing.engine.context import BillingContext
from billing.plexo.client import PlexoClient
from billing.store.db import make_engine
from billing.testing import seed_subscriptions
from tests.e2e.conftest import (
    DAEMON_DEFAULTS,
    TZ,
    Proc,
    Processes,
    billing_executable,
    clean_environ,
    seed_due,
    sigterm_and_check,
    store_state,
    wait_until,
)
from tests.receivers import SmtpSink, WebhookReceiver, free_port, smtp_sink, webhook_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CANARY = "LEAKCANARY"
"""In every secret: seen anywhere, some part of a secret leaked."""
CLIENT_ID = "merchant-7"
API_KEY = f"pk-{CANARY}-Qz7+w/Rk9=api"  # '+', '/' and '=' change under URL quoting
WRONG_KEY = f"pk-{CANARY}-Wr0ng+key/42"
SMTP_USER = "billing"
SMTP_PASSWORD = f"smtp-{CANARY}-p@ss:w0rd/Zy"
WEBHOOK_SECRET = f"whsec-{CANARY}-8f3k+Lm/Q"
CALLBACK_TOKEN = f"cb_{CANARY}_tok-0123456789abcdefXYZ"  # [A-Za-z0-9_-]{32,128}
PG_PASSWORD = f"pg-{CANARY}-H4x/Y+z@w:q"  # trust auth on the test server ignores it
SOFT_DECLINE = "4000000000000010"  # sandbox: insufficient funds -> an email to the customer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forbidden() -> dict[str, str]:
    """Every form of a secret that must not be seen, by what it is."""
    forms: dict[str, str] = {"canary": CANARY}
    for name, secret in {
        "api_key": API_KEY,
        "wrong_key": WRONG_KEY,
        "smtp_password": SMTP_PASSWORD,
        "webhook_secret": WEBHOOK_SECRET,
        "callback_token": CALLBACK_TOKEN,
        "pg_password": PG_PASSWORD,
    }.items():
        forms[name] = secret
        forms[f"{name} url-quoted"] = quote(secret, safe="")
        forms[f"{name} form-quoted"] = quote_plus(secret)
        forms[f"{name} base64"] = _b64(secret)
    forms["basic auth"] = _b64(f"{CLIENT_ID}:{API_KEY}")
    forms["basic auth (wrong key)"] = _b64(f"{CLIENT_ID}:{WRONG_KEY}")
    forms["smtp AUTH PLAIN"] = _b64(f"\0{SMTP_USER}\0{SMTP_PASSWORD}")
    return forms


def leaks(text: str) -> list[str]:
    return [name for name, form in forbidden().items() if form in text]


@dataclass
class Channels:
    """Everything an operator or a receiver could read, by where it was seen."""

    seen: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str) -> None:
        self.seen[where] = self.seen.get(where, "") + text

    def leaked(self) -> dict[str, list[str]]:
        return {where: found for where, text in self.seen.items() if (found := leaks(text))}


def _pg_url_with_password(pg_url: str) -> str:
    return make_url(pg_url).set(password=PG_PASSWORD).render_as_string(hide_password=False)


@contextmanager
def keyed_context(db_url: str, sandbox_url: str) -> Iterator[BillingContext]:
    """The test's own seeding view, with the merchant's (secret) credentials."""
    engine = make_engine(db_url)
    client = PlexoClient(sandbox_url, CLIENT_ID, API_KEY, 1, timeout=10)
    try:
        yield BillingContext(
            engine=engine, plexo=client, clock=SystemClock(), tz=TZ, node="seeder", actor="e2e"
        )
    finally:
        client.close()
        engine.dispose()


@dataclass
class Setup:
    tmp: Path
    sandbox_url: str
    db_url: str  # with the password
    credentials: Path
    receiver: WebhookReceiver
    sink: SmtpSink

    def env(self, *, credentials: bool = True, **overrides: str) -> dict[str, str]:
        """The operator's environment: key and database URL as systemd credentials (or as
        variables), the other secrets as variables; JSON logs, every job often."""
        settings = {
            **DAEMON_DEFAULTS,
            "BILLING_PLEXO_BASE_URL": self.sandbox_url,
            "BILLING_PLEXO_CLIENT_ID": CLIENT_ID,
            "BILLING_NODE_NAME": "secrets-node",
            "BILLING_NOTIFY_SECONDS": "1",
            "BILLING_NOTIFY_BACKOFF_SECONDS": "1",
            "BILLING_WEBHOOK_URLS": self.receiver.url,
            "BILLING_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "BILLING_SMTP_HOST": "127.0.0.1",
            "BILLING_SMTP_PORT": str(self.sink.port),
            "BILLING_SMTP_STARTTLS": "false",  # loopback test server
            "BILLING_SMTP_USER": SMTP_USER,
            "BILLING_SMTP_PASSWORD": SMTP_PASSWORD,
            "BILLING_EMAIL_FROM": "billing@example.com",
            "BILLING_CALLBACK_ENABLED": "true",
            "BILLING_CALLBACK_TOKEN": CALLBACK_TOKEN,
            "BILLING_CALLBACK_PORT": str(free_port()),
        }
        if credentials:
            settings["CREDENTIALS_DIRECTORY"] = str(self.credentials)
        else:
            settings["BILLING_PLEXO_API_KEY"] = API_KEY
            settings["BILLING_DATABASE_URL"] = self.db_url
        settings.update(overrides)
        return clean_environ(**settings)


def run_cli(
    channels: Channels, setup: Setup, label: str, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """One `billing ...` command; its stdout and stderr go into the channels."""
    return _run(channels, setup, label, [billing_executable(), *args], env)


def _run(
    channels: Channels, setup: Setup, label: str, argv: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        env=env,
        cwd=setup.tmp,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    channels.add(f"{label} stdout", done.stdout)
    channels.add(f"{label} stderr", done.stderr)
    assert "Traceback" not in done.stderr, (label, done.stderr)
    return done


DEBUG_WRAPPER = """
import logging, sys
# The libraries set their own loggers' levels on import (SQLAlchemy: WARN): import them first.
import alembic, apscheduler, httpcore, httpx, psycopg, sqlalchemy, sqlalchemy.engine
import billing.logs as logs

_configure = logs.configure_logging

def everything(fmt="json", level=logging.INFO):
    _configure(fmt, logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.DEBUG)

logs.configure_logging = everything
everything("json")  # the CLI commands that never configure logging log at DEBUG too
from billing.cli.main import main
sys.argv = ["billing", *sys.argv[1:]]
main()
"""


def run_debug(
    channels: Channels, setup: Setup, label: str, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Like run_cli, with every logger of the process at DEBUG (no setting offers that)."""
    return _run(channels, setup, label, [sys.executable, "-c", DEBUG_WRAPPER, *args], env)


def start_sandbox(processes: Processes) -> tuple[Proc, str]:
    """`billing sandbox` that accepts only the merchant's (secret) credentials."""
    proc = processes.start(
        "sandbox",
        [billing_executable(), "sandbox", "--host", "127.0.0.1", "--port", "0"],
        clean_environ(BILLING_PLEXO_CLIENT_ID=CLIENT_ID, BILLING_PLEXO_API_KEY=API_KEY),
    )
    url = str(proc.wait_event("sandbox.started", timeout=20)["url"])
    with httpx.Client(base_url=url, timeout=10) as http:
        wait_until(lambda: http.get("/sandbox/health").status_code == 200, 10, "sandbox health")
    return proc, url


@pytest.mark.postgres
def test_no_secret_in_any_output_log_metric_or_notification(
    pg_url: str, processes: Processes, tmp_path: Path
) -> None:
    channels = Channels()
    sandbox, sandbox_url = start_sandbox(processes)
    db_url = _pg_url_with_password(pg_url)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "plexo_api_key").write_text(API_KEY + "\n")  # as `echo key > file` leaves it
    (credentials / "database_url").write_text(db_url + "\n")
    with (
        webhook_receiver() as receiver,
        smtp_sink(login=(SMTP_USER, SMTP_PASSWORD)) as sink,
    ):
        setup = Setup(tmp_path, sandbox_url, db_url, credentials, receiver, sink)
        base = setup.env()
        upgraded = run_cli(channels, setup, "db upgrade", ["db", "upgrade"], base)
        assert upgraded.returncode == 0, upgraded.stderr
        with keyed_context(db_url, sandbox_url) as ctx:
            seed_due(ctx, sandbox_url, 3)
            seed_subscriptions(ctx, sandbox_url, 1, card=SOFT_DECLINE, prefix="soft")
            # 3 approved, 1 declined: invoice.paid x3, payment_failed, past_due; an email.
            bill_with_daemon(
                processes, channels, setup, ctx, "daemon", [billing_executable(), "daemon"], 3, 5, 1
            )
            # Once more with every logger at DEBUG: 1 more approved, 1 more declined.
            seed_due(ctx, sandbox_url, 5)
            seed_subscriptions(ctx, sandbox_url, 1, card=SOFT_DECLINE, prefix="soft2")
            debug_daemon = [sys.executable, "-c", DEBUG_WRAPPER, "daemon"]
            bill_with_daemon(processes, channels, setup, ctx, "DEBUG daemon", debug_daemon, 4, 8, 2)
            assert '"level":"debug"' in channels.seen["DEBUG daemon log"]
            seed_due(ctx, sandbox_url, 7)  # one more due for the DEBUG `run --once` below

        for variant, env in (("credentials", base), ("env", setup.env(credentials=False))):
            for args in (["config", "show"], ["config", "show", "--json"], ["check"]):
                done = run_cli(channels, setup, f"{' '.join(args)} ({variant})", args, env)
                assert done.returncode == 0, (args, done.stdout, done.stderr)
            views = json.loads(channels.seen[f"config show --json ({variant}) stdout"])
            source = "credential" if variant == "credentials" else "env"
            assert views["plexo_api_key"]["source"] == views["database_url"]["source"] == source

        ran = run_debug(channels, setup, "DEBUG run", ["run", "--once"], base)
        assert ran.returncode == 0, ran.stderr
        checked = run_debug(channels, setup, "DEBUG check", ["check"], base)
        assert checked.returncode == 0, checked.stderr
        assert '"level":"debug"' in ran.stderr, "the DEBUG run logged nothing at DEBUG"

        with keyed_context(db_url, sandbox_url) as ctx:
            seed_due(ctx, sandbox_url, 8)  # due work for `run --once` with the wrong key
        failing = _failing_commands(setup, tmp_path, base)
        wrong: list[str] = []
        for label, args, env, expect in failing:
            done = run_cli(channels, setup, label, args, env)
            said = (done.stdout + done.stderr).strip()
            # A pass records a refused charge (invalid_request, retried later) and exits 0.
            must_fail = label != "wrong key run"
            if (done.returncode == 0) == must_fail or expect not in said.lower():
                wrong.append(f"{label}: exit {done.returncode}: {said[-400:]}")
        assert not wrong, "\n".join(wrong)  # each failed, saying why
        no_db = make_url(db_url).set(port=free_port()).render_as_string(hide_password=False)
        for label, args, env in (
            ("DEBUG wrong key", ["check"], setup.env(BILLING_PLEXO_API_KEY=WRONG_KEY)),
            ("DEBUG database down", ["db", "upgrade"], setup.env(BILLING_DATABASE_URL=no_db)),
            ("DEBUG database down daemon", ["daemon"], setup.env(BILLING_DATABASE_URL=no_db)),
        ):
            assert run_debug(channels, setup, label, args, env).returncode != 0, label
        current = run_debug(channels, setup, "DEBUG db current", ["db", "current"], base)
        assert current.returncode == 0, current.stderr

        for n, request in enumerate(receiver.requests):
            channels.add(f"webhook request {n}", json.dumps(request.headers))
            channels.add(f"webhook request {n}", request.body.decode(errors="replace"))
        for n, message in enumerate(sink.messages):
            channels.add(f"email {n}", message.as_string())
    channels.add("sandbox log", sandbox.log_text())

    assert channels.leaked() == {}, channels.leaked()
    # The scan covered every output named above (stdout and stderr of each command apart).
    assert len(channels.seen) >= 50, sorted(channels.seen)


def bill_with_daemon(
    processes: Processes,
    channels: Channels,
    setup: Setup,
    ctx: BillingContext,
    label: str,
    command: list[str],
    paid: int,
    webhooks: int,
    emails: int,
) -> None:
    """Run a daemon until `paid` invoices are paid and that many webhooks and emails went out
    (counted since the test began); post Plexo callbacks (right and wrong token), scrape
    /metrics, /healthz and /readyz, stop it on SIGTERM."""
    metrics_port = free_port()
    daemon = processes.start(label, command, setup.env(BILLING_METRICS_PORT=str(metrics_port)))
    ready = daemon.wait_event("daemon.ready", timeout=30)
    receiver, sink = setup.receiver, setup.sink

    def billed() -> bool:
        delivered = len(receiver.accepted) >= webhooks and len(sink.messages) >= emails
        return delivered and store_state(ctx).paid == paid

    what = f"{paid} paid, {webhooks} webhooks, {emails} emails"
    wait_until(billed, 60, what, alive=daemon.died)
    assert sink.logins >= emails  # each email went out after a login with the secret password
    callbacks = f"http://127.0.0.1:{ready['callback_port']}/plexo/callbacks"
    with httpx.Client(timeout=10) as http:
        payment = http.get(f"{setup.sandbox_url}/sandbox/payments").json()[-1]
        ours = http.post(f"{callbacks}/{CALLBACK_TOKEN}", json=payment)
        assert ours.status_code == 200, ours.status_code
        wrong = http.post(f"{callbacks}/{CALLBACK_TOKEN[:-1]}x", json=payment)
        assert wrong.status_code == 404
        scraped = http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200 and "billing_" in scraped.text
        channels.add(f"{label} /metrics", scraped.text)
        for path in ("/healthz", "/readyz"):  # beside /metrics (whatever they answer)
            probe = http.get(f"http://127.0.0.1:{metrics_port}{path}")
            channels.add(f"{label} {path}", f"{probe.status_code} {probe.headers} {probe.text}")
    sigterm_and_check(daemon, 30)
    channels.add(f"{label} log", daemon.log_text())


def _failing_commands(
    setup: Setup, tmp_path: Path, base: dict[str, str]
) -> list[tuple[str, list[str], dict[str, str], str]]:
    """(label, args, environment, a word the one-line error must hold) for each failure."""
    no_db_url = make_url(setup.db_url).set(port=free_port()).render_as_string(hide_password=False)
    bad_port = setup.db_url.replace(":5432/", ":notaport/")
    assert bad_port != setup.db_url
    mysql = "mysql" + setup.db_url[setup.db_url.index("://") :]
    typo_file = tmp_path / "typo.toml"
    typo_file.write_text(f'plexo_api_kye = "{API_KEY}"\nsmtp_pasword = "{SMTP_PASSWORD}"\n')
    bad_value_file = tmp_path / "bad-value.toml"
    bad_value_file.write_text(
        f'webhook_secret = "{WEBHOOK_SECRET}"\ncatchup_max_periods = "many"\n'
    )
    gateway_down = f"http://127.0.0.1:{free_port()}"
    env = setup.env
    return [
        ("wrong key check", ["check"], env(BILLING_PLEXO_API_KEY=WRONG_KEY), "rejected"),
        ("wrong key daemon", ["daemon"], env(BILLING_PLEXO_API_KEY=WRONG_KEY), "auth"),
        ("wrong key run", ["run", "--once"], env(BILLING_PLEXO_API_KEY=WRONG_KEY), "declined"),
        ("gateway down check", ["check"], env(BILLING_PLEXO_BASE_URL=gateway_down), "gateway"),
        ("gateway down daemon", ["daemon"], env(BILLING_PLEXO_BASE_URL=gateway_down), "plexo"),
        ("database down check", ["check"], env(credentials=False, BILLING_DATABASE_URL=no_db_url),
         "database"),
        ("database down upgrade", ["db", "upgrade"],
         env(credentials=False, BILLING_DATABASE_URL=no_db_url), "database"),
        ("database down daemon", ["daemon"],
         env(credentials=False, BILLING_DATABASE_URL=no_db_url), "database"),
        ("bad database port", ["config", "show"],
         env(credentials=False, BILLING_DATABASE_URL=bad_port), "database_url"),
        ("unsupported database", ["check"],
         env(credentials=False, BILLING_DATABASE_URL=mysql), "database_url"),
        ("typo in a variable", ["config", "show"], env(BILLING_PLEXO_API_KYE=API_KEY), "kye"),
        ("typo in a secret's variable", ["check"],
         env(BILLING_SMTP_PASSWROD=SMTP_PASSWORD), "passwrod"),
        ("typo in the config file", ["config", "show"], env(BILLING_CONFIG=str(typo_file)),
         "kye"),
        ("bad value beside a secret", ["check"], env(BILLING_CONFIG=str(bad_value_file)),
         "catchup_max_periods"),
        ("callback token with a bad character", ["config", "show"],
         env(BILLING_CALLBACK_TOKEN=CALLBACK_TOKEN + "!"), "callback_token"),
        ("webhook secret in the URL", ["config", "show"],
         env(BILLING_WEBHOOK_URLS=f"http://hook:{WEBHOOK_SECRET}@127.0.0.1:1/x and more"),
         "webhook"),
    ]  # fmt: skip


def test_forbidden_forms_catch_what_they_should() -> None:
    """The scan itself: a quoted key, a Basic header or a half-printed token are caught."""
    header = "Authorization: Basic " + _b64(f"{CLIENT_ID}:{API_KEY}")
    assert "basic auth" in leaks(header)
    assert "api_key url-quoted" in leaks("key=" + quote(API_KEY, safe=""))
    assert "canary" in leaks("(got 'cb_LEAKCANARY_t...')")
    assert leaks("nothing secret here: ********") == []
