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
* **One connection per store, on one thread of its own, and one trip to
  that thread per operation.** Every operation (a read, or a whole
  transaction with all its statements) is one function run on the store's
  single worker thread, so the event loop never blocks on the file lock or
  the disk, operations never interleave inside each other's transactions,
  and each costs one hand-off between the loop and the thread. (aiosqlite,
  used before, hands off every statement and every cursor close: a write
  transaction took six trips, about 4x the time, measured in
  docs/performance.md.) Cancelling the caller does not stop an operation
  the thread has started: like a network database that received a
  ``COMMIT``, it completes, and the compare-and-swap keeps that harmless.
* **The schema comes from numbered migrations** (:data:`MIGRATIONS`, in
  :mod:`._sqlite_sql` with every statement), applied under ``BEGIN
  IMMEDIATE``: of two processes opening a new file together, one migrates
  and the other then finds nothing left to do.
* **The public methods are** :class:`~._sql.SQLStore`'s, shared with the
  PostgreSQL store (checks, statements, decoding); this module supplies the
  thread, the transactions, the listing's SQL, the polling and the errors.
* **The record is stored whole**, as the JSON of
  :func:`~awx_connection._records.dump_record` in ``data``; the other
  columns are copies for filtering and the constraints, never read back.
* **Secrets are sealed with the store's** :class:`~awx_connection.KeyRing`
  (AES-256-GCM, bound to connection and field) before they reach ``data``,
  so a copied file, a backup or a stray WAL holds no usable token. ``keys``
  has no default, and ``keys=None`` needs ``allow_plaintext=True`` as well:
  running without encryption must be a visible decision.
* **Leases are columns beside the record** (``lease_owner``,
  ``lease_until``), not part of ``data``: taking one is a single
  conditional ``UPDATE`` that SQLite arbitrates across processes, and it
  never touches the version the compare-and-swap relies on.
* **The outbox is the events table.** ``position INTEGER PRIMARY KEY
  AUTOINCREMENT`` numbers events in commit order because SQLite admits one
  writer at a time, and ``AUTOINCREMENT`` never hands a pruned position out
  again, so a consumer's offset keeps meaning the same thing.
* **Waiting polls the file** (5 ms, doubling to 100 ms): the writer may be
  another process, which nothing in this one would notice. Writes made
  through this store object also wake its waiters at once.
* **A row that does not decrypt is never reset.** ``get`` raises
  :class:`~awx_connection.DecryptionError`; ``list_connections`` logs it
  (logger ``awx_connection.stores``) and leaves it out, so one bad row
  cannot hide every other connection. Nothing is rewritten or deleted.
  ``rotate_keys`` decrypts every row, those already on the primary key
  included, so it also proves the ring opens the whole file.
* **Pruning goes in batches** (``prune_batch`` events per transaction, a
  pause between two), so other writers, of this store and of other
  processes, get the write lock in between: one DELETE of 2.5 million
  events held it for 8 s, longer than their busy timeout, and a rotation's
  new tokens could not be stored meanwhile.
* SQLite errors become :class:`~awx_connection.StoreError` naming the
  operation and the connection, never any stored value.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, final

import attrs
import orjson

from .._crypto import KeyRing
from .._errors import StoreError, StoreUnavailableError, VersionConflictError
from .._records import dump_event, dump_record
from .._webhooks import WebhookClaim
from ._common import StoredRow, check_keys, load_page, load_stored_record, wait_until, wake
from ._sql import SQLStore, Statements
from ._sqlite_sql import (
    CLAIM_WEBHOOK,
    INSERT_CONNECTION,
    INSERT_EVENT,
    MIGRATIONS,
    POLL,
    RELEASE_LEASE,
    STATEMENTS,
    UPDATE_CONNECTION,
    WEBHOOK_CLAIM,
    connect,
    in_transaction,
    schema_version,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        Awaitable,
        Callable,
        Collection,
        Iterable,
        Iterator,
    )

    from .._events import ConnectionEvent
    from .._records import ConnectionRecord
    from .._states import ConnectionState
    from ._sql import PrunedTable

__all__ = ["MIGRATIONS", "SQLiteStore"]

_T = TypeVar("_T")

#: Real seconds prune_events pauses between two batches, for other writers.
_PRUNE_PAUSE = 0.01

