"""
What only an SQLite file can do: survive a reopen, hold a row corrupted by
hand, be migrated (once, by one of several openers; from an old schema),
and be read and written by another process.

The contract itself runs against SQLiteStore in ``test_sqlite_store.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from awx_connection import ConnectionState, ConnectionSummary, KeyRing, StoreError
from awx_connection._records import dump_event, dump_record
from awx_connection.stores import SQLiteStore
from awx_connection.stores._sqlite import MIGRATIONS
from awx_connection.testing.store_contract import (
    insert_record,
    make_event,
    make_record,
    next_version,
    opened,
    update_record,
)

S = ConnectionState


#: The key of the SQLite-only tests: reopened files and other processes need the same one.
KEY_BYTES = secrets.token_bytes(32)
KEYS = KeyRing([("k1", KEY_BYTES)])


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
    first = SQLiteStore(path, keys=KEYS)
    await first.open()
    record = await insert_record(first)
    await first.aclose()
    second = SQLiteStore(path, keys=KEYS)
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
    store = SQLiteStore(path, keys=KEYS)
    await store.open()
    try:
        await insert_record(store, "broken")
        healthy = await insert_record(store, "healthy")
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


async def test_sqlite_list_connections_leaves_a_corrupt_row_out_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One undecodable row is logged as an error by id; the listing still has the rest."""
    path = tmp_path / "awx.db"
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        await insert_record(store, "broken", created_at=1.0)
        healthy = await insert_record(store, "healthy", created_at=2.0)
        with raw(path) as db:
            db.execute("UPDATE connections SET data = ? WHERE id = 'broken'", (b"\x00garbage",))
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [healthy] == await store.list_connections()
    [logged] = caplog.records
    assert ("awx_connection.stores", logging.ERROR) == (logged.name, logged.levelno)
    assert "'broken'" in logged.getMessage()
    with raw(path) as db:
        assert [(b"\x00garbage",)] == db.execute(
            "SELECT data FROM connections WHERE id = 'broken'"
        ).fetchall()


async def test_sqlite_list_summaries_leaves_a_corrupt_row_out_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row whose JSON does not decode, or is another row's, is logged by id and skipped."""
    path = tmp_path / "awx.db"
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        await insert_record(store, "broken", created_at=1.0)
        await insert_record(store, "moved", created_at=1.5)
        healthy = await insert_record(store, "healthy", created_at=2.0)
        with raw(path) as db:
            db.execute("UPDATE connections SET data = ? WHERE id = 'broken'", (b"\x00garbage",))
            db.execute(
                "UPDATE connections SET data = (SELECT data FROM connections WHERE id = 'healthy')"
                " WHERE id = 'moved'"
            )
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [ConnectionSummary.of(healthy)] == await store.list_summaries(limit=2)
    messages = [entry.getMessage() for entry in caplog.records]
    assert 2 == len(messages)
    assert "'broken'" in messages[0] and "'moved'" in messages[1]
    assert all("list_summaries left out" in message for message in messages)
    assert {logging.ERROR} == {entry.levelno for entry in caplog.records}


async def test_sqlite_schema_version_is_recorded(tmp_path: Path) -> None:
    """open() applies every migration once and records the version in awx_schema."""
    path = tmp_path / "awx.db"
    for _ in range(2):
        store = SQLiteStore(path, keys=KEYS)
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
    store = SQLiteStore(path, keys=KEYS)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.aclose()


