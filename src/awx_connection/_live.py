"""
The connections this process holds, and their one refresh at a time.

Three things, each small:

* :class:`Live`, one connection's holder: the latest record, the lock that
  serializes its transitions, its refresh flight, its lease, and two fields
  precomputed for the ``access_token()`` hot path (a fresh cached token is
  handed out with one dict lookup and one comparison, no lock);
* :class:`LiveCache`, the holders by id: read a connection from the store
  on first use, adopt newer records, hold a whole store a page at a time;
* :class:`Flights`, the single-flight: one rotation in flight per
  connection, which every concurrent caller joins (a thousand callers at
  expiry make one POST), each caller getting its own copy of a failure; a
  rotation left unfinished is settled without waiting for a caller; and a
  closing manager lets a flight that may have reached Airwallex finish
  while it abandons the others.

The flight's body, the rotation itself, is the driver's
(:class:`~awx_connection._rotator.Rotator`), handed in as a callable, so
this module knows nothing of the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any, final

import attrs

from ._core import Core
from ._errors import (
    AwxConnectionError,
    ConnectionNotFoundError,
    InvalidClientError,
    ManagerClosedError,
    ProviderError,
    fresh,
)
from ._paging import each_page
from ._records import ConnectionRecord
from ._states import ROTATING, SERVING, ConnectionState
from ._tokens import TokenSet

__all__ = ["Flights", "Live", "LiveCache"]

_log = logging.getLogger("awx_connection")

#: The body of a flight: rotate *live* (tokens of *stale_generation* or older not good enough).
FlightBody = Callable[["Live", "int | None"], Coroutine[Any, Any, TokenSet]]


@final
@attrs.define(eq=False)
class Live:
    """
    One connection held by this process.

    A process may hold 100,000 of these for its whole life, most of them
    only ever read (``access_token()`` from memory), so two things are kept
    cheap: ``record`` is a property rather than an attrs ``on_setattr``
    hook, which would route every attribute write through a Python-level
    ``__setattr__`` (the hook made ``Live()`` cost 4 µs); and the
    ``asyncio.Lock`` is made on first use, not with the holder (about 100 B
    less for a connection that is never written).
    """

    _record: ConnectionRecord = attrs.field(alias="record")
    _lock: asyncio.Lock | None = attrs.field(default=None, init=False)
    refresh_task: asyncio.Task[TokenSet] | None = None
    #: Until when ``token`` may be handed out without refreshing.
    fresh_until: float = float("-inf")
    #: The revealed access token while serving, else ``None``. Never in a repr.
    token: str | None = attrs.field(default=None, repr=False)
    #: The refresh skew of its access tokens (``TimingPolicy.skew``).
    skew: Callable[[float], float] | None = attrs.field(default=None, repr=False)
    #: The last refresh failure, handed to callers (a copy each) until
    #: ``failed_until`` (injected clock) instead of a new request.
    failure: BaseException | None = None
    failed_until: float = float("-inf")
    #: Whether this process holds the connection's refresh lease (the
    #: rotation's last write gives it up; otherwise ``release_lease`` does).
    leased: bool = False
    #: Until when (injected clock) a refresh POST may be sent without
    #: renewing the lease first (``_rotation.lease_sure_until``).
    lease_sure_until: float = float("-inf")
    #: The version of the unfinished rotation (journal) last seen, and since
    #: when (``time.monotonic()``; minus infinity when this process wrote it):
    #: another process's journal is resumed only once it has been seen
    #: unchanged for ``TimingPolicy.resume_wait``.
    journal_version: int = -1
    journal_seen_at: float = float("-inf")

    def __attrs_post_init__(self) -> None:
        self._derive(self._record)

    @property
    def record(self) -> ConnectionRecord:
        """The latest record this process knows; setting it re-derives ``token``."""
        return self._record

    @record.setter
    def record(self, record: ConnectionRecord) -> None:
        self._record = record
        self._derive(record)

    @property
    def lock(self) -> asyncio.Lock:
        """
        The lock that serializes the connection's transitions, made on first use.

        Safe without a lock of its own: nothing awaits between the check and
        the assignment, so two coroutines cannot each make one. An
        ``asyncio.Lock`` binds to the running loop only when first contended.
        """
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock()
        return lock

    def written(self, record: ConnectionRecord, *, released: bool = False) -> None:
        """
        Adopt a record this process just wrote: its journal, if any, is ours;
        with *released*, the write also ended this process's lease.
        """
        self.record = record
        self.journal_seen_at = float("-inf")
        if released:
            self.lost_lease()

    def holds_lease(self, sure_until: float) -> None:
        """The store granted (or renewed) this process's lease."""
        self.leased = True
        self.lease_sure_until = sure_until

    def lost_lease(self) -> None:
        """The lease is not (or no longer) this process's."""
        self.leased = False
        self.lease_sure_until = float("-inf")

    def succeeded(self) -> None:
        """A refresh succeeded, or the connection moved on: no failure to hand out."""
        self.failure = None
        self.failed_until = float("-inf")

    def failed(self, error: ProviderError, until: float) -> None:
        """A refresh failed for good: answer callers with *error* until *until*."""
        self.failure = error
        self.failed_until = until

    @property
    def unfinished(self) -> bool:
        """Whether a rotation waits with a token that may have been sent (resumable in grace)."""
        record = self._record
        journal = record.journal
        return record.state in ROTATING and journal is not None and journal.unsafe_since is not None

    def _derive(self, record: ConnectionRecord) -> None:
        if record.journal is not None and record.version != self.journal_version:
            self.journal_version = record.version
            self.journal_seen_at = time.monotonic()
        tokens = record.tokens
        # The token first, then its bound: BlockingManager reads the bound,
        # then the token, from other threads, so that it never pairs a new
        # bound with the old token (see _blocking.BlockingManager.access_token).
        if record.state in SERVING and tokens is not None and self.skew is not None:
            self.token = tokens.access_token.reveal()
            self.fresh_until = tokens.access_expires_at - self.skew(tokens.access_lifetime)
        else:
            self.token = None
            self.fresh_until = float("-inf")