#: Rows read per query by rotate_keys, so a large file is not loaded at once.
_ROTATE_PAGE = 500

#: The key of each table prune_events deletes from.
_PRUNED_KEY = {"events": "position", "webhooks": "id"}


@final
@attrs.define(eq=False)
class SQLiteStore(SQLStore):
    """
    A :class:`~awx_connection.Store` in an SQLite file at *path*.

    Every process that opens the same file sees the same connections. Call
    :meth:`open` before use and :meth:`aclose` after. Every method keeps the
    promises of the :class:`~awx_connection.Store` protocol, whose
    docstrings it inherits.

    *keys* (required) encrypts every secret before it is written.
    ``keys=None`` is a :class:`~awx_connection.ConfigurationError` unless
    *allow_plaintext* is also given: it means access and refresh tokens,
    codes and PKCE verifiers sit **in plaintext** in the file, its WAL and
    every copy or backup of them, and anyone who can read one can act as
    your customers (tests of plaintext handling, throwaway files). Once
    keys are added, rows written in plaintext no longer read (a
    :class:`~awx_connection.DecryptionError`: plaintext where an envelope
    belongs is what tampering looks like) until
    ``rotate_keys(seal_plaintext=True)`` seals them.
    """

    _name: ClassVar[str] = "sqlite"
    # Decrypted even when already on the primary key: a row sealed under the
    # primary's id with other key material must be reported.
    _decrypt_sealed: ClassVar[bool] = True
    _sql: ClassVar[Statements] = STATEMENTS

    path: str | os.PathLike[str]
    _keys: KeyRing | None = attrs.field(kw_only=True)
    _allow_plaintext: bool = attrs.field(default=False, kw_only=True)
    #: Let :meth:`open` create the file and apply missing migrations (the
    #: default). ``create=False`` opens only a file that exists and is at this
    #: library's schema, and writes nothing while opening: otherwise a
    #: :class:`~awx_connection.StoreNotMigratedError` (for tools that must not
    #: turn a mistyped path into a new, empty store).
    create: bool = attrs.field(default=True, kw_only=True)
    #: Seconds a write waits for another connection's write lock before it
    #: fails with StoreUnavailableError (SQLite's ``busy_timeout``).
    busy_timeout: float = attrs.field(default=5.0, kw_only=True)
    #: Events deleted per transaction by :meth:`prune_events`, so that
    #: pruning millions never holds the write lock for long.
    prune_batch: int = attrs.field(default=5000, kw_only=True)
    #: The connection lives on the executor's one thread, created and used only there.
    _db: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _executor: concurrent.futures.ThreadPoolExecutor | None = attrs.field(default=None, init=False)
    #: Serializes open() and aclose(); operations are serialized by the one thread.
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    #: Futures of this object's pollers; its own writes resolve them to skip the wait.
    _waiters: set[asyncio.Future[None]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        check_keys("sqlite", self._keys, allow_plaintext=self._allow_plaintext)

    @property
    def keys(self) -> KeyRing | None:
        """The key ring secrets are sealed with, or ``None`` (plaintext, by ``allow_plaintext``)."""
        return self._keys

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """
        Open the file (creating it if needed) and apply missing migrations. Idempotent.

        Raises:
            StoreNotMigratedError: With ``create=False``: the file does not
                exist, or holds no schema or an older one.
            StoreError: The schema is newer than this library, or SQLite failed.
        """
        async with self._lock:
            if self._db is not None:
                return
            executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="awx-connection-sqlite"
            )
            path = os.fspath(self.path)
            try:
                with _errors(f"open of {self._where}"):
                    self._db = await asyncio.get_running_loop().run_in_executor(
                        executor, connect, path, self.busy_timeout, self.create
                    )
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor = executor

    async def aclose(self) -> None:
        async with self._lock:
            db, self._db = self._db, None
            executor, self._executor = self._executor, None
            if db is None or executor is None:
                return
            try:
                with _errors(f"close of {self._where}"):
                    # Queued behind every operation already handed over.
                    await asyncio.get_running_loop().run_in_executor(executor, db.close)
            finally:
                executor.shutdown(wait=False)

    async def schema_version(self) -> int:
        return await self._call("schema_version", schema_version)

    # --- what SQLStore runs -----------------------------------------------------------------

    def _one(
        self, action: str, sql: str, args: tuple[Any, ...], *, write: bool = False
    ) -> Awaitable[Any]:
        # Drained with fetchall even for one row: a statement (an UPDATE ...
        # RETURNING above all, which runs lazily) completes, and its implicit
        # transaction ends, only once its cursor is exhausted.
        return self._call(action, lambda db: next(iter(db.execute(sql, args).fetchall()), None))

    def _all(self, action: str, sql: str, args: tuple[Any, ...]) -> Awaitable[list[Any]]:
        return self._call(action, lambda db: db.execute(sql, args).fetchall())

    def _execute(self, action: str, sql: str, args: tuple[Any, ...]) -> Awaitable[object]:
        # A single statement outside a transaction commits by itself (autocommit).
        return self._call(action, lambda db: db.execute(sql, args))

    async def _list(
        self,
        method: str,
        load: Callable[[Iterable[tuple[str, object]]], list[_T]],
        *,
        states: Collection[ConnectionState] | None,
        external_id: str | None,
        account_id: str | None,
        after: tuple[float, str] | None,
        limit: int | None,
    ) -> list[_T]:
        paged = after is not None or limit is not None
        clauses = ["1"]
        params: list[Any] = []
        if states is not None:
            # Paged, `+state` keeps SQLite off the state index: it then walks
            # connections_created in key order and stops after `limit` rows,
            # where the state index would sort every matching row per page
            # (10 s instead of 0.15 s for 100,000 rows in 100 pages).
            column = "+state" if paged else "state"
            clauses.append(f"{column} IN ({', '.join('?' * len(states))})")
            params.extend(state.value for state in states)
        if external_id is not None:
            clauses.append("external_id = ?")
            params.append(external_id)
        if account_id is not None:
            clauses.append("account_id = ?")
            params.append(account_id)
        if not paged:
            sql = (
                f"SELECT id, data FROM connections WHERE {' AND '.join(clauses)} "
                "ORDER BY created_at, id"
            )
            return load(await self._fetch(method, sql, params))

        async def fetch(after: tuple[float, str] | None, wanted: int | None) -> list[Any]:
            keyset = [] if after is None else ["(created_at, id) > (?, ?)"]
            sql = (
                f"SELECT id, data, created_at FROM connections "
                f"WHERE {' AND '.join([*clauses, *keyset])} ORDER BY created_at, id LIMIT ?"
            )
            limit_param = -1 if wanted is None else wanted  # LIMIT -1: no limit
            return await self._fetch(method, sql, [*params, *(after or ()), limit_param])

        return await load_page(fetch, load, after=after, limit=limit)

    async def _insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        columns = self._columns(record)
        event_row = _event_row(event)

        def op(db: sqlite3.Connection) -> None:
            db.execute(INSERT_CONNECTION, columns)
            db.execute(INSERT_EVENT, event_row)

        await self._transaction(f"insert of connection {record.id!r}", op)
        wake(self._waiters)

    async def _update(
        self,
        record: ConnectionRecord,
        expected_version: int,
        event: ConnectionEvent | None,
        release_lease: str | None,
    ) -> None:
        params = {**self._columns(record), "expected_version": expected_version}
        event_row = None if event is None else _event_row(event)

        def op(db: sqlite3.Connection) -> None:
            if db.execute(UPDATE_CONNECTION, params).rowcount != 1:
                row = db.execute(
                    "SELECT version FROM connections WHERE id = ?", (record.id,)
                ).fetchone()
                raise VersionConflictError(record.id, expected_version, row and row[0])
            if event_row is not None:
                db.execute(INSERT_EVENT, event_row)
            if release_lease is not None:
                db.execute(RELEASE_LEASE, (record.id, release_lease))

        await self._transaction(f"update of connection {record.id!r}", op)
        wake(self._waiters)

    def _wait_for_update(
        self, connection_id: str, after_version: int, timeout: float
    ) -> Awaitable[ConnectionRecord | None]:
        action = f"wait_for_update of connection {connection_id!r}"

        async def newer() -> ConnectionRecord | None:
            rows = await self._fetch(
                action,
                "SELECT id, data FROM connections WHERE id = ? AND version > ?",
                (connection_id, after_version),
            )
            return load_stored_record(rows[0][0], rows[0][1], self._keys) if rows else None

        return wait_until(newer, timeout, self._waiters, poll=POLL)

    async def wait_for_events(self, *, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        async def exists() -> bool | None:
            rows = await self._fetch(
                "wait_for_events",
                "SELECT 1 FROM events WHERE position > ? LIMIT 1",
                (after,),
            )
            return True if rows else None

        return await wait_until(exists, timeout, self._waiters, poll=POLL) is not None

    async def _prune(self, table: PrunedTable, before: float) -> int:
        key = _PRUNED_KEY[table]
        sql = f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE at < ? LIMIT ?)"
        params = (before, self.prune_batch)

        def batch(db: sqlite3.Connection) -> int:
            return db.execute(sql, params).rowcount

        deleted = 0
        while True:
            started = time.monotonic()
            count = await self._transaction("prune_events", batch)
            deleted += count
            if count < self.prune_batch:
                return deleted
            # At least as long as the batch held the lock: other writers get
            # half the time or more, however slow the disk is today.
            await asyncio.sleep(max(_PRUNE_PAUSE, time.monotonic() - started))

    def _claim_webhook(
        self, event_id: str, owner: str, now: float, until: float
    ) -> Awaitable[WebhookClaim]:
        params = {"id": event_id, "owner": owner, "now": now, "until": until}

        def op(db: sqlite3.Connection) -> WebhookClaim:
            # One upsert decides, so of two processes claiming the same id at
            # once exactly one gets CLAIMED.
            if db.execute(CLAIM_WEBHOOK, params).fetchall():
                return WebhookClaim.CLAIMED
            found = db.execute(WEBHOOK_CLAIM, (event_id,)).fetchone()
            return WebhookClaim.HANDLED if found and found[0] is None else WebhookClaim.BUSY

        return self._call("claim_webhook", op)

    async def _rotation_rows(self) -> AsyncGenerator[StoredRow, None]:
        """Every row as ``(id, version, data)``, read a page at a time in rowid order."""
        last_rowid = 0
        while True:
            rows = await self._fetch(
                "rotate_keys",
                "SELECT rowid, id, version, data FROM connections WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?",
                (last_rowid, _ROTATE_PAGE),
            )
            if not rows:
                return
            last_rowid = rows[-1][0]
            for _, connection_id, version, data in rows:
                yield connection_id, version, data

    async def _reseal(self, connection_id: str, version: int, sealed: bytes) -> bool:
        cursor = await self._call(
            f"rotate_keys of connection {connection_id!r}",
            lambda db: db.execute(
                "UPDATE connections SET data = ? WHERE id = ? AND version = ?",
                (sealed, connection_id, version),
            ),
        )
        return bool(cursor.rowcount)

    # --- internals --------------------------------------------------------------------------

    def _columns(self, record: ConnectionRecord) -> dict[str, Any]:
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
            "data": orjson.dumps(dump_record(record, self._keys)),
        }

    @property
    def _where(self) -> str:
        return f"file {os.fspath(self.path)!r}"

    async def _call(self, action: str, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """
        Run *op* on the store's thread: one hand-off, whatever *op* does.

        Outside a transaction each statement commits by itself (autocommit),
        which is all a single-statement operation needs.
        """
        db, executor = self._db, self._executor
        if db is None or executor is None:
            msg = f"sqlite store: {action} failed: the store is not open; call open() first"
            raise StoreError(msg)
        with _errors(action):
            return await asyncio.get_running_loop().run_in_executor(executor, op, db)

    async def _fetch(self, action: str, sql: str, params: Any) -> list[Any]:
        """The rows of one query."""
        return await self._call(action, lambda db: db.execute(sql, params).fetchall())

    async def _transaction(self, action: str, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run *op* inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the store's thread."""
        return await self._call(action, lambda db: in_transaction(db, op))


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """Turn SQLite's errors into StoreError; their messages name columns, never values."""
    try:
        yield
    except sqlite3.Error as exc:
        msg = f"sqlite store: {action} failed ({type(exc).__name__}: {exc})"
        # "database is locked" after busy_timeout: another connection held
        # the write lock; nothing was written, and a later try can succeed.
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        busy = code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        raise (StoreUnavailableError if busy else StoreError)(msg) from exc


def _event_row(event: ConnectionEvent) -> tuple[str, int, float, bytes]:
    return (event.connection_id, event.sequence, event.at, orjson.dumps(dump_event(event)))
