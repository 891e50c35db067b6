"""
Keep-alive: idle connections survive 180 simulated days with a handful of
rotations each, and a connection whose refresh token ran out while nobody
ran the keep-alive moves to expired without a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest

import awx_connection._keepalive
from awx_connection import Config, ConnectionManager, ConnectionState, KeyRing, TimingPolicy
from awx_connection._keepalive import due_at
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

DAY = 86400.0
S = ConnectionState


async def connect_many(manager: ConnectionManager, fake: FakeAirwallex, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        request = await manager.begin_authorization()
        connection = await manager.complete_authorization(fake.approve(request.url))
        ids.append(connection.id)
    return ids


async def test_idle_connections_survive_180_days(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """50 idle connections, a keep-alive pass every 6 hours for 180 days: none expires."""
    store = SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate())
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
        ids = await connect_many(awx, awx_fake, 50)
        expired = 0
        for _ in range(int(180 * DAY / (6 * 3600))):
            awx_clock.advance(6 * 3600)
            report = await awx.keepalive_pass()
            expired += report.expired
            assert 0 == report.failed
        states = {(await awx.get(cid)).state for cid in ids}
        generations = [(await awx.get(cid)).token_generation for cid in ids]
    assert 0 == expired
    assert {S.ACTIVE} == states
    assert 0 == awx_fake.counters.reuse_violations
    # The fake's refresh tokens live 90 days: about one rotation every 40-45
    # days, so 3-5 rotations per connection in 180 days, never one per 5 min.
    assert all(3 <= g <= 5 for g in generations if g is not None), generations
    assert awx_fake.counters.refreshes == sum(g for g in generations if g is not None)


async def test_rotations_spread_by_jitter(awx_config: Config) -> None:
    """Connections issued together come due at different times (stable per id)."""
    from awx_connection import ConnectionSummary

    dues = {
        due_at(
            ConnectionSummary(f"conn_{i}", S.ACTIVE, 1, 0.0, 0, 0.0, 90 * DAY), awx_config.timing
        )
        for i in range(100)
    }
    assert len(dues) > 90
    timing = awx_config.timing
    for due in dues:
        assert due is not None
        remaining = 90 * DAY - due
        assert timing.keepalive_remaining * 90 * DAY <= remaining
        assert remaining <= (timing.keepalive_remaining + timing.keepalive_jitter) * 90 * DAY


async def test_token_that_ran_out_is_expired_without_a_request(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """Nobody ran the keep-alive for 91 days: the pass expires the connection, sends nothing."""
    async with ConnectionManager(awx_config, clock=awx_clock) as awx:
        (connection_id,) = await connect_many(awx, awx_fake, 1)
        awx_clock.advance(91 * DAY)
        requests = awx_fake.counters.token_requests
        report = await awx.keepalive_pass()
        assert (1, 0, 1) == (report.checked, report.rotated, report.expired)
        assert S.EXPIRED is (await awx.get(connection_id)).state
        assert requests == awx_fake.counters.token_requests


async def test_busy_connection_is_not_rotated_early(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A pass on fresh connections rotates nothing (no refresh every five minutes)."""
    async with ConnectionManager(awx_config, clock=awx_clock) as awx:
        await connect_many(awx, awx_fake, 3)
        for _ in range(12):
            awx_clock.advance(300)
            report = await awx.keepalive_pass()
            assert 0 == report.rotated
    assert 0 == awx_fake.counters.refreshes


async def rotated_by_background_passes(
    config: Config, fake: FakeAirwallex, clock: ManualClock, **timing: float
) -> None:
    """
    With the manager's defaults (keep-alive on) and 10 ms between passes
    (*timing* overrides), a connection 50 days old is rotated by the
    background passes alone within two seconds.
    """
    timing = {"keepalive_first_delay": 0.01, "keepalive_interval": 0.01, **timing}
    config = attrs.evolve(config, timing=attrs.evolve(config.timing, **timing))
    async with ConnectionManager(config, clock=clock) as awx:
        (connection_id,) = await connect_many(awx, fake, 1)
        clock.advance(50 * DAY)
        for _ in range(200):
            if (await awx.get(connection_id)).token_generation:
                break
            await asyncio.sleep(0.01)
        assert 1 == (await awx.get(connection_id)).token_generation