@final
@attrs.define(eq=False)
class LiveCache:
    """The connections this process holds, by id (``holders``, read by the hot path)."""

    core: Core
    holders: dict[str, Live] = attrs.field(factory=dict)
    #: One bound method for every holder: a new one per holder costs 64 B each.
    _skew: Callable[[float], float] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._skew = self.core.config.timing.skew

    def adopt(self, record: ConnectionRecord) -> Live:
        """The holder for *record*, made from the store's copy if new; a newer record replaces."""
        live = self.holders.get(record.id)
        if live is None:
            live = Live(record, skew=self._skew)
            self.holders[record.id] = live
        elif record.version > live.record.version:
            live.record = record
        return live

    async def get(self, connection_id: str) -> Live:
        """
        The holder of *connection_id*, read from the store on first use.

        Raises:
            ConnectionNotFoundError: No such connection.
            ManagerClosedError: The manager is closing.
        """
        live = self.holders.get(connection_id)
        if live is not None:
            return live
        self.core.check_open()
        record = await self.core.store.get(connection_id)
        if record is None:
            raise ConnectionNotFoundError(connection_id)
        return self.adopt(record)

    async def reload(self, live: Live) -> None:
        """Adopt the stored record if another writer made it newer than ours."""
        stored = await self.core.store.get(live.record.id)
        if stored is not None and stored.version > live.record.version:
            live.record = stored

    async def load(self, states: Collection[ConnectionState] | None, page_size: int) -> int:
        """Hold every stored connection of *states*, a page at a time; how many are held."""

        def adopt(page: list[ConnectionRecord]) -> None:
            for record in page:
                self.adopt(record)

        await each_page(self.core.store.list_connections, states, page_size, adopt)
        return len(self.holders)


