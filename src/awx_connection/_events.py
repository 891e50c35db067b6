"""
Lifecycle events and the in-process subscriber bus.

Every transition produces exactly one :class:`ConnectionEvent`, numbered per
connection (1, 2, 3, ... with no gaps), persisted with the connection, then
published on the :class:`EventBus`.

Delivery rules, and why:

* Synchronous callbacks run inline, in publication order. They must be quick.
  A plain function that returns an awaitable is a mistake (nothing could
  await it in order): the awaitable is closed and the mistake logged.
* Each asynchronous callback and each ``async for`` subscription gets its own
  FIFO queue and worker, so a slow subscriber never stalls a transition or
  another subscriber, and still sees events in order.
* A subscriber that raises is logged and isolated: the others still get the
  event and the transition stands.
* A subscription queue is bounded. A consumer that falls more than
  ``maxsize`` events behind is closed with :class:`SubscriptionOverflowError`
  (a stream) or an error log (an async callback) rather than silently losing
  events or growing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from typing import Any, Self, final

import attrs

from ._errors import InvalidArgumentError, SubscriptionOverflowError
from ._states import INTENTS, ConnectionState, Intent, Trigger

__all__ = [
    "ConnectionEvent",
    "EventBus",
    "EventCallback",
    "Subscription",
    "event_filter",
]

_log = logging.getLogger("awx_connection.events")


@final
@attrs.frozen
class ConnectionEvent:
    """
    One transition of one connection.

    ``source`` is ``None`` only for the ``begin`` event that creates a
    connection. ``account_id`` is the Airwallex account once known.
    Carries no secret of any kind.
    """

    connection_id: str
    sequence: int
    trigger: Trigger
    source: ConnectionState | None
    dest: ConnectionState
    reason: str
    at: float
    account_id: str | None = None
    external_id: str | None = None

    @property
    def intent(self) -> Intent:
        """
        What the event means to the application (:class:`~awx_connection.Intent`),
        from its row of the transition table: derived, not stored, so events
        stored before intents existed have one too.
        """
        return INTENTS[self.trigger]


#: A subscriber callback: plain function or coroutine function.
EventCallback = Callable[[ConnectionEvent], Awaitable[None] | None]


def _check_maxsize(maxsize: int) -> None:
    if maxsize < 1:
        msg = f"maxsize must be at least 1, got {maxsize}"
        raise ValueError(msg)


def _wanted(
    name: str, kind: type[enum.Enum], given: Collection[Any] | None
) -> frozenset[Any] | None:
    """*given* as a set of *kind* members; ``None`` (everything) stays ``None``."""
    if given is None:
        return None
    if isinstance(given, str | enum.Enum) or not isinstance(given, Iterable):
        # intents=Intent.CONNECTED (no list) would otherwise fail later, or
        # iterate a string's letters.
        msg = f"{name} must be a collection of {kind.__name__} members, got {given!r}"
        raise InvalidArgumentError(msg)
    wanted = frozenset(given)
    strays = [item for item in wanted if not isinstance(item, kind)]
    if strays:
        msg = f"{name} must hold {kind.__name__} members only, got {strays[0]!r}"
        raise InvalidArgumentError(msg)
    return wanted


def event_filter(
    *,
    triggers: Collection[Trigger] | None = None,
    states: Collection[ConnectionState] | None = None,
    intents: Collection[Intent] | None = None,
) -> Callable[[ConnectionEvent], bool]:
    """
    A predicate true for the events matching every filter given (``None``:
    any); what subscriptions and durable consumers filter with.

    Raises:
        InvalidArgumentError: A filter is not a collection of its enum's
            members (a bare member or a string, say).
    """
    wanted_triggers = _wanted("triggers", Trigger, triggers)
    wanted_states = _wanted("states", ConnectionState, states)
    wanted_intents = _wanted("intents", Intent, intents)

    def matches(event: ConnectionEvent) -> bool:
        if wanted_triggers is not None and event.trigger not in wanted_triggers:
            return False
        if wanted_intents is not None and INTENTS[event.trigger] not in wanted_intents:
            return False
        return wanted_states is None or event.dest in wanted_states

    return matches


@final
@attrs.define(eq=False)
class Subscription:
    """
    A live subscription, returned by :meth:`EventBus.subscribe` and
    :meth:`EventBus.stream`.

    Use it as a context manager, or call :meth:`unsubscribe`. A stream
    subscription is also an async iterator of events.
    """

    _bus: EventBus
    _matches: Callable[[ConnectionEvent], bool]
    _callback: EventCallback | None
    _queue: asyncio.Queue[ConnectionEvent | None] | None = None
    _worker: asyncio.Task[None] | None = None
    _overflowed: bool = False
    _closed: bool = False

    @property
    def active(self) -> bool:
        """Whether the subscription still receives events."""
        return not self._closed

    def unsubscribe(self) -> None:
        """Stop receiving events. Idempotent; queued events are still delivered."""
        if self._closed:
            return
        self._closed = True
        self._bus._remove(self)
        if self._queue is not None:
            self._queue.put_nowait(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unsubscribe()

    def __aiter__(self) -> AsyncIterator[ConnectionEvent]:
        if self._callback is not None:
            msg = "a callback subscription is not iterable; use EventBus.stream()"
            raise TypeError(msg)
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ConnectionEvent]:
        assert self._queue is not None
        while True:
            # Closed and drained: an earlier iteration consumed the sentinel.
            drained = self._closed and self._queue.empty()
            event = None if drained else await self._queue.get()
            if event is None:
                if self._overflowed:
                    msg = "subscriber fell behind; events were dropped and the stream closed"
                    raise SubscriptionOverflowError(msg)
                return
            yield event

    def _offer(self, event: ConnectionEvent) -> None:
        # publish() iterates a snapshot: an earlier subscriber may have
        # unsubscribed this one during the same publish.
        if self._closed or not self._matches(event):
            return
        if self._queue is None:
            assert self._callback is not None
            self._bus._call_sync(self._callback, event)
            return
        if self._queue.qsize() >= (self._queue.maxsize or 1 << 62) - 1:
            # Keep one slot for the closing sentinel so the consumer learns why.
            self._overflowed = True
            self.unsubscribe()
            return
        self._queue.put_nowait(event)
        if self._callback is not None and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run_async_callback(), name="awx-connection-subscriber"
            )
            # The bus keeps every worker until it is done, so aclose() also
            # drains subscriptions that were unsubscribed before it.
            workers = self._bus._workers
            workers[self._worker] = self
            self._worker.add_done_callback(lambda task: workers.pop(task, None))

    def _pending(self) -> int:
        """Events queued and not yet handled (the closing sentinel not counted)."""
        assert self._queue is not None
        queued: list[ConnectionEvent | None] = list(self._queue._queue)  # type: ignore[attr-defined]  # asyncio.Queue's deque
        return len(queued) - queued.count(None)

    async def _run_async_callback(self) -> None:
        assert self._queue is not None
        assert self._callback is not None
        while True:
            event = await self._queue.get()
            if event is None:
                if self._overflowed:
                    _log.error(
                        "event subscriber %r fell more than %d events behind; "
                        "its subscription was closed and later events were dropped",
                        self._callback,
                        self._queue.maxsize - 1,
                    )
                return
            try:
                result = self._callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception(
                    "event subscriber %r raised; other subscribers are unaffected",
                    self._callback,
                    extra={"connection_id": event.connection_id, "trigger": event.trigger.value},
                )


@final
@attrs.define(eq=False)
class EventBus:
    """
    Fan-out of :class:`ConnectionEvent` to in-process subscribers.

    The manager owns one; reach it through
    :meth:`~awx_connection.ConnectionManager.subscribe` and
    :meth:`~awx_connection.ConnectionManager.events`.
    """

    _subscriptions: list[Subscription] = attrs.Factory(list)
    #: Async-callback workers not yet finished (unsubscribed ones included),
    #: each with its subscription.
    _workers: dict[asyncio.Task[None], Subscription] = attrs.field(factory=dict, init=False)
    #: Events published so far (a cheap statistic).
    published: int = 0

    def subscribe(
        self,
        callback: EventCallback,
        *,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
        intents: Collection[Intent] | None = None,
        maxsize: int = 10_000,
    ) -> Subscription:
        """
        Call *callback* for each matching event.

        Args:
            callback: A function or coroutine function taking the event.
            triggers: Only events of these triggers (default: all).
            states: Only events that enter these states (default: all).
            intents: Only events of these intents (default: all).
            maxsize: Queue bound for an async callback (at least 1).

        Raises:
            ValueError: *maxsize* is below 1.
            InvalidArgumentError: A filter is not a collection of its enum's members.
        """
        _check_maxsize(maxsize)
        matches = event_filter(triggers=triggers, states=states, intents=intents)
        is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - async callable objects
        )
        sub = Subscription(
            self,
            matches,
            callback,
            asyncio.Queue(maxsize=maxsize + 1) if is_async else None,
        )
        self._subscriptions.append(sub)
        return sub

    def stream(
        self,
        *,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
        intents: Collection[Intent] | None = None,
        maxsize: int = 10_000,
    ) -> Subscription:
        """
        Subscribe for ``async for event in subscription``; filters as :meth:`subscribe`.

        Raises:
            ValueError: *maxsize* is below 1.
            InvalidArgumentError: A filter is not a collection of its enum's members.
        """
        _check_maxsize(maxsize)
        matches = event_filter(triggers=triggers, states=states, intents=intents)
        sub = Subscription(self, matches, None, asyncio.Queue(maxsize=maxsize + 1))
        self._subscriptions.append(sub)
        return sub

    def publish(self, event: ConnectionEvent) -> None:
        """Hand *event* to every subscriber; never raises because of a subscriber."""
        self.published += 1
        for sub in tuple(self._subscriptions):
            sub._offer(event)

    async def aclose(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """
        Close every subscription and let async callbacks drain their queues,
        for at most *timeout* seconds (real time; ``None``: no bound).

        A callback still running after that (one that never returns, say)
        is cancelled and logged as an error with the number of events it
        had not handled: one stuck subscriber must not hang the shutdown of
        the whole manager.
        """
        for sub in tuple(self._subscriptions):
            sub.unsubscribe()
        if not self._workers:
            return
        workers = dict(self._workers)
        _, late = await asyncio.wait(workers, timeout=timeout)
        for worker in late:
            sub = workers[worker]
            _log.error(
                "event subscriber %r did not finish within %s s of close; cancelled "
                "with %d more event(s) unhandled",
                sub._callback,
                timeout,
                sub._pending(),
            )
            worker.cancel()
        if late:
            await asyncio.wait(late)

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)

    @staticmethod
    def _call_sync(callback: EventCallback, event: ConnectionEvent) -> None:
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: no RuntimeWarning
                _log.error(
                    "event subscriber %r is a plain function that returned an awaitable; "
                    "it was not awaited: subscribe an async def instead",
                    callback,
                    extra={"connection_id": event.connection_id, "trigger": event.trigger.value},
                )
        except Exception:
            _log.exception(
                "event subscriber %r raised; other subscribers are unaffected",
                callback,
                extra={"connection_id": event.connection_id, "trigger": event.trigger.value},
            )
