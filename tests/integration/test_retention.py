"""
Event retention on by default, on real SQLite files and a real PostgreSQL
schema with a ManualClock: the manager's background sweep deletes what is
older than ``event_retention`` without being asked, in bounded batches,
keeps the rest and the connections themselves; ``None`` turns it off; a
durable consumer further behind than the retention resumes at the next
surviving event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from awx_connection import (
    Config,
    ConnectionManager,
    ConnectionState,
    KeyRing,
    Store,
    TimingPolicy,
    Trigger,
)
from awx_connection.stores import PostgresStore, SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

DAY = 86400.0

StoreMaker = Callable[..., Store]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    """A store factory: one SQLite file, or one fresh PostgreSQL schema, per test."""
    keys = KeyRing.generate()
    if request.param == "sqlite":
        return lambda **kw: SQLiteStore(tmp_path / "awx.db", keys=keys, **kw)
    dsn = request.getfixturevalue("postgres_dsn")
    schema = request.getfixturevalue("postgres_schema")
    return lambda **kw: PostgresStore(dsn, keys=keys, schema=schema, **kw)


def timing(config: Config, **changes: Any) -> Config:
    return attrs.evolve(config, timing=attrs.evolve(config.timing, **changes))


async def connect(awx: ConnectionManager, fake: FakeAirwallex) -> str:
    request = await awx.begin_authorization()
    return (await awx.complete_authorization(fake.approve(request.url))).id


async def stored_events(store: Store) -> int:
    return len(await store.read_outbox(after=0, limit=100_000))


async def until(check: Callable[[], Any]) -> None:
    """Wait (real time, 10 s at most) until the coroutine *check* is true: a sweep ran."""
    deadline = time.monotonic() + 10.0
    while not await check():
        assert time.monotonic() < deadline, "the retention sweep did not run in time"
        await asyncio.sleep(0.02)


def test_retention_is_on_by_default() -> None:
    """Out of the box: 30 days, swept hourly."""
    assert 30 * DAY == TimingPolicy().event_retention
    assert 3600.0 == TimingPolicy().prune_interval


async def test_the_background_sweep_deletes_only_what_aged_out(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, make_store: StoreMaker
) -> None:
    """Nobody calls prune_events(): old events go, recent ones and every connection stay."""
    config = timing(awx_config, event_retention=DAY, prune_interval=0.05)
    async with ConnectionManager(
        config, store=make_store(), clock=awx_clock, keepalive=False
    ) as awx:
        old = await connect(awx, awx_fake)  # 3 events
        awx_clock.advance(600)
        await awx.access_token(old)  # 2 more, same age
        awx_clock.advance(2 * DAY)
        await awx.refresh(old)  # 2 recent ones of the old connection
        new = await connect(awx, awx_fake)  # 3 recent ones

        async def pruned() -> bool:
            return await stored_events(awx.store) == 5

        await until(pruned)
        history = await awx.history(old)
        assert [Trigger.REFRESH_STARTED, Trigger.REFRESHED] == [e.trigger for e in history]
        assert 3 == len(await awx.history(new))
        # The connection is the truth, not its history: still usable, and its
        # next event continues its sequence.
        assert ConnectionState.ACTIVE is (await awx.get(old)).state
        await awx.refresh(old)
        after = await awx.history(old)
        assert [6, 7, 8, 9] == [e.sequence for e in after]


@pytest.mark.parametrize("off", [{"event_retention": None}, {"prune_interval": None}], ids=str)
async def test_none_turns_the_sweep_off(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    make_store: StoreMaker,
    off: dict[str, None],
) -> None:
    """event_retention=None keeps everything; prune_interval=None leaves it to prune_events()."""
    config = timing(awx_config, **{"event_retention": DAY, "prune_interval": 0.02, **off})
    async with ConnectionManager(
        config, store=make_store(), clock=awx_clock, keepalive=False
    ) as awx:
        await connect(awx, awx_fake)
        awx_clock.advance(2 * DAY)
        await asyncio.sleep(0.2)  # ten intervals, had there been a sweep
        assert 3 == await stored_events(awx.store)
        assert (0 if "event_retention" in off else 3) == await awx.prune_events()


async def test_a_large_backlog_goes_in_bounded_batches_while_writes_go_on(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    make_store: StoreMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    600 old events, prune_batch=50: at least 12 separate deleting statements,
    and refreshes started during the prune complete (no long write lock).
    """
    store = make_store(prune_batch=50)
    statements = 0
    # Count the batches through each store's own per-batch write path.
    cls: Any = type(store)
    name = "_transaction" if isinstance(store, SQLiteStore) else "_run"
    write = getattr(cls, name)

    async def counted(self: Any, action: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal statements
        statements += action == "prune_events"
        return await write(self, action, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    config = timing(awx_config, event_retention=DAY, prune_interval=None)
    async with ConnectionManager(config, store=store, clock=awx_clock, keepalive=False) as awx:
        ids = [await connect(awx, awx_fake) for _ in range(4)]
        for _ in range(74):  # 4 x 3 + 4 x 74 x 2 = 604 events
            for cid in ids:
                await awx.refresh(cid)
        awx_clock.advance(2 * DAY)
        total = await stored_events(awx.store)
        prune = asyncio.create_task(awx.prune_events())
        await asyncio.sleep(0)
        refreshed = await asyncio.gather(*(awx.refresh(cid) for cid in ids))
        assert total == await prune
        assert all(c.state is ConnectionState.ACTIVE for c in refreshed)
        assert 8 == await stored_events(awx.store)
    assert statements >= total // 50 + 1


async def test_a_consumer_behind_the_retention_resumes_at_the_next_surviving_event(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, make_store: StoreMaker
) -> None:
    """Age decides, not offsets: the lagging consumer's offset stays valid and moves on."""
    config = timing(awx_config, event_retention=DAY, prune_interval=None)
    async with ConnectionManager(
        config, store=make_store(), clock=awx_clock, keepalive=False
    ) as awx:
        cid = await connect(awx, awx_fake)
        async with awx.consumer("slow") as events:
            assert Trigger.BEGIN is (await anext(events)).trigger
        awx_clock.advance(2 * DAY)
        await awx.refresh(cid)
        # begin handled; code_received and exchanged not yet, and now gone.
        assert 3 == await awx.prune_events()
        async with awx.consumer("slow") as events:
            assert Trigger.REFRESH_STARTED is (await anext(events)).trigger
            assert Trigger.REFRESHED is (await anext(events)).trigger


def _retention_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "awx-connection-retention"]


@pytest.mark.parametrize(
    ("changes", "running"),
    [({}, True), ({"event_retention": None}, False), ({"prune_interval": None}, False)],
    ids=["default", "retention-none", "interval-none"],
)
async def test_the_sweep_runs_by_default_and_stops_with_the_manager(
    awx_config: Config, awx_clock: ManualClock, changes: dict[str, None], running: bool
) -> None:
    """The default TimingPolicy starts the sweep at open(); close() ends it; None starts none."""
    config = timing(awx_config, **changes)
    async with ConnectionManager(config, clock=awx_clock, keepalive=False, settle=False):
        assert running == bool(_retention_tasks())
    await asyncio.sleep(0)
    assert not [t for t in _retention_tasks() if not t.done()]


async def test_the_cli_never_sweeps(awx_config: Config) -> None:
    """A CLI command's manager deletes nothing behind the command's back (read-only ones too)."""
    from awx_connection.cli._stores import one_shot_manager
    from awx_connection.stores import MemoryStore

    manager = one_shot_manager(awx_config, MemoryStore())
    assert manager.config.timing.prune_interval is None
    assert manager.config.timing.event_retention == awx_config.timing.event_retention
    async with manager:
        assert not _retention_tasks()
