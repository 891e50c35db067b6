"""
The PostgreSQL store: connections shared by every replica of a service.

Why it is built this way:

* **An asyncpg pool**, created by :meth:`PostgresStore.open` and closed by
  :meth:`PostgresStore.aclose`. Every operation borrows one connection for
  one statement or one transaction, so coroutines never share a transaction
  (which the SQLite store needs a lock for) and replicas scale with the pool.
* **Everything lives in one schema** (``awx_connection`` by default), named
  by a validated, quoted identifier, so several deployments (or test runs)
  can share a database without seeing each other. Each schema has its own
  advisory-lock keys and NOTIFY channels, derived from its name.
* **Numbered migrations** (:data:`MIGRATIONS`) run in one transaction under
  ``pg_advisory_xact_lock`` on a key derived from the schema name: of several
  processes opening a new database together, one migrates and the others
  wait for it and then find nothing left to do. DDL is transactional in
  PostgreSQL, so a failed migration leaves the previous version intact.
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
* **LISTEN/NOTIFY wakes waiters across replicas.** A write calls
  ``pg_notify('<schema>_connections', id)`` or
  ``pg_notify('<schema>_events', position)`` inside its transaction;
  PostgreSQL delivers notifications at commit, and only if it commits. Each
  store keeps one dedicated listening connection (outside the pool, whose
  connection reset would ``UNLISTEN``), opened lazily by the first waiter
  and re-opened when lost. A notification only *wakes* a waiter, which then
  re-reads the database; waiters also re-read every ``recheck_interval``
  seconds (0.5 by default), so a notification lost with the listening
  connection delays a waiter by at most that, and never hangs it.
* **The record is stored whole** as the JSON of
  :func:`~awx_connection._records.dump_record` (``TEXT`` since migration 3,
  secrets sealed with the :class:`~awx_connection.KeyRing`); the other
  columns are copies for filtering and constraints, never read back.
  Nothing queries inside the JSON, and ``JSONB`` made the server render
  every row back to text on each read. Leases are two columns
  outside the JSON, so taking one does not change the record's version.
* **Failures are typed.** Connection-level failures (connection refused or
  lost, server shutting down, timeouts) become
  :class:`~awx_connection.StoreUnavailableError`; other database errors
  become :class:`~awx_connection.StoreError`. Messages name the operation
  and the connection, plus the server's primary message, never its
  ``DETAIL`` (which quotes row values). Reads and naturally idempotent writes
  (leases, which are idempotent for their owner; offsets, which only move
  forward) are retried with exponential backoff and full jitter.
  ``insert`` and ``update`` are retried only when the failure provably
  happened before ``COMMIT`` was sent (a transaction without a ``COMMIT``
  never commits, whatever the network did). A failure during ``COMMIT`` is
  ambiguous, since the write may have committed with its acknowledgement
  lost, so it raises :class:`~awx_connection.StoreUnavailableError` and the
  caller must re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
)
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import asyncpg
import attrs
import orjson

from .._crypto import KeyRing
from .._errors import (
    ConfigurationError,
    StoreError,
    StoreNotMigratedError,
    StoreUnavailableError,
    VersionConflictError,
)
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
)

if TYPE_CHECKING:
    from .._events import ConnectionEvent
    from .._records import ConnectionRecord, ConnectionSummary
    from .._states import ConnectionState

__all__ = ["MIGRATIONS", "PostgresStore"]

_log = logging.getLogger("awx_connection.stores")

_T = TypeVar("_T")

#: Schema scripts; ``MIGRATIONS[n]`` takes the schema from version ``n`` to
#: ``n + 1``. Append only, never edit a released one. ``{schema}`` stands for
#: the quoted schema name (replaced textually, so other braces are safe).
#: Each script runs whole (several statements) inside the migration
#: transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {schema}.connections (
        id TEXT PRIMARY KEY,
        version BIGINT NOT NULL,
        state TEXT NOT NULL,
        state_hash TEXT UNIQUE,
        external_id TEXT,
        account_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        data JSONB NOT NULL
    );
    CREATE INDEX connections_state ON {schema}.connections (state);
    CREATE INDEX connections_external_id ON {schema}.connections (external_id);
    CREATE INDEX connections_account_id ON {schema}.connections (account_id);
    CREATE INDEX connections_created ON {schema}.connections (created_at, id);
    CREATE TABLE {schema}.events (
        position BIGSERIAL PRIMARY KEY,
        connection_id TEXT NOT NULL REFERENCES {schema}.connections (id),
        sequence BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        data JSONB NOT NULL,
        UNIQUE (connection_id, sequence)
    );
    CREATE INDEX events_at ON {schema}.events (at);
    CREATE TABLE {schema}.consumers (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    );
    """,
    # 2: ids of handled webhooks (deduplication of at-least-once deliveries).
    """
    CREATE TABLE {schema}.webhooks (
        id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX webhooks_at ON {schema}.webhooks (at);
    """,
    # 3: the record as text, not jsonb. Nothing queries inside it (the
    # columns beside it are for that), and reading jsonb makes the server
    # render every row back to text: a third of a 100,000-connection load.
    """
    ALTER TABLE {schema}.connections ALTER COLUMN data TYPE TEXT USING data::text;
    """,
    # 4: webhook ids are claimed before they are handled (concurrent
    # deliveries of one event act once); NULL claimed_until means handled.
    """
    ALTER TABLE {schema}.webhooks ADD COLUMN claimed_by TEXT;
    ALTER TABLE {schema}.webhooks ADD COLUMN claimed_until DOUBLE PRECISION;
    """,
)

