"""
The storage contract, run against every store.

Each test in the first part runs once per store (the ``store`` fixture), so
every backend keeps the three promises of :mod:`awx_connection._store` the
same way. The ``sqlite``-only tests at the end cover what only a file can do:
survive a reopen, be read by another process, hold a corrupt row.

A ``record.version`` that is not ``expected_version + 1`` is a caller bug:
both stores raise :class:`ValueError` before looking at their data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

import awx_connection.stores
from awx_connection._errors import ConfigurationError, StoreError, VersionConflictError
from awx_connection._events import ConnectionEvent
from awx_connection._records import ConnectionRecord, PendingAuthorization, RotationJournal
from awx_connection._secrets import Secret
from awx_connection._states import ConnectionState, Trigger
from awx_connection._tokens import TokenSet
from awx_connection.stores import MemoryStore, SQLiteStore, open_store
from awx_connection.stores._sqlite import MIGRATIONS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from awx_connection._store import Store

S = ConnectionState


def make_record(connection_id: str = "c1", **changes: Any) -> ConnectionRecord:
    """A pending version-1 record with a state hash, secrets and tokens."""
    record = ConnectionRecord(
        id=connection_id,
        state=S.PENDING,
        version=1,
        sequence=1,
        created_at=1000.0,
        updated_at=1000.0,
        reason="begin",
        scopes=("r:awx_action:balances_view", "w:awx_action:transfers_edit"),
        external_id=f"ext-{connection_id}",
        account_id=None,
        authorization=PendingAuthorization(
            state_hash=f"hash-{connection_id}",
            expires_at=1600.0,
            redirect_uri="https://partner.example/callback",
            sign_up=True,
            code_verifier=Secret(f"verifier-{connection_id}"),
        ),
        code=Secret("code-1"),
        tokens=TokenSet(
            access_token=Secret("access-1"),
            refresh_token=Secret("refresh-1"),
            access_expires_at=1300.0,
            refresh_expires_at=9000.0,
            issued_at=1000.0,
            generation=2,
            scope=("r:awx_action:balances_view",),
        ),
        journal=RotationJournal(generation=2, started_at=1001.0, attempts=1),
    )
    return attrs.evolve(record, **changes)


def make_event(connection_id: str = "c1", sequence: int = 1, **changes: Any) -> ConnectionEvent:
    """The event that goes with *sequence* of *connection_id*."""
    event = ConnectionEvent(
        connection_id=connection_id,
        sequence=sequence,
        trigger=Trigger.BEGIN if sequence == 1 else Trigger.CODE_RECEIVED,
        source=None if sequence == 1 else S.PENDING,
        dest=S.PENDING if sequence == 1 else S.AUTHORIZED,
        reason=f"step {sequence}",
        at=1000.0 + sequence,
        external_id=f"ext-{connection_id}",
    )
    return attrs.evolve(event, **changes)


def next_version(record: ConnectionRecord, **changes: Any) -> ConnectionRecord:
    """*record* moved one version and one event on."""
    return attrs.evolve(record, version=record.version + 1, sequence=record.sequence + 1, **changes)


async def insert(store: Store, connection_id: str = "c1", **changes: Any) -> ConnectionRecord:
    record = make_record(connection_id, **changes)
    await store.insert(record, make_event(connection_id))
    return record


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store, opened, and closed after the test."""
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "awx.db")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


# --- the contract, for every store -------------------------------------------------------


async def test_insert_then_get_returns_the_same_record(store: Store) -> None:
    """A stored record comes back equal in every field, secrets included."""
    record = await insert(store)
    loaded = await store.get("c1")
    assert loaded == record
    assert loaded is not None
    assert loaded.tokens is not None
    assert loaded.tokens.refresh_token.reveal() == "refresh-1"
    assert await store.get("missing") is None


async def test_insert_of_an_existing_id_raises_store_error(store: Store) -> None:
    """Inserting an id twice fails and keeps the first record."""
    first = await insert(store)
    with pytest.raises(StoreError, match="c1"):
        await store.insert(make_record(reason="again", authorization=None), make_event())
    assert await store.get("c1") == first


async def test_update_with_the_expected_version_replaces_the_record(store: Store) -> None:
    """A compare-and-swap at the stored version writes the new record and its event."""
    record = await insert(store)
    newer = next_version(record, state=S.AUTHORIZED, reason="code received")
    await store.update(newer, expected_version=1, event=make_event(sequence=2))
    assert await store.get("c1") == newer
    assert [e.sequence for e in await store.read_events("c1")] == [1, 2]


async def test_update_without_event_writes_only_the_record(store: Store) -> None:
    """``event=None`` replaces the record and leaves the log alone."""
    record = await insert(store)
    newer = next_version(record, reason="journal bumped")
    await store.update(newer, expected_version=1, event=None)
    assert await store.get("c1") == newer
    assert len(await store.read_events("c1")) == 1


