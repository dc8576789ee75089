"""`python -m billing.sandbox --port 0`: run the simulator as a process (for end-to-end tests)."""

from __future__ import annotations

import argparse
import os

from billing.errors import ListenFailed
from billing.sandbox.server import serve
from billing.sandbox.simulator import PlexoSimulator
from billing.settings import is_loopback_host


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m billing.sandbox", description=__doc__)
    parser.add_argument("--host", default=env("SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("SANDBOX_PORT", "0")))
    parser.add_argument("--client-id", default=env("SANDBOX_CLIENT_ID", "sandbox-client"))
    parser.add_argument("--api-key", default=env("SANDBOX_API_KEY", "sandbox-key"))
    parser.add_argument("--merchant-id", type=int, default=int(env("SANDBOX_MERCHANT_ID", "1")))
    parser.add_argument("--seed", type=int, default=int(env("SANDBOX_SEED", "0")))
    parser.add_argument(
        "--duplicate-mode",
        choices=["reject", "replay"],
        default=env("SANDBOX_DUPLICATE_MODE", "reject"),
    )
    parser.add_argument(
        "--decline-style", choices=["body", "error"], default=env("SANDBOX_DECLINE_STYLE", "body")
    )
    parser.add_argument("--pending-polls", type=int, default=int(env("SANDBOX_PENDING_POLLS", "1")))
    parser.add_argument(
        "--allow-unauthenticated-control",
        action="store_true",
        help="listen off loopback although /sandbox/* has no authentication",
    )
    args = parser.parse_args(argv)
    if not is_loopback_host(args.host) and not args.allow_unauthenticated_control:
        parser.exit(
            2,
            f"error: --host {args.host} is not a loopback address and /sandbox/* has no "
            "authentication: add --allow-unauthenticated-control to do it anyway\n",
        )
    simulator = PlexoSimulator(
        args.client_id,
        args.api_key,
        args.merchant_id,
        seed=args.seed,
        duplicate_mode=args.duplicate_mode,
        decline_style=args.decline_style,
        pending_polls=args.pending_polls,
    )
    try:
        serve(args.host, args.port, simulator)
    except ListenFailed as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
