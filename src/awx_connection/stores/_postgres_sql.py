"""
The PostgreSQL store's schema and statements.

One job: every SQL text the store sends, in one place, kept apart from
:mod:`._postgres` (the pool, retries and errors) so that the schema and each
statement can be read together. :class:`PostgresStatements` fills the
schema name and its derived names in once per store, so no statement is
built per call, and :func:`migrate` applies :data:`MIGRATIONS`.

* **Everything lives in one schema**, named by a validated identifier and
  always quoted, so several deployments (or test runs) can share a
  database. Each schema has its own advisory-lock keys and NOTIFY
  channels, derived from its name (:func:`lock_key`).
* **Migrations run in one transaction** under ``pg_advisory_xact_lock`` on
  the schema's migration key: of several processes opening a new database
  together, one migrates and the others wait for it and then find nothing
  left to do. DDL is transactional in PostgreSQL, so a failed migration
  leaves the previous version intact.
* **Writes notify in the same statement** (``pg_notify`` on what the
  ``WITH ... RETURNING`` wrote), so a notification goes out exactly when,
  and only if, the write commits.
"""

from __future__ import annotations

import hashlib
from typing import Any, final

from .._errors import StoreError, StoreNotMigratedError
from ._sql import Statements

__all__ = ["MIGRATIONS", "PostgresStatements", "lock_key", "migrate", "schema_version"]

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
    # 5: what the relays of the outbox share (awx_connection.relay): leases
    # on their partitions, and the events a sink gave up on.
    """
    CREATE TABLE {schema}.relay_leases (
        relay TEXT NOT NULL,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        until DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (relay, name)
    );
    CREATE TABLE {schema}.dead_letters (
        relay TEXT NOT NULL,
        position BIGINT NOT NULL,
        connection_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (relay, position)
    );
    """,
)


def lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory-lock key for *purpose* in *schema*."""
    digest = hashlib.sha256(f"awx_connection/{purpose}/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@final
class PostgresStatements(Statements):
    """
    Every statement of the store, with the quoted schema and the derived
    constants filled in: those :class:`~._sql.SQLStore` runs, and the
    store's own.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        s = f'"{self.schema}"'
        connections_channel = f"'{self.schema}_connections'"
        events_channel = f"'{self.schema}_events'"
        self.quoted = s
        self.connections_channel = f"{self.schema}_connections"
        self.events_channel = f"{self.schema}_events"
        self.migration_lock = f"SELECT pg_advisory_xact_lock({lock_key('migrations', self.schema)})"
        self.outbox_lock = f"SELECT pg_advisory_xact_lock({lock_key('outbox', self.schema)})"
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
                SELECT pg_advisory_xact_lock({lock_key("outbox", self.schema)}) FROM written
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
        self.rotate_row = f"SELECT version, data FROM {s}.connections WHERE id = $1"
        self.rotate_write = (
            f"UPDATE {s}.connections SET data = $3 WHERE id = $1 AND version = $2 RETURNING 1"
        )
        self.schema_version = f"SELECT version FROM {s}.schema_version"
        self.acquire_relay_lease = f"""
            INSERT INTO {s}.relay_leases AS l (relay, name, owner, until) VALUES ($1, $2, $3, $4)
            ON CONFLICT (relay, name) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until
                WHERE l.until <= $5 OR l.owner = $3
            RETURNING 1
        """
        self.release_relay_lease = (
            f"DELETE FROM {s}.relay_leases WHERE relay = $1 AND name = $2 AND owner = $3"
        )
        self.relay_leases = (
            f"SELECT name, owner FROM {s}.relay_leases WHERE relay = $1 AND until > $2 "
            "ORDER BY name"
        )
        self.put_dead_letter = f"""
            INSERT INTO {s}.dead_letters
                (relay, position, connection_id, attempts, error, at, data)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (relay, position) DO UPDATE
                SET attempts = EXCLUDED.attempts, error = EXCLUDED.error, at = EXCLUDED.at,
                    data = EXCLUDED.data
        """
        self.dead_letters = (
            f"SELECT position, connection_id, attempts, error, at, data FROM {s}.dead_letters "
            "WHERE relay = $1 AND position > $2 ORDER BY position LIMIT $3"
        )
        self.delete_dead_letter = (
            f"DELETE FROM {s}.dead_letters WHERE relay = $1 AND position = $2 RETURNING 1"
        )


async def schema_version(connection: Any, sql: PostgresStatements) -> int:
    """The number of :data:`MIGRATIONS` applied to *sql*'s schema (0 if none), on *connection*."""
    exists = await connection.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{sql.quoted}.schema_version"
    )
    if not exists:
        return 0
    value = await connection.fetchval(sql.schema_version)
    return 0 if value is None else int(value)


async def migrate(connection: Any, sql: PostgresStatements) -> int:
    """Apply the missing :data:`MIGRATIONS` under the schema's migration lock; how many."""
    async with connection.transaction():
        await connection.execute(sql.migration_lock)
        # Checked first: CREATE ... IF NOT EXISTS needs the CREATE privilege
        # even when there is nothing to create.
        if not await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", sql.schema
        ):
            await connection.execute(f"CREATE SCHEMA {sql.quoted}")
        current = await schema_version(connection, sql)
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


#: How a StoreNotMigratedError ends: the one command that creates and migrates.
_MIGRATE_HINT = "create or upgrade it with 'awx-connection db migrate'"


async def check_schema(connection: Any, sql: PostgresStatements) -> int:
    """Raise unless the schema is at this library's version (reads only); return it."""
    if not await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", sql.schema
    ):
        msg = f"postgres store: schema {sql.schema!r} does not exist; {_MIGRATE_HINT}"
        raise StoreNotMigratedError(msg)
    current = await schema_version(connection, sql)
    _check_not_newer(current, sql)
    if current < len(MIGRATIONS):
        msg = (
            f"postgres store: schema {sql.schema!r} is at version {current}, older than this "
            f"library's {len(MIGRATIONS)}; {_MIGRATE_HINT}"
        )
        raise StoreNotMigratedError(msg)
    return current


def _check_not_newer(current: int, sql: PostgresStatements) -> None:
    if current > len(MIGRATIONS):
        msg = (
            f"postgres store: schema {sql.schema!r} is at version {current}, newer than "
            f"this library knows ({len(MIGRATIONS)}); upgrade awx-connection"
        )
        raise StoreError(msg)
