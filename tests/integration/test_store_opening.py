"""
Opening a durable store without creating it: ``create=False``.

Run against both durable stores (SQLite, PostgreSQL) with the same promises:
``open()`` with ``create=False`` never creates a file, schema or table and
never migrates; a store that does not exist, or is not at this library's
schema, raises :class:`~awx_connection.StoreNotMigratedError` naming the
path or schema (never a password) and ``awx-connection db migrate``; a
migrated store opens and works as with ``create=True``. ``open_store``
passes the flag on. The CLI's read-only commands rely on this (see
tests/system/test_cli_surprises.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest

from awx_connection import (
    ConnectionEvent,
    ConnectionRecord,
    ConnectionState,
    KeyRing,
    Store,
    StoreError,
    StoreNotMigratedError,
    Trigger,
)
from awx_connection.stores import PostgresStore, SQLiteStore, open_store
from awx_connection.stores._sqlite import MIGRATIONS as SQLITE_MIGRATIONS

KEYS = KeyRing.generate()


@attrs.frozen
class Durable:
    """One durable store under test: how to build it and how to look at it behind its back."""

    kind: str
    #: ``create`` -> an unopened store on the same file or schema every time.
    build: Callable[[bool], Store]
    #: The store's URL for open_store (with a password for PostgreSQL; its
    #: schema is open_store's default, not the test's).
    url: str
    #: What a refusal names: the file's path or the schema.
    names: str
    #: Whether the file / schema exists at all.
    exists: Callable[[], Awaitable[bool]]
    #: The recorded schema version, or None without the version table.
    version: Callable[[], Awaitable[int | None]]
    #: Set the recorded schema version (to fake an older store).
    set_version: Callable[[int], Awaitable[None]]
    #: Create the file / schema, empty.
    make_empty: Callable[[], Awaitable[None]]
    migrations: int


def _sqlite(tmp_path: Path) -> Durable:
    path = tmp_path / "awx.db"

    def query(sql: str, *params: Any) -> Any:
        db = sqlite3.connect(path)
        try:
            with db:
                return db.execute(sql, params).fetchone()
        finally:
            db.close()

    async def exists() -> bool:
        return path.exists()

    async def version() -> int | None:
        if not query("SELECT 1 FROM sqlite_master WHERE name = 'awx_schema'"):
            return None
        return int(query("SELECT version FROM awx_schema")[0])

    async def set_version(value: int) -> None:
        query("UPDATE awx_schema SET version = ?", value)

    async def make_empty() -> None:
        path.touch()

    return Durable(
        "sqlite",
        lambda create: SQLiteStore(path, keys=KEYS, create=create),
        f"sqlite:///{path}",
        str(path),
        exists,
        version,
        set_version,
        make_empty,
        len(SQLITE_MIGRATIONS),
    )


def _postgres(dsn: str, schema: str) -> Durable:
    from awx_connection.stores._postgres import MIGRATIONS

    async def run(sql: str, *params: Any) -> Any:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchval(sql, *params)
        finally:
            await connection.close()

    async def exists() -> bool:
        return bool(
            await run("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema)
        )

    async def version() -> int | None:
        if not await run("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".schema_version'):
            return None
        value = await run(f'SELECT version FROM "{schema}".schema_version')
        return None if value is None else int(value)

    async def set_version(value: int) -> None:
        await run(f'UPDATE "{schema}".schema_version SET version = $1', value)

    async def make_empty() -> None:
        await run(f'CREATE SCHEMA "{schema}"')

    # trust authentication ignores the password; it is there to be never shown.
    with_password = dsn.replace("postgres@", "postgres:hunter2@", 1)
    assert "hunter2" in with_password
    return Durable(
        "postgres",
        lambda create: PostgresStore(with_password, keys=KEYS, schema=schema, create=create),
        with_password,
        schema,
        exists,
        version,
        set_version,
        make_empty,
        len(MIGRATIONS),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Durable:
    if request.param == "sqlite":
        return _sqlite(tmp_path)
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema: str = request.getfixturevalue("postgres_schema")
    return _postgres(dsn, schema)


async def refused(store: Store) -> str:
    """Open *store* expecting StoreNotMigratedError; its message."""
    with pytest.raises(StoreNotMigratedError) as raised:
        await store.open()
    await store.aclose()
    message = str(raised.value)
    assert "'awx-connection db migrate'" in message
    assert "hunter2" not in message
    return message


def sample() -> tuple[ConnectionRecord, ConnectionEvent]:
    record = ConnectionRecord(
        id="c1",
        state=ConnectionState.PENDING,
        version=1,
        sequence=1,
        created_at=1000.0,
        updated_at=1000.0,
        reason="begin",
        scopes=("account_details:read",),
    )
    event = ConnectionEvent(
        connection_id="c1",
        sequence=1,
        trigger=Trigger.BEGIN,
        source=None,
        dest=ConnectionState.PENDING,
        reason="begin",
        at=1000.0,
    )
    return record, event


async def test_without_create_a_missing_store_is_refused_and_not_created(durable: Durable) -> None:
    """No file or schema: StoreNotMigratedError naming it, and it still does not exist."""
    message = await refused(durable.build(False))
    assert durable.names in message
    assert not await durable.exists()


async def test_without_create_an_empty_store_is_refused_and_left_empty(durable: Durable) -> None:
    """An empty file or schema (no tables): refused, and no table appears."""
    await durable.make_empty()
    message = await refused(durable.build(False))
    assert durable.names in message
    assert await durable.version() is None


async def test_without_create_an_older_schema_is_refused_and_not_migrated(
    durable: Durable,
) -> None:
    """A store one migration behind: refused as older, and still at its version."""
    store = durable.build(True)
    await store.open()
    await store.aclose()
    older = durable.migrations - 1
    await durable.set_version(older)
    message = await refused(durable.build(False))
    assert f"at schema version {older}" in message or f"at version {older}" in message
    assert "older" in message
    assert older == await durable.version()


async def test_without_create_a_newer_schema_is_still_a_store_error(durable: Durable) -> None:
    """A schema newer than the library is refused as before, not as 'not migrated'."""
    store = durable.build(True)
    await store.open()
    await store.aclose()
    await durable.set_version(durable.migrations + 1)
    reader = durable.build(False)
    with pytest.raises(StoreError, match="newer") as raised:
        await reader.open()
    await reader.aclose()
    assert not isinstance(raised.value, StoreNotMigratedError)


async def test_without_create_a_migrated_store_opens_and_works(durable: Durable) -> None:
    """At this library's schema, create=False opens, reads and writes as create=True does."""
    setup = durable.build(True)
    await setup.open()
    await setup.aclose()
    store = durable.build(False)
    await store.open()
    try:
        record, event = sample()
        await store.insert(record, event)
        assert record == await store.get("c1")
        assert [record] == await store.list_connections()
    finally:
        await store.aclose()
    assert durable.migrations == await durable.version()


async def test_open_store_passes_create_on(durable: Durable) -> None:
    """open_store(url, create=False) builds a store that will not create; the default will."""
    assert False is getattr(open_store(durable.url, keys=KEYS, create=False), "create", None)
    assert True is getattr(open_store(durable.url, keys=KEYS), "create", None)
    if durable.kind == "sqlite":  # the URL reaches the test's file
        await refused(open_store(durable.url, keys=KEYS, create=False))
        assert not await durable.exists()
