"""
``awx-connection events tail``: print stored lifecycle events.

Three ways to read, each for a reason:

* plain (no ``--consumer``): the store's history in commit order, from the
  start; ``--follow`` then waits for new events with the store's own wait
  (LISTEN/NOTIFY on PostgreSQL, polling on SQLite). Nothing is recorded,
  so any number of operators can tail at once.
* ``--consumer NAME``: a durable consumer (:class:`EventConsumer`, what
  :meth:`ConnectionManager.consumer` returns): starts after the position NAME
  last committed and commits what it printed, so a cron job or a pipe into
  another tool sees every event at least once across runs. Without
  ``--follow`` it prints what is new and exits.
* ``--connection ID``: one connection's history (exit code 3 if unknown).
  Not combinable with ``--consumer``: a consumer's position is global, so
  filtering would silently mark other connections' events as handled.

``--follow`` stops cleanly on SIGINT or SIGTERM: the wait in progress is
cancelled, the consumer commits what was printed, the store is closed, and
the exit code is 0.
"""

from __future__ import annotations

import argparse
import asyncio

from .._events import ConnectionEvent
from .._outbox import EventConsumer
from .._store import Store
from ._exits import EXIT_OK
from ._output import emit, emit_json, event_json, event_line
from ._signals import race, stop_on_signals
from ._stores import opened_store, read_connection

__all__ = ["tail"]

#: Events read from the outbox per query.
_PAGE = 500


def _print(args: argparse.Namespace, event: ConnectionEvent) -> None:
    if args.json:
        emit_json(event_json(event))
    else:
        emit(event_line(event))


async def tail(args: argparse.Namespace) -> int:
    """``events tail``: print stored events; with ``--follow``, new ones too."""
    async with opened_store(args) as store:
        if args.connection is not None:
            await read_connection(store, args.connection)  # exit 3 if unknown
        with stop_on_signals() as stop:
            if args.consumer is None:
                await _history(args, store, stop)
            elif args.follow:
                await _follow_consumer(args, store, stop)
            else:
                await _drain_consumer(args, store)
    return EXIT_OK


async def _history(args: argparse.Namespace, store: Store, stop: asyncio.Event) -> None:
    """The outbox from the start, then (``--follow``) whatever is committed next."""
    if args.connection is not None and not args.follow:
        # The per-connection index is cheaper than scanning every event.
        for event in await store.read_events(args.connection):
            _print(args, event)
        return
    position = 0
    while not stop.is_set():
        rows = await store.read_outbox(after=position, limit=_PAGE)
        for position, event in rows:  # noqa: B007 - position is kept on purpose
            if args.connection is None or event.connection_id == args.connection:
                _print(args, event)
        if len(rows) == _PAGE:
            continue
        if not args.follow:
            return
        await race(stop, store.wait_for_events(after=position, timeout=args.poll_interval))


async def _follow_consumer(args: argparse.Namespace, store: Store, stop: asyncio.Event) -> None:
    """
    Read through a durable consumer until stopped. Each event is printed
    before the next is asked for, and asking is what marks it handled; on a
    stop the ``async with`` exits normally, which commits the last printed
    event too. A kill -9 re-delivers at most what was not yet committed.
    """
    consumer = EventConsumer(store, args.consumer, poll_interval=args.poll_interval)
    async with consumer as events:
        while True:
            done = await race(stop, anext(events))
            if done is None:
                return
            _print(args, done.result())


async def _drain_consumer(args: argparse.Namespace, store: Store) -> None:
    """
    Print what consumer NAME has not handled yet, commit, exit.

    :class:`EventConsumer` waits for new events once it is caught up, which
    is right for ``--follow`` but not for a run that must end; this reads
    the same outbox and offset through the store's public contract instead.
    The offset is committed per page, after the page was printed.
    """
    position = await store.get_offset(args.consumer)
    while True:
        rows = await store.read_outbox(after=position, limit=_PAGE)
        if not rows:
            return
        for position, event in rows:  # noqa: B007 - position is kept on purpose
            _print(args, event)
        await store.commit_offset(args.consumer, position)
