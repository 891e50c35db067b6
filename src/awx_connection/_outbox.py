"""
Durable, at-least-once event consumption from the store's outbox.

Every transition's event is written in the same transaction as the state
change, with a global position in commit order. An :class:`EventConsumer`
reads from its last committed position, so a consumer that restarts (a new
process, a deploy) resumes where it stopped, in per-connection order.

"Handled" is explicit and conservative: an event counts as handled when the
consumer asks for the next one, or leaves its ``async with`` block without
an exception. The event being processed when a consumer dies is therefore
delivered again: at-least-once. Make handlers idempotent; dedupe on
``(connection_id, sequence)``.

Offsets are committed in batches (after every ``batch`` handled events and
whenever the consumer goes idle or closes), so a crash re-delivers at most
one batch.

A consumer may filter (``intents=``, ``triggers=``, ``states=``, as
subscriptions do): the events it does not want count as handled as soon as
it reads past them, so its offset still moves and a restart does not read
them again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from typing import Self, final

import attrs

from ._events import ConnectionEvent, event_filter
from ._states import ConnectionState, Intent, Trigger
from ._store import Outbox

__all__ = ["EventConsumer"]


@final
@attrs.define(eq=False)
class EventConsumer:
    """
    A named, durable reader of every connection's events.

    Use it as::

        async with manager.consumer("onboarding") as events:
            async for event in events:
                await handle(event)   # idempotent: may see an event twice

    Iteration waits for new events (woken by PostgreSQL NOTIFY, or polling
    for SQLite) until the block is left or the task is cancelled.

    *store* needs only the :class:`~awx_connection.Outbox` role (every
    :class:`~awx_connection.Store` has it).
    """

    store: Outbox
    name: str
    batch: int = 100
    #: Real seconds between checks for new events when idle.
    poll_interval: float = 1.0
    #: Only events of these intents are handed out (``None``: all); the
    #: others are skipped and count as handled.
    intents: Collection[Intent] | None = attrs.field(default=None, kw_only=True)
    #: Likewise, only events of these triggers.
    triggers: Collection[Trigger] | None = attrs.field(default=None, kw_only=True)
    #: Likewise, only events entering these states.
    states: Collection[ConnectionState] | None = attrs.field(default=None, kw_only=True)
    _matches: Callable[[ConnectionEvent], bool] = attrs.field(init=False)
    _position: int = attrs.field(init=False, default=0)
    _committed: int = attrs.field(init=False, default=0)
    _handled: int = attrs.field(init=False, default=0)
    _in_hand: int | None = attrs.field(init=False, default=None)
    _buffer: list[tuple[int, ConnectionEvent]] = attrs.field(init=False, factory=list)
    _opened: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._matches = event_filter(
            triggers=self.triggers, states=self.states, intents=self.intents
        )

    async def __aenter__(self) -> Self:
        self._committed = self._handled = self._position = await self.store.get_offset(self.name)
        self._opened = True
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None and self._in_hand is not None:
            self._handled = self._in_hand
        self._in_hand = None
        await self.commit()

    @property
    def position(self) -> int:
        """The position of the last event handled (committed or not)."""
        return self._handled

    async def commit(self) -> None:
        """Store the handled position now (also done in batches and on exit)."""
        if self._handled > self._committed:
            await self.store.commit_offset(self.name, self._handled)
            self._committed = self._handled

    def __aiter__(self) -> AsyncIterator[ConnectionEvent]:
        return self

    async def __anext__(self) -> ConnectionEvent:
        if not self._opened:
            msg = "use the consumer inside 'async with'"
            raise RuntimeError(msg)
        if self._in_hand is not None:
            self._handled = self._in_hand
            self._in_hand = None
            if self._handled - self._committed >= self.batch:
                await self.commit()
        while True:
            while not self._buffer:
                rows = await self.store.read_outbox(after=self._position, limit=self.batch)
                if rows:
                    self._buffer = rows
                    break
                await self.commit()
                await self.store.wait_for_events(after=self._position, timeout=self.poll_interval)
            position, event = self._buffer.pop(0)
            self._position = position
            if self._matches(event):
                self._in_hand = position
                return event
            # Not wanted: handled by being read past.
            self._handled = position
            if self._handled - self._committed >= self.batch:
                await self.commit()
