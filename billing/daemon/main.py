"""`billing daemon`: start, tell systemd when ready, work, and stop gracefully."""

from __future__ import annotations

import logging
import os
import threading
import time

import billing
from billing import metrics
from billing.daemon.callbacks import CallbackReceiver
from billing.daemon.endpoints import Endpoints, Readiness
from billing.daemon.scheduler import build_scheduler
from billing.daemon.sdnotify import notify
from billing.daemon.service import Daemon
from billing.daemon.watchdog import interval_seconds as watchdog_interval
from billing.engine.runs import close_stale_runs
from billing.logs import configure_logging, log_event
from billing.notify.config import NotifyConfig
from billing.notify.deliver import Notifier
from billing.settings import Settings
from billing.store.migrate import script_heads, stored_revisions
from billing.wiring import node_name, open_context

log = logging.getLogger("billing.daemon")
RELEASE_SECONDS = 5.0
LEDGER_CHECK_SECONDS = 600
"""How often the daemon asks whether the daily ledger check is due (it runs once a day)."""
"""At least this long for releasing the leases at stop, even when the drain used the budget."""


def run_daemon(cfg: Settings) -> int:
    """Blocks until SIGTERM/SIGINT; returns 0. A stop that outlasts the budget exits at once
    (also 0: the work left is picked up like a crashed node's)."""
    configure_logging(cfg.log_format)
    node = node_name(cfg)
    with open_context(cfg, actor=f"daemon:{node}", billing_work=True) as ctx:
        ctx.node = node
        ctx.plexo.verify_credentials()
        # A run this node name left `running` belongs to a dead process (one process per name).
        close_stale_runs(ctx, own_node=True)
        notifier = Notifier(ctx, NotifyConfig.from_settings(cfg))
        daemon = Daemon(
            ctx,
            stop_budget_seconds=cfg.stop_budget_seconds,
            notifier=notifier,
            ledger_check=(cfg.ledger_reconcile_hour, cfg.ledger_reconcile_days)
            if cfg.ledger_reconcile_enabled
            else None,
        )
        daemon.install_signal_handlers()
        _start_metrics(cfg, daemon, notifier)
        endpoints = (
            Endpoints(cfg.metrics_address, cfg.metrics_port).start() if cfg.metrics_port else None
        )
        try:
            finished = _serve(cfg, daemon, node, endpoints)
        finally:
            if endpoints is not None:
                endpoints.stop()
            metrics.STORE.bind(None)
            metrics.OUTBOX.bind(None)
            notifier.close()
    if not finished:
        # Charges still in flight past the budget: their attempts are written ahead and their
        # leases end now, so leaving is as safe as a crash; don't wait for the threads at exit.
        logging.shutdown()
        os._exit(0)
    return 0


def _start_metrics(cfg: Settings, daemon: Daemon, notifier: Notifier) -> None:
    """Label sets at 0, build info, and the DB-derived gauges bound to this daemon's store
    (read on scrape, cached: see metrics.CachedCollector)."""
    metrics.precreate_labels()
    metrics.set_build_info(_version(), ",".join(sorted(stored_revisions(cfg.database_url))))
    metrics.STORE.bind(daemon.store_samples)
    metrics.OUTBOX.bind(notifier.gauge_samples)


def _version() -> str:
    """The installed distribution's version (a wheel's metadata), else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plexo-billing")
    except PackageNotFoundError:
        return billing.__version__


def _serve(cfg: Settings, daemon: Daemon, node: str, endpoints: Endpoints | None = None) -> bool:
    """Run the jobs until asked to stop; True when in-flight work finished within budget."""
    receiver = None
    if cfg.callback_enabled:  # Plexo's payment callbacks: hints, confirmed with a GET
        token = cfg.callback_token.get_secret_value()
        receiver = CallbackReceiver(
            daemon.ctx, cfg.callback_address, cfg.callback_port, token
        ).start()
    scheduler = build_scheduler(
        daemon,
        tick_seconds=cfg.tick_seconds,
        reconcile_seconds=cfg.reconcile_seconds,
        reaper_seconds=cfg.reaper_seconds,
        expiry_seconds=cfg.expiry_check_seconds,
        notify_seconds=cfg.notify_seconds,
        watchdog_seconds=watchdog_interval(),  # WATCHDOG=1 comes from the work pool
        ledger_check_seconds=LEDGER_CHECK_SECONDS if cfg.ledger_reconcile_enabled else None,
    )
    scheduler.start()
    if endpoints is not None:
        endpoints.readiness = Readiness(daemon, scheduler, script_heads(), cfg.tick_seconds)
    log_event(
        log,
        "daemon.ready",
        node=node,
        concurrency=daemon.ctx.concurrency,
        environment=cfg.plexo_environment,
        metrics_port=cfg.metrics_port,
        metrics_url=f"{endpoints.url}/metrics" if endpoints else None,
        callback_port=cfg.callback_port if receiver else None,
    )
    notify(f"READY=1\nSTATUS=billing on {node}")
    daemon.stopping.wait()
    notify("STOPPING=1\nSTATUS=stopping: finishing in-flight charges")
    started = time.monotonic()
    scheduler.pause()
    stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(cfg.stop_budget_seconds)
    finished = not stopper.is_alive()
    if receiver is not None:
        receiver.stop()
    # Bounded too: a store that hangs (every job stuck on a lock) must not outlast the stop
    # budget; unreleased leases then expire like a crashed node's.
    releaser = threading.Thread(target=daemon.release_leases, daemon=True)
    releaser.start()
    releaser.join(max(cfg.stop_budget_seconds - (time.monotonic() - started), RELEASE_SECONDS))
    finished = finished and not releaser.is_alive()
    log_event(
        log,
        "daemon.stopped",
        node=node,
        graceful=finished,
        seconds=round(time.monotonic() - started, 3),
    )
    return finished
