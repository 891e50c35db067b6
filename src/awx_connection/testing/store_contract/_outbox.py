"""
The cases of :class:`~awx_connection.Outbox` and of pruning: positions in
write order, never reused; nothing in the outbox that was not written;
consumer offsets that never move back; waiting for the next event.
"""

from __future__ import annotations

import asyncio

import attrs
import pytest

from ..._errors import StoreError, VersionConflictError
from ..._events import ConnectionEvent
from ..._store import Store
from ._data import insert_record, make_event, make_record, update_record

__all__ = ["OutboxCases"]


class OutboxCases:
    """The outbox, consumer offsets and pruning."""

    async def test_outbox_positions_increase_in_write_order_across_connections(
        self, store: Store
    ) -> None:
        """Every event gets a larger position than the one before, whatever its connection."""
        c1 = await insert_record(store, "c1")
        c2 = await insert_record(store, "c2")
        c1 = await update_record(store, c1)
        await update_record(store, c2)
        await update_record(store, c1)
        outbox = await store.read_outbox()
        assert [("c1", 1), ("c2", 1), ("c1", 2), ("c2", 2), ("c1", 3)] == [
            (event.connection_id, event.sequence) for _, event in outbox
        ]
        positions = [position for position, _ in outbox]
        assert sorted(set(positions)) == positions
        assert make_event("c2", 2) == outbox[3][1]

    async def test_outbox_keeps_each_connections_events_in_sequence_order(
        self, store: Store
    ) -> None:
        """Read through the outbox, one connection's events come in sequence order."""
        c1 = await insert_record(store, "c1")
        c2 = await insert_record(store, "c2")
        for _ in range(3):
            c2 = await update_record(store, c2)
            c1 = await update_record(store, c1)
        outbox = await store.read_outbox()
        for connection_id in ("c1", "c2"):
            assert [1, 2, 3, 4] == [
                e.sequence for _, e in outbox if e.connection_id == connection_id
            ]

    async def test_read_outbox_after_and_limit(self, store: Store) -> None:
        """``after`` skips up to a position, ``limit`` caps the batch; together they page."""
        record = await insert_record(store)
        for _ in range(4):
            record = await update_record(store, record)
        everything = await store.read_outbox()
        positions = [position for position, _ in everything]
        assert 5 == len(everything)
        assert everything[2:] == await store.read_outbox(after=positions[1])
        assert everything[:2] == await store.read_outbox(limit=2)
        assert everything[1:3] == await store.read_outbox(after=positions[0], limit=2)
        assert [] == await store.read_outbox(after=positions[-1])
        pages: list[tuple[int, ConnectionEvent]] = []
        while batch := await store.read_outbox(after=pages[-1][0] if pages else 0, limit=2):
            pages.extend(batch)
        assert everything == pages

    async def test_update_without_event_adds_nothing_to_the_outbox(self, store: Store) -> None:
        """Only events go to the outbox; a record-only write leaves it as it was."""
        record = await insert_record(store)
        before = await store.read_outbox()
        await update_record(store, record, event=False)
        assert before == await store.read_outbox()
        assert 1 == len(before)

    async def test_failed_writes_add_nothing_to_the_outbox(self, store: Store) -> None:
        """A lost compare-and-swap or a duplicate insert leaves no event behind."""
        record = await insert_record(store)
        with pytest.raises(VersionConflictError):
            await store.update(
                attrs.evolve(record, version=8), expected_version=7, event=make_event(sequence=2)
            )
        with pytest.raises(StoreError):
            await store.insert(make_record(authorization=None), make_event())
        assert [make_event()] == [event for _, event in await store.read_outbox()]

    async def test_offset_defaults_to_zero_and_reads_back_what_was_committed(
        self, store: Store
    ) -> None:
        """A new consumer starts at 0; a commit is read back."""
        assert 0 == await store.get_offset("billing")
        await store.commit_offset("billing", 3)
        assert 3 == await store.get_offset("billing")
        await store.commit_offset("billing", 5)
        assert 5 == await store.get_offset("billing")

    async def test_offset_never_moves_back(self, store: Store) -> None:
        """Committing an older position (a stale checkpoint) keeps the newer one."""
        await store.commit_offset("billing", 7)
        await store.commit_offset("billing", 2)
        await store.commit_offset("billing", 7)
        assert 7 == await store.get_offset("billing")

    async def test_consumers_keep_independent_offsets(self, store: Store) -> None:
        """One consumer's commits do not move another's."""
        await store.commit_offset("billing", 4)
        await store.commit_offset("audit", 1)
        assert (4, 1, 0) == (
            await store.get_offset("billing"),
            await store.get_offset("audit"),
            await store.get_offset("newcomer"),
        )

    async def test_wait_for_events_is_true_when_an_event_is_written_meanwhile(
        self, store: Store
    ) -> None:
        """A waiter for positions past the last one wakes when a new event commits."""
        record = await insert_record(store)
        [(last, _)] = await store.read_outbox()
        waiting = asyncio.create_task(store.wait_for_events(after=last, timeout=5.0))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        await update_record(store, record)
        assert await asyncio.wait_for(waiting, 2.0)

    async def test_wait_for_events_answers_at_once_or_times_out(self, store: Store) -> None:
        """True at once when events exist past ``after``; False after the timeout otherwise."""
        assert not await store.wait_for_events(after=0, timeout=0.01)
        record = await insert_record(store)
        assert await store.wait_for_events(after=0, timeout=0.0)
        [(last, _)] = await store.read_outbox()
        waiting = asyncio.create_task(store.wait_for_events(after=last, timeout=0.1))
        await asyncio.sleep(0.01)
        await update_record(store, record, event=False)
        assert not await waiting

    async def test_prune_events_removes_only_older_events(self, store: Store) -> None:
        """Events with ``at < before`` leave read_events and read_outbox; the count is returned."""
        c1 = await insert_record(store, "c1")
        c1 = await update_record(store, c1)
        await update_record(store, c1)
        await insert_record(store, "c2")
        kept = [item for item in await store.read_outbox() if item[1].at >= 1002.0]
        assert 2 == await store.prune_events(before=1002.0)
        assert [2, 3] == [event.sequence for event in await store.read_events("c1")]
        assert [] == await store.read_events("c2")
        assert kept == await store.read_outbox()
        assert 0 == await store.prune_events(before=1002.0)

    async def test_pruned_positions_are_never_reused(self, store: Store) -> None:
        """After everything is pruned, the next event still gets a larger position."""
        record = await insert_record(store)
        await update_record(store, record)
        last = (await store.read_outbox())[-1][0]
        assert 2 == await store.prune_events(before=1e12)
        assert [] == await store.read_outbox()
        await insert_record(store, "c2")
        [(position, event)] = await store.read_outbox()
        assert position > last
        assert make_event("c2") == event
