"""Switchable gateway faults: what the simulator does wrong, and to which requests.

Modes (the "after" ones record the state change first, so the reconcile path gets exercised):

| mode            | effect                                                         | recorded? |
|-----------------|----------------------------------------------------------------|-----------|
| `latency`       | sleep `seconds` (default 1.0), then answer normally            | yes       |
| `error_before`  | 503 `api-error` envelope                                       | no        |
| `error_after`   | 5xx `api-error` envelope, `status` 500/502/503/504 (default 502)| yes      |
| `timeout_after` | hang `hang_seconds` (plan default 30) and close without bytes  | yes       |
| `drop_after`    | close the connection without a response                        | yes       |
| `rate_limit`    | 429 with `Retry-After: retry_after` (default 1)                | no        |
| `query_lag`     | a payment query answers an empty page (the index lags behind)  | n/a       |
| `bare_before`   | a non-Plexo answer (`status`, `body` shape) from "a proxy"     | no        |
| `bare_after`    | the same, after the state change was recorded                  | yes       |

`bare_*` answers are what something in front of Plexo sends (a load balancer's 404 page, an
empty 403, another server's JSON): `body` is one of BARE_BODIES' shapes, `status` 400 to 599.

A route is `"METHOD /path"` where a `{name}` or `*` segment matches any one segment, the method
may be `*`, and `None` or `"*"` matches every API route. `/sandbox/*` control routes never fault.
Queued faults are consumed first (oldest first); probability rules then draw from the plan's
seeded RNG, one draw per matching rule per request, so a fixed seed and request sequence give a
fixed fault sequence.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from billing.errors import InvalidInput

MODES: tuple[str, ...] = (
    "latency",
    "error_before",
    "error_after",
    "timeout_after",
    "drop_after",
    "rate_limit",
    "query_lag",
    "bare_before",
    "bare_after",
)

# What a proxy, load balancer or WAF in front of Plexo answers: never Plexo's envelope.
BARE_BODIES: dict[str, tuple[str, bytes]] = {
    "html": (
        "text/html",
        b"<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}"
        b"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
    ),
    "empty": ("text/plain", b""),
    "text": ("text/plain", b"{status}"),
    "json": ("application/json", b'{"message": "{status}"}'),
    "spring": (
        "application/json",
        b'{"timestamp": "2026-01-01T00:00:00Z", "status": {status}, "error": "{status}", '
        b'"path": "/v1/payments"}',
    ),
    "nested": (
        "application/json",
        b'{"error": {"code": "unauthorized", "message": "{status}"}}',
    ),
    "truncated": ("application/json", b'{"code": "unauthorized", "type": "authentica'),
}

# Parameters each mode takes, with their defaults (None: taken from the plan at pick time).
_PARAMS: dict[str, dict[str, float | int | str | None]] = {
    "latency": {"seconds": 1.0},
    "error_before": {},
    "error_after": {"status": 502},
    "timeout_after": {"hang_seconds": None},
    "drop_after": {},
    "rate_limit": {"retry_after": 1},
    "query_lag": {},
    "bare_before": {"status": 404, "body": "html"},
    "bare_after": {"status": 404, "body": "html"},
}
_ERROR_AFTER_STATUSES = frozenset({500, 502, 503, 504})
DEFAULT_ROUTE = "POST /v1/payments"


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault chosen for one request."""

    mode: str
    params: dict[str, float | int | str] = field(default_factory=dict)

    def number(self, name: str) -> float:
        return float(self.params[name])

    def text(self, name: str) -> str:
        return str(self.params[name])


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    segments: tuple[str, ...] | None  # None: any path

    @classmethod
    def parse(cls, route: str | None) -> _Route:
        if route is None or route.strip() in {"", "*"}:
            return cls("*", None)
        parts = route.split()
        if len(parts) == 1:
            method, path = "*", parts[0]
        elif len(parts) == 2:
            method, path = parts[0].upper(), parts[1]
        else:
            raise InvalidInput(f"route {route!r} must look like 'POST /v1/payments'")
        if not path.startswith("/"):
            raise InvalidInput(f"route {route!r}: the path must start with '/'")
        return cls(method, _segments(path))

    def matches(self, method: str, path: str) -> bool:
        if self.method not in {"*", method.upper()}:
            return False
        if self.segments is None:
            return True
        actual = _segments(path)
        if len(actual) != len(self.segments):
            return False
        return all(
            want == "*" or (want.startswith("{") and want.endswith("}")) or want == got
            for want, got in zip(self.segments, actual, strict=True)
        )

    def __str__(self) -> str:
        path = "*" if self.segments is None else "/" + "/".join(self.segments)
        return f"{self.method} {path}"


def _segments(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part)


@dataclass(slots=True)
class _Queued:
    route: _Route
    fault: Fault
    remaining: int


@dataclass(slots=True)
class _Chance:
    route: _Route
    fault: Fault
    probability: float


