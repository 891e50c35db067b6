"""
The ``awx-connection`` command.

Subcommands: ``demo`` (one connection's whole life against the fake
provider), ``fake-server`` (the fake Airwallex on 127.0.0.1), ``diagram``
(the state machine as Mermaid). Exit codes: 0 success, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_diagram(_args: argparse.Namespace) -> int:
    from ._states import mermaid

    print(mermaid(), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import main as demo_main

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="  log %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    return demo_main()


async def _serve_fake(args: argparse.Namespace) -> None:
    from ._clock import ManualClock, SystemClock
    from .testing import FakeAirwallex

    clock = ManualClock() if args.manual_clock else SystemClock()
    fake = FakeAirwallex(
        clock=clock,
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=args.redirect_uri or ["http://127.0.0.1/callback"],
        port=args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(f"fake Airwallex listening on {fake.base_url}", flush=True)
        print(f"  client_id={fake.client_id}  (client secret as given by --client-secret)")
        print(f"  token endpoint {fake.token_url}; admin under {fake.base_url}/_fake/")
        await stop.wait()


def _cmd_fake_server(args: argparse.Namespace) -> int:
    asyncio.run(_serve_fake(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs and the tests)."""
    parser = argparse.ArgumentParser(
        prog="awx-connection",
        description="Hold OAuth partner connections to Airwallex accounts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run one connection's whole life against the fake")
    demo.add_argument("-v", "--verbose", action="store_true", help="also print log lines")
    demo.set_defaults(func=_cmd_demo)

    fake = sub.add_parser("fake-server", help="run the fake Airwallex provider on 127.0.0.1")
    fake.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 = any)")
    fake.add_argument("--client-id", default="fake-client-id")
    fake.add_argument("--client-secret", default="fake-client-secret")
    fake.add_argument(
        "--redirect-uri", action="append", help="a registered redirect URI (repeatable)"
    )
    fake.add_argument(
        "--manual-clock",
        action="store_true",
        help="simulated time, moved by POST /_fake/clock/advance",
    )
    fake.set_defaults(func=_cmd_fake_server)

    diagram = sub.add_parser("diagram", help="print the state machine as Mermaid")
    diagram.set_defaults(func=_cmd_diagram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
