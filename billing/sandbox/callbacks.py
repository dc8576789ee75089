"""The sandbox's payment callbacks (plexo-api.md section 5, section 7 rows 7-8).

When a payment that carried a `callbackUrl` reaches a final state (at once, or when a pending
one settles), the sandbox POSTs its PaymentDto there: unsigned JSON, at least once, retried on
a non-2xx answer or a network error after each of `retry_delays` (5 tries by default), with
`duplicates` extra copies on request (receivers must tolerate them). Each delivery runs in its
own daemon thread; `stop()` ends the waiting.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Delivery:
    """One POST the sandbox made: what it sent where (URL token masked) and what came back."""

    payment_id: str
    reference_id: str
    status: str  # the payment status the callback carried
    try_number: int
    http_status: int | None  # None: the connection failed


class CallbackSender:
    def __init__(self, retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS) -> None:
        self.retry_delays = retry_delays
        self.duplicates = 0
        self.enabled = True
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._log: list[Delivery] = []
        self._threads: list[threading.Thread] = []

    def send(self, url: str, body: str, payment: dict[str, Any]) -> None:
        """Deliver `body` to `url` in the background (and its duplicates, if asked)."""
        if not self.enabled or self._stop.is_set():
            return
        for _ in range(1 + self.duplicates):
            thread = threading.Thread(
                target=self._deliver,
                args=(url, body, payment),
                name="sandbox-callback",
                daemon=True,
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._log)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every delivery finished (delivered or gave up); True if they did."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in threads)

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    def stop(self) -> None:
        """End every pending retry (the server stops); `start()` allows deliveries again."""
        self._stop.set()

    def start(self) -> None:
        self._stop.clear()

    def _deliver(self, url: str, body: str, payment: dict[str, Any]) -> None:
        delays = (0.0, *self.retry_delays)
        with httpx.Client(timeout=5.0) as client:
            for number, delay in enumerate(delays, start=1):
                if delay and self._stop.wait(delay):
                    return
                status: int | None
                try:
                    answer = client.post(
                        url, content=body, headers={"content-type": "application/json"}
                    )
                    status = answer.status_code
                except httpx.HTTPError:
                    status = None
                with self._lock:
                    self._log.append(
                        Delivery(
                            payment_id=str(payment.get("id")),
                            reference_id=str(payment.get("referenceId")),
                            status=str(payment.get("status")),
                            try_number=number,
                            http_status=status,
                        )
                    )
                if status is not None and 200 <= status < 300:
                    return