#: A schema name: an unquoted-style identifier, short enough that
#: ``<schema>_connections`` fits PostgreSQL's 63-byte channel names.
_SCHEMA_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,50}")

#: Errors meaning "the database could not be reached or dropped us".
#: ``TimeoutError`` is ``asyncio.TimeoutError`` and, like ``ConnectionError``,
#: an ``OSError``; they are listed for the reader.
_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # What asyncpg raises when a query is started on a connection whose
    # server just sent FATAL (killed while idle) but whose socket is not yet
    # seen closed: "cannot switch to state ...; another operation is in progress".
    asyncpg.exceptions.InternalClientError,
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
)

_ROTATE_PAGE: Final = 200
_CLOSE_TIMEOUT: Final = 10.0
#: Seconds between attempts to open the LISTEN connection while that fails.
_LISTENER_RETRY: Final = 0.5


def _lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory-lock key for *purpose* in *schema*."""
    digest = hashlib.sha256(f"awx_connection/{purpose}/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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


@final
class _Sql:
    """Every statement, with the quoted schema and the derived constants filled in."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        s = f'"{self.schema}"'
        connections_channel = f"'{self.schema}_connections'"
        events_channel = f"'{self.schema}_events'"
        self.quoted = s
        self.connections_channel = f"{self.schema}_connections"
        self.events_channel = f"{self.schema}_events"
        self.migration_lock = (
            f"SELECT pg_advisory_xact_lock({_lock_key('migrations', self.schema)})"
        )
        self.outbox_lock = f"SELECT pg_advisory_xact_lock({_lock_key('outbox', self.schema)})"
        self.get = f"SELECT id, data FROM {s}.connections WHERE id = $1"
        self.find = f"SELECT id, data FROM {s}.connections WHERE state_hash = $1"
        self.list_all = f"SELECT id, data, created_at FROM {s}.connections"
        self.version = f"SELECT version FROM {s}.connections WHERE id = $1"
        self.insert = f"""
            WITH written AS (
                INSERT INTO {s}.connections
                    (id, version, state, state_hash, external_id, account_id,
                     created_at, updated_at, data)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                RETURNING id
            )
            SELECT pg_notify({connections_channel}, id) FROM written
        """
        self.update = f"""
            WITH written AS (
                UPDATE {s}.connections
                SET version = $2, state = $3, state_hash = $4, external_id = $5,
                    account_id = $6, created_at = $7, updated_at = $8, data = $9,
                    -- $11: the owner whose lease this write ends, or NULL for none.
                    lease_until = CASE WHEN lease_owner = $11 THEN NULL ELSE lease_until END,
                    lease_owner = CASE WHEN lease_owner = $11 THEN NULL ELSE lease_owner END
                WHERE id = $1 AND version = $10
                RETURNING id
            )
            SELECT pg_notify({connections_channel}, id) FROM written
        """
        # The compare-and-swap, the outbox lock and the event in one
        # statement (one round trip, its own transaction). Each step feeds
        # the next, so the lock is taken only if the row was written, and
        # before the event's position is drawn from the sequence: positions
        # still commit in order. $11 as in update.
        self.update_with_event = f"""
            WITH written AS (
                UPDATE {s}.connections
                SET version = $2, state = $3, state_hash = $4, external_id = $5,
                    account_id = $6, created_at = $7, updated_at = $8, data = $9,
                    lease_until = CASE WHEN lease_owner = $11 THEN NULL ELSE lease_until END,
                    lease_owner = CASE WHEN lease_owner = $11 THEN NULL ELSE lease_owner END
                WHERE id = $1 AND version = $10
                RETURNING id
            ), locked AS (
                SELECT pg_advisory_xact_lock({_lock_key("outbox", self.schema)}) FROM written
            ), appended AS (
                INSERT INTO {s}.events (connection_id, sequence, at, data)
                SELECT $12::text, $13::bigint, $14::float8, $15::jsonb FROM locked
                RETURNING position
            )
            SELECT
                (SELECT count(pg_notify({connections_channel}, id)) FROM written) AS written,
                (SELECT count(pg_notify({events_channel}, position::text)) FROM appended)
                    AS appended
        """
        self.insert_event = f"""
            WITH written AS (
                INSERT INTO {s}.events (connection_id, sequence, at, data)
                VALUES ($1, $2, $3, $4::jsonb)
                RETURNING position
            )
            SELECT pg_notify({events_channel}, position::text) FROM written
        """
        self.read_events = (
            f"SELECT data FROM {s}.events WHERE connection_id = $1 AND sequence > $2 "
            "ORDER BY sequence"
        )
        self.read_outbox = (
            f"SELECT position, connection_id, data FROM {s}.events WHERE position > $1 "
            "ORDER BY position LIMIT $2"
        )
        self.has_events = f"SELECT EXISTS (SELECT 1 FROM {s}.events WHERE position > $1)"
        self.acquire_lease = f"""
            UPDATE {s}.connections SET lease_owner = $2, lease_until = $3
            WHERE id = $1 AND (lease_owner IS NULL OR lease_until <= $4 OR lease_owner = $2)
            RETURNING id, data
        """
        self.release_lease = (
            f"UPDATE {s}.connections SET lease_owner = NULL, lease_until = NULL "
            "WHERE id = $1 AND lease_owner = $2"
        )
        self.get_offset = f"SELECT position FROM {s}.consumers WHERE name = $1"
        self.commit_offset = f"""
            INSERT INTO {s}.consumers (name, position) VALUES ($1, $2)
            ON CONFLICT (name) DO UPDATE
            SET position = GREATEST({s}.consumers.position, EXCLUDED.position)
        """
        # One bounded batch per statement (prune_events repeats them).
        self.prune_events = f"""
            WITH deleted AS (
                DELETE FROM {s}.events WHERE position IN (
                    SELECT position FROM {s}.events WHERE at < $1 LIMIT $2
                ) RETURNING 1
            )
            SELECT count(*) FROM deleted
        """
        self.prune_webhooks = f"""
            WITH deleted AS (
                DELETE FROM {s}.webhooks WHERE id IN (
                    SELECT id FROM {s}.webhooks WHERE at < $1 LIMIT $2
                ) RETURNING 1
            )
            SELECT count(*) FROM deleted
        """
        self.claim_webhook = f"""
            INSERT INTO {s}.webhooks AS w (id, at, claimed_by, claimed_until)
            VALUES ($1, $3, $2, $4)
            ON CONFLICT (id) DO UPDATE
                SET at = EXCLUDED.at, claimed_by = EXCLUDED.claimed_by,
                    claimed_until = EXCLUDED.claimed_until
                WHERE w.claimed_until IS NOT NULL
                    AND (w.claimed_until <= $3 OR w.claimed_by = $2)
            RETURNING 1
        """
        self.webhook_claim = f"SELECT claimed_until FROM {s}.webhooks WHERE id = $1"
        self.finish_webhook = (
            f"UPDATE {s}.webhooks SET at = $3, claimed_by = NULL, claimed_until = NULL "
            "WHERE id = $1 AND claimed_by = $2"
        )
        self.release_webhook = (
            f"DELETE FROM {s}.webhooks WHERE id = $1 AND claimed_by = $2 "
            "AND claimed_until IS NOT NULL"
        )
        self.rotate_page = (
            f"SELECT id, version, data FROM {s}.connections WHERE id > $1 ORDER BY id LIMIT $2"
        )
        self.rotate_row = f"SELECT id, version, data FROM {s}.connections WHERE id = $1"
        self.rotate_write = (
            f"UPDATE {s}.connections SET data = $3 WHERE id = $1 AND version = $2 RETURNING 1"
        )
        self.schema_version = f"SELECT version FROM {s}.schema_version"


