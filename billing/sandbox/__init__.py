"""A faithful Plexo gateway simulator: in-process (httpx transport) or on loopback (HTTP server)."""

from billing.sandbox.faults import FaultPlan
from billing.sandbox.server import SandboxServer, serve
from billing.sandbox.simulator import PlexoSimulator, SimRequest, SimResponse
from billing.sandbox.transport import AsyncSandboxTransport, SandboxTransport

__all__ = [
    "AsyncSandboxTransport",
    "FaultPlan",
    "PlexoSimulator",
    "SandboxServer",
    "SandboxTransport",
    "SimRequest",
    "SimResponse",
    "serve",
]