async def test_sqlite_stores_opening_a_new_file_together_migrate_once(tmp_path: Path) -> None:
    """Several stores opening the same new file at once all end up on the same schema."""
    stores = [SQLiteStore(tmp_path / "awx.db", keys=KEYS) for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert {await store.schema_version() for store in stores} == {len(MIGRATIONS)}
        record = await insert_record(stores[0])
        assert await stores[-1].get("c1") == record
    finally:
        for store in stores:
            await store.aclose()


async def test_sqlite_migration_2_upgrades_a_version_1_file(tmp_path: Path) -> None:
    """A file made by the first schema gains leases, event times and consumers, data intact."""
    path = tmp_path / "awx.db"
    record = make_record()
    with raw(path) as db:
        for statement in MIGRATIONS[0].split(";"):
            db.execute(statement)
        db.execute("CREATE TABLE awx_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO awx_schema VALUES (1)")
        db.execute(
            "INSERT INTO connections VALUES ('c1', 1, 'pending', 'hash-c1', 'ext-c1', NULL, "
            "1000.0, 1000.0, ?)",
            (orjson.dumps(dump_record(record, KEYS)),),
        )
        db.execute(
            "INSERT INTO events (connection_id, sequence, data) VALUES ('c1', 1, ?)",
            (orjson.dumps(dump_event(make_event())),),
        )
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        assert len(MIGRATIONS) == await store.schema_version()
        assert record == await store.get("c1")
        assert [(1, make_event())] == await store.read_outbox()
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        await store.commit_offset("billing", 1)
        assert 1 == await store.prune_events(before=1002.0)


async def test_sqlite_waits_see_writes_made_through_another_store_object(tmp_path: Path) -> None:
    """Waiters poll the file, so a writer with its own connection (another process) wakes them."""
    path = tmp_path / "awx.db"
    async with (
        opened(SQLiteStore(path, keys=KEYS)) as waiter,
        opened(SQLiteStore(path, keys=KEYS)) as writer,
    ):
        record = await insert_record(writer)
        [(last, _)] = await waiter.read_outbox()
        update_seen = asyncio.create_task(
            waiter.wait_for_update("c1", after_version=1, timeout=5.0)
        )
        event_seen = asyncio.create_task(waiter.wait_for_events(after=last, timeout=5.0))
        await asyncio.sleep(0.05)
        assert not update_seen.done()
        assert not event_seen.done()
        newer = await update_record(writer, record)
        assert newer == await asyncio.wait_for(update_seen, 2.0)
        assert await asyncio.wait_for(event_seen, 2.0)


async def test_sqlite_unopened_store_raises_store_error(tmp_path: Path) -> None:
    """Using a store before open() is a StoreError, not an AttributeError."""
    with pytest.raises(StoreError, match="not open"):
        await SQLiteStore(tmp_path / "awx.db", keys=KEYS).get("c1")


@pytest.mark.slow
async def test_sqlite_record_is_readable_from_another_process(
    tmp_path: Path, python_with_src: Callable[[str], str]
) -> None:
    """A connection written here is read back by a separate Python process."""
    path = tmp_path / "awx.db"
    store = SQLiteStore(path, keys=KEYS)
    await store.open()
    try:
        record = await insert_record(store)
        await store.update(next_version(record, state=S.AUTHORIZED), expected_version=1, event=None)
    finally:
        await store.aclose()
    script = textwrap.dedent(
        f"""
        import asyncio
        from awx_connection import KeyRing
        from awx_connection.stores import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r}, keys=KeyRing([("k1", {KEY_BYTES!r})]))
            await store.open()
            try:
                record = await store.get("c1")
                print(record.state.value, record.version, record.tokens.refresh_token.reveal())
            finally:
                await store.aclose()

        asyncio.run(main())
        """
    )
    printed = await asyncio.to_thread(python_with_src, script)
    assert printed.split() == ["authorized", "2", "refresh-1"]


@pytest.mark.slow
async def test_sqlite_wait_for_update_sees_a_write_by_another_process(
    tmp_path: Path, python_with_src: Callable[[str], str]
) -> None:
    """A waiter here wakes with the record a separate Python process wrote meanwhile."""
    path = tmp_path / "awx.db"
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        await insert_record(store)
        waiting = asyncio.create_task(store.wait_for_update("c1", after_version=1, timeout=30.0))
        script = textwrap.dedent(
            f"""
            import asyncio, attrs
            from awx_connection import KeyRing
            from awx_connection.stores import SQLiteStore

            async def main():
                store = SQLiteStore({str(path)!r}, keys=KeyRing([("k1", {KEY_BYTES!r})]))
                await store.open()
                try:
                    record = await store.get("c1")
                    newer = attrs.evolve(record, version=2, reason="from the other process")
                    await store.update(newer, expected_version=1, event=None)
                finally:
                    await store.aclose()

            asyncio.run(main())
            """
        )
        await asyncio.to_thread(python_with_src, script)
        newer = await asyncio.wait_for(waiting, 5.0)
    assert newer is not None
    assert (2, "from the other process") == (newer.version, newer.reason)
