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
* **The schema comes from numbered migrations** (:data:`MIGRATIONS`), applied
  under ``BEGIN IMMEDIATE``: of two processes opening a new file together,
  one migrates and the other then finds nothing left to do.
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
* **A row that does not decrypt is never reset.** :meth:`SQLiteStore.get`
  raises :class:`~awx_connection.DecryptionError`;
  :meth:`SQLiteStore.list_connections` logs it (logger
  ``awx_connection.stores``) and leaves it out, so one bad row cannot hide
  every other connection. Nothing is rewritten or deleted.
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
import urllib.parse
from typing import TYPE_CHECKING, Any, TypeVar, final

import attrs
import orjson

from .._crypto import KeyRing
from .._errors import StoreError, StoreNotMigratedError, StoreUnavailableError, VersionConflictError
from .._records import dump_event, dump_record
from .._webhooks import WebhookClaim
from ._common import (
    StoredRow,
    check_event,
    check_filters,
    check_keys,
    check_limit,
    check_record,
    check_text,
    check_version,
    load_listed,
    load_page,
    load_stored_event,
    load_stored_record,
    load_summaries,
    rotate_keys,
    wait_until,
    wake,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Iterator

    from .._events import ConnectionEvent
    from .._records import ConnectionRecord, ConnectionSummary
    from .._states import ConnectionState

__all__ = ["MIGRATIONS", "SQLiteStore"]

_T = TypeVar("_T")

#: First and longest pause between two polls of wait_for_update / wait_for_events.
_POLL_FIRST = 0.005
_POLL_MAX = 0.1
_POLL = (_POLL_FIRST, _POLL_MAX)

#: Real seconds prune_events pauses at least between two batches, for other writers.
_PRUNE_PAUSE = 0.01

#: Rows read per query by rotate_keys, so a large file is not loaded at once.
_ROTATE_PAGE = 500

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
    # 2: leases, event times (for pruning) and durable consumer offsets.
    """
    ALTER TABLE connections ADD COLUMN lease_owner TEXT;
    ALTER TABLE connections ADD COLUMN lease_until REAL;
    ALTER TABLE events ADD COLUMN at REAL;
    UPDATE events SET at = json_extract(CAST(data AS TEXT), '$.at');
    CREATE INDEX events_at ON events (at);
    CREATE TABLE consumers (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    );
    """,
    # 3: ids of handled webhooks (deduplication of at-least-once deliveries).
    """
    CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        at REAL NOT NULL
    );
    CREATE INDEX webhooks_at ON webhooks (at);
    """,
    # 4: the key list_connections orders and pages by, so that a page is an
    # index range rather than a scan and sort of the whole table (ConnectionManager.load).
    """
    CREATE INDEX connections_created ON connections (created_at, id);
    """,
    # 5: webhook ids are claimed before they are handled (concurrent
    # deliveries of one event act once); NULL claimed_until means handled.
    """
    ALTER TABLE webhooks ADD COLUMN claimed_by TEXT;
    ALTER TABLE webhooks ADD COLUMN claimed_until REAL;
    """,
)

# Run after busy_timeout, by _enable_wal. secure_delete: a replaced row's old
# bytes are zeroed rather than left in free space, so tokens written before
# encryption (or sealed with a retired key) do not linger in the file after
# rotate_keys (seal_plaintext=True for the former).
_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA secure_delete = ON",
)

#: How long open() keeps retrying the switch to WAL while other connections hold the file.
_WAL_PATIENCE = 5.0

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

_INSERT_EVENT = "INSERT INTO events (connection_id, sequence, at, data) VALUES (?, ?, ?, ?)"

_ACQUIRE_LEASE = """
    UPDATE connections SET lease_owner = :owner, lease_until = :until
    WHERE id = :id AND (lease_owner IS NULL OR lease_until <= :now OR lease_owner = :owner)
    RETURNING data
"""

_RELEASE_LEASE = (
    "UPDATE connections SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?"
)