def _check_fault(mode: str, params: dict[str, Any]) -> Fault:
    if mode not in _PARAMS:
        raise InvalidInput(f"unknown fault mode {mode!r}: use one of {', '.join(MODES)}")
    allowed = _PARAMS[mode]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidInput(f"fault mode {mode!r} takes no parameter(s) {', '.join(unknown)}")
    values: dict[str, float | int | str] = {}
    for name, default in allowed.items():
        value = params.get(name, default)
        if value is None:
            continue
        if isinstance(default, str):
            if value not in BARE_BODIES:
                raise InvalidInput(
                    f"fault parameter {name} must be one of {', '.join(BARE_BODIES)}"
                )
            values[name] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"fault parameter {name} must be a number")
        if value < 0:
            raise InvalidInput(f"fault parameter {name} must not be negative")
        values[name] = value
    if mode == "error_after" and int(values["status"]) not in _ERROR_AFTER_STATUSES:
        raise InvalidInput("error_after status must be one of 500, 502, 503, 504")
    if mode.startswith("bare_") and not (
        float(values["status"]).is_integer() and 400 <= int(values["status"]) <= 599
    ):
        raise InvalidInput(f"{mode} status must be an HTTP status from 400 to 599")
    return Fault(mode, values)


def bare_answer(fault: Fault) -> tuple[int, str, bytes]:
    """The status, content type and body of a `bare_*` fault's answer."""
    status = int(fault.number("status"))
    content_type, template = BARE_BODIES[fault.text("body")]
    return status, content_type, template.replace(b"{status}", str(status).encode())


class FaultPlan:
    """The faults waiting for future requests; thread-safe, seeded for repeatable chaos."""

    def __init__(self, seed: int = 0, hang_seconds: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._rng = random.Random(seed)
        self._queued: list[_Queued] = []
        self._chances: list[_Chance] = []
        self._hang_seconds = float(hang_seconds)

    @property
    def hang_seconds(self) -> float:
        """How long `timeout_after` hangs when the fault itself does not say."""
        with self._lock:
            return self._hang_seconds

    @hang_seconds.setter
    def hang_seconds(self, value: float) -> None:
        if value < 0:
            raise InvalidInput("hang_seconds must not be negative")
        with self._lock:
            self._hang_seconds = float(value)

    def queue(
        self, mode: str, route: str | None = DEFAULT_ROUTE, times: int = 1, **params: Any
    ) -> None:
        """Give the next `times` requests matching `route` this fault."""
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise InvalidInput("times must be a positive integer")
        fault = _check_fault(mode, params)
        with self._lock:
            self._queued.append(_Queued(_Route.parse(route), fault, times))

    def set_probability(
        self, mode: str, p: float, route: str | None = DEFAULT_ROUTE, **params: Any
    ) -> None:
        """Give each request matching `route` this fault with probability `p` (0 removes it)."""
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise InvalidInput("probability must be a number between 0 and 1")
        fault = _check_fault(mode, params)
        parsed = _Route.parse(route)
        with self._lock:
            self._chances = [
                c for c in self._chances if not (c.route == parsed and c.fault.mode == mode)
            ]
            if p > 0:
                self._chances.append(_Chance(parsed, fault, float(p)))

    def clear(self) -> None:
        """Forget every queued fault and probability rule (the RNG keeps its position)."""
        with self._lock:
            self._queued.clear()
            self._chances.clear()

    def reset(self) -> None:
        """Clear, re-seed the RNG and restore the default hang; a fresh plan."""
        with self._lock:
            self._queued.clear()
            self._chances.clear()
            self._rng = random.Random(self._seed)
            self._hang_seconds = 30.0

    def pick(self, method: str, path: str) -> Fault | None:
        """Choose (and consume) the fault for one request, or None."""
        if _segments(path)[:1] == ("sandbox",):
            return None
        with self._lock:
            chosen = self._pick_locked(method, path)
            if (
                chosen is not None
                and chosen.mode == "timeout_after"
                and "hang_seconds" not in chosen.params
            ):
                chosen = Fault(chosen.mode, {"hang_seconds": self._hang_seconds})
            return chosen

    def _pick_locked(self, method: str, path: str) -> Fault | None:
        for index, entry in enumerate(self._queued):
            if entry.route.matches(method, path):
                entry.remaining -= 1
                if entry.remaining == 0:
                    del self._queued[index]
                return entry.fault
        chosen: Fault | None = None
        for chance in self._chances:
            if chance.route.matches(method, path):
                hit = self._rng.random() < chance.probability
                if hit and chosen is None:
                    chosen = chance.fault
        return chosen

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able data (for GET /sandbox/faults)."""
        with self._lock:
            return {
                "hangSeconds": self._hang_seconds,
                "queued": [
                    {
                        "mode": q.fault.mode,
                        "route": str(q.route),
                        "remaining": q.remaining,
                        "params": dict(q.fault.params),
                    }
                    for q in self._queued
                ],
                "probabilities": [
                    {
                        "mode": c.fault.mode,
                        "route": str(c.route),
                        "probability": c.probability,
                        "params": dict(c.fault.params),
                    }
                    for c in self._chances
                ],
            }
