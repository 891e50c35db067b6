"""
``ConnectionManager.load()``: holding every stored connection at start-up.

The records are written straight into the store (as another process, or an
earlier run of this one, left them), so each test controls versions,
states and ``created_at`` exactly. A counting wrapper around the store shows
which calls the manager makes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from awx_connection import (
    Config,
    ConnectionEvent,
    ConnectionManager,
    ConnectionRecord,
    ConnectionState,
    DecryptionError,
    KeyRing,
    Secret,
    Store,
    TokenSet,
    Trigger,
)
from awx_connection.stores import MemoryStore, SQLiteStore
from awx_connection.testing import ManualClock

S = ConnectionState


@attrs.define(eq=False)
class CountingStore:
    """A real store that counts the calls made to each of its methods."""

    inner: Store
    calls: dict[str, int] = attrs.Factory(dict)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await target(*args, **kwargs)

        return call


def active(
    connection_id: str, now: float, *, created_at: float = 0.0, **changes: Any
) -> ConnectionRecord:
    """An active version-2 record whose access token is fresh at *now*."""
    record = ConnectionRecord(
        id=connection_id,
        state=S.ACTIVE,
        version=2,
        sequence=2,
        created_at=created_at,
        updated_at=created_at,
        reason="tokens received",
        scopes=("account_details:read",),
        account_id=f"acct-{connection_id}",
        tokens=TokenSet(
            access_token=Secret(f"at-{connection_id}"),
            refresh_token=Secret(f"rt-{connection_id}"),
            access_expires_at=now + 300,
            refresh_expires_at=now + 86400,
            issued_at=now,
            generation=0,
            scope=("account_details:read",),
        ),
        activated_at=now,
    )
    return attrs.evolve(record, **changes)


@contextlib.asynccontextmanager
async def opened(store: SQLiteStore) -> AsyncIterator[SQLiteStore]:
    """*store*, opened, and closed on exit."""
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def put(store: Store, record: ConnectionRecord) -> None:
    """Store *record* as a new connection, with a first event."""
    event = ConnectionEvent(
        connection_id=record.id,
        sequence=record.sequence,
        trigger=Trigger.BEGIN,
        source=None,
        dest=record.state,
        reason=record.reason,
        at=record.created_at,
    )
    await store.insert(record, event)


async def test_load_holds_every_connection_and_serves_tokens_without_store_reads(
    awx_config: Config, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """After load(), access_token() and get() of every connection touch no store."""
    now = awx_clock.now()
    ids = [f"c{i:02d}" for i in range(25)]
    keys = KeyRing.generate()
    async with opened(SQLiteStore(tmp_path / "awx.db", keys=keys)) as seeding:
        for i, connection_id in enumerate(ids):
            await put(seeding, active(connection_id, now, created_at=float(i % 4)))
    store = CountingStore(SQLiteStore(tmp_path / "awx.db", keys=keys))
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:  # type: ignore[arg-type]
        assert 25 == await awx.load(page_size=4)
        # 25 connections in pages of 4: six full pages and a short one.
        assert 7 == store.calls["list_connections"]
        before = dict(store.calls)
        for connection_id in ids:
            assert f"at-{connection_id}" == await awx.access_token(connection_id)
            assert S.ACTIVE is (await awx.get(connection_id)).state
        assert before == store.calls
        assert 25 == awx.statistics().connections_cached


async def test_load_follows_created_at_then_id_across_equal_created_at(
    awx_config: Config, awx_clock: ManualClock
) -> None:
    """Pages that split a run of equal created_at neither skip nor repeat a connection."""
    now = awx_clock.now()
    store = MemoryStore()
    ids = [f"c{i:02d}" for i in range(10)]
    for connection_id in reversed(ids):
        await put(store, active(connection_id, now, created_at=7.0))
    for page_size in (1, 3, 10, 11):
        async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
            assert 10 == await awx.load(page_size=page_size)
            assert sorted(ids) == sorted(awx._live)


async def test_load_keeps_only_the_given_states(awx_config: Config, awx_clock: ManualClock) -> None:
    """states= filters what is loaded; the default loads every state."""
    now = awx_clock.now()
    store = MemoryStore()
    await put(store, active("live", now, created_at=1.0))
    await put(store, active("gone", now, created_at=2.0, state=S.REVOKED, tokens=None))
    await put(store, active("later", now, created_at=3.0, state=S.REFRESHING))
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
        assert 2 == await awx.load(states=[S.ACTIVE, S.REFRESHING], page_size=1)
        assert {"live", "later"} == set(awx._live)
        assert 2 == await awx.load(states=iter([S.ACTIVE]))  # any iterable, read once
        assert 3 == await awx.load()
        assert {"live", "gone", "later"} == set(awx._live)


async def test_load_of_an_empty_store_or_no_states_holds_nothing(
    awx_config: Config, awx_clock: ManualClock
) -> None:
    async with ConnectionManager(awx_config, clock=awx_clock) as awx:
        assert 0 == await awx.load()
        await put(awx.store, active("c1", awx_clock.now()))
        assert 0 == await awx.load(states=[])


@pytest.mark.parametrize("page_size", [0, -5])
async def test_load_refuses_a_page_size_below_one(
    awx_config: Config, awx_clock: ManualClock, page_size: int
) -> None:
    async with ConnectionManager(awx_config, clock=awx_clock) as awx:
        with pytest.raises(ValueError, match="page_size"):
            await awx.load(page_size=page_size)


async def test_a_row_that_does_not_decrypt_is_logged_and_skipped(
    awx_config: Config,
    awx_clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    The bad row is left out (logged, naming it), every other one is loaded;
    its first use raises DecryptionError instead of handing out anything.
    """
    now = awx_clock.now()
    path = tmp_path / "awx.db"
    keys = KeyRing.generate("current")
    async with opened(SQLiteStore(path, keys=KeyRing.generate("lost"))) as lost:
        await put(lost, active("sealed-with-a-lost-key", now, created_at=2.0))
    async with opened(SQLiteStore(path, keys=keys)) as seeding:
        for i in range(5):
            await put(seeding, active(f"ok{i}", now, created_at=float(i)))
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as awx:
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert 5 == await awx.load(page_size=2)
        [logged] = caplog.records
        assert "'sealed-with-a-lost-key'" in logged.getMessage()
        assert {f"ok{i}" for i in range(5)} == set(awx._live)
        with pytest.raises(DecryptionError, match="sealed-with-a-lost-key"):
            await awx.access_token("sealed-with-a-lost-key")