@final
@attrs.define(eq=False)
class Flights:
    """One refresh flight per connection, joined by every caller (see the module docstring)."""

    core: Core
    #: The flight's body: the rotation driver.
    body: FlightBody
    #: Settle a rotation left unfinished by a failed flight, after ``settle_delay``.
    settle: bool = True
    #: The flights in progress.
    tasks: set[asyncio.Task[TokenSet]] = attrs.field(factory=set, repr=False)

    async def fresh_tokens(self, live: Live, *, stale_generation: int | None) -> TokenSet:
        """
        Join the connection's flight, or start one.

        With *stale_generation*, tokens of that generation or older are not
        good enough (a 401 proved them dead): a joined flight that returns
        them is followed by one of our own.

        Raises:
            ManagerClosedError: The manager closed before the flight sent anything.
        """
        while True:
            task = live.refresh_task
            joined = task is not None
            if task is None:
                if live.failure is not None and self.core.clock.now() < live.failed_until:
                    # The provider just failed this refresh for good: answer
                    # with the same error rather than asking again (a copy:
                    # each caller gets its own traceback).
                    raise fresh(live.failure)
                self.core.check_open()
                task = self.start(live, stale_generation, "refresh")
            # shield: a caller that gives up (timeout, cancel) must not abort
            # the refresh that every other caller is waiting for.
            try:
                tokens = await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if (
                    task.cancelled()
                    and self.core.closing
                    and not (current and current.cancelling())
                ):
                    # aclose() abandoned the flight before it sent anything.
                    raise ManagerClosedError from None
                raise
            except AwxConnectionError as exc:
                # Every joined caller would otherwise raise the one object.
                error = fresh(exc)
            else:
                if not joined or stale_generation is None or tokens.generation > stale_generation:
                    return tokens
                continue
            raise error

    def start(self, live: Live, stale_generation: int | None, kind: str) -> asyncio.Task[TokenSet]:
        """The connection's one flight, which every caller joins."""
        task = asyncio.get_running_loop().create_task(
            self.body(live, stale_generation), name=f"awx-connection-{kind}-{live.record.id}"
        )
        live.refresh_task = task
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._done(live, t))
        return task

    def _done(self, live: Live, task: asyncio.Task[TokenSet]) -> None:
        self.tasks.discard(task)
        self.core.sending.discard(task)
        if live.refresh_task is task:
            live.refresh_task = None
        if task.cancelled():
            return
        error = task.exception()  # also marks it retrieved for callers that gave up
        if error is None:
            live.succeeded()
            return
        timing = self.core.config.timing
        if isinstance(error, ProviderError):
            cooldown = (
                timing.invalid_client_cooldown
                if isinstance(error, InvalidClientError)
                else timing.failure_cooldown
            )
            live.failed(error, self.core.clock.now() + cooldown)
        if (
            self.settle
            and not self.core.closing
            and not isinstance(error, InvalidClientError)
            and live.unfinished
        ):
            # Whatever ended the flight (the provider, the store, a lost
            # lease), a token that may have been sent is resumable only
            # inside the grace window: settle it without waiting for a caller.
            asyncio.get_running_loop().call_later(timing.settle_delay, self._settle, live)

    def _settle(self, live: Live) -> None:
        """
        Settle a rotation left unfinished with its token maybe sent: it is
        resumable only until the grace window closes, and a caller may hold
        a fresh access token for minutes. One more flight, which callers
        join; if that fails the same way, the next is scheduled; past the
        deadline the attempt ends it ``invalidated`` without sending.
        """
        if self.core.closing or live.refresh_task is not None or not live.unfinished:
            return
        self.start(live, None, "settle")

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound on a whole shutdown step
        """
        Closing: let flights that may have sent a token finish (at most
        *timeout* seconds), cancel the others at once.
        """
        flights = set(self.tasks)
        if not flights:
            return
        for task in flights - self.core.sending:
            task.cancel()
        _, late = await asyncio.wait(flights, timeout=timeout)
        for task in late:
            _log.warning(
                "%s did not finish within close_timeout; its journal is left for the "
                "next process to resume",
                task.get_name(),
            )
            task.cancel()
        if late:
            await asyncio.wait(late)
