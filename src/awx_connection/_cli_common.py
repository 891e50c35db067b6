"""
What the day-two commands share: output, managers, and stopping on a signal.

Output goes through :func:`emit` (stdout, flushed at once so ``--follow``
streams and pipes see each line as it happens) and :func:`note` (stderr,
for people). Everything printed is built from :class:`Connection` and
:class:`ConnectionEvent`, which hold no token, code, verifier or secret, so
no command can print one by accident; the one deliberate exception is the
authorize URL (it carries ``state``), printed by ``connections reauthorize``
and ``authorize`` only.

Managers come in two kinds. :func:`provider_manager` reads credentials with
:meth:`Config.from_env`, for commands that talk to Airwallex. Commands that
only change the store (``disconnect``) use :func:`offline_config`, so an
operator can act on a connection from a box that holds the store URL and
the encryption keys but not the client secret. Commands that only read use
the store directly and need neither.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import orjson

from ._cli import _store_from
from ._config import Config, Endpoints
from ._connection import Connection
from ._errors import ConnectionNotFoundError
from ._events import ConnectionEvent
from ._manager import ConnectionManager
from ._store import Store

__all__ = [
    "connection_json",
    "emit",
    "emit_json",
    "event_json",
    "event_line",
    "note",
    "offline_config",
    "offline_manager",
    "opened_store",
    "provider_manager",
    "race",
    "read_connection",
    "stop_on_signals",
    "table",
    "when",
]

_T = TypeVar("_T")


# -- output ---------------------------------------------------------------------


def emit(line: str) -> None:
    """Print *line* to stdout and flush, so pipes and followers see it now."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def note(line: str) -> None:
    """Print a message for people to stderr (kept out of stdout for scripts)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def emit_json(value: dict[str, Any]) -> None:
    """Print *value* as one line of JSON (JSON Lines when called repeatedly)."""
    emit(orjson.dumps(value).decode())


def when(timestamp: float | None) -> str:
    """An epoch timestamp as ISO 8601 UTC to the second, or ``-``."""
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]


def connection_json(connection: Connection) -> dict[str, Any]:
    """
    The JSON form of a connection: every field of :class:`Connection`, the
    state as its value, times as epoch seconds (as the library keeps them).
    """
    data = attrs.asdict(connection)
    data["state"] = connection.state.value
    return data


def event_json(event: ConnectionEvent) -> dict[str, Any]:
    """The JSON form of an event; trigger and states as their values."""
    data = attrs.asdict(event)
    data["trigger"] = event.trigger.value
    data["source"] = None if event.source is None else event.source.value
    data["dest"] = event.dest.value
    return data


def event_line(event: ConnectionEvent) -> str:
    """One human line per event, readable while following a stream."""
    source = event.source.value if event.source is not None else "-"
    return (
        f"{when(event.at)}  {event.connection_id}  #{event.sequence:<3} "
        f"{source} -> {event.dest.value}  [{event.trigger.value}]  {event.reason}"
    )


# -- stores and managers ----------------------------------------------------------


@contextlib.asynccontextmanager
async def opened_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    """The store named by ``--store``/``AWX_STORE``, opened, closed afterwards."""
    store, _ = _store_from(args)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def read_connection(store: Store, connection_id: str) -> Connection:
    """
    The snapshot of *connection_id*, read from the store without a manager
    (so reading needs no credentials).

    Raises:
        ConnectionNotFoundError: No such connection (exit code 3).
    """
    record = await store.get(connection_id)
    if record is None:
        raise ConnectionNotFoundError(connection_id)
    return Connection.from_record(record)


@contextlib.asynccontextmanager
async def provider_manager(args: argparse.Namespace) -> AsyncIterator[ConnectionManager]:
    """
    An open manager with credentials from the environment, for commands that
    talk to Airwallex. The configuration is read before the store is opened,
    so missing credentials fail fast with exit code 2 and touch nothing.
    """
    config = Config.from_env()
    store, _ = _store_from(args)
    # A one-shot command: no keep-alive pass, and no settling of other
    # connections behind the back of the one the command is about.
    async with ConnectionManager(config, store=store, keepalive=False, settle=False) as manager:
        yield manager


def offline_config() -> Config:
    """
    A placeholder :class:`Config` for manager operations that never reach
    Airwallex.

    :class:`ConnectionManager` requires a Config even for transitions that
    only write the store (``revoke``). Rather than demand the client secret
    for those, the CLI gives it this one: its endpoints are on the reserved
    ``.invalid`` domain, so if a future change ever made such an operation
    call the provider, it would fail at DNS instead of sending anything
    anywhere, and the credentials are obviously not real ones.
    """
    return Config(
        client_id="awx-connection-cli-offline",
        client_secret="placeholder-never-sent",
        redirect_uri="https://awx-connection.invalid/callback",
        endpoints=Endpoints.from_base_url("https://awx-connection.invalid"),
    )


@contextlib.asynccontextmanager
async def offline_manager(args: argparse.Namespace) -> AsyncIterator[ConnectionManager]:
    """An open manager on the store with :func:`offline_config`, for store-only writes."""
    store, _ = _store_from(args)
    async with ConnectionManager(
        offline_config(), store=store, keepalive=False, settle=False
    ) as manager:
        yield manager


# -- stopping ---------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """
    An event set by SIGINT or SIGTERM, for commands that wait (``--follow``,
    ``authorize``), so they finish their current step, commit, close the
    store and exit instead of dying mid-write.

    Signal handlers can only be installed from the main thread; when
    :func:`awx_connection._cli.main` runs in another thread (tests, embedding)
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
