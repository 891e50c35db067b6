"""
The SQLite store: durable connections in one file, shared by processes.

Why it is built this way:

* **WAL** lets other processes read while one writes; ``busy_timeout`` makes
  a writer wait for the file lock instead of failing at once.
* **Compare-and-swap is one statement**, ``UPDATE ... WHERE id=? AND
  version=?``: SQLite itself decides, across processes, which writer wins.
* **Writes take the file lock up front** (``BEGIN IMMEDIATE``), so a
  transaction never has to upgrade a read lock half-way (which fails with
  ``SQLITE_BUSY``), and a record and its event commit or roll back together.
* **One aiosqlite connection per store, behind an** :class:`asyncio.Lock`.
  A connection holds one transaction at a time; without the lock, two
  coroutines' statements would land inside each other's transactions. Reads
  take the lock too, so they never see another coroutine's uncommitted write.
* **The schema comes from numbered migrations** (:data:`MIGRATIONS`), applied
  under ``BEGIN IMMEDIATE``: of two processes opening a new file together,
  one migrates and the other then finds nothing left to do.
* **The record is stored whole**, as the JSON of
  :func:`~awx_connection._records.dump_record` in ``data``; the other
  columns are copies for filtering and the constraints, never read back.
* SQLite errors become :class:`~awx_connection.StoreError` naming the
  operation and the connection, never any stored value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from typing import TYPE_CHECKING, Any, final

import aiosqlite
import attrs
import orjson

from .._errors import StoreError, VersionConflictError
from .._records import dump_event, dump_record, load_event, load_record
from ._memory import _check_event, _check_version

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Iterator

    from .._events import ConnectionEvent
    from .._records import ConnectionRecord
    from .._states import ConnectionState

__all__ = ["MIGRATIONS", "SQLiteStore"]

#: Schema scripts; ``MIGRATIONS[n]`` takes the schema from version ``n`` to
#: ``n + 1``. Append only, never edit a released one. Statements are split on
#: ``;`` (``executescript`` would commit the migration transaction early), so
#: a script must not contain ``;`` inside a literal or a trigger.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE connections (
        id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        state_hash TEXT UNIQUE,
        external_id TEXT,
        account_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX connections_state ON connections (state);
    CREATE INDEX connections_external_id ON connections (external_id);
    CREATE INDEX connections_account_id ON connections (account_id);
    CREATE TABLE events (
        connection_id TEXT NOT NULL REFERENCES connections (id),
        sequence INTEGER NOT NULL,
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        data BLOB NOT NULL,
        UNIQUE (connection_id, sequence)
    );
    """,
)

# busy_timeout first: switching to WAL needs the file lock another process may hold.
_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)

_INSERT_CONNECTION = """
    INSERT INTO connections
        (id, version, state, state_hash, external_id, account_id, created_at, updated_at, data)
    VALUES
        (:id, :version, :state, :state_hash, :external_id, :account_id,
         :created_at, :updated_at, :data)
"""

_UPDATE_CONNECTION = """
    UPDATE connections
    SET version = :version, state = :state, state_hash = :state_hash,
        external_id = :external_id, account_id = :account_id,
        created_at = :created_at, updated_at = :updated_at, data = :data
    WHERE id = :id AND version = :expected_version
"""

_INSERT_EVENT = "INSERT INTO events (connection_id, sequence, data) VALUES (?, ?, ?)"


