"""
The relay's bookkeeping, without I/O: a MemoryStore and a sink that records
what it is given (or refuses, or fails). Partitions, leases on a manual
clock, positions, dead letters and retries of a sink that is down.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest

from awx_connection import SinkError
from awx_connection._retry import Backoff
from awx_connection.relay import PARTITIONS, OutboxItem, Refused, Relay, partition_of
from awx_connection.stores import MemoryStore
from awx_connection.testing import ManualClock
from awx_connection.testing.store_contract import insert_record, update_record


class Killed(BaseException):
    """The process dies in the middle of a batch (nothing after it runs)."""


@attrs.define
class RecordingSink:
    """Takes everything (or refuses some connections, or is down for a few calls)."""

    delivered: list[OutboxItem] = attrs.Factory(list)
    refuse: set[str] = attrs.Factory(set)
    down_for: int = 0
    #: Deliver call after which the "process dies" (Killed), delivery done.
    die_on_call: int | None = None
    calls: int = 0
    opened: bool = False
    closed: bool = False

    @property
    def name(self) -> str:
        return "recording"

    async def open(self) -> None:
        self.opened = True

    async def deliver(self, items: Sequence[OutboxItem]) -> Sequence[Refused]:
        self.calls += 1
        if self.down_for > 0:
            self.down_for -= 1
            raise SinkError("down")
        refused = [Refused(i, "no", 2) for i in items if i.event.connection_id in self.refuse]
        self.delivered.extend(i for i in items if i.event.connection_id not in self.refuse)
        if self.calls == self.die_on_call:
            raise Killed
        return refused

    async def aclose(self) -> None:
        self.closed = True


async def write(store: MemoryStore, connections: int, per_connection: int) -> None:
    records = [await insert_record(store, f"c{n}") for n in range(connections)]
    for _ in range(per_connection - 1):
        for n, record in enumerate(records):
            records[n] = await update_record(store, record)


def relay(store: MemoryStore, sink: RecordingSink, clock: ManualClock, owner: str) -> Relay:
    return Relay(store, sink, clock=clock, owner=owner, batch=7, backoff=Backoff(0.0001, 0.001))


async def drain(*relays: Relay) -> None:
    while any([await r.step() for r in relays]):
        pass


async def test_one_relay_takes_every_partition_and_delivers_in_order() -> None:
    store, clock, sink = MemoryStore(), ManualClock(), RecordingSink()
    await write(store, connections=9, per_connection=4)
    async with relay(store, sink, clock, "a") as one:
        await drain(one)
        assert frozenset(range(PARTITIONS)) == one.partitions
    assert sink.opened and sink.closed
    assert [p for p, _ in await store.read_outbox()] == [i.position for i in sink.delivered]


async def test_closing_commits_and_gives_the_partitions_back() -> None:
    """After a clean close, another owner takes over at once and re-sends nothing."""
    store, clock, sink = MemoryStore(), ManualClock(), RecordingSink()
    await write(store, connections=5, per_connection=3)
    async with relay(store, sink, clock, "a") as one:
        await drain(one)
    assert [] == await store.relay_leases("relay", now=clock.now())
    again = RecordingSink()
    async with relay(store, again, clock, "b") as two:
        await drain(two)
        assert PARTITIONS == len(two.partitions)
    assert [] == again.delivered


async def test_a_dead_relays_partitions_wait_out_their_lease() -> None:
    """Killed (never closed): nobody takes its partitions before the term ends; then all."""
    store, clock = MemoryStore(), ManualClock()
    await write(store, connections=6, per_connection=3)
    dead_sink = RecordingSink()
    dead = relay(store, dead_sink, clock, "dead")
    await dead.step()  # holds everything, delivered one batch, then "SIGKILL"
    heir_sink = RecordingSink()
    heir = relay(store, heir_sink, clock, "heir")
    await heir.step()
    assert frozenset() == heir.partitions
    clock.advance(dead.lease_term)
    heir._next_rebalance = 0.0
    await drain(heir)
    assert PARTITIONS == len(heir.partitions)
    # Between them everything arrived, the heir starting after what the dead one committed.
    positions = [p for p, _ in await store.read_outbox()]
    assert positions[:7] == [i.position for i in dead_sink.delivered]
    assert positions[7:] == sorted(i.position for i in heir_sink.delivered)


async def test_a_sink_that_is_down_is_retried_without_losing_or_dead_lettering() -> None:
    store, clock, sink = MemoryStore(), ManualClock(), RecordingSink(down_for=3)
    await write(store, connections=2, per_connection=2)
    async with relay(store, sink, clock, "a") as one:
        await drain(one)
        assert 3 == one.statistics.retried_batches
        assert 4 == one.statistics.delivered
    assert [] == await store.dead_letters("relay")


async def test_refused_items_become_dead_letters_and_the_relay_moves_on() -> None:
    store, clock, sink = MemoryStore(), ManualClock(), RecordingSink(refuse={"c1"})
    await write(store, connections=3, per_connection=2)
    async with relay(store, sink, clock, "a") as one:
        await drain(one)
    letters = await store.dead_letters("relay")
    assert [("c1", 1), ("c1", 2)] == [(d.event.connection_id, d.event.sequence) for d in letters]
    assert {2} == {d.attempts for d in letters}
    assert 4 == len(sink.delivered)


async def test_partition_positions_are_the_outbox_consumer_offsets() -> None:
    store, clock, sink = MemoryStore(), ManualClock(), RecordingSink()
    await write(store, connections=4, per_connection=2)
    async with relay(store, sink, clock, "a") as one:
        await drain(one)
    last = (await store.read_outbox())[-1][0]
    for partition in {partition_of(f"c{n}") for n in range(4)}:
        assert last == await store.get_offset(f"relay:relay:{partition}")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        Relay(MemoryStore(), RecordingSink(), batch=0)
    with pytest.raises(ValueError, match="lease_term"):
        Relay(MemoryStore(), RecordingSink(), lease_term=0)


async def test_a_relay_killed_mid_batch_loses_nothing() -> None:
    """Delivered but not committed when it died: the next holder sends that batch again."""
    store, clock = MemoryStore(), ManualClock()
    await write(store, connections=4, per_connection=3)
    dying_sink = RecordingSink(die_on_call=2)
    dying = relay(store, dying_sink, clock, "dying")
    await dying.step()  # one batch delivered and committed
    with pytest.raises(Killed):
        await dying.step()
    clock.advance(dying.lease_term)
    heir_sink = RecordingSink()
    async with relay(store, heir_sink, clock, "heir") as heir:
        await drain(heir)
    positions = [p for p, _ in await store.read_outbox()]
    assert positions[7:14] == [i.position for i in dying_sink.delivered[7:]]
    assert positions[7:] == sorted(i.position for i in heir_sink.delivered)  # re-sent, then on
