"""
The PostgreSQL store's waiters, woken by LISTEN/NOTIFY across replicas.

One job: making ``wait_for_update`` and ``wait_for_events`` return soon
after any replica's commit, without polling the database hard. A write
calls ``pg_notify('<schema>_connections', id)`` or
``pg_notify('<schema>_events', position)`` inside its transaction;
PostgreSQL delivers notifications at commit, and only if it commits.

* **One dedicated listening connection per store**, outside the pool
  (whose connection reset would ``UNLISTEN``), opened lazily by the first
  waiter and re-opened when lost; while it cannot be opened, attempts are
  spaced by ``min(recheck_interval, 0.5 s)``.
* **A notification only wakes a waiter**, which then re-reads the
  database. Waiters also re-read every ``recheck_interval`` seconds, so a
  notification lost with the listening connection delays a waiter by at
  most that, and never hangs it; when the connection is lost or (re)opened,
  every waiter re-reads at once, since notifications may have been missed.

No driver is imported here: the store hands in how to connect, with each
wait, so that nothing here holds on to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, final

import attrs

__all__ = ["Listener", "close_quietly"]

_log = logging.getLogger("awx_connection.stores")

_T = TypeVar("_T")

#: Opens a new database connection, outside the pool (the store's own settings).
Connect = Callable[[], Awaitable[Any]]

#: Seconds between attempts to open the LISTEN connection while that fails.
_LISTENER_RETRY: Final = 0.5
_CLOSE_TIMEOUT: Final = 10.0


async def close_quietly(connection: Any) -> None:
    """Close an asyncpg *connection*, or terminate it if that fails or hangs."""
    try:
        await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT)
    except Exception:
        connection.terminate()


@final
@attrs.define(eq=False)
class Listener:
    """
    The LISTEN connection of one store and the waiters it wakes.

    It listens only while :attr:`active` (the store is open): the store
    sets it on ``open`` and clears it in ``aclose``, before :meth:`close`.
    """

    #: The schema, for log lines.
    schema: str
    connections_channel: str
    events_channel: str
    #: Seconds between two re-reads of a waiter without a notification.
    recheck_interval: float
    active: bool = False
    #: The dedicated LISTEN connection, ``None`` until a waiter needs it or once lost.
    _connection: Any = attrs.field(default=None, init=False)
    _task: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    #: Loop time before which a failed listener connection is not tried again.
    _retry_at: float = attrs.field(default=0.0, init=False)
    #: Waiters by connection id, woken by ``<schema>_connections`` notifications.
    _update_waiters: dict[str, set[asyncio.Event]] = attrs.field(factory=dict, init=False)
    #: Waiters woken by ``<schema>_events`` notifications.
    _event_waiters: set[asyncio.Event] = attrs.field(factory=set, init=False)

    async def wait_for_update(
        self,
        connection_id: str,
        check: Callable[[], Awaitable[_T | None]],
        timeout: float,  # noqa: ASYNC109 - a deadline for a loop, not one await
        connect: Connect,
    ) -> _T | None:
        """
        Run *check* until it finds something or *timeout* passes, woken by
        *connection_id*'s commits; *connect* opens the LISTEN connection if
        there is none.
        """
        wake = asyncio.Event()
        waiters = self._update_waiters.setdefault(connection_id, set())
        waiters.add(wake)
        try:
            return await self._wait(wake, check, timeout, connect)
        finally:
            waiters.discard(wake)
            if not waiters and self._update_waiters.get(connection_id) is waiters:
                del self._update_waiters[connection_id]

    async def wait_for_events(
        self,
        check: Callable[[], Awaitable[_T | None]],
        timeout: float,  # noqa: ASYNC109 - a deadline for a loop, not one await
        connect: Connect,
    ) -> _T | None:
        """:meth:`wait_for_update`, woken by any event's commit."""
        wake = asyncio.Event()
        self._event_waiters.add(wake)
        try:
            return await self._wait(wake, check, timeout, connect)
        finally:
            self._event_waiters.discard(wake)

    async def close(self) -> None:
        """Stop listening: cancel a connection attempt, close the connection."""
        task, self._task = self._task, None
        connection, self._connection = self._connection, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if connection is not None:
            await close_quietly(connection)

    def wake_everyone(self) -> None:
        """Have every waiter re-read now."""
        for waiters in self._update_waiters.values():
            for wake in waiters:
                wake.set()
        for wake in self._event_waiters:
            wake.set()

    async def _wait(
        self,
        wake: asyncio.Event,
        check: Callable[[], Awaitable[_T | None]],
        timeout: float,  # noqa: ASYNC109 - a deadline for a loop, not one await
        connect: Connect,
    ) -> _T | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            self._start(connect)
            # Cleared before the read: a notification arriving from here on
            # wakes the wait below even if it lands before we get there.
            wake.clear()
            found = await check()
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(remaining, self.recheck_interval))

    def _start(self, connect: Connect) -> None:
        """Open the LISTEN connection in the background if there is none (throttled)."""
        if not self.active:
            return
        connection = self._connection
        if connection is not None and not connection.is_closed():
            return
        if self._task is not None and not self._task.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return
        self._connection = None
        if connection is not None:
            connection.terminate()
        self._task = loop.create_task(self._open(connect))

    async def _open(self, connect: Connect) -> None:
        try:
            connection = await connect()
        except Exception as exc:
            self._failed()
            _log.warning(
                "postgres store: cannot open the LISTEN connection for schema %r (%s); "
                "waiters poll every %ss",
                self.schema,
                type(exc).__name__,
                self.recheck_interval,
            )
            return
        try:
            await connection.add_listener(self.connections_channel, self._on_connection)
            await connection.add_listener(self.events_channel, self._on_event)
        except Exception as exc:
            self._failed()
            _log.warning(
                "postgres store: LISTEN failed for schema %r (%s); waiters poll every %ss",
                self.schema,
                type(exc).__name__,
                self.recheck_interval,
            )
            await close_quietly(connection)
            return
        except asyncio.CancelledError:
            connection.terminate()
            raise
        if not self.active:  # closed meanwhile
            await close_quietly(connection)
            return
        connection.add_termination_listener(self._on_lost)
        self._connection = connection
        # Whatever committed before LISTEN took effect sent no notification
        # to us: have every waiter look again now.
        self.wake_everyone()

    def _failed(self) -> None:
        loop = asyncio.get_running_loop()
        self._retry_at = loop.time() + min(self.recheck_interval, _LISTENER_RETRY)

    def _on_connection(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        for wake in self._update_waiters.get(payload, ()):
            wake.set()

    def _on_event(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        for wake in self._event_waiters:
            wake.set()

    def _on_lost(self, connection: Any) -> None:
        if self._connection is connection:
            self._connection = None
            # Notifications may have been lost: re-read now (and reconnect).
            self.wake_everyone()
