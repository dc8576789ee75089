"""httpx transports that answer from a `PlexoSimulator` in-process (no socket, no thread).

Faults become the exceptions a real network gives: a "timeout" fault raises `httpx.ReadTimeout`
at once (no real hang), a "drop" fault raises `httpx.RemoteProtocolError`. Latency sleeps; when it
is longer than the request's read timeout, the transport sleeps that timeout and raises
`httpx.ReadTimeout` (the state change is already recorded, as with a slow real gateway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from billing.sandbox.simulator import PlexoSimulator, SimRequest, SimResponse


def _sim_request(request: httpx.Request, body: bytes) -> SimRequest:
    return SimRequest(
        method=request.method,
        path=request.url.path,
        query=dict(request.url.params.items()),
        headers={name.lower(): value for name, value in request.headers.items()},
        body=body,
    )


def _read_timeout(request: httpx.Request) -> float | None:
    timeouts = request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        value = timeouts.get("read")
        return float(value) if isinstance(value, int | float) else None
    return None


def _wait(response: SimResponse, request: httpx.Request) -> tuple[float, bool]:
    """How long to sleep, and whether the read timeout fires after that sleep."""
    limit = _read_timeout(request)
    if response.delay and limit is not None and response.delay > limit:
        return limit, True
    return response.delay, False


def _answer(response: SimResponse, request: httpx.Request) -> httpx.Response:
    if response.fault == "timeout":
        raise httpx.ReadTimeout("sandbox: the gateway did not answer in time", request=request)
    if response.fault == "drop":
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        )
    return httpx.Response(
        response.status, headers=response.headers, content=response.body, request=request
    )


class SandboxTransport(httpx.BaseTransport):
    """Mount with `httpx.Client(transport=SandboxTransport(sim), base_url=...)`."""

    def __init__(
        self, simulator: PlexoSimulator, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.simulator = simulator
        self._sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.simulator.handle(_sim_request(request, request.read()))
        seconds, timed_out = _wait(response, request)
        if seconds:
            self._sleep(seconds)
        if timed_out:
            raise httpx.ReadTimeout("sandbox: latency exceeded the read timeout", request=request)
        return _answer(response, request)


class AsyncSandboxTransport(httpx.AsyncBaseTransport):
    """The same for `httpx.AsyncClient`; latency is an `asyncio.sleep`."""

    def __init__(self, simulator: PlexoSimulator) -> None:
        self.simulator = simulator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = self.simulator.handle(_sim_request(request, await request.aread()))
        seconds, timed_out = _wait(response, request)
        if seconds:
            await asyncio.sleep(seconds)
        if timed_out:
            raise httpx.ReadTimeout("sandbox: latency exceeded the read timeout", request=request)
        return _answer(response, request)