#: A bracketed IPv6 host and its optional port, as asyncpg reads one.
_IPV6_HOST_RE: Final = re.compile(r"\[[^\]]+\](?::([^,]*))?")


def _dsn_problem(dsn: object) -> str | None:
    """
    What is wrong with *dsn* as asyncpg would parse it, or ``None``.

    asyncpg parses the URL only when it connects, in :meth:`PostgresStore.open`,
    and a port that is not a number or an unclosed IPv6 bracket is then a bare
    ``ValueError`` whose message quotes the offending text, which can be part
    of a password that was not percent-encoded (``u:pa@ss:wd@h`` reads as
    host ``ss``, port ``wd@h``). This follows asyncpg's reading (the user
    part ends at the *first* ``@``; hosts are comma-separated, each with an
    optional port) so that those mistakes are found at construction, and
    describes each without quoting any part of the URL.
    """
    if not isinstance(dsn, str):
        return f"the DSN must be a string, not {type(dsn).__name__}"
    try:
        parts = urllib.parse.urlsplit(dsn)
        urllib.parse.parse_qs(parts.query, strict_parsing=bool(parts.query))
    except ValueError as exc:
        unclosed = "IPv6" in str(exc)
        return (
            "an IPv6 host's '[' is not closed by ']'"
            if unclosed
            else "it is not a parsable URL (its query string is malformed)"
        )
    if parts.scheme not in ("postgresql", "postgres"):
        return "the scheme must be 'postgresql://' or 'postgres://'"
    _, at, hosts = parts.netloc.partition("@")
    hostlist = hosts if at else parts.netloc
    if not hostlist:
        return None  # no host: libpq's defaults (a local socket, or ?host=)
    for number, host in enumerate(hostlist.split(","), start=1):
        if not host:
            return f"host {number} of the host list is empty"
        if host.startswith("["):
            matched = _IPV6_HOST_RE.match(host)
            if matched is None:
                return f"host {number} is not a valid bracketed IPv6 address"
            port = matched.group(1) or ""
        else:
            port = host.partition(":")[2]
        port = urllib.parse.unquote(port)
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return (
                f"the port of host {number} is not a number from 1 to 65535 (if the "
                "password holds '@', ':' or '/', percent-encode it: '@' is %40)"
            )
    return None