_CLAIM_WEBHOOK = """
    INSERT INTO webhooks (id, at, claimed_by, claimed_until) VALUES (:id, :now, :owner, :until)
    ON CONFLICT (id) DO UPDATE
        SET at = excluded.at, claimed_by = excluded.claimed_by,
            claimed_until = excluded.claimed_until
        WHERE webhooks.claimed_until IS NOT NULL
            AND (webhooks.claimed_until <= :now OR webhooks.claimed_by = :owner)
    RETURNING 1
"""

_COMMIT_OFFSET = """
    INSERT INTO consumers (name, position) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)
"""


@final
@attrs.define(eq=False)
class SQLiteStore:
    """
    A :class:`~awx_connection.Store` in an SQLite file at *path*.

    Every process that opens the same file sees the same connections. Call
    :meth:`open` before use and :meth:`aclose` after.

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

    *create* (the default) lets :meth:`open` create the file and apply
    missing migrations. ``create=False`` opens only a file that exists and
    is at this library's schema, and writes nothing while opening: a
    missing file, or one without the schema or with an older one, is a
    :class:`~awx_connection.StoreNotMigratedError` (for tools that must not
    turn a mistyped path into a new, empty store).
    """

    path: str | os.PathLike[str]
    _keys: KeyRing | None = attrs.field(kw_only=True)
    _allow_plaintext: bool = attrs.field(default=False, kw_only=True)
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
                        executor, _connect, path, self.busy_timeout, self.create
                    )
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor = executor

    async def aclose(self) -> None:
        """Close the file. Idempotent; :meth:`open` may be called again."""
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
        """The number of :data:`MIGRATIONS` applied to the file."""
        return await self._call("schema_version", _schema_version)

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        """
        The latest record of *connection_id*, or ``None``.

        Raises:
            DecryptionError: A stored secret does not decrypt with the keys.
            StoreError: The stored record does not decode.
            InvalidArgumentError: *connection_id* is not a string or not valid text.
        """
        check_text("connection_id", connection_id)
        rows = await self._fetch(
            f"get of connection {connection_id!r}",
            "SELECT id, data FROM connections WHERE id = ?",
            (connection_id,),
        )
        return self._load(*rows[0]) if rows else None

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        """
        The connection whose pending authorization has this ``state`` hash.

        Raises:
            DecryptionError: A stored secret does not decrypt with the keys.
            StoreError: The stored record does not decode.
        """
        check_text("state_hash", state_hash)
        rows = await self._fetch(
            "find_by_state_hash",
            "SELECT id, data FROM connections WHERE state_hash = ?",
            (state_hash,),
        )
        return self._load(*rows[0]) if rows else None

    async def list_connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[ConnectionRecord]:
        """
        Every record matching all the given filters, oldest first: by
        ``(created_at, id)``, only keys greater than *after* if given, at most
        *limit* records if given.

        A row that does not decrypt or decode is logged as an error (naming
        the connection) and left out, so one bad row cannot take the whole
        listing down; the row itself is left untouched. It does not count
        towards *limit*: the page is filled from the rows after it.

        Raises:
            ValueError: *limit* is less than 1.
            InvalidArgumentError: *external_id* or *account_id* is not text.
        """
        return await self._list(
            "list_connections",
            lambda rows: load_listed("sqlite", rows, self._keys),
            states=states,
            external_id=external_id,
            account_id=account_id,
            after=after,
            limit=limit,
        )

    async def list_summaries(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[ConnectionSummary]:
        """
        The rows :meth:`list_connections` would list, as summaries: JSON
        decoded, nothing decrypted (a keep-alive pass reads these).

        Raises:
            ValueError: *limit* is less than 1.
        """
        return await self._list(
            "list_summaries",
            lambda rows: load_summaries("sqlite", rows),
            states=states,
            after=after,
            limit=limit,
        )

    async def _list(
        self,
        method: str,
        load: Callable[[Iterable[tuple[str, object]]], list[_T]],
        *,
        states: Collection[ConnectionState] | None,
        after: tuple[float, str] | None,
        limit: int | None,
        external_id: str | None = None,
        account_id: str | None = None,
    ) -> list[_T]:
        """The rows matching the filters, oldest first, as *load* makes them."""
        check_filters(external_id=external_id, account_id=account_id)
        if limit is not None:
            check_limit(limit)
        paged = after is not None or limit is not None
        clauses = ["1"]
        params: list[Any] = []
        if states is not None:
            if not states:
                return []
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

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        """
        Store a new connection and its first event, in one transaction.

        Raises:
            StoreError: The id exists already, its ``state`` hash is taken, or
                SQLite failed.
            ValueError: The event belongs to another connection.
            InvalidArgumentError: A field of the record or event is not text.
        """
        check_event(record, event)
        check_record(record)
        columns = self._columns(record)
        event_row = _event_row(event)

        def op(db: sqlite3.Connection) -> None:
            db.execute(_INSERT_CONNECTION, columns)
            db.execute(_INSERT_EVENT, event_row)

        await self._transaction(f"insert of connection {record.id!r}", op)
        wake(self._waiters)

    async def update(
        self,
        record: ConnectionRecord,
        *,
        expected_version: int,
        event: ConnectionEvent | None,
        release_lease: str | None = None,
    ) -> None:
        """
        Replace the record if the stored version is *expected_version*; with
        *release_lease*, also give up that owner's lease, in the same transaction.

        Raises:
            VersionConflictError: The stored version differs (or the record is gone).
            StoreError: The ``state`` hash or the event sequence is taken, or
                SQLite failed; nothing was written.
            ValueError: ``record.version`` is not ``expected_version + 1``, or
                the event belongs to another connection (a caller bug,
                checked before the store is looked at).
            InvalidArgumentError: A field of the record or event is not text.
        """
        check_version(record, expected_version)
        if event is not None:
            check_event(record, event)
        check_record(record)
        params = {**self._columns(record), "expected_version": expected_version}
        event_row = None if event is None else _event_row(event)

        def op(db: sqlite3.Connection) -> None:
            if db.execute(_UPDATE_CONNECTION, params).rowcount != 1:
                row = db.execute(
                    "SELECT version FROM connections WHERE id = ?", (record.id,)
                ).fetchone()
                raise VersionConflictError(record.id, expected_version, row and row[0])
            if event_row is not None:
                db.execute(_INSERT_EVENT, event_row)
            if release_lease is not None:
                db.execute(_RELEASE_LEASE, (record.id, release_lease))

        await self._transaction(f"update of connection {record.id!r}", op)
        wake(self._waiters)

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        """The stored events of *connection_id* with ``sequence > after``, in order."""
        check_text("connection_id", connection_id)
        rows = await self._fetch(
            f"read_events of connection {connection_id!r}",
            "SELECT data FROM events WHERE connection_id = ? AND sequence > ? ORDER BY sequence",
            (connection_id, after),
        )
        return [load_stored_event(connection_id, data) for (data,) in rows]

    async def acquire_lease(
        self, connection_id: str, owner: str, *, until: float, now: float
    ) -> ConnectionRecord | None:
        """
        Take or renew the connection's lease for *owner* until *until*.

        Granted when nobody holds it, when the holder's lease ended
        (``lease_until <= now``), or when *owner* holds it already. One
        conditional ``UPDATE ... RETURNING`` decides and reads the record,
        so two processes cannot both win and nothing can be written between
        the grant and the read. The record and its version are left alone.

        Returns:
            The stored record if *owner* now holds the lease; ``None`` when
            someone else does or the id is unknown.

        Raises:
            DecryptionError: The record does not decrypt (the lease is held).
        """
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        params = {"id": connection_id, "owner": owner, "until": until, "now": now}

        def op(db: sqlite3.Connection) -> Any:
            # Single statement: atomic without BEGIN/COMMIT; the cursor is
            # drained so the statement completes (RETURNING runs lazily).
            return db.execute(_ACQUIRE_LEASE, params).fetchall()

        rows = await self._call(f"acquire_lease of connection {connection_id!r}", op)
        return self._load(connection_id, rows[0][0]) if rows else None

    async def release_lease(self, connection_id: str, owner: str) -> None:
        """Give the lease up if *owner* holds it; otherwise do nothing."""
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        await self._call(
            f"release_lease of connection {connection_id!r}",
            lambda db: db.execute(_RELEASE_LEASE, (connection_id, owner)),
        )

    async def wait_for_update(
        self,
        connection_id: str,
        *,
        after_version: int,
        timeout: float,  # noqa: ASYNC109
    ) -> ConnectionRecord | None:
        """
        Wait up to *timeout* real seconds until the stored version exceeds *after_version*.

        Polls the file, so a write by another process is seen within 100 ms;
        returns at once if the version is already newer. A connection that
        does not exist yet counts as version 0.

        Returns:
            The newer record, or ``None`` on timeout.

        Raises:
            DecryptionError: The newer record does not decrypt.
        """
        check_text("connection_id", connection_id)
        action = f"wait_for_update of connection {connection_id!r}"

        async def newer() -> ConnectionRecord | None:
            rows = await self._fetch(
                action,
                "SELECT id, data FROM connections WHERE id = ? AND version > ?",
                (connection_id, after_version),
            )
            return self._load(*rows[0]) if rows else None

        return await wait_until(newer, timeout, self._waiters, poll=_POLL)

    async def read_outbox(
        self, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConnectionEvent]]:
        """
        ``(position, event)`` pairs with ``position > after``, in commit order, at most *limit*.

        Raises:
            ValueError: *limit* is less than 1.
        """
        check_limit(limit)
        rows = await self._fetch(
            "read_outbox",
            "SELECT position, connection_id, data FROM events WHERE position > ? "
            "ORDER BY position LIMIT ?",
            (after, limit),
        )
        return [
            (position, load_stored_event(connection_id, data))
            for position, connection_id, data in rows
        ]

    async def wait_for_events(self, *, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        """
        Wait up to *timeout* real seconds until an event with ``position > after`` exists.

        Polls like :meth:`wait_for_update`.

        Returns:
            ``True`` if there is one (at once if there already is), ``False`` on timeout.
        """

        async def exists() -> bool | None:
            rows = await self._fetch(
                "wait_for_events",
                "SELECT 1 FROM events WHERE position > ? LIMIT 1",
                (after,),
            )
            return True if rows else None

        return await wait_until(exists, timeout, self._waiters, poll=_POLL) is not None

    async def get_offset(self, consumer: str) -> int:
        """The committed position of *consumer* (0 if it never committed)."""
        check_text("consumer", consumer)
        rows = await self._fetch(
            f"get_offset of consumer {consumer!r}",
            "SELECT position FROM consumers WHERE name = ?",
            (consumer,),
        )
        return int(rows[0][0]) if rows else 0

    async def commit_offset(self, consumer: str, position: int) -> None:
        """
        Record that *consumer* processed everything up to *position*.

        An older position than the committed one is ignored (``max`` in the
        upsert): a consumer that restarted from a stale checkpoint, or a
        slower twin of it, must not make everyone re-read.
        """
        check_text("consumer", consumer)
        await self._call(
            f"commit_offset of consumer {consumer!r}",
            lambda db: db.execute(_COMMIT_OFFSET, (consumer, position)),
        )

    async def prune_events(self, *, before: float) -> int:
        """
        Delete the events whose ``at`` is older than *before*; return how many.

        They disappear from :meth:`read_events` and :meth:`read_outbox`
        alike. Positions are never reused, so consumers' offsets stay valid.
        Rows go ``prune_batch`` per transaction, with a pause between two,
        so other writers (of this store and of other processes) get the
        write lock in between: one DELETE of 2.5 million events held it for
        8 s, longer than their busy timeout, and a rotation's new tokens
        could not be stored meanwhile.
        """
        # Webhook ids older than the retention go too: Airwallex stops
        # retrying a delivery after about three days.
        await self._prune("webhooks", "id", before)
        return await self._prune("events", "position", before)

    async def _prune(self, table: str, key: str, before: float) -> int:
        """Delete *table*'s rows with ``at < before``, ``prune_batch`` per transaction."""
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

    async def claim_webhook(
        self, event_id: str, *, owner: str, now: float, until: float
    ) -> WebhookClaim:
        """
        Claim *event_id* for *owner* until *until*, unless handled or claimed by another.

        One upsert decides, so of two processes claiming the same id at
        once exactly one gets CLAIMED; a claim whose term ran out (its
        holder died) can be taken over, and the same owner's repeat (a
        retried call) is its own.
        """
        check_text("event_id", event_id)
        check_text("owner", owner)
        params = {"id": event_id, "owner": owner, "now": now, "until": until}

        def op(db: sqlite3.Connection) -> WebhookClaim:
            if db.execute(_CLAIM_WEBHOOK, params).fetchall():
                return WebhookClaim.CLAIMED
            row = db.execute("SELECT claimed_until FROM webhooks WHERE id = ?", (event_id,))
            found = row.fetchone()
            return WebhookClaim.HANDLED if found and found[0] is None else WebhookClaim.BUSY

        return await self._call("claim_webhook", op)

    async def finish_webhook(self, event_id: str, *, owner: str, at: float) -> None:
        """Mark *event_id* handled (remembered until pruned by *at*), if *owner* claimed it."""
        check_text("event_id", event_id)
        check_text("owner", owner)
        await self._call(
            "finish_webhook",
            lambda db: db.execute(
                "UPDATE webhooks SET at = ?, claimed_by = NULL, claimed_until = NULL "
                "WHERE id = ? AND claimed_by = ?",
                (at, event_id, owner),
            ),
        )

    async def release_webhook(self, event_id: str, *, owner: str) -> None:
        """Drop *owner*'s claim of an unhandled *event_id*, so a retry can claim it."""
        check_text("event_id", event_id)
        check_text("owner", owner)
        await self._call(
            "release_webhook",
            lambda db: db.execute(
                "DELETE FROM webhooks WHERE id = ? AND claimed_by = ? "
                "AND claimed_until IS NOT NULL",
                (event_id, owner),
            ),
        )

    async def rotate_keys(self, *, seal_plaintext: bool = False) -> int:
        """
        Re-encrypt every secret not sealed with the primary key; return how many rows changed.

        Every row is decrypted, so the call also proves the ring opens the
        whole store; rows already on the primary key are not rewritten, so a
        second run returns 0. Each row is rewritten by compare-and-swap on its version
        (which stays the same), so a concurrent write is never undone: the
        row is re-read and tried again. Give every process the new ring
        before rotating, or their writes keep sealing with the old key.

        A row holding a plaintext secret (written without keys, or tampered
        with: the two look the same) is not read but reported, like any
        unreadable row, unless *seal_plaintext*: then it is sealed, and
        logged (WARNING) by id. Pass it only for a store known to hold rows
        from before encryption (``awx-connection keys seal``).

        Raises:
            StoreError: The store has no keys; or some rows could not be read
                (each logged with its id; every other row was rotated and
                stays rotated, so the call can simply be repeated).
        """
        return await rotate_keys(
            "sqlite",
            self._keys,
            rows=self._rotation_rows,
            write=self._reseal,
            reread=self._reread,
            seal_plaintext=seal_plaintext,
            # Decrypted even when already on the primary key: a row sealed
            # under the primary's id with other key material must be reported.
            decrypt_sealed=True,
        )

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
        """Replace the row's data with *sealed* if its version is still *version*."""
        cursor = await self._call(
            f"rotate_keys of connection {connection_id!r}",
            lambda db: db.execute(
                "UPDATE connections SET data = ? WHERE id = ? AND version = ?",
                (sealed, connection_id, version),
            ),
        )
        return bool(cursor.rowcount)

    async def _reread(self, connection_id: str) -> tuple[int, object] | None:
        """The row's current ``(version, data)``, or ``None`` if it is gone."""
        rows = await self._fetch(
            f"rotate_keys of connection {connection_id!r}",
            "SELECT version, data FROM connections WHERE id = ?",
            (connection_id,),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def _load(self, connection_id: str, data: object) -> ConnectionRecord:
        return load_stored_record(connection_id, data, self._keys)

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
        return await self._call(action, lambda db: _in_transaction(db, op))


def _in_transaction(db: sqlite3.Connection, op: Callable[[sqlite3.Connection], _T]) -> _T:
    """*op* as one write transaction: committed whole, or rolled back whole."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = op(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.rollback()
        raise
    return result


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


def _connect(path: str, busy_timeout: float, create: bool) -> sqlite3.Connection:
    """
    Open, configure and migrate the file; runs on the store's thread.

    Without *create*, the file must exist (``mode=rw`` also refuses to create
    it if it vanishes after the check) and be at this library's schema,
    checked before anything is written to it (WAL, migrations).
    """
    # isolation_level=None: no implicit BEGINs; transactions are ours alone.
    if create:
        db = sqlite3.connect(path, isolation_level=None)
    else:
        if not os.path.exists(path):
            msg = f"sqlite store: no database at {path!r}; {_MIGRATE_HINT}"
            raise StoreNotMigratedError(msg)
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw"
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if not create:
            _check_schema(db, path)
        _enable_wal(db)
        for pragma in _PRAGMAS:
            db.execute(pragma)
        if create:
            _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _enable_wal(db: sqlite3.Connection) -> None:
    """
    Switch the file to WAL, retrying while it is locked.

    The switch needs the file to itself, and SQLite can answer "database is
    locked" at once, without its busy handler, while another connection is
    opening or migrating the same new file; so the retry is ours. It runs on
    the store's thread, where sleeping blocks nothing else.
    """
    deadline = time.monotonic() + _WAL_PATIENCE
    pause = _POLL_FIRST
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL").fetchall()
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)
        else:
            return


def _schema_version(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT version FROM awx_schema").fetchone()
    return int(row[0]) if row else 0


#: How a StoreNotMigratedError ends: the one command that creates and migrates.
_MIGRATE_HINT = "create or upgrade it with 'awx-connection db migrate'"


def _check_schema(db: sqlite3.Connection, path: str) -> None:
    """Raise unless the file is at this library's schema version; reads only."""
    has_schema = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'awx_schema'"
    ).fetchone()
    current = _schema_version(db) if has_schema else 0
    _check_not_newer(current)
    if current == 0:
        msg = f"sqlite store: {path!r} holds no awx-connection schema; {_MIGRATE_HINT}"
        raise StoreNotMigratedError(msg)
    if current < len(MIGRATIONS):
        msg = (
            f"sqlite store: {path!r} is at schema version {current}, older than this "
            f"library's {len(MIGRATIONS)}; {_MIGRATE_HINT}"
        )
        raise StoreNotMigratedError(msg)


def _check_not_newer(current: int) -> None:
    if current > len(MIGRATIONS):
        msg = (
            f"sqlite store: schema version {current} is newer than this library "
            f"knows ({len(MIGRATIONS)}); upgrade awx-connection"
        )
        raise StoreError(msg)


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the missing :data:`MIGRATIONS` in one write transaction."""

    def op(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS awx_schema (version INTEGER NOT NULL)")
        current = _schema_version(db)
        _check_not_newer(current)
        for script in MIGRATIONS[current:]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        if current < len(MIGRATIONS):
            db.execute("DELETE FROM awx_schema")
            db.execute("INSERT INTO awx_schema (version) VALUES (?)", (len(MIGRATIONS),))

    _in_transaction(db, op)


def _event_row(event: ConnectionEvent) -> tuple[str, int, float, bytes]:
    return (event.connection_id, event.sequence, event.at, orjson.dumps(dump_event(event)))
