"""
The SQLite store's file: its schema, its statements, and opening it.

One job: what the file holds and how each operation reads or writes it, in
SQLite's dialect, kept apart from :mod:`._sqlite` (the store object, its
thread and its errors) so that the schema and every statement can be read
in one place. The functions here run on the store's own thread, where
blocking on the file lock blocks nothing else.

* The schema comes from numbered migrations (:data:`MIGRATIONS`), applied
  under ``BEGIN IMMEDIATE`` by :func:`connect`: of two processes opening a
  new file together, one migrates and the other then finds nothing left
  to do.
* :data:`STATEMENTS` are those of :class:`~._sql.SQLStore`, numbered
  (``?1``) so that each takes its parameters in the order the shared
  methods pass them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from typing import TypeVar, final

from .._errors import StoreError, StoreNotMigratedError
from ._sql import Statements

__all__ = [
    "CLAIM_WEBHOOK",
    "INSERT_CONNECTION",
    "INSERT_EVENT",
    "MIGRATIONS",
    "POLL",
    "RELEASE_LEASE",
    "STATEMENTS",
    "UPDATE_CONNECTION",
    "WEBHOOK_CLAIM",
    "connect",
    "in_transaction",
    "schema_version",
]

_T = TypeVar("_T")

#: First and longest pause between two polls of the file (waits, and open's switch to WAL).
POLL = (0.005, 0.1)

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
    # 6: what the relays of the outbox share (awx_connection.relay): leases
    # on their partitions, and the events a sink gave up on.
    """
    CREATE TABLE relay_leases (
        relay TEXT NOT NULL,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (relay, name)
    );
    CREATE TABLE dead_letters (
        relay TEXT NOT NULL,
        position INTEGER NOT NULL,
        connection_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        at REAL NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (relay, position)
    );
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

INSERT_CONNECTION = """
    INSERT INTO connections
        (id, version, state, state_hash, external_id, account_id, created_at, updated_at, data)
    VALUES
        (:id, :version, :state, :state_hash, :external_id, :account_id,
         :created_at, :updated_at, :data)
"""

UPDATE_CONNECTION = """
    UPDATE connections
    SET version = :version, state = :state, state_hash = :state_hash,
        external_id = :external_id, account_id = :account_id,
        created_at = :created_at, updated_at = :updated_at, data = :data
    WHERE id = :id AND version = :expected_version
"""

INSERT_EVENT = "INSERT INTO events (connection_id, sequence, at, data) VALUES (?, ?, ?, ?)"

RELEASE_LEASE = (
    "UPDATE connections SET lease_owner = NULL, lease_until = NULL "
    "WHERE id = ?1 AND lease_owner = ?2"
)

CLAIM_WEBHOOK = """
    INSERT INTO webhooks (id, at, claimed_by, claimed_until) VALUES (:id, :now, :owner, :until)
    ON CONFLICT (id) DO UPDATE
        SET at = excluded.at, claimed_by = excluded.claimed_by,
            claimed_until = excluded.claimed_until
        WHERE webhooks.claimed_until IS NOT NULL
            AND (webhooks.claimed_until <= :now OR webhooks.claimed_by = :owner)
    RETURNING 1
"""

#: ``(event_id)`` -> ``claimed_until``: what a lost claim found.
WEBHOOK_CLAIM = "SELECT claimed_until FROM webhooks WHERE id = ?"


