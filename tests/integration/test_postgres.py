"""
What only the PostgreSQL store has to prove: replicas sharing one schema.

The shared contract (``awx_connection.testing.store_contract``, run in
``tests/contract/test_postgres_store.py``) runs against
:class:`PostgresStore` too; the tests here cover what needs a real server
and more than one store object: encryption as seen by a plain SQL client,
LISTEN/NOTIFY wake-ups from another pool, commit-ordered outbox positions
under racing writers, concurrent migrations, leases across replicas, and the
database dropping connections mid-operation.

Backends are killed with ``pg_terminate_backend``, selected by the unique
``application_name`` each store here sets, so nothing else on the server is
touched.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import attrs
import pytest

from awx_connection import (
    Config,
    ConfigurationError,
    ConnectionEvent,
    ConnectionManager,
    ConnectionRecord,
    ConnectionState,
    DecryptionError,
    KeyRing,
    PendingAuthorization,
    Secret,
    StoreError,
    StoreUnavailableError,
    TokenSet,
    Trigger,
)
from awx_connection.stores import PostgresStore
from awx_connection.stores._postgres import MIGRATIONS
from awx_connection.testing import FakeAirwallex, ManualClock
from awx_connection.testing.store_contract import opened

pytestmark = pytest.mark.postgres

S = ConnectionState
#: The key ring of the tests where encryption is not the point; shared, so
#: every store object of a test (replicas) reads what the others wrote.
KEYS = KeyRing.generate()


# --- helpers -----------------------------------------------------------------------------


def make_record(connection_id: str = "c1", **changes: Any) -> ConnectionRecord:
    """A pending version-1 record whose secrets are distinctive random strings."""
    record = ConnectionRecord(
        id=connection_id,
        state=S.PENDING,
        version=1,
        sequence=1,
        created_at=1000.0,
        updated_at=1000.0,
        reason="begin",
        scopes=("r:awx_action:balances_view",),
        external_id=f"ext-{connection_id}",
        authorization=PendingAuthorization(
            state_hash=f"hash-{connection_id}",
            expires_at=1600.0,
            redirect_uri="https://partner.example/callback",
            code_verifier=Secret("verifier-" + secrets.token_urlsafe(24)),
        ),
        code=Secret("code-" + secrets.token_urlsafe(24)),
        tokens=TokenSet(
            access_token=Secret("access-" + secrets.token_urlsafe(24)),
            refresh_token=Secret("refresh-" + secrets.token_urlsafe(24)),
            access_expires_at=1300.0,
            refresh_expires_at=9000.0,
            issued_at=1000.0,
            generation=1,
            scope=("r:awx_action:balances_view",),
        ),
    )
    return attrs.evolve(record, **changes)


def make_event(connection_id: str = "c1", sequence: int = 1) -> ConnectionEvent:
    return ConnectionEvent(
        connection_id=connection_id,
        sequence=sequence,
        trigger=Trigger.BEGIN if sequence == 1 else Trigger.CODE_RECEIVED,
        source=None if sequence == 1 else S.PENDING,
        dest=S.PENDING,
        reason=f"step {sequence}",
        at=1000.0 + sequence,
    )


def plaintexts(record: ConnectionRecord) -> list[str]:
    """Every secret of *record*, revealed."""
    assert record.authorization is not None
    assert record.authorization.code_verifier is not None
    assert record.code is not None
    assert record.tokens is not None
    return [
        record.authorization.code_verifier.reveal(),
        record.code.reveal(),
        record.tokens.access_token.reveal(),
        record.tokens.refresh_token.reveal(),
    ]


async def insert(
    store: PostgresStore, connection_id: str = "c1", **changes: Any
) -> ConnectionRecord:
    record = make_record(connection_id, **changes)
    await store.insert(record, make_event(connection_id))
    return record


async def update(
    store: PostgresStore, record: ConnectionRecord, **changes: Any
) -> ConnectionRecord:
    newer = attrs.evolve(
        record, version=record.version + 1, sequence=record.sequence + 1, **changes
    )
    await store.update(
        newer, expected_version=record.version, event=make_event(record.id, newer.sequence)
    )
    return newer


@pytest.fixture
async def raw(postgres_dsn: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection, outside every store."""
    connection = await asyncpg.connect(postgres_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def app_name() -> str:
    """A unique application_name, so a test kills only its own store's backends."""
    return "awx-test-" + secrets.token_hex(6)


async def terminate(raw: Any, app_name: str, *, where: str = "TRUE") -> int:
    """Kill every backend of *app_name* (matching *where*); return how many."""
    killed = await raw.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        f"AND application_name = $1 AND {where}",
        app_name,
    )
    return int(killed)


