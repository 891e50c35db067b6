"""
The cases of :class:`~awx_connection.RelayLedger`: relay leases, one owner
at a time until a deadline, listed while they run; dead letters kept by
``(relay, position)`` until deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

from ..._delivery import DeadLetter
from ..._store import Store
from ._data import make_event

__all__ = ["RelayCases"]


def _letter(position: int, relay: str = "r", **changes: Any) -> DeadLetter:
    letter = DeadLetter(
        relay=relay,
        position=position,
        event=make_event("c1", position),
        attempts=3,
        error="HTTP 503",
        at=2000.0,
    )
    return attrs.evolve(letter, **changes)


class RelayCases:
    """Relay leases and dead letters."""

    async def test_relay_lease_is_held_by_one_owner_until_it_ends(self, store: Store) -> None:
        """A relay lease keeps other owners out until its term, then anyone may take it."""
        assert await store.acquire_relay_lease("r", "p0", "a", until=100.0, now=0.0)
        assert not await store.acquire_relay_lease("r", "p0", "b", until=200.0, now=50.0)
        assert await store.acquire_relay_lease("r", "p0", "a", until=150.0, now=50.0)
        assert not await store.acquire_relay_lease("r", "p0", "b", until=200.0, now=149.0)
        assert await store.acquire_relay_lease("r", "p0", "b", until=300.0, now=150.0)
        assert not await store.acquire_relay_lease("r", "p0", "a", until=400.0, now=151.0)

    async def test_relay_leases_are_per_relay_and_listed_while_running(self, store: Store) -> None:
        """Leases of two relays are apart; the listing shows those still running, by name."""
        assert await store.acquire_relay_lease("r", "p1", "a", until=100.0, now=0.0)
        assert await store.acquire_relay_lease("r", "p0", "b", until=50.0, now=0.0)
        assert await store.acquire_relay_lease("other", "p0", "c", until=100.0, now=0.0)
        assert [("p0", "b"), ("p1", "a")] == await store.relay_leases("r", now=10.0)
        assert [("p1", "a")] == await store.relay_leases("r", now=50.0)
        assert [("p0", "c")] == await store.relay_leases("other", now=10.0)

    async def test_relay_lease_is_released_only_by_its_owner(self, store: Store) -> None:
        """Releasing another owner's lease does nothing; the holder's release frees it."""
        assert await store.acquire_relay_lease("r", "p0", "a", until=100.0, now=0.0)
        await store.release_relay_lease("r", "p0", "b")
        assert not await store.acquire_relay_lease("r", "p0", "b", until=100.0, now=1.0)
        await store.release_relay_lease("r", "p0", "a")
        assert [] == await store.relay_leases("r", now=1.0)
        assert await store.acquire_relay_lease("r", "p0", "b", until=100.0, now=1.0)

    async def test_concurrent_relay_lease_requests_have_one_winner(self, store: Store) -> None:
        """Of owners asking together for a free lease, exactly one gets it."""
        granted = await asyncio.gather(
            *(
                store.acquire_relay_lease("r", "p0", f"owner-{n}", until=100.0, now=0.0)
                for n in range(8)
            )
        )
        assert 1 == sum(granted)

    async def test_dead_letters_are_kept_by_relay_and_position(self, store: Store) -> None:
        """Dead letters come back equal, by position, per relay; a repeat replaces the first."""
        await store.put_dead_letter(_letter(7))
        await store.put_dead_letter(_letter(3))
        await store.put_dead_letter(_letter(5, relay="other"))
        await store.put_dead_letter(_letter(7, attempts=6, error="timeout"))
        assert [_letter(3), _letter(7, attempts=6, error="timeout")] == await store.dead_letters(
            "r"
        )
        assert [_letter(7, attempts=6, error="timeout")] == await store.dead_letters("r", after=3)
        assert [_letter(3)] == await store.dead_letters("r", limit=1)
        assert [_letter(5, relay="other")] == await store.dead_letters("other")

    async def test_dead_letter_is_deleted_once(self, store: Store) -> None:
        """delete_dead_letter says whether there was one, and only that one goes."""
        await store.put_dead_letter(_letter(3))
        await store.put_dead_letter(_letter(4))
        assert await store.delete_dead_letter("r", 3)
        assert not await store.delete_dead_letter("r", 3)
        assert [_letter(4)] == await store.dead_letters("r")
