"""
The cases of :class:`~awx_connection.LeaseStore`: one owner at a time,
until a deadline, renewed by its owner, taken over once it ended, read with
the record it protects, ended by the owner's last write.
"""

from __future__ import annotations

import asyncio

import attrs
import pytest

from ..._errors import VersionConflictError
from ..._store import Store
from ._data import insert_record, update_record

__all__ = ["LeaseCases"]


class LeaseCases:
    """Leases: who may rotate a connection's tokens, until when."""

    async def test_lease_is_granted_when_free(self, store: Store) -> None:
        """Nobody holds a new connection's lease: the first owner gets it."""
        await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)

    async def test_lease_is_refused_while_another_owner_holds_it(self, store: Store) -> None:
        """Until its deadline, a lease keeps every other owner out."""
        await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        assert not await store.acquire_lease("c1", "worker-b", until=200.0, now=0.0)
        assert not await store.acquire_lease("c1", "worker-b", until=200.0, now=99.9)

    async def test_lease_is_renewed_by_its_owner(self, store: Store) -> None:
        """The holder can move its own deadline on, which keeps others out longer."""
        await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        assert await store.acquire_lease("c1", "worker-a", until=150.0, now=50.0)
        assert not await store.acquire_lease("c1", "worker-b", until=300.0, now=120.0)
        assert await store.acquire_lease("c1", "worker-b", until=300.0, now=150.0)

    async def test_expired_lease_is_taken_over(self, store: Store) -> None:
        """At ``now >= until`` the lease is free again, and the old holder has lost it."""
        await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        assert await store.acquire_lease("c1", "worker-b", until=200.0, now=100.0)
        assert not await store.acquire_lease("c1", "worker-a", until=300.0, now=101.0)

    async def test_lease_is_released_only_by_its_owner(self, store: Store) -> None:
        """release_lease by another owner does nothing; by the holder, it frees the lease."""
        await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        await store.release_lease("c1", "worker-b")
        assert not await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0)
        await store.release_lease("c1", "worker-a")
        assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0)

    async def test_lease_of_an_unknown_connection_is_refused(self, store: Store) -> None:
        """There is no lease on a connection that does not exist; releasing one is a no-op."""
        assert not await store.acquire_lease("missing", "worker-a", until=100.0, now=0.0)
        await store.release_lease("missing", "worker-a")
        assert await store.get("missing") is None

    async def test_lease_never_changes_the_version_and_survives_writes(self, store: Store) -> None:
        """Taking, renewing and releasing leave the record alone; a write keeps the lease."""
        record = await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        assert await store.acquire_lease("c1", "worker-a", until=200.0, now=1.0)
        assert await store.get("c1") == record
        newer = await update_record(store, record, reason="rotated under the lease")
        assert await store.get("c1") == newer
        assert not await store.acquire_lease("c1", "worker-b", until=300.0, now=2.0)
        await store.release_lease("c1", "worker-a")
        assert await store.get("c1") == newer

    async def test_concurrent_lease_requests_have_exactly_one_winner(self, store: Store) -> None:
        """20 owners asking for a free lease at once: exactly one gets it."""
        await insert_record(store)
        granted = await asyncio.gather(
            *(store.acquire_lease("c1", f"worker-{n}", until=100.0, now=0.0) for n in range(20))
        )
        assert 1 == sum(grant is not None for grant in granted)

    async def test_a_granted_lease_comes_with_the_stored_record(self, store: Store) -> None:
        """acquire_lease answers with the record it protects (the latest), or None when refused."""
        record = await insert_record(store)
        newer = await update_record(store, record, reason="written before the lease")
        granted = await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        assert granted == newer
        assert granted is not None
        assert granted.tokens is not None
        assert granted.tokens.refresh_token.reveal() == "refresh-1"
        assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) is None
        assert await store.acquire_lease("c1", "worker-a", until=150.0, now=1.0) == newer  # renewal

    async def test_an_update_can_end_its_owners_lease(self, store: Store) -> None:
        """update(release_lease=owner) frees that owner's lease with the write, nobody else's."""
        record = await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        newer = await update_record(store, record, reason="rotated", release_lease="worker-b")
        assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) is None
        newest = await update_record(store, newer, reason="rotated again", release_lease="worker-a")
        assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) == newest

    async def test_a_refused_update_keeps_the_lease(self, store: Store) -> None:
        """A compare-and-swap that loses writes nothing, and the lease stays where it was."""
        record = await insert_record(store)
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        stale = attrs.evolve(record, version=5, reason="stale")
        with pytest.raises(VersionConflictError):
            await store.update(stale, expected_version=4, event=None, release_lease="worker-a")
        assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) is None