async def test_background_keepalive_runs_passes(
    awx_fake: FakeAirwallex, awx_clock: ManualClock, awx_config: Config
) -> None:
    """Keep-alive is on by default and runs passes every keepalive_interval by itself."""
    await rotated_by_background_passes(awx_config, awx_fake, awx_clock)


async def test_the_first_keepalive_pass_runs_soon_after_open(
    awx_fake: FakeAirwallex, awx_clock: ManualClock, awx_config: Config
) -> None:
    """
    The first pass comes keepalive_first_delay after open, not an interval
    (an hour) later: a service redeployed hourly would otherwise never run one.
    """
    await rotated_by_background_passes(
        awx_config, awx_fake, awx_clock, keepalive_first_delay=0.2, keepalive_interval=3600
    )


async def test_keepalive_off_runs_no_pass(
    awx_fake: FakeAirwallex, awx_clock: ManualClock, awx_config: Config
) -> None:
    """keepalive=False (one-shot scripts, the CLI) starts no background pass."""
    timing = attrs.evolve(awx_config.timing, keepalive_first_delay=0, keepalive_interval=0.01)
    config = attrs.evolve(awx_config, timing=timing)
    async with ConnectionManager(config, clock=awx_clock, keepalive=False) as awx:
        (connection_id,) = await connect_many(awx, awx_fake, 1)
        awx_clock.advance(50 * DAY)
        await asyncio.sleep(0.2)
        assert 0 == (await awx.get(connection_id)).token_generation


def test_keepalive_settings_are_validated() -> None:
    """remaining + jitter must leave room before expiry."""
    from awx_connection import ConfigurationError

    with pytest.raises(ConfigurationError):
        TimingPolicy(keepalive_remaining=0.95, keepalive_jitter=0.1)