async def until(raw: Any, sql: str, *args: Any, seconds: float = 5.0) -> None:
    """Poll *sql* until it returns true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await raw.fetchval(sql, *args):
        assert loop.time() < deadline, f"never true: {sql}"
        await asyncio.sleep(0.01)


# --- secrets at rest ---------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [True, False])
async def test_raw_rows_hold_no_plaintext_secret(
    postgres_dsn: str, postgres_schema: str, raw: Any, encrypted: bool
) -> None:
    """A plain SQL client sees envelopes in every column of every table, never a secret."""
    keys = KeyRing.generate() if encrypted else None
    plain_or_sealed = PostgresStore(
        postgres_dsn, keys=keys, allow_plaintext=not encrypted, schema=postgres_schema
    )
    async with opened(plain_or_sealed) as store:
        record = await insert(store)
        newer = await update(store, record, state=S.AUTHORIZED)
        await store.commit_offset("billing", 2)
        assert newer == await store.get("c1")
    dumped = []
    for table in ("connections", "events", "consumers", "schema_version"):
        rows = await raw.fetch(f'SELECT t::text AS row FROM "{postgres_schema}".{table} t')
        dumped.extend(row["row"] for row in rows)
    everything = "\n".join(dumped)
    data = await raw.fetchval(f'SELECT data::text FROM "{postgres_schema}".connections')
    for secret in plaintexts(newer):
        if encrypted:
            assert secret not in everything
            assert secret not in data
        else:  # the same check finds them when nothing encrypts
            assert secret in data
    if encrypted:
        assert everything.count("awx1:k1:") == 4


async def test_rotate_keys_seals_rows_written_in_plaintext_only_when_asked(
    postgres_dsn: str, postgres_schema: str, raw: Any
) -> None:
    """
    Rows written with keys=None do not read once keys are configured;
    rotate_keys() reports them and changes nothing; rotate_keys(seal_plaintext=True)
    seals them, version unchanged.
    """
    plain = PostgresStore(postgres_dsn, keys=None, allow_plaintext=True, schema=postgres_schema)
    async with opened(plain) as store:
        record = await update(store, await insert(store))
    before = await raw.fetchval(f'SELECT data FROM "{postgres_schema}".connections')
    keys = KeyRing.generate("k9")
    async with opened(PostgresStore(postgres_dsn, keys=keys, schema=postgres_schema)) as store:
        with pytest.raises(DecryptionError, match=r"'c1'.*plaintext"):
            await store.get("c1")
        with pytest.raises(StoreError, match=r"1 of them hold plaintext.*keys seal"):
            await store.rotate_keys()
        assert before == await raw.fetchval(f'SELECT data FROM "{postgres_schema}".connections')
        assert 1 == await store.rotate_keys(seal_plaintext=True)
        assert 0 == await store.rotate_keys()
        assert record == await store.get("c1")
    data = await raw.fetchval(f'SELECT data::text FROM "{postgres_schema}".connections')
    assert not any(secret in data for secret in plaintexts(record))
    assert data.count("awx1:k9:") == 4


async def test_a_token_tampered_to_plaintext_is_refused_until_sealed(
    postgres_dsn: str,
    postgres_schema: str,
    raw: Any,
    caplog: pytest.LogCaptureFixture,
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
) -> None:
    """
    A sealed access token replaced by plaintext in the stored JSON (what
    someone who can write the database would do) makes get() and
    access_token() raise DecryptionError naming the connection and field,
    never the value; listings leave it out with an ERROR. Only
    rotate_keys(seal_plaintext=True) accepts it, logging a WARNING.
    """
    keys = KeyRing.generate()

    def store() -> PostgresStore:
        return PostgresStore(postgres_dsn, keys=keys, schema=postgres_schema)

    async with ConnectionManager(awx_config, store=store(), clock=awx_clock) as awx:
        victim = await connect(awx, awx_fake)
        bystander = await connect(awx, awx_fake)
    swapped = "attacker-token-" + secrets.token_urlsafe(16)
    await raw.execute(
        f"""UPDATE "{postgres_schema}".connections
            SET data = jsonb_set(data::jsonb, '{{tokens,access_token}}', to_jsonb($2::text))::text
            WHERE id = $1""",
        victim,
        swapped,
    )
    before = await raw.fetchval(
        f'SELECT data FROM "{postgres_schema}".connections WHERE id = $1', victim
    )
    async with ConnectionManager(awx_config, store=store(), clock=awx_clock) as awx:
        with pytest.raises(DecryptionError, match="access_token: plaintext") as caught:
            await awx.access_token(victim)
        assert victim == caught.value.connection_id
        assert swapped not in str(caught.value)
        with pytest.raises(DecryptionError, match=f"'{victim}'"):
            await awx.store.get(victim)
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [bystander] == [c.id for c in await awx.connections()]
        [logged] = [r for r in caplog.records if r.name == "awx_connection.stores"]
        assert (logging.ERROR, True) == (logged.levelno, repr(victim) in logged.getMessage())
        assert swapped not in logged.getMessage()
        assert await awx.access_token(bystander)
    assert before == await raw.fetchval(
        f'SELECT data FROM "{postgres_schema}".connections WHERE id = $1', victim
    )
    caplog.clear()
    async with opened(store()) as sealing:
        with caplog.at_level(logging.WARNING, logger="awx_connection.stores"):
            assert 1 == await sealing.rotate_keys(seal_plaintext=True)
        assert [
            f"postgres store: rotate_keys sealed plaintext secrets of connection {victim!r}"
        ] == [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        sealed = await sealing.get(victim)
        assert sealed is not None
        assert sealed.tokens is not None
        assert Secret(swapped) == sealed.tokens.access_token
    data = await raw.fetchval(
        f'SELECT data FROM "{postgres_schema}".connections WHERE id = $1', victim
    )
    assert swapped not in data


async def connect(awx: ConnectionManager, fake: FakeAirwallex) -> str:
    """An active connection to a fresh account; its id."""
    request = await awx.begin_authorization()
    callback = fake.approve(request.url, account_id=fake.create_account())
    return (await awx.complete_authorization(callback)).id


async def test_undecryptable_row_fails_get_and_is_left_out_of_listings(
    postgres_dsn: str, postgres_schema: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """get() names the connection; list_connections logs it and returns the rest; no rewrite."""
    store = PostgresStore(postgres_dsn, keys=KeyRing.generate(), schema=postgres_schema)
    async with opened(store):
        await insert(store, "broken", created_at=1.0)
        healthy = await insert(store, "healthy", created_at=2.0)
        # An envelope moved to another row does not decrypt (it is bound to its row).
        tampered = f"""
            UPDATE "{postgres_schema}".connections SET data = jsonb_set(
                data::jsonb, '{{tokens,access_token}}',
                (SELECT data::jsonb->'tokens'->'access_token' FROM "{postgres_schema}".connections
                 WHERE id = 'healthy'))::text
            WHERE id = 'broken' RETURNING data
        """
        before = await raw.fetchval(tampered)
        with pytest.raises(DecryptionError, match="'broken'") as caught:
            await store.get("broken")
        assert "broken" == caught.value.connection_id
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [healthy] == await store.list_connections()
        [logged] = [r for r in caplog.records if r.name == "awx_connection.stores"]
        assert logging.ERROR == logged.levelno
        assert "'broken'" in logged.getMessage()
        assert healthy == await store.get("healthy")
    after = await raw.fetchval(
        f"SELECT data::text FROM \"{postgres_schema}\".connections WHERE id = 'broken'"
    )
    assert before == after


# --- replicas: wake-ups and the outbox ---------------------------------------------------


async def test_a_write_by_one_replica_wakes_wait_for_update_in_another(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """NOTIFY at commit wakes the other pool's waiter well before any re-check."""
    writer = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    # A re-check every 30 s: only a notification can wake this one quickly.
    reader = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema, recheck_interval=30)
    async with opened(writer), opened(reader):
        record = await insert(writer)
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(reader.wait_for_update("c1", after_version=1, timeout=5.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = loop.time()
        newer = await update(writer, record)
        assert newer == await asyncio.wait_for(waiting, 5.0)
        assert loop.time() - started < 0.4


async def test_a_write_by_one_replica_wakes_wait_for_events_in_another(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """The events channel wakes a consumer in another replica at once."""
    writer = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    reader = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema, recheck_interval=30)
    async with opened(writer), opened(reader):
        record = await insert(writer)
        [(last, _)] = await reader.read_outbox()
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(reader.wait_for_events(after=last, timeout=5.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = loop.time()
        await update(writer, record)
        assert await asyncio.wait_for(waiting, 5.0)
        assert loop.time() - started < 0.4


async def test_a_change_without_notification_is_found_by_the_recheck(
    postgres_dsn: str, postgres_schema: str, raw: Any
) -> None:
    """A write that sent no NOTIFY (here: plain SQL) still ends the wait, by re-reading."""
    store = PostgresStore(
        postgres_dsn, keys=KeyRing.generate(), schema=postgres_schema, recheck_interval=0.1
    )
    async with opened(store):
        await insert(store)
        waiting = asyncio.create_task(store.wait_for_update("c1", after_version=1, timeout=5.0))
        await asyncio.sleep(0.2)
        await raw.execute(
            f'UPDATE "{postgres_schema}".connections '
            "SET version = 2, data = jsonb_set(data::jsonb, '{version}', '2')::text WHERE id = 'c1'"
        )
        found = await asyncio.wait_for(waiting, 1.0)
        assert found is not None
        assert 2 == found.version


async def test_tailing_the_outbox_misses_nothing_while_replicas_race(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """
    10 writers on two pools, a consumer tailing with ``after=last seen``.

    Positions are handed out at INSERT time; without the outbox lock a lower
    position could commit after a higher one was read, and the tail would
    skip it for good. The consumer must end up with every event, in order.
    """
    a = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    b = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    async with opened(a), opened(b):

        async def writer(n: int) -> None:
            store = a if n % 2 else b
            record = await insert(store, f"c{n}")
            for _ in range(5):
                record = await update(store, record)

        tailed: list[tuple[int, ConnectionEvent]] = []
        finished = asyncio.Event()

        async def tail() -> None:
            while True:
                done = finished.is_set()
                after = tailed[-1][0] if tailed else 0
                batch = await b.read_outbox(after=after)
                tailed.extend(batch)
                if done and not batch:
                    return
                if not batch:
                    await b.wait_for_events(after=after, timeout=0.05)

        tailing = asyncio.create_task(tail())
        await asyncio.gather(*(writer(n) for n in range(10)))
        finished.set()
        await asyncio.wait_for(tailing, 10.0)
        everything = await a.read_outbox()
    assert 60 == len(everything)
    assert everything == tailed
    positions = [position for position, _ in tailed]
    assert positions == sorted(set(positions))
    for n in range(10):
        assert [1, 2, 3, 4, 5, 6] == [e.sequence for _, e in tailed if e.connection_id == f"c{n}"]


# --- migrations --------------------------------------------------------------------------


async def test_concurrent_open_of_five_stores_migrates_once(
    postgres_dsn: str, postgres_schema: str, raw: Any
) -> None:
    """Five stores opening a new schema together end on the latest version, recorded once."""
    stores = [PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema) for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert {len(MIGRATIONS)} == {await store.schema_version() for store in stores}
        rows = await raw.fetch(f'SELECT version FROM "{postgres_schema}".schema_version')
        assert [len(MIGRATIONS)] == [row["version"] for row in rows]
        record = await insert(stores[0])
        assert record == await stores[-1].get("c1")
    finally:
        for store in stores:
            await store.aclose()


async def test_concurrent_migrate_applies_each_migration_exactly_once(
    postgres_dsn: str, raw: Any
) -> None:
    """migrate() on five unopened stores: one applies everything, four find nothing to do."""
    schema = "awx_test_" + secrets.token_hex(6)
    stores = [PostgresStore(postgres_dsn, keys=KEYS, schema=schema) for _ in range(5)]
    try:
        assert 0 == await stores[0].schema_version()  # works unopened, like migrate()
        applied = await asyncio.gather(*(store.migrate() for store in stores))
        assert [0, 0, 0, 0, len(MIGRATIONS)] == sorted(applied)
        assert 0 == await stores[0].migrate()
        assert len(MIGRATIONS) == await stores[1].schema_version()
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_a_newer_schema_is_refused(postgres_dsn: str, postgres_schema: str, raw: Any) -> None:
    """A schema migrated by a newer library is refused rather than misread."""
    store = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    assert len(MIGRATIONS) == await store.migrate()
    await raw.execute(
        f'UPDATE "{postgres_schema}".schema_version SET version = {len(MIGRATIONS) + 1}'
    )
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.aclose()


async def test_records_written_as_jsonb_survive_migration_3(
    postgres_dsn: str, postgres_schema: str, raw: Any
) -> None:
    """A schema at version 2 (record as jsonb) moves to text with every record intact."""
    keys = KeyRing.generate()
    store = PostgresStore(postgres_dsn, keys=keys, schema=postgres_schema)
    async with opened(store):
        record = await insert(store)
    s = f'"{postgres_schema}"'
    await raw.execute(
        f"ALTER TABLE {s}.connections ALTER COLUMN data TYPE JSONB USING data::jsonb;"
        f"ALTER TABLE {s}.webhooks DROP COLUMN claimed_by, DROP COLUMN claimed_until;"
        f"DROP TABLE {s}.relay_leases, {s}.dead_letters;"
        f"UPDATE {s}.schema_version SET version = 2"
    )
    again = PostgresStore(postgres_dsn, keys=keys, schema=postgres_schema)
    async with opened(again):
        assert len(MIGRATIONS) == await again.schema_version()
        assert record == await again.get("c1")
        newer = await update(again, record, reason="written as text")
        assert newer == await again.get("c1")
    column_type = await raw.fetchval(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'connections' AND column_name = 'data'",
        postgres_schema,
    )
    assert "text" == column_type


# --- leases across replicas --------------------------------------------------------------


async def test_leases_give_one_owner_at_a_time_across_replicas(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """Two pools on one schema: one holder, takeover after expiry, release only by the holder."""
    a = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    b = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    async with opened(a), opened(b):
        record = await insert(a)
        assert await a.acquire_lease("c1", "a", until=100.0, now=0.0)
        assert not await b.acquire_lease("c1", "b", until=200.0, now=99.0)
        assert await a.acquire_lease("c1", "a", until=150.0, now=99.0)  # renewal
        assert not await b.acquire_lease("c1", "b", until=200.0, now=120.0)
        assert await b.acquire_lease("c1", "b", until=300.0, now=150.0)  # takeover
        assert not await a.acquire_lease("c1", "a", until=400.0, now=151.0)
        await a.release_lease("c1", "a")  # not the holder: nothing happens
        assert not await a.acquire_lease("c1", "a", until=400.0, now=152.0)
        await b.release_lease("c1", "b")
        assert await a.acquire_lease("c1", "a", until=400.0, now=153.0)
        assert record == await b.get("c1")  # leases never touch the version

        await insert(a, "c2")
        granted = await asyncio.gather(
            *(
                (a if n % 2 else b).acquire_lease("c2", f"w{n}", until=10.0, now=0.0)
                for n in range(20)
            )
        )
        assert 1 == sum(grant is not None for grant in granted)


# --- the database going away -------------------------------------------------------------


async def test_get_after_backends_are_killed_is_retried_transparently(
    postgres_dsn: str, postgres_schema: str, raw: Any, app_name: str
) -> None:
    """Pooled connections killed by the server: the next reads reconnect and succeed."""
    store = PostgresStore(
        postgres_dsn, keys=KEYS, schema=postgres_schema, min_size=3, application_name=app_name
    )
    async with opened(store):
        record = await insert(store)
        await asyncio.gather(*(store.get("c1") for _ in range(3)))  # warm every connection
        assert await terminate(raw, app_name) >= 1
        assert [record] * 3 == await asyncio.gather(*(store.get("c1") for _ in range(3)))
        assert [record] == await store.list_connections()


async def test_update_after_backends_are_killed_succeeds(
    postgres_dsn: str, postgres_schema: str, raw: Any, app_name: str
) -> None:
    """
    An update handed a dead pooled connection fails before COMMIT, so it is retried.

    The general promise is "succeeds, or raises StoreUnavailableError and the
    record is the old or the new one"; with the connection killed while idle
    it is always the former.
    """
    store = PostgresStore(
        postgres_dsn, keys=KEYS, schema=postgres_schema, min_size=2, application_name=app_name
    )
    async with opened(store):
        record = await insert(store)
        assert await terminate(raw, app_name) >= 1
        try:
            newer: ConnectionRecord | None = await update(store, record)
        except StoreUnavailableError:  # allowed by the contract, not expected here
            newer = None
        stored = await store.get("c1")
        assert stored in (record, newer)
        assert newer is not None
        assert newer == stored
        assert [1, 2] == [event.sequence for event in await store.read_events("c1")]


async def test_update_killed_before_commit_is_retried_and_commits_once(
    postgres_dsn: str, postgres_schema: str, raw: Any, app_name: str
) -> None:
    """Killed while waiting for a row lock (no COMMIT sent): retried on a fresh connection."""
    store = PostgresStore(
        postgres_dsn, keys=KEYS, schema=postgres_schema, application_name=app_name
    )
    # Its own connection: pg_stat_activity is a snapshot per transaction, so
    # the watching connection must stay outside the blocking one.
    locker = await asyncpg.connect(postgres_dsn)
    async with opened(store):
        record = await insert(store)
        blocker = locker.transaction()
        await blocker.start()
        try:
            await locker.execute(
                f"SELECT 1 FROM \"{postgres_schema}\".connections WHERE id = 'c1' FOR UPDATE"
            )
            writing = asyncio.create_task(update(store, record, reason="killed once"))
            waiting_for_lock = (
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock')"
            )
            await until(raw, waiting_for_lock, app_name)
            assert 1 == await terminate(raw, app_name, where="wait_event_type = 'Lock'")
            await until(raw, waiting_for_lock, app_name)  # the retry queues again
        finally:
            await blocker.rollback()
            await locker.close()
        newer = await asyncio.wait_for(writing, 5.0)
        assert newer == await store.get("c1")
        assert [1, 2] == [event.sequence for event in await store.read_events("c1")]
        assert 2 == len(await store.read_outbox())


async def test_update_killed_during_commit_is_retried_and_commits_once(
    postgres_dsn: str, postgres_schema: str, raw: Any, app_name: str
) -> None:
    """
    A write is one statement with no COMMIT of ours to lose: killed while it
    commits, it is retried, and the record and its event land exactly once.

    A deferred constraint trigger holds the commit open (sleeping only the
    first time: a sequence does not roll back), so the kill lands inside it
    deterministically.
    """
    store = PostgresStore(
        postgres_dsn, keys=KEYS, schema=postgres_schema, application_name=app_name
    )
    async with opened(store):
        record = await insert(store)
        s = f'"{postgres_schema}"'
        await raw.execute(
            f"""
            CREATE SEQUENCE {s}.slow_once;
            CREATE FUNCTION {s}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('{s}.slow_once') = 1 THEN PERFORM pg_sleep(10); END IF;
                    RETURN NULL;
                END $$;
            CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON {s}.connections
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.slow_commit();
            """
        )
        writing = asyncio.create_task(update(store, record, reason="killed while committing"))
        await until(
            raw,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 "
            "AND state = 'active' AND wait_event = 'PgSleep')",
            app_name,
        )
        assert 1 == await terminate(raw, app_name, where="wait_event = 'PgSleep'")
        newer = await asyncio.wait_for(writing, 5.0)
        await raw.execute(f"DROP TRIGGER slow_commit ON {s}.connections")
        assert newer == await store.get("c1")
        assert [1, 2] == [event.sequence for event in await store.read_events("c1")]
        assert 2 == len(await store.read_outbox())


@attrs.define
class LostAnswers:
    """A pool whose connections run every query, then lose the first *lose* answers."""

    pool: Any
    lose: int
    lost: int = 0

    def acquire(self) -> Any:
        return _LosingAcquire(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


@attrs.define
class _LosingAcquire:
    owner: LostAnswers
    context: Any = None

    async def __aenter__(self) -> Any:
        self.context = self.owner.pool.acquire()
        return _LosingConnection(self.owner, await self.context.__aenter__())

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.context.__aexit__(*exc_info)


@attrs.define
class _LosingConnection:
    owner: LostAnswers
    inner: Any

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            answer = await method(*args, **kwargs)  # executed and committed
            if self.owner.lost < self.owner.lose:
                self.owner.lost += 1
                raise asyncpg.exceptions.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation"
                )
            return answer

        return call


async def test_update_whose_answer_was_lost_is_confirmed_by_the_retry(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """The write committed, its answer was lost: the retry finds the row exactly ours."""
    store = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema, retry_base=0.001)
    async with opened(store):
        record = await insert(store)
        store._pool = LostAnswers(store._pool, lose=1)
        newer = await update(store, record, reason="answer lost")
        assert 1 == store._pool.lost
        store._pool = store._pool.pool
        assert newer == await store.get("c1")
        assert [1, 2] == [event.sequence for event in await store.read_events("c1")]


async def test_update_that_stays_unanswered_raises_store_unavailable(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """Every try's answer lost: StoreUnavailableError; the row is then old or new, never torn."""
    store = PostgresStore(
        postgres_dsn, keys=KEYS, schema=postgres_schema, retry_base=0.001, retry_attempts=3
    )
    async with opened(store):
        record = await insert(store)
        store._pool = LostAnswers(store._pool, lose=1000)
        with pytest.raises(StoreUnavailableError) as caught:
            await update(store, record, reason="lost ack")
        store._pool = store._pool.pool
        message = str(caught.value)
        assert "update of connection 'c1'" in message
        assert "may or may not have committed" in message
        # Re-read, as the error says: here the first try committed, once.
        stored = await store.get("c1")
        assert stored is not None
        assert 2 == stored.version
        assert "lost ack" == stored.reason
        assert [1, 2] == [event.sequence for event in await store.read_events("c1")]


async def test_open_against_a_closed_port_raises_store_unavailable_quickly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing listens on port 1: every retry fails, then StoreUnavailableError, no password."""
    calls = 0
    real_create_pool = asyncpg.create_pool

    def counting_create_pool(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_create_pool(*args, **kwargs)

    monkeypatch.setattr(asyncpg, "create_pool", counting_create_pool)
    store = PostgresStore(
        "postgresql://postgres:hunter2@127.0.0.1:1/test",
        keys=KEYS,
        retry_attempts=4,
        retry_base=0.01,
        connect_timeout=2.0,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailableError, match="open") as caught:
        await store.open()
    assert loop.time() - started < 2.0
    assert 4 == calls
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreError, match="not open"):
        await store.get("c1")
    await store.aclose()


async def test_waiters_survive_losing_the_listening_connection(
    postgres_dsn: str, postgres_schema: str, raw: Any, app_name: str
) -> None:
    """Kill every backend of the waiting replica: it still sees the next write, then by NOTIFY."""
    writer = PostgresStore(postgres_dsn, keys=KEYS, schema=postgres_schema)
    # No re-check for 30 s: only a re-opened listener can wake it in time.
    reader = PostgresStore(
        postgres_dsn,
        keys=KEYS,
        schema=postgres_schema,
        application_name=app_name,
        recheck_interval=30,
    )
    async with opened(writer), opened(reader):
        record = await insert(writer)
        waiting = asyncio.create_task(reader.wait_for_update("c1", after_version=1, timeout=5.0))
        await asyncio.sleep(0.2)
        assert await terminate(raw, app_name) >= 2  # the pool's and the listener
        await asyncio.sleep(0.1)
        record = await update(writer, record)
        assert record == await asyncio.wait_for(waiting, 2.0)
        # The listener is back: the next wake-up comes well before a re-check.
        waiting = asyncio.create_task(reader.wait_for_update("c1", after_version=2, timeout=5.0))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        record = await update(writer, record)
        assert record == await asyncio.wait_for(waiting, 2.0)
        assert loop.time() - started < 0.4


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["bad-name", "1abc", 'x"; DROP SCHEMA public; --', "a" * 52])
def test_schema_names_are_validated(schema: str) -> None:
    """Only plain identifiers short enough for the NOTIFY channel names are accepted."""
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresStore("postgresql://db/x", keys=KEYS, schema=schema)


async def test_an_unopened_store_raises_store_error(postgres_dsn: str) -> None:
    """Using the store before open() is a StoreError, not an AttributeError."""
    with pytest.raises(StoreError, match="not open"):
        await PostgresStore(postgres_dsn, keys=KEYS).get("c1")
