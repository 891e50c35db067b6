"""
The store fails while the provider has already rotated: the new pair is
written again until it is stored, against real databases made unavailable
for real (SQLite's write lock held by another connection, PostgreSQL cut
off by a TCP proxy), and pruning never holds SQLite's write lock for long.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from awx_connection import Config, ConnectionManager, ConnectionState, KeyRing, Store
from awx_connection.stores import PostgresStore, SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock, TcpProxy

S = ConnectionState

#: The provider answers the refresh this late (real seconds): the window in
#: which the test makes the store unavailable, after the journal was written.
ANSWER_DELAY = 0.4
#: How long the store stays unavailable (real seconds), well past the delay.
OUTAGE = 1.2


async def connect(manager: ConnectionManager, fake: FakeAirwallex) -> str:
    request = await manager.begin_authorization()
    connection = await manager.complete_authorization(fake.approve(request.url))
    return connection.id


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polling a database another process writes
            await asyncio.sleep(0.005)


async def rotate_through_an_outage(
    awx: ConnectionManager,
    fake: FakeAirwallex,
    clock: ManualClock,
    journaled: Callable[[str], Awaitable[bool]],
    outage: Callable[[], Awaitable[None]],
) -> str:
    """
    Refresh one connection; once its journal is stored and while the
    provider's answer is on its way, run *outage*. Returns the token.
    """
    connection_id = await connect(awx, fake)
    clock.advance(301)
    fake.inject(Fault(FaultKind.DELAY, grant_type="refresh_token", delay=ANSWER_DELAY))
    task = asyncio.ensure_future(awx.access_token(connection_id))
    await until(lambda: journaled(connection_id))
    await outage()
    token = await asyncio.wait_for(task, 30)
    assert S.ACTIVE is (await awx.get(connection_id)).state
    return token


def assert_stored_once(fake: FakeAirwallex, awx: ConnectionManager, token: str) -> None:
    assert "active" == fake.grant_status(token)
    assert 1 == fake.counters.refreshes
    assert 0 == fake.counters.grace_reissues  # the old token was never presented again
    assert 0 == fake.counters.reuse_violations
    assert 0 == awx.statistics().rotations_discarded


@pytest.mark.slow
async def test_new_tokens_are_stored_once_sqlites_write_lock_is_free_again(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    Another connection holds the file's write lock (a long DELETE, say) when
    the new tokens arrive: each write fails after the busy timeout ("database
    is locked"), and is made again until the lock is free.
    """
    path = tmp_path / "awx.db"
    store = SQLiteStore(path, keys=KeyRing.generate(), busy_timeout=0.1)
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)

    async def journaled(connection_id: str) -> bool:
        row = reader.execute("SELECT state FROM connections WHERE id = ?", (connection_id,))
        return ("refreshing",) == row.fetchone()

    async def hold_the_write_lock() -> None:
        await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")
        await asyncio.sleep(OUTAGE)
        locker.execute("ROLLBACK")

    try:
        with caplog.at_level(logging.WARNING, logger="awx_connection"):
            async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
                token = await rotate_through_an_outage(
                    awx, awx_fake, awx_clock, journaled, hold_the_write_lock
                )
                assert_stored_once(awx_fake, awx, token)
    finally:
        reader.close()
        locker.close()
    assert any("could not store the rotated tokens" in r.getMessage() for r in caplog.records)


@pytest.mark.postgres
async def test_new_tokens_are_stored_once_postgresql_is_reachable_again(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    postgres_dsn: str,
    postgres_schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL is cut off (a TCP proxy drops everything) as the new tokens arrive."""
    import asyncpg

    direct = await asyncpg.connect(postgres_dsn)
    try:
        async with TcpProxy("127.0.0.1", 5432) as proxy:
            dsn = postgres_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
            assert dsn != postgres_dsn
            store = PostgresStore(
                dsn,
                keys=KeyRing.generate(),
                schema=postgres_schema,
                retry_attempts=2,
                retry_base=0.01,
                connect_timeout=1.0,
            )

            async def journaled(connection_id: str) -> bool:
                state = await direct.fetchval(
                    f'SELECT state FROM "{postgres_schema}".connections WHERE id = $1',
                    connection_id,
                )
                return "refreshing" == state

            async def cut_off() -> None:
                proxy.cut()
                await asyncio.sleep(OUTAGE)
                proxy.restore()

            with caplog.at_level(logging.WARNING, logger="awx_connection"):
                async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
                    token = await rotate_through_an_outage(
                        awx, awx_fake, awx_clock, journaled, cut_off
                    )
                    assert_stored_once(awx_fake, awx, token)
            assert 1 == proxy.cuts
    finally:
        await direct.close()
    assert any("could not store the rotated tokens" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
async def test_pruning_many_events_lets_other_writers_in(tmp_path: Path) -> None:
    """
    Pruning 400,000 events while another connection writes: the writer,
    with a 250 ms busy timeout, never finds the file locked for longer. One
    DELETE of them all held the lock for over half a second here.
    """
    path = tmp_path / "awx.db"
    pruner = SQLiteStore(path, keys=KeyRing.generate())
    await pruner.open()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(
            "INSERT INTO connections (id, version, state, created_at, updated_at, data) "
            "VALUES ('c', 1, 'active', 0, 0, '{}')"
        )
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO events (connection_id, sequence, at, data) VALUES ('c', ?, 0, ?)",
            ((n, b"x" * 200) for n in range(400_000)),
        )
        db.execute("COMMIT")
    finally:
        db.close()

    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.25)
    done = False
    writes = 0

    def write_until_done() -> None:
        nonlocal writes
        while not done:
            writer.execute("UPDATE connections SET lease_until = ? WHERE id = 'c'", (time.time(),))
            writes += 1
            time.sleep(0.002)

    try:
        writing = asyncio.ensure_future(asyncio.to_thread(write_until_done))
        await asyncio.sleep(0.05)
        assert 400_000 == await pruner.prune_events(before=1.0)
        done = True
        await writing  # raises sqlite3.OperationalError ("database is locked") if it was
        assert writes > 10
    finally:
        done = True
        writer.close()
        await pruner.aclose()


async def test_a_store_of_every_kind_counts_what_it_pruned(tmp_path: Path) -> None:
    """Batches add up: prune_batch smaller than the backlog still deletes all of it."""
    store: Store = SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate(), prune_batch=7)
    await store.open()
    try:
        db = sqlite3.connect(tmp_path / "awx.db", isolation_level=None)
        db.execute(
            "INSERT INTO connections (id, version, state, created_at, updated_at, data) "
            "VALUES ('c', 1, 'active', 0, 0, '{}')"
        )
        db.executemany(
            "INSERT INTO events (connection_id, sequence, at, data) VALUES ('c', ?, ?, '{}')",
            ((n, 0.0 if n < 30 else 5.0) for n in range(40)),
        )
        db.close()
        assert 30 == await store.prune_events(before=1.0)
        assert 0 == await store.prune_events(before=1.0)
    finally:
        await store.aclose()
