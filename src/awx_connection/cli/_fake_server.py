"""
``awx-connection fake-server``: the fake Airwallex of
:mod:`awx_connection.testing`, on 127.0.0.1, until SIGINT or SIGTERM.

For trying the library (or another client) against a provider that needs
no account: point ``AWX_BASE_URL`` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from .._clock import ManualClock, SystemClock
from ..testing import FakeAirwallex
from ._exits import EXIT_OK
from ._output import emit

__all__ = ["fake_server"]


def fake_server(args: argparse.Namespace) -> int:
    """Serve until stopped; exit 0."""
    asyncio.run(_serve(args))
    return EXIT_OK


async def _serve(args: argparse.Namespace) -> None:
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
        emit(f"fake Airwallex listening on {fake.base_url}")
        emit(f"  client_id={fake.client_id}  (client secret as given by --client-secret)")
        emit(f"  token endpoint {fake.token_url}; admin under {fake.base_url}/_fake/")
        await stop.wait()