@final
class _SQLiteStatements(Statements):
    __slots__ = ()

    def __init__(self) -> None:
        self.get = "SELECT id, data FROM connections WHERE id = ?1"
        self.find = "SELECT id, data FROM connections WHERE state_hash = ?1"
        self.read_events = (
            "SELECT data FROM events WHERE connection_id = ?1 AND sequence > ?2 ORDER BY sequence"
        )
        self.read_outbox = (
            "SELECT position, connection_id, data FROM events WHERE position > ?1 "
            "ORDER BY position LIMIT ?2"
        )
        self.acquire_lease = """
            UPDATE connections SET lease_owner = ?2, lease_until = ?3
            WHERE id = ?1 AND (lease_owner IS NULL OR lease_until <= ?4 OR lease_owner = ?2)
            RETURNING id, data
        """
        self.release_lease = RELEASE_LEASE
        self.get_offset = "SELECT position FROM consumers WHERE name = ?1"
        self.commit_offset = """
            INSERT INTO consumers (name, position) VALUES (?1, ?2)
            ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)
        """
        self.finish_webhook = (
            "UPDATE webhooks SET at = ?3, claimed_by = NULL, claimed_until = NULL "
            "WHERE id = ?1 AND claimed_by = ?2"
        )
        self.release_webhook = (
            "DELETE FROM webhooks WHERE id = ?1 AND claimed_by = ?2 AND claimed_until IS NOT NULL"
        )
        self.rotate_row = "SELECT version, data FROM connections WHERE id = ?1"
        self.acquire_relay_lease = """
            INSERT INTO relay_leases (relay, name, owner, until) VALUES (?1, ?2, ?3, ?4)
            ON CONFLICT (relay, name) DO UPDATE SET owner = excluded.owner, until = excluded.until
                WHERE relay_leases.until <= ?5 OR relay_leases.owner = ?3
            RETURNING 1
        """
        self.release_relay_lease = (
            "DELETE FROM relay_leases WHERE relay = ?1 AND name = ?2 AND owner = ?3"
        )
        self.relay_leases = (
            "SELECT name, owner FROM relay_leases WHERE relay = ?1 AND until > ?2 ORDER BY name"
        )
        self.put_dead_letter = """
            INSERT INTO dead_letters (relay, position, connection_id, attempts, error, at, data)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
            ON CONFLICT (relay, position) DO UPDATE
                SET attempts = excluded.attempts, error = excluded.error, at = excluded.at,
                    data = excluded.data
        """
        self.dead_letters = (
            "SELECT position, connection_id, attempts, error, at, data FROM dead_letters "
            "WHERE relay = ?1 AND position > ?2 ORDER BY position LIMIT ?3"
        )
        self.delete_dead_letter = (
            "DELETE FROM dead_letters WHERE relay = ?1 AND position = ?2 RETURNING 1"
        )


#: The statements of :class:`~._sql.SQLStore`, in SQLite's dialect.
STATEMENTS: Statements = _SQLiteStatements()


def in_transaction(db: sqlite3.Connection, op: Callable[[sqlite3.Connection], _T]) -> _T:
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


def connect(path: str, busy_timeout: float, create: bool = True) -> sqlite3.Connection:
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


#: How a StoreNotMigratedError ends: the one command that creates and migrates.
_MIGRATE_HINT = "create or upgrade it with 'awx-connection db migrate'"


def _check_schema(db: sqlite3.Connection, path: str) -> None:
    """Raise unless the file is at this library's schema version; reads only."""
    has_schema = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'awx_schema'"
    ).fetchone()
    current = schema_version(db) if has_schema else 0
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


def _enable_wal(db: sqlite3.Connection) -> None:
    """
    Switch the file to WAL, retrying while it is locked.

    The switch needs the file to itself, and SQLite can answer "database is
    locked" at once, without its busy handler, while another connection is
    opening or migrating the same new file; so the retry is ours. It runs on
    the store's thread, where sleeping blocks nothing else.
    """
    deadline = time.monotonic() + _WAL_PATIENCE
    pause, longest = POLL
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL").fetchall()
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, longest)
        else:
            return


def schema_version(db: sqlite3.Connection) -> int:
    """The number of :data:`MIGRATIONS` the file's ``awx_schema`` records."""
    row = db.execute("SELECT version FROM awx_schema").fetchone()
    return int(row[0]) if row else 0


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the missing :data:`MIGRATIONS` in one write transaction."""

    def op(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS awx_schema (version INTEGER NOT NULL)")
        current = schema_version(db)
        _check_not_newer(current)
        for script in MIGRATIONS[current:]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        if current < len(MIGRATIONS):
            db.execute("DELETE FROM awx_schema")
            db.execute("INSERT INTO awx_schema (version) VALUES (?)", (len(MIGRATIONS),))

    in_transaction(db, op)