@final
@attrs.define(eq=False)
class SQLiteStore:
    """
    A :class:`~awx_connection.Store` in an SQLite file at *path*.

    Every process that opens the same file sees the same connections. Call
    :meth:`open` before use and :meth:`aclose` after.
    """

    path: str | os.PathLike[str]
    _db: aiosqlite.Connection | None = attrs.field(default=None, init=False)
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    async def open(self) -> None:
        """Open the file (creating it if needed) and apply missing migrations. Idempotent."""
        async with self._lock:
            if self._db is not None:
                return
            with _errors(f"open of {self._where}"):
                # isolation_level=None: no implicit BEGINs; transactions are ours alone.
                db = await aiosqlite.connect(os.fspath(self.path), isolation_level=None)
                try:
                    for pragma in _PRAGMAS:
                        await _execute(db, pragma)
                    await _migrate(db)
                except BaseException:
                    await db.close()
                    raise
            self._db = db

    async def aclose(self) -> None:
        """Close the file. Idempotent; :meth:`open` may be called again."""
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with _errors(f"close of {self._where}"):
                    await db.close()

    async def schema_version(self) -> int:
        """The number of :data:`MIGRATIONS` applied to the file."""
        async with self._lock:
            db = self._require("schema_version")
            with _errors(f"schema_version of {self._where}"):
                return await _schema_version(db)

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        """
        The latest record of *connection_id*, or ``None``.

        Raises:
            StoreError: The stored record does not decode.
        """
        rows = await self._fetch(
            f"get of connection {connection_id!r}",
            "SELECT id, data FROM connections WHERE id = ?",
            (connection_id,),
        )
        return _load_record(*rows[0]) if rows else None

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        """The connection whose pending authorization has this ``state`` hash."""
        rows = await self._fetch(
            "find_by_state_hash",
            "SELECT id, data FROM connections WHERE state_hash = ?",
            (state_hash,),
        )
        return _load_record(*rows[0]) if rows else None

    async def list_connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
    ) -> list[ConnectionRecord]:
        """Every record matching all the given filters, oldest first."""
        clauses = ["1"]
        params: list[str] = []
        if states is not None:
            if not states:
                return []
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(state.value for state in states)
        if external_id is not None:
            clauses.append("external_id = ?")
            params.append(external_id)
        if account_id is not None:
            clauses.append("account_id = ?")
            params.append(account_id)
        sql = (
            f"SELECT id, data FROM connections WHERE {' AND '.join(clauses)} "
            "ORDER BY created_at, id"
        )
        rows = await self._fetch("list_connections", sql, params)
        return [_load_record(*row) for row in rows]

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        """
        Store a new connection and its first event, in one transaction.

        Raises:
            StoreError: The id exists already, its ``state`` hash is taken, or
                SQLite failed.
            ValueError: The event belongs to another connection.
        """
        _check_event(record, event)
        async with self._transaction(f"insert of connection {record.id!r}") as db:
            await _execute(db, _INSERT_CONNECTION, _columns(record))
            await _execute(db, _INSERT_EVENT, _event_row(event))

    async def update(
        self, record: ConnectionRecord, *, expected_version: int, event: ConnectionEvent | None
    ) -> None:
        """
        Replace the record if the stored version is *expected_version*.

        Raises:
            VersionConflictError: The stored version differs (or the record is gone).
            StoreError: The ``state`` hash or the event sequence is taken, or
                SQLite failed; nothing was written.
            ValueError: ``record.version`` is not ``expected_version + 1``, or
                the event belongs to another connection (a caller bug,
                checked before the store is looked at).
        """
        _check_version(record, expected_version)
        if event is not None:
            _check_event(record, event)
        params = {**_columns(record), "expected_version": expected_version}
        async with self._transaction(f"update of connection {record.id!r}") as db:
            if await _execute(db, _UPDATE_CONNECTION, params) != 1:
                rows = list(
                    await db.execute_fetchall(
                        "SELECT version FROM connections WHERE id = ?", (record.id,)
                    )
                )
                actual: int | None = rows[0][0] if rows else None
                raise VersionConflictError(record.id, expected_version, actual)
            if event is not None:
                await _execute(db, _INSERT_EVENT, _event_row(event))

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        """The stored events of *connection_id* with ``sequence > after``, in order."""
        rows = await self._fetch(
            f"read_events of connection {connection_id!r}",
            "SELECT data FROM events WHERE connection_id = ? AND sequence > ? ORDER BY sequence",
            (connection_id, after),
        )
        return [_load_event(connection_id, data) for (data,) in rows]

    @property
    def _where(self) -> str:
        return f"file {os.fspath(self.path)!r}"

    def _require(self, action: str) -> aiosqlite.Connection:
        if self._db is None:
            msg = f"sqlite store: {action} failed: the store is not open; call open() first"
            raise StoreError(msg)
        return self._db

    async def _fetch(self, action: str, sql: str, params: Any) -> list[Any]:
        async with self._lock:
            db = self._require(action)
            with _errors(action):
                return list(await db.execute_fetchall(sql, params))

    @contextlib.asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self._require(action)
            with _errors(action):
                try:
                    await _execute(db, "BEGIN IMMEDIATE")
                    yield db
                    await _execute(db, "COMMIT")
                except BaseException:
                    # Queued after whatever ran, so it also undoes a BEGIN whose
                    # await was cancelled; a no-op when no transaction is open.
                    with contextlib.suppress(sqlite3.Error):
                        await db.rollback()
                    raise


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """Turn SQLite's errors into StoreError; their messages name columns, never values."""
    try:
        yield
    except sqlite3.Error as exc:
        msg = f"sqlite store: {action} failed ({type(exc).__name__}: {exc})"
        raise StoreError(msg) from exc


