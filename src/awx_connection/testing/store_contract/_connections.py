"""
The cases of :class:`~awx_connection.ConnectionStore` and
:class:`~awx_connection.EventLog`: compare-and-swap, a record and its event
together, lookups by ``state`` hash, keyset listings, one connection's
history, waiting for a newer version; and the store's own lifecycle.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest

from ..._errors import StoreError, VersionConflictError
from ..._records import ConnectionSummary
from ..._store import Store
from ._data import (
    S,
    insert_page_fixture,
    insert_record,
    make_event,
    make_record,
    next_version,
    update_record,
    walk,
)

__all__ = ["ConnectionCases"]


class ConnectionCases:
    """Records: written by compare-and-swap, found, listed, waited for."""

    async def test_insert_then_get_returns_the_same_record(self, store: Store) -> None:
        """A stored record comes back equal in every field, secrets included."""
        record = await insert_record(store)
        loaded = await store.get("c1")
        assert loaded == record
        assert loaded is not None
        assert loaded.tokens is not None
        assert loaded.tokens.refresh_token.reveal() == "refresh-1"
        assert await store.get("missing") is None

    async def test_insert_of_an_existing_id_raises_store_error(self, store: Store) -> None:
        """Inserting an id twice fails and keeps the first record."""
        first = await insert_record(store)
        with pytest.raises(StoreError, match="c1"):
            await store.insert(make_record(reason="again", authorization=None), make_event())
        assert await store.get("c1") == first

    async def test_update_with_the_expected_version_replaces_the_record(self, store: Store) -> None:
        """A compare-and-swap at the stored version writes the new record and its event."""
        record = await insert_record(store)
        newer = next_version(record, state=S.AUTHORIZED, reason="code received")
        await store.update(newer, expected_version=1, event=make_event(sequence=2))
        assert await store.get("c1") == newer
        assert [e.sequence for e in await store.read_events("c1")] == [1, 2]

    async def test_update_without_event_writes_only_the_record(self, store: Store) -> None:
        """``event=None`` replaces the record and leaves the log alone."""
        record = await insert_record(store)
        newer = next_version(record, reason="journal bumped")
        await store.update(newer, expected_version=1, event=None)
        assert await store.get("c1") == newer
        assert len(await store.read_events("c1")) == 1

    async def test_stale_update_raises_conflict_and_writes_nothing(self, store: Store) -> None:
        """A writer holding an old version loses: no record and no event is written."""
        record = await insert_record(store)
        current = next_version(record, reason="winner")
        await store.update(current, expected_version=1, event=make_event(sequence=2))
        stale = next_version(record, reason="loser")
        with pytest.raises(VersionConflictError) as caught:
            await store.update(stale, expected_version=1, event=make_event(sequence=3))
        assert (caught.value.connection_id, caught.value.expected, caught.value.actual) == (
            "c1",
            1,
            2,
        )
        assert await store.get("c1") == current
        assert [e.sequence for e in await store.read_events("c1")] == [1, 2]

    async def test_update_of_a_missing_id_raises_conflict_with_no_actual(
        self, store: Store
    ) -> None:
        """Updating a connection that does not exist is a conflict against nothing."""
        with pytest.raises(VersionConflictError) as caught:
            await store.update(make_record(version=2), expected_version=1, event=make_event())
        assert caught.value.actual is None
        assert await store.get("c1") is None
        assert await store.read_events("c1") == []

    @pytest.mark.parametrize("version", [1, 3])
    async def test_update_must_move_exactly_one_version(self, store: Store, version: int) -> None:
        """A new record whose version is not expected + 1 is refused with ValueError."""
        record = await insert_record(store)
        with pytest.raises(ValueError, match="version"):
            await store.update(
                attrs.evolve(record, version=version, reason="bad"), expected_version=1, event=None
            )
        assert await store.get("c1") == record

    async def test_event_of_another_connection_is_refused(self, store: Store) -> None:
        """An event must belong to the record written with it."""
        with pytest.raises(ValueError, match="belongs"):
            await store.insert(make_record("c1"), make_event("c2"))
        assert await store.get("c1") is None

    async def test_record_and_event_are_written_together(self, store: Store) -> None:
        """When the event cannot be stored (sequence taken) the record is not written either."""
        record = await insert_record(store)
        newer = next_version(record, reason="would be lost")
        with pytest.raises(StoreError, match="c1"):
            await store.update(newer, expected_version=1, event=make_event(sequence=1))
        assert await store.get("c1") == record
        assert len(await store.read_events("c1")) == 1
        # The failed write left the store usable.
        await store.update(newer, expected_version=1, event=make_event(sequence=2))
        assert await store.get("c1") == newer

    async def test_find_by_state_hash_until_authorization_is_cleared(self, store: Store) -> None:
        """The pending authorization is found by its hash, and no longer once it is cleared."""
        record = await insert_record(store)
        await insert_record(store, "c2")
        assert await store.find_by_state_hash("hash-c1") == record
        assert await store.find_by_state_hash("hash-unknown") is None
        answered = next_version(record, state=S.AUTHORIZED, authorization=None)
        await store.update(answered, expected_version=1, event=make_event(sequence=2))
        assert await store.find_by_state_hash("hash-c1") is None
        assert (await store.find_by_state_hash("hash-c2") or record).id == "c2"

    async def test_a_used_state_hash_is_not_found(self, store: Store) -> None:
        """An authorization whose hash was set to None (state used once) is not indexed."""
        record = await insert_record(store)
        assert record.authorization is not None
        used = next_version(
            record, authorization=attrs.evolve(record.authorization, state_hash=None)
        )
        await store.update(used, expected_version=1, event=None)
        assert await store.find_by_state_hash("hash-c1") is None
        assert await store.get("c1") == used

    async def test_a_state_hash_belongs_to_one_connection(self, store: Store) -> None:
        """A second connection cannot take a ``state`` hash another one holds."""
        await insert_record(store, "c1")
        with pytest.raises(StoreError, match="c2"):
            await insert_record(store, "c2", authorization=make_record("c1").authorization)
        assert await store.get("c2") is None

    async def test_list_connections_filters_and_orders_oldest_first(self, store: Store) -> None:
        """Filters combine with AND; results are ordered by created_at, then id."""
        await insert_record(store, "b", created_at=3.0, account_id="acct-1")
        await insert_record(store, "a", created_at=3.0, account_id="acct-2")
        await insert_record(store, "z", created_at=1.0, account_id="acct-1", external_id="shared")
        c = await insert_record(
            store, "c", created_at=2.0, account_id="acct-1", external_id="shared"
        )
        await store.update(
            next_version(c, state=S.ACTIVE, authorization=None), expected_version=1, event=None
        )

        async def ids(**filters: Any) -> list[str]:
            return [record.id for record in await store.list_connections(**filters)]

        assert await ids() == ["z", "c", "a", "b"]
        assert await ids(states=[S.ACTIVE]) == ["c"]
        assert await ids(states={S.ACTIVE, S.PENDING}) == ["z", "c", "a", "b"]
        assert await ids(states=[]) == []
        assert await ids(external_id="shared") == ["z", "c"]
        assert await ids(account_id="acct-1") == ["z", "c", "b"]
        assert await ids(account_id="acct-1", states=[S.PENDING]) == ["z", "b"]
        assert await ids(account_id="acct-1", external_id="shared", states=[S.ACTIVE]) == ["c"]
        assert await ids(account_id="nobody") == []

    @pytest.mark.parametrize("limit", [1, 2, 3, 7, 8])
    async def test_list_connections_pages_by_created_at_then_id(
        self, store: Store, limit: int
    ) -> None:
        """Keyset pages (equal created_at split by id) add up to the whole listing, in order."""
        oldest_first = await insert_page_fixture(store)
        pages = await walk(store, limit)
        assert [
            oldest_first[i : i + limit] for i in range(0, len(oldest_first) + 1, limit)
        ] == pages
        assert oldest_first == [record.id for record in await store.list_connections()]

    async def test_list_connections_after_is_exclusive_and_works_without_limit(
        self, store: Store
    ) -> None:
        """*after* starts strictly after its key, inside a run of equal created_at too."""
        await insert_page_fixture(store)

        async def ids(**filters: Any) -> list[str]:
            return [record.id for record in await store.list_connections(**filters)]

        assert ["e", "f", "b"] == await ids(after=(2.0, "c"))
        assert ["e", "f"] == await ids(after=(2.0, "c"), limit=2)
        assert ["a", "c", "e", "f", "b"] == await ids(after=(1.0, "g"))
        assert ["a", "c", "e", "f", "b"] == await ids(after=(1.5, "zzz"))
        assert ["b"] == await ids(after=(2.0, "zzz"))
        assert [] == await ids(after=(3.0, "b"))
        assert ["d", "g"] == await ids(after=(0.0, ""), limit=2)

    async def test_list_connections_pages_combine_with_filters(self, store: Store) -> None:
        """Paging applies to the filtered listing: full pages of matching records only."""
        oldest_first = await insert_page_fixture(store)
        for connection_id in ("g", "c", "f", "b"):
            record = await store.get(connection_id)
            assert record is not None
            await update_record(store, record, state=S.ACTIVE, authorization=None)
        assert [["g", "c"], ["f", "b"], []] == await walk(store, 2, states=[S.ACTIVE])
        assert [["d", "a", "e"], []] == await walk(store, 3, states={S.PENDING})
        assert [[]] == await walk(store, 2, states=[])
        assert [["c"], []] == await walk(store, 1, states=[S.ACTIVE], external_id="ext-c")
        assert oldest_first == [r for page in await walk(store, 4) for r in page]

    @pytest.mark.parametrize("limit", [0, -1])
    async def test_list_connections_refuses_a_limit_below_one(
        self, store: Store, limit: int
    ) -> None:
        """A caller bug, refused before the data is looked at."""
        with pytest.raises(ValueError, match="limit"):
            await store.list_connections(limit=limit)

    async def test_list_summaries_are_what_list_connections_lists(self, store: Store) -> None:
        """
        Same rows, same order, same pages as ``list_connections`` for any
        states, *after* and *limit*; each the summary of its record.
        """
        await insert_page_fixture(store)
        for connection_id, generation in (("g", 3), ("c", 5), ("b", 7)):
            record = await store.get(connection_id)
            assert record is not None and record.tokens is not None
            tokens = attrs.evolve(
                record.tokens, generation=generation, issued_at=2000.0 + generation
            )
            await update_record(store, record, state=S.ACTIVE, authorization=None, tokens=tokens)
        record = await store.get("d")
        assert record is not None
        await update_record(store, record, tokens=None, journal=None)
        filters: dict[str, Any]
        for filters in (
            {},
            {"states": [S.ACTIVE]},
            {"states": {S.ACTIVE, S.PENDING}, "limit": 2},
            {"states": []},
            {"after": (2.0, "c")},
            {"after": (1.0, "g"), "limit": 3},
            {"states": [S.PENDING], "after": (0.5, "d"), "limit": 1},
        ):
            records = await store.list_connections(**filters)
            summaries = await store.list_summaries(**filters)
            assert [ConnectionSummary.of(r) for r in records] == summaries, filters
        by_id = {summary.id: summary for summary in await store.list_summaries()}
        assert (S.ACTIVE, 2, 5, 2005.0, 9000.0) == (
            by_id["c"].state,
            by_id["c"].version,
            by_id["c"].generation,
            by_id["c"].issued_at,
            by_id["c"].refresh_expires_at,
        )
        assert (None, None, None) == (
            by_id["d"].generation,
            by_id["d"].issued_at,
            by_id["d"].refresh_expires_at,
        )
        with pytest.raises(ValueError, match="limit"):
            await store.list_summaries(limit=0)

    async def test_read_events_in_sequence_order_after_a_position(self, store: Store) -> None:
        """Events come back ordered by sequence, only those after ``after``, per connection."""
        record = await insert_record(store)
        await insert_record(store, "other")
        for sequence in (2, 3, 4):
            newer = next_version(record)
            await store.update(
                newer, expected_version=record.version, event=make_event(sequence=sequence)
            )
            record = newer
        events = await store.read_events("c1")
        assert [e.sequence for e in events] == [1, 2, 3, 4]
        assert events[1] == make_event(sequence=2)
        assert [e.sequence for e in await store.read_events("c1", after=2)] == [3, 4]
        assert await store.read_events("c1", after=4) == []
        assert [e.connection_id for e in await store.read_events("other")] == ["other"]

    async def test_concurrent_updates_have_exactly_one_winner(self, store: Store) -> None:
        """20 writers racing from the same version: one wins, 19 get VersionConflictError."""
        record = await insert_record(store)
        candidates = [next_version(record, reason=f"writer {n}") for n in range(20)]
        results = await asyncio.gather(
            *(
                store.update(candidate, expected_version=1, event=make_event(sequence=2))
                for candidate in candidates
            ),
            return_exceptions=True,
        )
        winners = [c for c, result in zip(candidates, results, strict=True) if result is None]
        conflicts = [r for r in results if isinstance(r, VersionConflictError)]
        assert len(winners) == 1
        assert len(conflicts) == 19
        assert all(conflict.actual == 2 for conflict in conflicts)
        assert await store.get("c1") == winners[0]
        assert len(await store.read_events("c1")) == 2

    async def test_wait_for_update_returns_the_newer_record_written_meanwhile(
        self, store: Store
    ) -> None:
        """A waiter wakes with the record another task wrote after it started waiting."""
        record = await insert_record(store)
        waiting = asyncio.create_task(store.wait_for_update("c1", after_version=1, timeout=5.0))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        newer = await update_record(store, record, reason="written meanwhile")
        assert newer == await asyncio.wait_for(waiting, 2.0)

    async def test_wait_for_update_returns_at_once_when_already_newer(self, store: Store) -> None:
        """A version already past ``after_version`` needs no waiting, even with timeout 0."""
        record = await insert_record(store)
        assert record == await store.wait_for_update("c1", after_version=0, timeout=0.0)

    async def test_wait_for_update_times_out_with_none(self, store: Store) -> None:
        """No newer version within the timeout gives None; a lease is no new version."""
        await insert_record(store)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.create_task(store.wait_for_update("c1", after_version=1, timeout=0.1))
        await asyncio.sleep(0.01)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        assert await waiting is None
        assert 0.09 <= loop.time() - started < 2.0
        assert await store.wait_for_update("missing", after_version=0, timeout=0.01) is None

    # --- the store as a whole --------------------------------------------------------

    async def test_open_and_aclose_are_idempotent(self, store: Store) -> None:
        """Opening an open store again keeps it working, and so does closing twice."""
        record = await insert_record(store)
        await store.open()
        assert await store.get("c1") == record
        await store.aclose()
        await store.aclose()

    async def test_schema_version_counts_migrations_and_stays_put(self, store: Store) -> None:
        """
        An open store reports how many schema migrations it applied (0 for a
        store without a schema); writing and opening again change nothing.
        """
        version = await store.schema_version()
        assert isinstance(version, int)
        assert version >= 0
        await insert_record(store)
        await store.open()
        assert version == await store.schema_version()
