"""
The relay: the outbox, read durably and handed to an :class:`EventSink`.

**Partitions.** The outbox is cut into :data:`PARTITIONS` partitions by a
stable hash of the connection id, so each connection's events all fall in
one partition. Each partition has its own durable position (an outbox
consumer offset named ``relay:<name>:<k>``) and a lease
(:class:`~awx_connection.RelayLedger`): one relay process at a time
delivers a partition, in position order, so a connection's events go out
in order and none goes out twice from two relays at once. Several relays
of one name share the partitions: each counts the live relays (a
``member/<owner>`` lease each renews) and holds its fair share,
``ceil(PARTITIONS / relays)``, giving back extras between batches (after
committing them) and taking free or expired ones.

**Nothing lost.** A batch is read, delivered, and only then is each
partition's position committed. A relay killed mid-batch has committed
nothing of that batch: the relay that takes the partition over (after the
lease term) re-sends it from the last committed position. Re-sent events
carry the same id (their position), which JetStream's duplicate window
drops and a webhook receiver can dedupe on: at-least-once delivery,
exactly-once at a broker that deduplicates.

**Leases are renewed while a batch is out.** A heartbeat renews every
lease each third of the term, so a slow batch (a webhook endpoint being
retried) does not lose its partitions to another relay. A relay paused
for longer than the term (a stopped VM) can lose a partition while it
still has a batch out: the new holder may then send a few of the same
events again, never fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import zlib
from collections.abc import Iterable, Sequence
from typing import Protocol, final

import attrs

from .._clock import Clock, SystemClock
from .._delivery import DeadLetter, EventSink, OutboxItem
from .._errors import SinkError
from .._retry import Backoff, Retries
from .._store import Outbox, RelayLedger

__all__ = ["PARTITIONS", "Relay", "RelayStore", "partition_of"]

_log = logging.getLogger("awx_connection.relay")

#: Partitions of the outbox per relay name: at most this many relay
#: processes of one name deliver at once (others stand by). Fixed, because
#: each partition's position is stored under its number: changing it would
#: re-send or skip events.
PARTITIONS = 16


def partition_of(connection_id: str) -> int:
    """The partition of *connection_id*'s events: stable across processes and versions."""
    return zlib.crc32(connection_id.encode()) % PARTITIONS


class RelayStore(Outbox, RelayLedger, Protocol):
    """**Protocol:** what a relay needs of a store: the outbox and the relay ledger."""

    __slots__ = ()


def _default_owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@final
@attrs.define(eq=False)
class RelayStatistics:
    """What a relay did since it started."""

    #: Events handed to the sink and accepted (re-sends included).
    delivered: int = 0
    #: Events the sink gave up on, stored as dead letters.
    dead_lettered: int = 0
    #: Batches the sink refused whole (SinkError) and that were tried again.
    retried_batches: int = 0