async def test_held_connections_are_replaced_only_by_newer_versions(
    awx_config: Config, awx_clock: ManualClock
) -> None:
    """
    load() adopts like every other read: a stored record replaces the held
    one only if its version is higher, so a held record newer than the
    listing (written by this process meanwhile) is never rolled back.
    """
    now = awx_clock.now()
    store = MemoryStore()
    for connection_id in ("same", "newer-in-store", "newer-held"):
        await put(store, active(connection_id, now))
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
        held = {}
        for connection_id in ("same", "newer-in-store", "newer-held"):
            record = await store.get(connection_id)
            assert record is not None
            held[connection_id] = awx._cache.adopt(record)
        same = held["same"].record
        # Another process rotates one connection in the store...
        stored = held["newer-in-store"].record
        assert stored.tokens is not None
        rotated = attrs.evolve(
            stored,
            version=stored.version + 1,
            tokens=attrs.evolve(stored.tokens, access_token=Secret("rotated"), generation=1),
        )
        await store.update(rotated, expected_version=stored.version, event=None)
        # ...and this process holds a newer record than the store of another.
        mine = held["newer-held"].record
        ahead = attrs.evolve(mine, version=mine.version + 5, reason="ahead")
        awx._cache.adopt(ahead)

        assert 3 == await awx.load(page_size=2)

        assert held["same"].record is same
        assert held["newer-in-store"].record == rotated
        assert "rotated" == await awx.access_token("newer-in-store")
        assert held["newer-held"].record is ahead
        # The holders themselves are kept (their locks and in-flight refreshes).
        assert all(awx._live[c] is live for c, live in held.items())


async def test_load_leaves_the_garbage_collector_as_it_found_it(
    awx_config: Config, awx_clock: ManualClock
) -> None:
    """The collector is paused per page only: back on after a load, even a failed one."""
    store = CountingStore(MemoryStore())
    await put(store.inner, active("c1", awx_clock.now()))
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:  # type: ignore[arg-type]
        assert gc.isenabled()
        assert 1 == await awx.load()
        assert gc.isenabled()
        store.inner = BrokenStore()
        with pytest.raises(RuntimeError, match="listing failed"):
            await awx.load()
        assert gc.isenabled()
        gc.disable()
        try:
            store.inner = MemoryStore()
            assert 1 == await awx.load()
            assert not gc.isenabled()
        finally:
            gc.enable()


class BrokenStore:
    """A store whose listing fails."""

    async def list_connections(self, **filters: Any) -> list[ConnectionRecord]:
        raise RuntimeError("listing failed")

    async def aclose(self) -> None:
        pass