async def test_keepalive_resumes_a_rotation_left_refreshing(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A rotation whose attempts all lost their responses is finished by the next pass."""
    from awx_connection import NetworkError
    from awx_connection.testing import Fault, FaultKind

    async with ConnectionManager(awx_config, clock=awx_clock) as awx:
        (connection_id,) = await connect_many(awx, awx_fake, 1)
        awx_fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token", times=4))
        awx_clock.advance(301)
        with contextlib.suppress(NetworkError):
            await awx.access_token(connection_id)
        assert S.REFRESHING is (await awx.get(connection_id)).state
        awx_clock.advance(10)  # inside the grace window, past the failure cooldown
        report = await awx.keepalive_pass()
        assert 1 == report.rotated
        assert S.ACTIVE is (await awx.get(connection_id)).state
    # Attempts 2-4 and the resumed one all presented the same token in grace.
    assert 4 == awx_fake.counters.grace_reissues
    assert 0 == awx_fake.counters.reuse_violations


async def test_a_pass_reads_the_store_a_page_at_a_time(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """11 connections, pages of 4: every one is checked and every due one rotated, once."""
    monkeypatch.setattr(awx_connection._keepalive, "PAGE", 4)
    store = SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate())
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
        ids = await connect_many(awx, awx_fake, 11)
        pages = []
        listing = SQLiteStore.list_summaries

        async def counted(self: SQLiteStore, **kwargs: Any) -> Any:
            page = await listing(self, **kwargs)
            pages.append((kwargs.get("limit"), len(page)))
            return page

        monkeypatch.setattr(SQLiteStore, "list_summaries", counted)
        report = await awx.keepalive_pass()
        assert (11, 0) == (report.checked, report.rotated)  # nothing due yet
        assert [(4, 4), (4, 4), (4, 3)] == pages
        awx_clock.advance(60 * DAY)  # every 90-day token is past its keep-alive point
        report = await awx.keepalive_pass()
        generations = [(await awx.get(cid)).token_generation for cid in ids]
    assert (11, 11, 0) == (report.checked, report.rotated, report.failed)
    assert [1] * 11 == generations
    assert 11 == awx_fake.counters.refreshes


async def test_a_pass_decrypts_only_the_connections_that_are_due(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A pass reads summaries, then each due connection in full: with nothing
    due it opens no envelope; later it opens only the two due ones. The one
    sealed with a key this process lacks counts as failed and does not stop
    the other's rotation.
    """
    path = tmp_path / "awx.db"
    keys = KeyRing.generate("k1")
    opened: list[str] = []
    decrypt = KeyRing.decrypt

    def counted(self: KeyRing, envelope: str, *, connection_id: str, field: str) -> str:
        opened.append(connection_id)
        return decrypt(self, envelope, connection_id=connection_id, field=field)

    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as awx:
        (old,) = await connect_many(awx, awx_fake, 1)
    foreign_store = SQLiteStore(path, keys=KeyRing.generate("elsewhere"))
    async with ConnectionManager(awx_config, store=foreign_store, clock=awx_clock) as awx:
        (foreign,) = await connect_many(awx, awx_fake, 1)
    awx_clock.advance(20 * DAY)
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as awx:
        young = await connect_many(awx, awx_fake, 2)
    monkeypatch.setattr(KeyRing, "decrypt", counted)
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as awx:
        report = await awx.keepalive_pass()
        assert (4, 0, 0) == (report.checked, report.rotated, report.failed)
        assert [] == opened
        # Due 36-45 days after issue: the first two are, the young ones are not.
        awx_clock.advance(30 * DAY)
        report = await awx.keepalive_pass()
        assert (4, 1, 1) == (report.checked, report.rotated, report.failed)
        assert {old, foreign} == set(opened)
        assert 1 == (await awx.get(old)).token_generation
        assert [0, 0] == [(await awx.get(cid)).token_generation for cid in young]


async def test_background_keepalive_survives_a_pass_that_crashes(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    A pass that raises something unexpected (a custom store's bug) is logged
    at ERROR with its traceback, and the next pass still runs and rotates.
    """
    from awx_connection.stores import MemoryStore

    listing = MemoryStore.list_summaries
    calls = 0

    async def broken_once(self: MemoryStore, **kwargs: Any) -> Any:
        nonlocal calls
        if S.ACTIVE in (kwargs.get("states") or ()):  # a keep-alive pass, not a settling scan
            calls += 1
            if calls == 1:
                raise RuntimeError("a custom store's bug")
        return await listing(self, **kwargs)

    monkeypatch.setattr(MemoryStore, "list_summaries", broken_once)
    with caplog.at_level(logging.ERROR, logger="awx_connection"):
        await rotated_by_background_passes(awx_config, awx_fake, awx_clock)
    [crashed] = [r for r in caplog.records if "keep-alive pass crashed" in r.getMessage()]
    assert crashed.exc_info is not None and isinstance(crashed.exc_info[1], RuntimeError)
    assert calls >= 2


async def test_a_pass_rotates_from_the_stored_tokens_not_an_older_held_copy(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    Process A holds a connection at generation 0; process B's passes rotate
    it. A's next pass finds it not due (B's tokens are fresh) and leaves
    it alone; once B's tokens are due too, A rotates once, from B's
    generation: never A's stale refresh token (a reuse), never twice.
    """
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as a:
        (connection_id,) = await connect_many(a, awx_fake, 1)
        awx_clock.advance(50 * DAY)  # due, by A's held copy and the store alike
        async with ConnectionManager(
            awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
        ) as b:
            assert 1 == (await b.keepalive_pass()).rotated
        held = a._live[connection_id].record.tokens
        assert held is not None and 0 == held.generation
        report = await a.keepalive_pass()
        assert (1, 0, 0) == (report.checked, report.rotated, report.failed)
        awx_clock.advance(50 * DAY)  # B's tokens are due now
        refreshes = awx_fake.counters.refreshes
        report = await a.keepalive_pass()
        assert (1, 1, 0) == (report.checked, report.rotated, report.failed)
        assert refreshes + 1 == awx_fake.counters.refreshes
        assert 2 == (await a.get(connection_id)).token_generation
    assert 0 == awx_fake.counters.reuse_violations