@final
@attrs.define(eq=False)
class Relay:
    """
    Deliver every connection's events from *store*'s outbox to *sink*.

    Use it as::

        async with Relay(store, sink) as relay:
            await relay.run()          # until cancelled

    or call :meth:`step` yourself. Leaving the block commits what was
    delivered and gives the leases back, so another relay takes over at
    once; a relay that dies instead is taken over after *lease_term*.
    """

    store: RelayStore
    sink: EventSink
    #: Relays of one name share positions, partitions and dead letters.
    name: str = "relay"
    clock: Clock = attrs.field(factory=SystemClock)
    #: Events read from the outbox per batch.
    batch: int = 500
    #: How long a lease lasts without renewal, in seconds of *clock*.
    lease_term: float = 10.0
    #: Longest real wait between checks for new events when idle.
    poll_interval: float = 0.5
    #: Pause before retrying a batch the sink refused whole (SinkError).
    backoff: Backoff = attrs.field(factory=lambda: Backoff(0.05, 5.0))
    #: This process's name in the leases (unique per running relay).
    owner: str = attrs.field(factory=_default_owner)
    statistics: RelayStatistics = attrs.field(factory=RelayStatistics, init=False)
    #: Partition -> position delivered up to (committed or not).
    _held: dict[int, int] = attrs.field(factory=dict, init=False)
    #: Partition -> position committed.
    _committed: dict[int, int] = attrs.field(factory=dict, init=False)
    #: Partitions whose renewal failed (another relay holds them now).
    _lost: set[int] = attrs.field(factory=set, init=False)
    _next_rebalance: float = attrs.field(default=-math.inf, init=False)
    _heartbeat: asyncio.Task[None] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.batch < 1:
            msg = f"batch must be at least 1, got {self.batch}"
            raise ValueError(msg)
        if not self.lease_term > 0:
            msg = f"lease_term must be positive, got {self.lease_term}"
            raise ValueError(msg)

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this relay holds now."""
        return frozenset(self._held)

    async def __aenter__(self) -> Relay:
        await self.sink.open()
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._beat(), name=f"awx-connection-relay-{self.name}"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit what was delivered, give every lease back, close the sink. Idempotent."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        try:
            await self._commit(self._held)
            for partition in list(self._held):
                await self.store.release_relay_lease(self.name, _lease(partition), self.owner)
            self._held.clear()
            await self.store.release_relay_lease(self.name, _member(self.owner), self.owner)
        finally:
            await self.sink.aclose()

    async def run(self) -> None:
        """Deliver until cancelled: :meth:`step`, waiting for new events when idle."""
        while True:
            if await self.step() == 0:
                await self._idle()

    async def step(self) -> int:
        """
        One batch: rebalance when due, read, deliver, dead-letter, commit.

        Returns:
            How many outbox rows were read (0: nothing new); those of
            partitions held elsewhere are read and skipped.
        """
        now = self.clock.now()
        self._drop_lost()
        if now >= self._next_rebalance:
            await self._rebalance(now)
        if not self._held:
            return 0
        start = min(self._held.values())
        rows = await self.store.read_outbox(after=start, limit=self.batch)
        if not rows:
            return 0
        last = rows[-1][0]
        held = self._held
        items = [
            OutboxItem(position, event)
            for position, event in rows
            if position > held.get(partition_of(event.connection_id), last)
        ]
        if items:
            await self._deliver(items)
        touched = {partition_of(item.event.connection_id) for item in items}
        for partition in held:
            held[partition] = max(held[partition], last)
        # Partitions that had events are committed now. The others' progress
        # is only a skip (nothing of theirs was in the batch): losing it costs
        # a restart some re-reading, never a re-send, so it is committed with
        # the next rebalance rather than on the way to the next event.
        await self._commit(touched & held.keys())
        return len(rows)

    async def _deliver(self, items: Sequence[OutboxItem]) -> None:
        """Hand *items* to the sink until it takes them; store what it gave up on."""
        async for attempt in Retries(self.backoff):
            try:
                failed = await self.sink.deliver(items)
            except SinkError as exc:
                self.statistics.retried_batches += 1
                _log.warning(
                    "relay %r: %s refused a batch of %d (%s); trying again (attempt %d)",
                    self.name,
                    self.sink.name,
                    len(items),
                    exc,
                    attempt.number,
                )
                continue
            break
        at = self.clock.now()
        for refused in failed:
            item, why = refused.item, refused.error
            letter = DeadLetter(self.name, item.position, item.event, refused.attempts, why, at)
            await self.store.put_dead_letter(letter)
            _log.error(
                "relay %r: %s gave up on event %s (connection %s #%d): %s; kept as a dead letter",
                self.name,
                self.sink.name,
                item.id,
                item.event.connection_id,
                item.event.sequence,
                why,
            )
        self.statistics.dead_lettered += len(failed)
        self.statistics.delivered += len(items) - len(failed)

    async def _commit(self, partitions: Iterable[int]) -> None:
        for partition in list(partitions):
            position = self._held.get(partition)
            if position is not None and position > self._committed.get(partition, 0):
                await self.store.commit_offset(_consumer(self.name, partition), position)
                self._committed[partition] = position

    async def _idle(self) -> None:
        """Nothing new: wait for an event (or the next rebalance)."""
        timeout = min(self.poll_interval, self.lease_term / 3)
        if not self._held:
            await asyncio.sleep(timeout)
            return
        # Waiting after the *least* advanced partition would return at once
        # for events of partitions held elsewhere; after the furthest one it
        # wakes for any event this relay has not seen.
        after = max(self._held.values())
        await self.store.wait_for_events(after=after, timeout=timeout)

    def _drop_lost(self) -> None:
        for partition in self._lost:
            if self._held.pop(partition, None) is not None:
                _log.warning("relay %r: lost partition %d to another relay", self.name, partition)
        self._lost.clear()

    async def _rebalance(self, now: float) -> None:
        """Renew, then hold the fair share of the partitions: give extras back, take free ones."""
        until = now + self.lease_term
        self._next_rebalance = now + self.lease_term / 3
        await self._commit(self._held)
        await self._renew(now)
        leases = await self.store.relay_leases(self.name, now=now)
        members = sum(1 for name, _ in leases if name.startswith("member/"))
        others = {
            int(name.removeprefix("partition/"))
            for name, owner in leases
            if name.startswith("partition/") and owner != self.owner
        }
        share = math.ceil(PARTITIONS / max(members, 1))
        for partition in sorted(self._held, reverse=True)[: max(len(self._held) - share, 0)]:
            await self._commit((partition,))
            await self.store.release_relay_lease(self.name, _lease(partition), self.owner)
            del self._held[partition]
        for partition in range(PARTITIONS):
            if len(self._held) >= share:
                break
            if partition in self._held or partition in others:
                continue
            if await self.store.acquire_relay_lease(
                self.name, _lease(partition), self.owner, until=until, now=now
            ):
                position = await self.store.get_offset(_consumer(self.name, partition))
                self._held[partition] = self._committed[partition] = position

    async def _renew(self, now: float) -> None:
        until = now + self.lease_term
        await self.store.acquire_relay_lease(
            self.name, _member(self.owner), self.owner, until=until, now=now
        )
        for partition in list(self._held):
            if not await self.store.acquire_relay_lease(
                self.name, _lease(partition), self.owner, until=until, now=now
            ):
                self._lost.add(partition)

    async def _beat(self) -> None:
        """Renew the leases each third of the term, also while a batch is out."""
        while True:
            await asyncio.sleep(self.lease_term / 3)
            try:
                await self._renew(self.clock.now())
            except Exception:
                _log.exception("relay %r: renewing its leases failed", self.name)


def _lease(partition: int) -> str:
    return f"partition/{partition}"


def _member(owner: str) -> str:
    return f"member/{owner}"


def _consumer(name: str, partition: int) -> str:
    return f"relay:{name}:{partition}"