def _validate_dsn(_instance: object, _attribute: object, value: str) -> None:
    problem = _dsn_problem(value)
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
class PostgresStore:
    """
    A :class:`~awx_connection.Store` in a PostgreSQL schema.

    Every process (replica) that opens the same *dsn* and *schema* sees the
    same connections, events, leases and consumer offsets. Call :meth:`open`
    before use (it creates the pool and applies missing migrations) and
    :meth:`aclose` after.

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
        min_size, max_size: The pool's bounds.
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

    _sql: _Sql = attrs.field(init=False, repr=False)
    _pool: Any = attrs.field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False, repr=False)
    #: The dedicated LISTEN connection, ``None`` until a waiter needs it or once lost.
    _listener: Any = attrs.field(default=None, init=False, repr=False)
    _listener_task: asyncio.Task[None] | None = attrs.field(default=None, init=False, repr=False)
    #: Loop time before which a failed listener connection is not tried again.
    _listener_retry_at: float = attrs.field(default=0.0, init=False, repr=False)
    #: Waiters by connection id, woken by ``<schema>_connections`` notifications.
    _update_waiters: dict[str, set[asyncio.Event]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    #: Waiters woken by ``<schema>_events`` notifications.
    _event_waiters: set[asyncio.Event] = attrs.field(factory=set, init=False, repr=False)

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
        self._sql = _Sql(self.schema)

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

    async def aclose(self) -> None:
        """Close the listener and the pool. Idempotent; :meth:`open` may be called again."""
        async with self._lock:
            pool, self._pool = self._pool, None
            task, self._listener_task = self._listener_task, None
            listener, self._listener = self._listener, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if listener is not None:
                await _close_quietly(listener)
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
            self._wake_everyone()

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
        return await self._on_any_connection("migration", lambda c: _migrate(c, self._sql))

    async def schema_version(self) -> int:
        """The number of :data:`MIGRATIONS` applied to the schema (0 if none); works unopened."""
        return await self._on_any_connection(
            "schema_version", lambda c: _schema_version(c, self._sql)
        )

    # --- records --------------------------------------------------------------------------

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        """
        The latest record of *connection_id*, or ``None``.

        Raises:
            DecryptionError: Its secrets do not decrypt with the key ring.
            StoreError: The stored record does not decode.
            InvalidArgumentError: *connection_id* is not a string or not valid text.
        """
        check_text("connection_id", connection_id)
        row = await self._query(
            f"get of connection {connection_id!r}", "fetchrow", self._sql.get, connection_id
        )
        return None if row is None else load_stored_record(row["id"], row["data"], self.keys)

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        """The connection whose pending authorization has this ``state`` hash."""
        check_text("state_hash", state_hash)
        row = await self._query("find_by_state_hash", "fetchrow", self._sql.find, state_hash)
        return None if row is None else load_stored_record(row["id"], row["data"], self.keys)

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
        *limit* records if given. A page is a range of the
        ``connections_created`` index.

        A row that does not decrypt or decode is logged (ERROR, logger
        ``awx_connection.stores``, naming the connection) and left out, so
        one bad row cannot take the whole listing down; it is never
        rewritten or deleted. It does not count towards *limit*: the page is
        filled from the rows after it.

        Raises:
            ValueError: *limit* is less than 1.
            InvalidArgumentError: *external_id* or *account_id* is not text.
        """
        return await self._list(
            "list_connections",
            lambda rows: load_listed("postgres", rows, self.keys),
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
            lambda rows: load_summaries("postgres", rows),
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
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            if not states:
                return []
            params.append([state.value for state in states])
            clauses.append(f"state = ANY(${len(params)}::text[])")
        if external_id is not None:
            params.append(external_id)
            clauses.append(f"external_id = ${len(params)}")
        if account_id is not None:
            params.append(account_id)
            clauses.append(f"account_id = ${len(params)}")

        async def fetch(after: tuple[float, str] | None, wanted: int | None) -> list[Any]:
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
            rows = await self._query(method, "fetch", sql, *page_params)
            return [(row["id"], row["data"], row["created_at"]) for row in rows]

        return await load_page(fetch, load, after=after, limit=limit)

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        """
        Store a new connection and its first event, in one transaction.

        Raises:
            StoreError: The id exists already, its ``state`` hash is taken, or
                the database failed.
            StoreUnavailableError: The database failed while committing: the
                connection may or may not exist now; re-read it.
            ValueError: The event belongs to another connection.
            InvalidArgumentError: A field of the record or event is not text.
        """
        check_event(record, event)
        check_record(record)
        columns = self._columns(record)
        event_row = _event_row(event)

        async def op(connection: Any, attempt: _Attempt) -> None:
            async with _transaction(connection, attempt):
                await connection.execute(self._sql.insert, *columns)
                await self._append_event(connection, event_row)

        await self._write(f"insert of connection {record.id!r}", op)

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
        *release_lease*, the same statement also ends that owner's lease.

        Record, outbox lock and event are one statement, committed on its
        own: one round trip. Having no ``COMMIT`` of its own to lose, it is
        retried when the database is unavailable; a retry that finds the
        row already exactly ours (an earlier try committed, its answer was
        lost) returns as a success.

        Raises:
            VersionConflictError: The stored version differs (or the record is gone).
            StoreError: The ``state`` hash or the event sequence is taken, or
                the database failed; nothing was written.
            StoreUnavailableError: The database stayed unavailable through
                every retry: the write may or may not have happened; re-read
                before deciding.
            ValueError: ``record.version`` is not ``expected_version + 1``, or
                the event belongs to another connection (a caller bug,
                checked before the store is looked at).
            InvalidArgumentError: A field of the record or event is not text.
        """
        check_version(record, expected_version)
        if event is not None:
            check_event(record, event)
        check_record(record)
        check_record(record)
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

        await self._write(f"update of connection {record.id!r}", op)

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        """The stored events of *connection_id* with ``sequence > after``, in order."""
        check_text("connection_id", connection_id)
        rows = await self._query(
            f"read_events of connection {connection_id!r}",
            "fetch",
            self._sql.read_events,
            connection_id,
            after,
        )
        return [load_stored_event(connection_id, row["data"]) for row in rows]

    # --- leases ---------------------------------------------------------------------------

    async def acquire_lease(
        self, connection_id: str, owner: str, *, until: float, now: float
    ) -> ConnectionRecord | None:
        """
        Take or renew the lease for *owner* until *until*, and read the
        record, in one ``UPDATE ... RETURNING``.

        Granted when nobody holds it, when the holder's lease ended
        (``lease_until <= now``) or when *owner* holds it (renewal). The
        version does not change. Retried when the database is unavailable: a
        retry after a lost acknowledgement finds *owner* holding the lease and
        renews it, so it answers the same.

        Returns:
            The stored record if *owner* now holds the lease; ``None`` when
            someone else does or the id is unknown.

        Raises:
            DecryptionError: The record does not decrypt (the lease is held).
        """
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        row = await self._query(
            f"acquire_lease of connection {connection_id!r}",
            "fetchrow",
            self._sql.acquire_lease,
            connection_id,
            owner,
            until,
            now,
            write=True,
        )
        return None if row is None else load_stored_record(row["id"], row["data"], self.keys)

    async def release_lease(self, connection_id: str, owner: str) -> None:
        """Give the lease up if *owner* holds it; otherwise do nothing."""
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        await self._query(
            f"release_lease of connection {connection_id!r}",
            "execute",
            self._sql.release_lease,
            connection_id,
            owner,
            write=True,
        )

    # --- waiting --------------------------------------------------------------------------

    async def wait_for_update(
        self,
        connection_id: str,
        *,
        after_version: int,
        timeout: float,  # noqa: ASYNC109 - the Store protocol's signature
    ) -> ConnectionRecord | None:
        """
        Wait (real time) until the stored version exceeds *after_version*.

        Woken by the ``<schema>_connections`` notification of any replica's
        commit, and re-reads the record at least every ``recheck_interval``
        seconds regardless. The record is always read once, even with
        ``timeout=0``.

        Returns:
            The newer record, or ``None`` when *timeout* seconds passed first.

        Raises:
            StoreUnavailableError: A re-read failed through every retry.
        """
        check_text("connection_id", connection_id)
        wake = asyncio.Event()
        waiters = self._update_waiters.setdefault(connection_id, set())
        waiters.add(wake)
        try:

            async def check() -> ConnectionRecord | None:
                record = await self.get(connection_id)
                return record if record is not None and record.version > after_version else None

            return await self._wait(wake, check, timeout)
        finally:
            waiters.discard(wake)
            if not waiters and self._update_waiters.get(connection_id) is waiters:
                del self._update_waiters[connection_id]

    async def wait_for_events(self, *, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        """
        Wait (real time) until an event with ``position > after`` exists.

        Woken by the ``<schema>_events`` notification of any replica's
        commit, and re-checks at least every ``recheck_interval`` seconds.

        Returns:
            ``True`` if there is one, ``False`` on timeout.
        """
        wake = asyncio.Event()
        self._event_waiters.add(wake)
        try:

            async def check() -> bool | None:
                found = await self._query(
                    "wait_for_events", "fetchval", self._sql.has_events, after
                )
                return True if found else None

            return bool(await self._wait(wake, check, timeout))
        finally:
            self._event_waiters.discard(wake)

    # --- outbox and consumers -------------------------------------------------------------

    async def read_outbox(
        self, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConnectionEvent]]:
        """
        ``(position, event)`` pairs with ``position > after``, in commit order, at most *limit*.

        Positions are assigned and committed in the same order (see the
        module notes), so an offset never skips an event committed later.

        Raises:
            ValueError: *limit* is less than 1.
        """
        check_limit(limit)
        rows = await self._query("read_outbox", "fetch", self._sql.read_outbox, after, limit)
        return [
            (int(row["position"]), load_stored_event(row["connection_id"], row["data"]))
            for row in rows
        ]

    async def get_offset(self, consumer: str) -> int:
        """The committed position of *consumer* (0 if it never committed)."""
        check_text("consumer", consumer)
        value = await self._query(
            f"get_offset of consumer {consumer!r}", "fetchval", self._sql.get_offset, consumer
        )
        return 0 if value is None else int(value)

    async def commit_offset(self, consumer: str, position: int) -> None:
        """Record that *consumer* processed everything up to *position*; never moves back."""
        check_text("consumer", consumer)
        await self._query(
            f"commit_offset of consumer {consumer!r}",
            "execute",
            self._sql.commit_offset,
            consumer,
            position,
            write=True,
        )

    async def prune_events(self, *, before: float) -> int:
        """
        Delete events whose ``at`` is older than *before*; return how many.

        ``prune_batch`` rows per statement (each its own transaction), so a
        prune of millions is many short transactions rather than one long
        one holding row locks and bloating the WAL. A batch is idempotent
        (it deletes what is old), so a lost one is simply retried.
        """
        # Webhook ids older than the retention go too: Airwallex stops
        # retrying a delivery after about three days.
        await self._prune(self._sql.prune_webhooks, before)
        return await self._prune(self._sql.prune_events, before)

    async def _prune(self, sql: str, before: float) -> int:
        deleted = 0
        while True:
            count = int(
                await self._query(
                    "prune_events", "fetchval", sql, before, self.prune_batch, write=True
                )
            )
            deleted += count
            if count < self.prune_batch:
                return deleted

    # --- webhooks -------------------------------------------------------------------------

    async def claim_webhook(
        self, event_id: str, *, owner: str, now: float, until: float
    ) -> WebhookClaim:
        """
        Claim *event_id* for *owner* until *until*, unless handled or claimed by another.

        One upsert decides (the row lock orders concurrent claims, across
        replicas). Retried when the database is unavailable: the same
        owner's repeat of a claim that did commit finds it its own.
        """
        check_text("event_id", event_id)
        check_text("owner", owner)
        sql = self._sql

        async def op(connection: Any) -> WebhookClaim:
            if await connection.fetchval(sql.claim_webhook, event_id, owner, now, until):
                return WebhookClaim.CLAIMED
            row = await connection.fetchrow(sql.webhook_claim, event_id)
            handled = row is not None and row["claimed_until"] is None
            return WebhookClaim.HANDLED if handled else WebhookClaim.BUSY

        return await self._run("claim_webhook", op, retry=True, write=True)

    async def finish_webhook(self, event_id: str, *, owner: str, at: float) -> None:
        """Mark *event_id* handled (remembered until pruned by *at*), if *owner* claimed it."""
        check_text("event_id", event_id)
        check_text("owner", owner)
        await self._query(
            "finish_webhook", "execute", self._sql.finish_webhook, event_id, owner, at, write=True
        )

    async def release_webhook(self, event_id: str, *, owner: str) -> None:
        """Drop *owner*'s claim of an unhandled *event_id*, so a retry can claim it."""
        check_text("event_id", event_id)
        check_text("owner", owner)
        await self._query(
            "release_webhook", "execute", self._sql.release_webhook, event_id, owner, write=True
        )

    # --- keys -----------------------------------------------------------------------------

    async def rotate_keys(self, *, seal_plaintext: bool = False) -> int:
        """
        Re-encrypt every row whose secrets are not all sealed with the primary key.

        Rows already on the primary key are skipped, so a second run returns
        0. Each row is rewritten by its own compare-and-swap on its version,
        which stays the same: a concurrent write is never undone (the row is
        re-read and tried again), so rotation runs alongside live traffic and
        can be interrupted and run again. Give every process the new ring
        first, or their writes keep sealing with the old key.

        A row holding a plaintext secret (written without keys, or tampered
        with: the two look the same) is not read but reported, like any
        unreadable row, unless *seal_plaintext*: then it is sealed, and
        logged (WARNING) by id. Pass it only for a store known to hold rows
        from before encryption (``awx-connection keys seal``).

        Returns:
            How many connections were rewritten. Versions do not change.

        Raises:
            StoreError: The store has no keys; or some rows could not be read
                (each logged with its id; every other row was rotated and
                stays rotated, so the call can simply be repeated).
        """
        return await rotate_keys(
            "postgres",
            self.keys,
            rows=self._rotation_rows,
            write=self._reseal,
            reread=self._reread,
            seal_plaintext=seal_plaintext,
            # Rows already on the primary key are skipped without decrypting.
            decrypt_sealed=False,
        )

    async def _rotation_rows(self) -> AsyncGenerator[StoredRow, None]:
        """Every row as ``(id, version, data)``, read a page at a time in id order."""
        after = ""
        while True:
            rows = await self._query(
                "rotate_keys", "fetch", self._sql.rotate_page, after, _ROTATE_PAGE
            )
            if not rows:
                return
            after = rows[-1]["id"]
            for row in rows:
                yield row["id"], row["version"], row["data"]

    async def _reseal(self, connection_id: str, version: int, sealed: bytes) -> bool:
        """Replace the row's data with *sealed* if its version is still *version*."""
        # Retried when unavailable: same version, same plaintext, so a
        # repeat after a lost acknowledgement is harmless.
        written = await self._query(
            f"rotate_keys of connection {connection_id!r}",
            "fetchrow",
            self._sql.rotate_write,
            connection_id,
            version,
            sealed.decode(),
            write=True,
        )
        return written is not None

    async def _reread(self, connection_id: str) -> tuple[int, object] | None:
        """The row's current ``(version, data)``, or ``None`` if it is gone."""
        row = await self._query(
            f"rotate_keys of connection {connection_id!r}",
            "fetchrow",
            self._sql.rotate_row,
            connection_id,
        )
        return None if row is None else (row["version"], row["data"])

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
            return await _migrate(connection, self._sql)

    async def _check_on(self, pool: Any) -> int:
        async with pool.acquire() as connection:
            return await _check_schema(connection, self._sql)

    async def _on_any_connection(self, action: str, op: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run *op* (idempotent) on a pooled connection, or a connection of its own if unopened."""
        if self._pool is not None:
            return await self._run(action, op)

        async def once() -> _T:
            connection = await self._connect()
            try:
                return await op(connection)
            finally:
                await _close_quietly(connection)

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

    async def _query(
        self,
        action: str,
        method: str,
        sql: str,
        *args: Any,
        retry: bool = True,
        write: bool = False,
    ) -> Any:
        """One statement: ``connection.<method>(sql, *args)``, as :meth:`_run` runs it."""

        async def op(connection: Any) -> Any:
            return await getattr(connection, method)(sql, *args)

        return await self._run(action, op, retry=retry, write=write)

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
        tries = 1
        while True:
            try:
                return await once()
            except Exception as exc:
                error = _translate(action, exc, write=write)
                if error is None:
                    raise
                again = retry(exc) if callable(retry) else retry
                if (
                    isinstance(error, StoreUnavailableError)
                    and again
                    and tries < self.retry_attempts
                ):
                    ceiling = self.retry_base * 2 ** (tries - 1)
                    await asyncio.sleep(random.uniform(0, ceiling))  # jitter, not crypto
                    tries += 1
                    continue
                if isinstance(error, StoreUnavailableError):
                    raise error from exc
                raise error from None  # the server's DETAIL may quote row values

    async def _append_event(self, connection: Any, event_row: tuple[Any, ...]) -> None:
        # The outbox lock: positions are taken and committed in one order.
        await connection.execute(self._sql.outbox_lock)
        await connection.execute(self._sql.insert_event, *event_row)

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

    # --- internals: the listener ----------------------------------------------------------

    async def _wait(
        self,
        wake: asyncio.Event,
        check: Callable[[], Awaitable[_T | None]],
        timeout: float,  # noqa: ASYNC109 - a deadline for a loop, not one await
    ) -> _T | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            self._start_listener()
            # Cleared before the read: a notification arriving from here on
            # wakes the wait below even if it lands before we get there.
            wake.clear()
            found = await check()
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(remaining, self.recheck_interval))

    def _start_listener(self) -> None:
        """Open the LISTEN connection in the background if there is none (throttled)."""
        if self._pool is None:
            return
        listener = self._listener
        if listener is not None and not listener.is_closed():
            return
        if self._listener_task is not None and not self._listener_task.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._listener_retry_at:
            return
        self._listener = None
        if listener is not None:
            listener.terminate()
        self._listener_task = loop.create_task(self._open_listener())

    async def _open_listener(self) -> None:
        try:
            connection = await self._connect()
        except Exception as exc:
            self._listener_failed()
            _log.warning(
                "postgres store: cannot open the LISTEN connection for schema %r (%s); "
                "waiters poll every %ss",
                self.schema,
                type(exc).__name__,
                self.recheck_interval,
            )
            return
        try:
            await connection.add_listener(self._sql.connections_channel, self._on_connection)
            await connection.add_listener(self._sql.events_channel, self._on_event)
        except Exception as exc:
            self._listener_failed()
            _log.warning(
                "postgres store: LISTEN failed for schema %r (%s); waiters poll every %ss",
                self.schema,
                type(exc).__name__,
                self.recheck_interval,
            )
            await _close_quietly(connection)
            return
        except asyncio.CancelledError:
            connection.terminate()
            raise
        if self._pool is None:  # closed meanwhile
            await _close_quietly(connection)
            return
        connection.add_termination_listener(self._on_listener_lost)
        self._listener = connection
        # Whatever committed before LISTEN took effect sent no notification
        # to us: have every waiter look again now.
        self._wake_everyone()

    def _listener_failed(self) -> None:
        loop = asyncio.get_running_loop()
        self._listener_retry_at = loop.time() + min(self.recheck_interval, _LISTENER_RETRY)

    def _on_connection(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        for wake in self._update_waiters.get(payload, ()):
            wake.set()

    def _on_event(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        for wake in self._event_waiters:
            wake.set()

    def _on_listener_lost(self, connection: Any) -> None:
        if self._listener is connection:
            self._listener = None
            # Notifications may have been lost: re-read now (and reconnect).
            self._wake_everyone()

    def _wake_everyone(self) -> None:
        for waiters in self._update_waiters.values():
            for wake in waiters:
                wake.set()
        for wake in self._event_waiters:
            wake.set()


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


async def _close_quietly(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT)
    except Exception:
        connection.terminate()


async def _schema_version(connection: Any, sql: _Sql) -> int:
    exists = await connection.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{sql.quoted}.schema_version"
    )
    if not exists:
        return 0
    value = await connection.fetchval(sql.schema_version)
    return 0 if value is None else int(value)


#: How a StoreNotMigratedError ends: the one command that creates and migrates.
_MIGRATE_HINT = "create or upgrade it with 'awx-connection db migrate'"


async def _check_schema(connection: Any, sql: _Sql) -> int:
    """Raise unless the schema is at this library's version (reads only); return it."""
    if not await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", sql.schema
    ):
        msg = f"postgres store: schema {sql.schema!r} does not exist; {_MIGRATE_HINT}"
        raise StoreNotMigratedError(msg)
    current = await _schema_version(connection, sql)
    _check_not_newer(current, sql)
    if current < len(MIGRATIONS):
        msg = (
            f"postgres store: schema {sql.schema!r} is at version {current}, older than this "
            f"library's {len(MIGRATIONS)}; {_MIGRATE_HINT}"
        )
        raise StoreNotMigratedError(msg)
    return current


def _check_not_newer(current: int, sql: _Sql) -> None:
    if current > len(MIGRATIONS):
        msg = (
            f"postgres store: schema {sql.schema!r} is at version {current}, newer than "
            f"this library knows ({len(MIGRATIONS)}); upgrade awx-connection"
        )
        raise StoreError(msg)


async def _migrate(connection: Any, sql: _Sql) -> int:
    """Apply the missing :data:`MIGRATIONS` under the schema's migration lock."""
    async with connection.transaction():
        await connection.execute(sql.migration_lock)
        # Checked first: CREATE ... IF NOT EXISTS needs the CREATE privilege
        # even when there is nothing to create.
        if not await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", sql.schema
        ):
            await connection.execute(f"CREATE SCHEMA {sql.quoted}")
        current = await _schema_version(connection, sql)
        if current == 0 and not await connection.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{sql.quoted}.schema_version"
        ):
            await connection.execute(
                f"CREATE TABLE {sql.quoted}.schema_version (version INTEGER NOT NULL)"
            )
        _check_not_newer(current, sql)
        for script in MIGRATIONS[current:]:
            await connection.execute(script.replace("{schema}", sql.quoted))
        if current < len(MIGRATIONS):
            await connection.execute(f"DELETE FROM {sql.quoted}.schema_version")
            await connection.execute(
                f"INSERT INTO {sql.quoted}.schema_version (version) VALUES ($1)", len(MIGRATIONS)
            )
        return len(MIGRATIONS) - current