async def _execute(db: aiosqlite.Connection, sql: str, params: Any = ()) -> int:
    """Run one statement and return its row count, closing the cursor."""
    async with db.execute(sql, params) as cursor:
        return cursor.rowcount


async def _schema_version(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("SELECT version FROM awx_schema"))
    return int(rows[0][0]) if rows else 0


async def _migrate(db: aiosqlite.Connection) -> None:
    """Apply the missing :data:`MIGRATIONS` in one write transaction."""
    await _execute(db, "BEGIN IMMEDIATE")
    try:
        await _execute(db, "CREATE TABLE IF NOT EXISTS awx_schema (version INTEGER NOT NULL)")
        current = await _schema_version(db)
        if current > len(MIGRATIONS):
            msg = (
                f"sqlite store: schema version {current} is newer than this library "
                f"knows ({len(MIGRATIONS)}); upgrade awx-connection"
            )
            raise StoreError(msg)
        for script in MIGRATIONS[current:]:
            for statement in script.split(";"):
                if statement.strip():
                    await _execute(db, statement)
        if current < len(MIGRATIONS):
            await _execute(db, "DELETE FROM awx_schema")
            await _execute(db, "INSERT INTO awx_schema (version) VALUES (?)", (len(MIGRATIONS),))
        await _execute(db, "COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            await db.rollback()
        raise


def _columns(record: ConnectionRecord) -> dict[str, Any]:
    auth = record.authorization
    return {
        "id": record.id,
        "version": record.version,
        "state": record.state.value,
        "state_hash": None if auth is None else auth.state_hash,
        "external_id": record.external_id,
        "account_id": record.account_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "data": orjson.dumps(dump_record(record)),
    }


def _event_row(event: ConnectionEvent) -> tuple[str, int, bytes]:
    return (event.connection_id, event.sequence, orjson.dumps(dump_event(event)))


def _decode(connection_id: str, what: str, data: object) -> dict[str, Any]:
    try:
        value = orjson.loads(data)  # type: ignore[arg-type]  # checked by orjson
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        msg = f"connection {connection_id!r}: stored {what} is corrupt (not a JSON object)"
        raise StoreError(msg)
    return value


def _load_record(connection_id: str, data: object) -> ConnectionRecord:
    fields = _decode(connection_id, "record", data)
    if fields.get("id") != connection_id:
        msg = f"connection {connection_id!r}: stored record is corrupt (id mismatch)"
        raise StoreError(msg)
    return load_record(fields)


def _load_event(connection_id: str, data: object) -> ConnectionEvent:
    fields = _decode(connection_id, "event", data)
    try:
        return load_event(fields)
    except StoreError as exc:
        raise StoreError(f"connection {connection_id!r}: {exc}") from None
