"""One machine-parsable line per event (JSON or logfmt), with a stable `event` key."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with structured fields; never pass secrets or card data here."""
    logger.log(level, event, extra={"event": event, "fields": fields})


class EventFormatter(logging.Formatter):
    def __init__(self, style: str) -> None:
        super().__init__()
        self.style_name = style

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        elif getattr(record, "event", None) is None:
            entry["event"] = "log"
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        if self.style_name == "logfmt":
            return " ".join(f"{k}={_logfmt(v)}" for k, v in entry.items())
        return json.dumps(entry, default=str, separators=(",", ":"))


def _logfmt(value: Any) -> str:
    """A bare word, or a JSON string (every control, bidi and non-ASCII character escaped), so
    that no value can split the line or fake another key."""
    text = str(value)
    if not text or not text.isascii() or not text.isprintable() or any(c in text for c in ' ="\\'):
        return json.dumps(text)
    return text


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "maximum number of running instances reached" is the normal sign of a long pass (the
    # next tick is coalesced); job failures are logged by our own listener as job.failed.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)