async def test_stale_update_raises_conflict_and_writes_nothing(store: Store) -> None:
    """A writer holding an old version loses: no record and no event is written."""
    record = await insert(store)
    current = next_version(record, reason="winner")
    await store.update(current, expected_version=1, event=make_event(sequence=2))
    stale = next_version(record, reason="loser")
    with pytest.raises(VersionConflictError) as caught:
        await store.update(stale, expected_version=1, event=make_event(sequence=3))
    assert (caught.value.connection_id, caught.value.expected, caught.value.actual) == ("c1", 1, 2)
    assert await store.get("c1") == current
    assert [e.sequence for e in await store.read_events("c1")] == [1, 2]


async def test_update_of_a_missing_id_raises_conflict_with_no_actual(store: Store) -> None:
    """Updating a connection that does not exist is a conflict against nothing."""
    with pytest.raises(VersionConflictError) as caught:
        await store.update(make_record(version=2), expected_version=1, event=make_event())
    assert caught.value.actual is None
    assert await store.get("c1") is None
    assert await store.read_events("c1") == []


@pytest.mark.parametrize("version", [1, 3])
async def test_update_must_move_exactly_one_version(store: Store, version: int) -> None:
    """A new record whose version is not expected + 1 is refused with ValueError."""
    record = await insert(store)
    with pytest.raises(ValueError, match="version"):
        await store.update(
            attrs.evolve(record, version=version, reason="bad"), expected_version=1, event=None
        )
    assert await store.get("c1") == record


async def test_event_of_another_connection_is_refused(store: Store) -> None:
    """An event must belong to the record written with it."""
    with pytest.raises(ValueError, match="belongs"):
        await store.insert(make_record("c1"), make_event("c2"))
    assert await store.get("c1") is None


async def test_record_and_event_are_written_together(store: Store) -> None:
    """When the event cannot be stored (sequence taken) the record is not written either."""
    record = await insert(store)
    newer = next_version(record, reason="would be lost")
    with pytest.raises(StoreError, match="c1"):
        await store.update(newer, expected_version=1, event=make_event(sequence=1))
    assert await store.get("c1") == record
    assert len(await store.read_events("c1")) == 1
    # The failed write left the store usable.
    await store.update(newer, expected_version=1, event=make_event(sequence=2))
    assert await store.get("c1") == newer


async def test_find_by_state_hash_until_authorization_is_cleared(store: Store) -> None:
    """The pending authorization is found by its hash, and no longer once it is cleared."""
    record = await insert(store)
    await insert(store, "c2")
    assert await store.find_by_state_hash("hash-c1") == record
    assert await store.find_by_state_hash("hash-unknown") is None
    answered = next_version(record, state=S.AUTHORIZED, authorization=None)
    await store.update(answered, expected_version=1, event=make_event(sequence=2))
    assert await store.find_by_state_hash("hash-c1") is None
    assert (await store.find_by_state_hash("hash-c2") or record).id == "c2"


async def test_a_used_state_hash_is_not_found(store: Store) -> None:
    """An authorization whose hash was set to None (state used once) is not indexed."""
    record = await insert(store)
    assert record.authorization is not None
    used = next_version(record, authorization=attrs.evolve(record.authorization, state_hash=None))
    await store.update(used, expected_version=1, event=None)
    assert await store.find_by_state_hash("hash-c1") is None
    assert await store.get("c1") == used


async def test_a_state_hash_belongs_to_one_connection(store: Store) -> None:
    """A second connection cannot take a ``state`` hash another one holds."""
    await insert(store, "c1")
    with pytest.raises(StoreError, match="c2"):
        await insert(store, "c2", authorization=make_record("c1").authorization)
    assert await store.get("c2") is None


async def test_list_connections_filters_and_orders_oldest_first(store: Store) -> None:
    """Filters combine with AND; results are ordered by created_at, then id."""
    await insert(store, "b", created_at=3.0, account_id="acct-1")
    await insert(store, "a", created_at=3.0, account_id="acct-2")
    await insert(store, "z", created_at=1.0, account_id="acct-1", external_id="shared")
    c = await insert(store, "c", created_at=2.0, account_id="acct-1", external_id="shared")
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


async def test_read_events_in_sequence_order_after_a_position(store: Store) -> None:
    """Events come back ordered by sequence, only those after ``after``, per connection."""
    record = await insert(store)
    await insert(store, "other")
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


async def test_open_and_aclose_are_idempotent(store: Store) -> None:
    """Opening an open store again keeps it working, and so does closing twice."""
    record = await insert(store)
    await store.open()
    assert await store.get("c1") == record
    await store.aclose()
    await store.aclose()


async def test_concurrent_updates_have_exactly_one_winner(store: Store) -> None:
    """20 writers racing from the same version: one wins, 19 get VersionConflictError."""
    record = await insert(store)
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


# --- open_store --------------------------------------------------------------------------


