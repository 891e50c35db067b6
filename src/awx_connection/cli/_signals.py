"""
Stopping on a signal: for the commands that wait (``events tail --follow``,
``authorize``), so that SIGINT or SIGTERM lets them finish their current
step, commit, close the store and exit instead of dying mid-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Iterator
from typing import TypeVar

__all__ = ["race", "stop_on_signals"]

_T = TypeVar("_T")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """
    An event set by SIGINT or SIGTERM.

    Signal handlers can only be installed from the main thread; when
    :func:`awx_connection.cli.main` runs in another thread (tests, embedding)
    the event is simply never set by a signal.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def race(stop: asyncio.Event, work: Awaitable[_T]) -> asyncio.Future[_T] | None:
    """
    Run *work* until it finishes or *stop* is set, whichever comes first.

    Returns:
        The finished future (its ``result()`` re-raises what *work* raised), or
        ``None`` when *stop* won; *work* is then cancelled and awaited, so
        nothing is left running against a store about to close.
    """
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task if not task.cancelled() else None
