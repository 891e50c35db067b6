"""
The PostgreSQL store: connections shared by every replica of a service.

Why it is built this way:

* **An asyncpg pool**, created by :meth:`PostgresStore.open` and closed by
  :meth:`PostgresStore.aclose`. Every operation borrows one connection for
  one statement or one transaction, so coroutines never share a transaction
  (which the SQLite store needs a lock for) and replicas scale with the pool.
* **Everything lives in one schema** (``awx_connection`` by default), named
  by a validated, quoted identifier, so several deployments (or test runs)
  can share a database without seeing each other. Its statements and
  numbered migrations (:data:`MIGRATIONS`, run under an advisory lock) are
  in :mod:`._postgres_sql`.
* **The public methods are** :class:`~._sql.SQLStore`'s, shared with the
  SQLite store (checks, statements, decoding); this module supplies the
  pool, the transactions, the retries and the listing's SQL.
* **Compare-and-swap is one statement**, ``UPDATE ... WHERE id = $1 AND
  version = $2``: PostgreSQL's row lock decides, across replicas, which
  writer wins; a loser re-evaluates the condition after the winner commits
  and updates nothing. The record and its event share one transaction.
* **The outbox is commit-ordered, at a price.** ``BIGSERIAL`` positions are
  handed out when a row is inserted, not when its transaction commits, so a
  reader could see position 8 committed while 7 is still in flight, move its
  offset past 8, and never see 7. To prevent it, every transaction that
  inserts an event first takes a second transaction-level advisory lock
  (again derived from the schema name), right after its compare-and-swap
  and before the event ``INSERT``. Event-writing transactions therefore take
  positions and commit one at a time, in position order, and a reader
  holding position *p* has seen everything below *p* that will ever commit.
  The trade-off: event writes of one schema are serialized for the length of
  an ``INSERT`` and a ``COMMIT`` (two round trips plus the WAL flush), which
  caps them at roughly a thousand or a few thousand per second (about 1,400/s
  measured with 20 concurrent writers against a local server). Connection
  state changes are rare (a token refresh per connection every few
  minutes), so this is far from the limit; record-only writes
  (``event=None``), leases and reads never take the lock. Taking it *after*
  the compare-and-swap means losers of a race never queue on it; and its
  holder needs no row lock it does not already have (the event's
  foreign-key check reads the connection row the transaction updated), so
  it cannot deadlock. A rolled-back transaction leaves a gap in the
  positions, which readers simply never see.
* **LISTEN/NOTIFY wakes waiters across replicas** (:mod:`._postgres_listen`):
  a write notifies inside its transaction, so the notification goes out at
  commit and only if it commits; a waiter woken re-reads the database, and
  re-reads every ``recheck_interval`` seconds (0.5 by default) regardless.
* **The record is stored whole** as the JSON of
  :func:`~awx_connection._records.dump_record` (``TEXT`` since migration 3,
  secrets sealed with the :class:`~awx_connection.KeyRing`); the other
  columns are copies for filtering and constraints, never read back.
  Nothing queries inside the JSON, and ``JSONB`` made the server render
  every row back to text on each read. Leases are two columns
  outside the JSON, so taking one does not change the record's version.
* **Failures are typed** (:mod:`._postgres_errors`): connection-level
  failures become :class:`~awx_connection.StoreUnavailableError`, other
  database errors :class:`~awx_connection.StoreError`, and no message
  quotes a row value. Reads and naturally idempotent writes
  (leases, which are idempotent for their owner; offsets, which only move
  forward) are retried with exponential backoff and full jitter.
  ``insert`` and ``update`` are retried only when the failure provably
  happened before ``COMMIT`` was sent (a transaction without a ``COMMIT``
  never commits, whatever the network did). A failure during ``COMMIT`` is
  ambiguous, since the write may have committed with its acknowledgement
  lost, so it raises :class:`~awx_connection.StoreUnavailableError` and the
  caller must re-read. ``update`` is one statement (record, outbox lock and
  event), committed on its own in one round trip: with no ``COMMIT`` of its
  own to lose it is retried, and a retry that finds the row already exactly
  its own (an earlier try committed, its answer was lost) is a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
)
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, final

import asyncpg
import attrs
import orjson

from .._crypto import KeyRing
from .._errors import ConfigurationError, StoreError, StoreUnavailableError, VersionConflictError
from .._records import dump_event, dump_record
from .._retry import Backoff, Retries
from .._webhooks import WebhookClaim
from ._common import StoredRow, check_keys, load_page, load_stored_record
from ._postgres_errors import dsn_problem, translate
from ._postgres_listen import Listener, close_quietly
from ._postgres_sql import MIGRATIONS, PostgresStatements, check_schema, migrate, schema_version
from ._sql import SQLStore

if TYPE_CHECKING:
    from .._events import ConnectionEvent
    from .._records import ConnectionRecord
    from .._states import ConnectionState
    from ._sql import PrunedTable

__all__ = ["MIGRATIONS", "PostgresStore"]

_log = logging.getLogger("awx_connection.stores")

_T = TypeVar("_T")

_ROTATE_PAGE: Final = 200
_CLOSE_TIMEOUT: Final = 10.0


#: A schema name: an unquoted-style identifier, short enough that
#: ``<schema>_connections`` fits PostgreSQL's 63-byte channel names.
_SCHEMA_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,50}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        msg = f"postgres store: {name} must be positive, got {value!r}"
        raise ConfigurationError(msg)


@final
@attrs.define(eq=False)
class _Attempt:
    """What one try of a write got to: past ``COMMIT``, the outcome is unknown."""

    committing: bool = False
    #: A single-statement write was sent at least once (it may have committed).
    sent: bool = False


def _validate_dsn(_instance: object, _attribute: object, value: str) -> None:
    problem = dsn_problem(value)
    if problem is not None:
        # Never the DSN itself: it may carry a password.
        msg = f"postgres store: malformed database URL: {problem}"
        raise ConfigurationError(msg)


def _validate_schema(_instance: object, _attribute: object, value: str) -> None:
    if not isinstance(value, str) or not _SCHEMA_RE.fullmatch(value):
        msg = (
            f"postgres store: schema {value!r} must match [A-Za-z_][A-Za-z0-9_]* "
            "and be at most 51 characters"
        )
        raise ConfigurationError(msg)


@final
@attrs.define(eq=False)
class PostgresStore(SQLStore):
    """
    A :class:`~awx_connection.Store` in a PostgreSQL schema.

    Every process (replica) that opens the same *dsn* and *schema* sees the
    same connections, events, leases and consumer offsets. Call :meth:`open`
    before use (it creates the pool and applies missing migrations) and
    :meth:`aclose` after; :meth:`migrate` and :meth:`schema_version` also
    work unopened, on a connection of their own. Every method keeps the
    promises of the :class:`~awx_connection.Store` protocol, whose
    docstrings it inherits.

    Args:
        dsn: A libpq-style URL, ``postgresql://user:password@host:5432/db``.
            Never shown in messages or the ``repr``. Checked here as asyncpg
            will read it (scheme, brackets, every host's port), so a
            malformed URL is a :class:`~awx_connection.ConfigurationError`
            now rather than a bare ``ValueError`` from :meth:`open`.
        keys: Seals every secret at rest. ``None`` would store them in plain
            text, and is a :class:`~awx_connection.ConfigurationError` unless
            *allow_plaintext* is given too.
        allow_plaintext: Accept ``keys=None`` (tests of plaintext handling);
            without it a forgotten key ring cannot go unnoticed.
        schema: Where the tables live; created if missing.
        create: Let :meth:`open` create the schema and apply missing
            migrations (the default). ``create=False`` only checks that the
            schema exists at this library's version, writing nothing, and
            raises :class:`~awx_connection.StoreNotMigratedError` otherwise
            (for tools that must not set up a store by accident;
            :meth:`migrate` still migrates).
        min_size: The fewest connections the pool keeps open.
        max_size: The most connections the pool opens.
        retry_attempts: Tries of an idempotent operation (and of ``open``)
            before :class:`~awx_connection.StoreUnavailableError`.
        retry_base: The first backoff ceiling in seconds; it doubles per try
            and each sleep is uniform in ``[0, ceiling]`` (full jitter).
        recheck_interval: How often waiters re-read the database even
            without a notification (seconds).
        connect_timeout: Seconds to establish one database connection.
        command_timeout: Seconds one statement may take.
        application_name: Shown in ``pg_stat_activity`` for every connection
            of this store (overrides one given in the *dsn*).
    """

    _name: ClassVar[str] = "postgres"
    # Rows already on the primary key are skipped without decrypting.
    _decrypt_sealed: ClassVar[bool] = False

    dsn: str = attrs.field(repr=False, validator=_validate_dsn)
    keys: KeyRing | None = attrs.field(kw_only=True)
    allow_plaintext: bool = attrs.field(default=False, kw_only=True)
    schema: str = attrs.field(default="awx_connection", kw_only=True, validator=_validate_schema)
    create: bool = attrs.field(default=True, kw_only=True)
    min_size: int = attrs.field(default=1, kw_only=True)
    max_size: int = attrs.field(default=10, kw_only=True)
    retry_attempts: int = attrs.field(default=5, kw_only=True)
    retry_base: float = attrs.field(default=0.05, kw_only=True)
    recheck_interval: float = attrs.field(default=0.5, kw_only=True)
    connect_timeout: float = attrs.field(default=10.0, kw_only=True)
    command_timeout: float = attrs.field(default=30.0, kw_only=True)
    application_name: str = attrs.field(default="awx-connection", kw_only=True)
    #: Events (and webhook ids) deleted per statement by :meth:`prune_events`.
    prune_batch: int = attrs.field(default=5000, kw_only=True)

    _sql: PostgresStatements = attrs.field(init=False, repr=False)
    _pool: Any = attrs.field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False, repr=False)
    #: Wakes wait_for_update and wait_for_events on other replicas' commits.
    _listener: Listener = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        check_keys("postgres", self.keys, allow_plaintext=self.allow_plaintext)
        if not 1 <= self.min_size <= self.max_size:
            msg = (
                f"postgres store: need 1 <= min_size <= max_size, "
                f"got {self.min_size} and {self.max_size}"
            )
            raise ConfigurationError(msg)
        if self.retry_attempts < 1:
            msg = f"postgres store: retry_attempts must be at least 1, got {self.retry_attempts}"
            raise ConfigurationError(msg)
        if self.retry_base < 0:
            msg = f"postgres store: retry_base must not be negative, got {self.retry_base!r}"
            raise ConfigurationError(msg)
        _check_positive("recheck_interval", self.recheck_interval)
        _check_positive("connect_timeout", self.connect_timeout)
        _check_positive("command_timeout", self.command_timeout)
        self._sql = PostgresStatements(self.schema)
        self._listener = Listener(
            self.schema,
            self._sql.connections_channel,
            self._sql.events_channel,
            self.recheck_interval,
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """
        Create the pool and apply missing migrations (with ``create=False``:
        check that none is missing). Idempotent.

        Raises:
            StoreUnavailableError: The database stayed unreachable through
                every retry.
            StoreNotMigratedError: With ``create=False``: the schema does not
                exist or is older than this library's.
            StoreError: The schema is newer than this library, or the
                database refused (permissions, authentication).
        """
        async with self._lock:
            if self._pool is not None:
                return
            pool = await self._retrying("open", self._create_pool, retry=True, write=False)
            try:
                await self._retrying(
                    "migration" if self.create else "open",
                    lambda: self._migrate_on(pool) if self.create else self._check_on(pool),
                    retry=True,
                    write=False,
                )
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
            self._listener.active = True

    async def aclose(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
            self._listener.active = False
            await self._listener.close()
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
                except Exception as exc:  # closing a dead pool is not worth failing for
                    _log.warning(
                        "postgres store: pool of schema %r did not close cleanly (%s); terminated",
                        self.schema,
                        type(exc).__name__,
                    )
                    pool.terminate()
            self._listener.wake_everyone()

    async def migrate(self) -> int:
        """
        Apply the missing :data:`MIGRATIONS`, creating the schema if needed.

        Safe to run from several processes at once (one migrates, the others
        find nothing to do). Works on an unopened store too (the CLI's
        ``db migrate``), with a connection of its own.

        Returns:
            How many migrations this call applied (0 when up to date).

        Raises:
            StoreError: The schema is newer than this library knows.
            StoreUnavailableError: The database stayed unreachable.
        """
        return await self._on_any_connection("migration", lambda c: migrate(c, self._sql))

    async def schema_version(self) -> int:
        return await self._on_any_connection(
            "schema_version", lambda c: schema_version(c, self._sql)
        )

    # --- what SQLStore runs ---------------------------------------------------------------

    def _one(
        self, action: str, sql: str, args: tuple[Any, ...], *, write: bool = False
    ) -> Awaitable[Any]:
        return self._run(action, lambda connection: connection.fetchrow(sql, *args), write=write)

    def _all(self, action: str, sql: str, args: tuple[Any, ...]) -> Awaitable[list[Any]]:
        return self._run(action, lambda connection: connection.fetch(sql, *args))

    def _execute(self, action: str, sql: str, args: tuple[Any, ...]) -> Awaitable[object]:
        return self._run(action, lambda connection: connection.execute(sql, *args), write=True)

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
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            params.append([state.value for state in states])
            clauses.append(f"state = ANY(${len(params)}::text[])")
        if external_id is not None:
            params.append(external_id)
            clauses.append(f"external_id = ${len(params)}")
        if account_id is not None:
            params.append(account_id)
            clauses.append(f"account_id = ${len(params)}")

        async def fetch(after: tuple[float, str] | None, wanted: int | None) -> list[Any]:
            # A page is a range of the connections_created index.
            page_clauses = list(clauses)
            page_params = list(params)
            if after is not None:
                page_params.extend(after)
                n = len(page_params)
                page_clauses.append(f"(created_at, id) > (${n - 1}, ${n})")
            where = f" WHERE {' AND '.join(page_clauses)}" if page_clauses else ""
            sql = f"{self._sql.list_all}{where} ORDER BY created_at, id"
            if wanted is not None:
                page_params.append(wanted)
                sql += f" LIMIT ${len(page_params)}"
            rows = await self._all(method, sql, tuple(page_params))
            return [(row["id"], row["data"], row["created_at"]) for row in rows]

        return await load_page(fetch, load, after=after, limit=limit)

    def _insert(self, record: ConnectionRecord, event: ConnectionEvent) -> Awaitable[None]:
        columns = self._columns(record)
        event_row = _event_row(event)

        async def op(connection: Any, attempt: _Attempt) -> None:
            async with _transaction(connection, attempt):
                await connection.execute(self._sql.insert, *columns)
                # The outbox lock: positions are taken and committed in one order.
                await connection.execute(self._sql.outbox_lock)
                await connection.execute(self._sql.insert_event, *event_row)

        return self._write(f"insert of connection {record.id!r}", op)

    def _update(
        self,
        record: ConnectionRecord,
        expected_version: int,
        event: ConnectionEvent | None,
        release_lease: str | None,
    ) -> Awaitable[None]:
        columns = self._columns(record)
        event_row = None if event is None else _event_row(event)
        sql = self._sql

        async def op(connection: Any, attempt: _Attempt) -> None:
            # One statement, so no COMMIT of ours to lose: a failure is retried
            # (committing stays False). If an earlier try did commit before
            # its answer was lost, the retry's compare-and-swap misses, and
            # the row, read back, is exactly ours: that is success.
            resent = attempt.sent
            attempt.sent = True
            if event_row is None:
                rows = await connection.fetch(sql.update, *columns, expected_version, release_lease)
                written = len(rows)
            else:
                row = await connection.fetchrow(
                    sql.update_with_event, *columns, expected_version, release_lease, *event_row
                )
                written = row["written"]
            if written:
                return
            stored = await connection.fetchrow(sql.get, record.id)
            if (
                resent
                and stored is not None
                and load_stored_record(stored["id"], stored["data"], self.keys) == record
            ):
                return
            actual = await connection.fetchval(sql.version, record.id)
            raise VersionConflictError(record.id, expected_version, actual)

        return self._write(f"update of connection {record.id!r}", op)

    def _wait_for_update(
        self, connection_id: str, after_version: int, timeout: float
    ) -> Awaitable[ConnectionRecord | None]:
        async def check() -> ConnectionRecord | None:
            record = await self.get(connection_id)
            return record if record is not None and record.version > after_version else None

        return self._listener.wait_for_update(connection_id, check, timeout, self._connect)

    async def wait_for_events(self, *, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        async def check() -> bool | None:
            found = await self._run(
                "wait_for_events",
                lambda connection: connection.fetchval(self._sql.has_events, after),
            )
            return True if found else None

        return bool(await self._listener.wait_for_events(check, timeout, self._connect))

    async def _prune(self, table: PrunedTable, before: float) -> int:
        """
        ``prune_batch`` rows per statement (each its own transaction), so a
        prune of millions is many short transactions rather than one long
        one holding row locks and bloating the WAL. A batch is idempotent
        (it deletes what is old), so a lost one is simply retried.
        """
        sql = self._sql.prune_events if table == "events" else self._sql.prune_webhooks
        deleted = 0
        while True:
            count = int(
                await self._run(
                    "prune_events",
                    lambda connection: connection.fetchval(sql, before, self.prune_batch),
                    write=True,
                )
            )
            deleted += count
            if count < self.prune_batch:
                return deleted

    def _claim_webhook(
        self, event_id: str, owner: str, now: float, until: float
    ) -> Awaitable[WebhookClaim]:
        sql = self._sql

        async def op(connection: Any) -> WebhookClaim:
            # One upsert decides (the row lock orders concurrent claims, across
            # replicas); retried when unavailable, since the same owner's
            # repeat of a claim that did commit finds it its own.
            if await connection.fetchval(sql.claim_webhook, event_id, owner, now, until):
                return WebhookClaim.CLAIMED
            row = await connection.fetchrow(sql.webhook_claim, event_id)
            handled = row is not None and row["claimed_until"] is None
            return WebhookClaim.HANDLED if handled else WebhookClaim.BUSY

        return self._run("claim_webhook", op, retry=True, write=True)

    async def _rotation_rows(self) -> AsyncGenerator[StoredRow, None]:
        """Every row as ``(id, version, data)``, read a page at a time in id order."""
        after = ""
        while True:
            rows = await self._all("rotate_keys", self._sql.rotate_page, (after, _ROTATE_PAGE))
            if not rows:
                return
            after = rows[-1]["id"]
            for row in rows:
                yield row["id"], row["version"], row["data"]

    async def _reseal(self, connection_id: str, version: int, sealed: bytes) -> bool:
        # Retried when unavailable: same version, same plaintext, so a
        # repeat after a lost acknowledgement is harmless.
        written = await self._one(
            f"rotate_keys of connection {connection_id!r}",
            self._sql.rotate_write,
            (connection_id, version, sealed.decode()),
            write=True,
        )
        return written is not None

    # --- internals: running operations ----------------------------------------------------

    def _require(self, action: str) -> Any:
        pool = self._pool
        if pool is None:
            msg = f"postgres store: {action} failed: the store is not open; call open() first"
            raise StoreError(msg)
        return pool

    async def _connect(self) -> Any:
        return await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            server_settings={"application_name": self.application_name},
        )

    async def _create_pool(self) -> Any:
        return await asyncpg.create_pool(
            self.dsn,
            reset=_no_reset,
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            server_settings={"application_name": self.application_name},
        )

    async def _migrate_on(self, pool: Any) -> int:
        async with pool.acquire() as connection:
            return await migrate(connection, self._sql)

    async def _check_on(self, pool: Any) -> int:
        async with pool.acquire() as connection:
            return await check_schema(connection, self._sql)

    async def _on_any_connection(self, action: str, op: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run *op* (idempotent) on a pooled connection, or a connection of its own if unopened."""
        if self._pool is not None:
            return await self._run(action, op)

        async def once() -> _T:
            connection = await self._connect()
            try:
                return await op(connection)
            finally:
                await close_quietly(connection)

        return await self._retrying(action, once, retry=True, write=False)

    async def _run(
        self,
        action: str,
        op: Callable[[Any], Awaitable[_T]],
        *,
        retry: bool = True,
        write: bool = False,
    ) -> _T:
        """Run *op* on a pooled connection; retry unavailability only if *retry*."""

        async def once() -> _T:
            async with self._require(action).acquire() as connection:
                return await op(connection)

        return await self._retrying(action, once, retry=retry, write=write)

    async def _write(self, action: str, op: Callable[[Any, _Attempt], Awaitable[None]]) -> None:
        """
        Run a write transaction, retrying only failures before its ``COMMIT``.

        A connection lost (or a server shutting down) before ``COMMIT`` was
        sent leaves nothing committed, so trying again on a fresh connection
        is exact. Once ``COMMIT`` is sent, a failure is ambiguous and is
        raised. Timeouts are not retried (the database is slow, not gone).
        """
        attempt = _Attempt()

        async def once() -> None:
            attempt.committing = False
            async with self._require(action).acquire() as connection:
                await op(connection, attempt)

        def retryable(exc: BaseException) -> bool:
            return not attempt.committing and not isinstance(exc, TimeoutError)

        await self._retrying(action, once, retry=retryable, write=True)

    async def _retrying(
        self,
        action: str,
        once: Callable[[], Awaitable[_T]],
        *,
        retry: bool | Callable[[BaseException], bool],
        write: bool,
    ) -> _T:
        async for attempt in Retries(Backoff(self.retry_base), limit=self.retry_attempts):
            try:
                return await once()
            except Exception as exc:
                error = translate(action, exc, write=write)
                if error is None:
                    raise
                again = retry(exc) if callable(retry) else retry
                if isinstance(error, StoreUnavailableError) and again and not attempt.last:
                    continue
                if isinstance(error, StoreUnavailableError):
                    raise error from exc
                raise error from None  # the server's DETAIL may quote row values
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    # --- internals: rows ------------------------------------------------------------------

    def _columns(self, record: ConnectionRecord) -> tuple[Any, ...]:
        auth = record.authorization
        return (
            record.id,
            record.version,
            record.state.value,
            None if auth is None else auth.state_hash,
            record.external_id,
            record.account_id,
            record.created_at,
            record.updated_at,
            orjson.dumps(dump_record(record, self.keys)).decode(),
        )


# --- helpers ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _transaction(connection: Any, attempt: _Attempt) -> AsyncIterator[None]:
    """A transaction that marks *attempt* as committing right before ``COMMIT`` is sent."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            await transaction.rollback()
        raise
    attempt.committing = True
    await transaction.commit()


async def _no_reset(_connection: Any) -> None:
    """
    The pool's reset on release, made a no-op.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` every time a connection goes back to the pool:
    one more round trip per store call (about 120 µs here, measured in
    docs/performance.md). This store leaves nothing for it to reset: its
    advisory locks are transaction-level, it never ``SET``s or declares
    cursors, and ``LISTEN`` lives on a connection of its own, outside the
    pool. A connection returned inside a failed transaction is still
    cleaned up by the pool (it rolls back before calling reset).
    """


def _event_row(event: ConnectionEvent) -> tuple[Any, ...]:
    return (
        event.connection_id,
        event.sequence,
        event.at,
        orjson.dumps(dump_event(event)).decode(),
    )