def test_open_store_maps_urls_to_stores(tmp_path: Path) -> None:
    """memory:// and SQLAlchemy-style sqlite URLs pick their store and path."""
    assert isinstance(open_store("memory://"), MemoryStore)
    relative = open_store("sqlite:///data/awx.db")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == "data/awx.db"
    absolute = open_store(f"sqlite:///{tmp_path}/awx.db")
    assert isinstance(absolute, SQLiteStore)
    assert Path(absolute.path) == tmp_path / "awx.db"
    assert Path(absolute.path).is_absolute()


@pytest.mark.parametrize(
    "url", ["postgresql://user:hunter2@db/awx", "sqlite:///", "sqlite://host/x.db", "awx.db", ""]
)
def test_open_store_rejects_other_urls_without_echoing_them(url: str) -> None:
    """An unsupported URL is a ConfigurationError listing the schemes, never showing credentials."""
    with pytest.raises(ConfigurationError, match=r"memory://.*sqlite:///") as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


def test_stores_namespace_exports() -> None:
    """The namespace re-exports the stores and open_store."""
    assert {"MemoryStore", "SQLiteStore", "open_store"} == set(awx_connection.stores.__all__)


# --- SQLite only -------------------------------------------------------------------------


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the store's file, committed and closed on exit."""
    db = sqlite3.connect(path)
    try:
        with db:
            yield db
    finally:
        db.close()


async def test_sqlite_data_survives_reopening(tmp_path: Path) -> None:
    """A new store object on the same file sees the records and events written before."""
    path = tmp_path / "awx.db"
    first = SQLiteStore(path)
    await first.open()
    record = await insert(first)
    await first.aclose()
    second = SQLiteStore(path)
    await second.open()
    try:
        assert await second.get("c1") == record
        assert await second.find_by_state_hash("hash-c1") == record
        assert await second.read_events("c1") == [make_event()]
    finally:
        await second.aclose()


async def test_sqlite_corrupt_row_raises_store_error_and_store_stays_usable(
    tmp_path: Path,
) -> None:
    """A garbage ``data`` blob fails get() with StoreError naming the id; other rows still work."""
    path = tmp_path / "awx.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        await insert(store, "broken")
        healthy = await insert(store, "healthy")
        with raw(path) as db:
            db.execute("UPDATE connections SET data = ? WHERE id = 'broken'", (b"\x00garbage",))
        with pytest.raises(StoreError, match="'broken'") as caught:
            await store.get("broken")
        assert "garbage" not in str(caught.value)
        with raw(path) as db:
            db.execute("UPDATE connections SET data = '{\"id\": \"broken\"}' WHERE id = 'broken'")
        with pytest.raises(StoreError, match="'broken'"):
            await store.get("broken")
        assert await store.get("healthy") == healthy
        await store.update(next_version(healthy), expected_version=1, event=None)
        assert (await store.get("healthy") or healthy).version == 2
    finally:
        await store.aclose()


async def test_sqlite_schema_version_is_recorded(tmp_path: Path) -> None:
    """open() applies every migration once and records the version in awx_schema."""
    path = tmp_path / "awx.db"
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        try:
            assert await store.schema_version() == len(MIGRATIONS)
        finally:
            await store.aclose()
    with raw(path) as db:
        assert db.execute("SELECT version FROM awx_schema").fetchall() == [(len(MIGRATIONS),)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A file migrated by a newer library is refused rather than misread."""
    path = tmp_path / "awx.db"
    with raw(path) as db:
        db.execute("CREATE TABLE awx_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO awx_schema VALUES (?)", (len(MIGRATIONS) + 1,))
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.aclose()


async def test_sqlite_stores_opening_a_new_file_together_migrate_once(tmp_path: Path) -> None:
    """Several stores opening the same new file at once all end up on the same schema."""
    stores = [SQLiteStore(tmp_path / "awx.db") for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert {await store.schema_version() for store in stores} == {len(MIGRATIONS)}
        record = await insert(stores[0])
        assert await stores[-1].get("c1") == record
    finally:
        for store in stores:
            await store.aclose()


async def test_sqlite_unopened_store_raises_store_error(tmp_path: Path) -> None:
    """Using a store before open() is a StoreError, not an AttributeError."""
    with pytest.raises(StoreError, match="not open"):
        await SQLiteStore(tmp_path / "awx.db").get("c1")


@pytest.mark.slow
async def test_sqlite_record_is_readable_from_another_process(tmp_path: Path) -> None:
    """A connection written here is read back by a separate Python process."""
    path = tmp_path / "awx.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        record = await insert(store)
        await store.update(next_version(record, state=S.AUTHORIZED), expected_version=1, event=None)
    finally:
        await store.aclose()
    script = textwrap.dedent(
        f"""
        import asyncio
        from awx_connection.stores import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r})
            await store.open()
            try:
                record = await store.get("c1")
                print(record.state.value, record.version)
            finally:
                await store.aclose()

        asyncio.run(main())
        """
    )
    src = str(Path(awx_connection.stores.__file__).parents[2])
    pythonpath = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["authorized", "2"]