def _translate(action: str, exc: Exception, *, write: bool) -> StoreError | None:
    """The StoreError for a driver or OS error; ``None`` for anything else (re-raise it)."""
    if isinstance(exc, StoreError):
        return None
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and isinstance(exc, ValueError):
        # An argument the driver could not encode: a bug; its message quotes the value.
        return StoreError(f"postgres store: {action} failed ({type(exc).__name__})")
    if isinstance(exc, _UNAVAILABLE):
        if isinstance(exc, asyncpg.exceptions.PostgresError):
            detail = f"{type(exc).__name__}: {_primary_message(exc)}"
        else:
            detail = f"{type(exc).__name__}: {exc}"[:300]
        msg = f"postgres store: {action} failed: the database is unavailable ({detail})"
        if write:
            msg += "; the write may or may not have committed: re-read before deciding"
        return StoreUnavailableError(msg)
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return StoreError(f"postgres store: {action} failed ({_describe_server_error(exc)})")
    return None


def _primary_message(exc: Any) -> str:
    """The server's primary message: never its DETAIL, which may quote row values."""
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else "")
    return str(message)[:300]


def _describe_server_error(exc: Any) -> str:
    constraint = getattr(exc, "constraint_name", None)
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError) and constraint:
        if constraint == "connections_pkey":
            return "the id exists"
        if constraint == "connections_state_hash_key":
            return "its state hash belongs to another connection"
        if constraint == "events_connection_id_sequence_key":
            return "the event sequence exists"
    return f"{type(exc).__name__} {getattr(exc, 'sqlstate', '?')}: {_primary_message(exc)}"


def _event_row(event: ConnectionEvent) -> tuple[Any, ...]:
    return (
        event.connection_id,
        event.sequence,
        event.at,
        orjson.dumps(dump_event(event)).decode(),
    )
