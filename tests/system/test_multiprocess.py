"""
Many processes, one truth: real OS processes share one store (SQLite file or
PostgreSQL), one fake provider and one simulated clock (a FileClock).

What must hold, whatever the interleaving: exactly one successful refresh
per connection per rotation, zero reuse violations, zero invalidated
connections; a rotation whose worker is SIGKILLed after the provider
rotated is recovered by another process inside the grace window, or ends
``invalidated`` without a stale request past it; a durable consumer killed
mid-stream and restarted misses no event.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from awx_connection import Config, ConnectionManager, Endpoints, KeyRing, Store, TimingPolicy
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, FileClock

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

WORKER = Path(__file__).with_name("mp_worker.py")
REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
KEYS = "k1:" + KeyRing.new_key()


class Worker:
    """One worker process, driven by JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, settings: dict[str, Any]) -> Worker:
        log = Path(settings["clock"]).with_name(f"worker-{secrets.token_hex(4)}.log")
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                orjson.dumps(settings).decode(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=dict(os.environ),
            )
        worker = cls(process, log)
        assert {"ready": True} == await worker.read()
        return worker

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert line, f"worker exited: {self.log.read_text()[-3000:]}"
        result: dict[str, Any] = orjson.loads(line)
        return result

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        await self.send(command)
        return await self.read()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process.returncode is None:
            try:
                await self.send({"cmd": "exit"})
                await asyncio.wait_for(self.process.wait(), 20)
            except (ConnectionError, TimeoutError):
                self.process.kill()
                await self.process.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"kind": "sqlite", "url": f"sqlite:///{tmp_path / 'shared.db'}", "keys": KEYS}
    dsn = request.getfixturevalue("postgres_dsn")
    schema = request.getfixturevalue("postgres_schema")
    return {"kind": "postgres", "dsn": dsn, "schema": schema, "keys": KEYS}


def make_store(spec: dict[str, Any]) -> Store:
    keys = KeyRing.parse(spec["keys"])
    if spec["kind"] == "postgres":
        from awx_connection.stores import PostgresStore

        return PostgresStore(spec["dsn"], keys=keys, schema=spec["schema"])
    return SQLiteStore(spec["url"].removeprefix("sqlite:///"), keys=keys)


class World:
    """The shared pieces: clock file, fake provider, store, a parent manager."""

    def __init__(self, tmp_path: Path, spec: dict[str, Any]) -> None:
        self.clock_path = tmp_path / "clock"
        self.clock = FileClock.create(self.clock_path)
        self.fake = FakeAirwallex(clock=FileClock(self.clock_path), redirect_uris=[REDIRECT])
        self.spec = spec
        self.workers: list[Worker] = []

    def settings(self, **timing: float) -> dict[str, Any]:
        return {
            "clock": str(self.clock_path),
            "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret,
            "redirect": REDIRECT,
            "base_url": self.fake.base_url,
            "store": self.spec,
            "timing": timing,
        }

    def manager(self) -> ConnectionManager:
        config = Config(
            client_id=self.fake.client_id,
            client_secret=self.fake.client_secret,
            redirect_uri=REDIRECT,
            endpoints=Endpoints.from_base_url(self.fake.base_url),
            timing=TimingPolicy(backoff_base=0.005, backoff_max=0.05, resume_delay=0.05),
            default_scopes=("account_details:read",),
        )
        return ConnectionManager(config, store=make_store(self.spec), clock=self.clock)

    async def connect(self, count: int) -> list[str]:
        async with self.manager() as awx:
            ids = []
            for _ in range(count):
                request = await awx.begin_authorization()
                connection = await awx.complete_authorization(self.fake.approve(request.url))
                ids.append(connection.id)
            return ids

    async def spawn(self, count: int, **timing: float) -> list[Worker]:
        """*count* workers, with TimingPolicy overrides *timing*."""
        started = await asyncio.gather(
            *(Worker.start(self.settings(**timing)) for _ in range(count))
        )
        self.workers.extend(started)
        return list(started)


@pytest.fixture
async def world(tmp_path: Path, store_spec: dict[str, Any]) -> AsyncIterator[World]:
    world = World(tmp_path, store_spec)
    async with world.fake:
        try:
            yield world
        finally:
            await asyncio.gather(*(w.stop() for w in world.workers))
            world.clock.close()


async def test_four_processes_refresh_each_rotation_exactly_once(world: World) -> None:
    """4 processes x 20 connections x 10 expiries: one refresh per rotation, no reuse."""
    ids = await world.connect(20)
    workers = await world.spawn(4)
    for _ in range(10):
        world.clock.advance(301)
        answers = await asyncio.gather(
            *(w.ask({"cmd": "tokens", "ids": ids, "per_connection": 5}) for w in workers)
        )
        assert all(a["ok"] for a in answers), answers
    counters = world.fake.counters
    assert 20 * 10 == counters.refreshes
    assert 0 == counters.reuse_violations
    assert 0 == counters.invalidations
    assert 0 == counters.concurrent_rejections
    async with world.manager() as awx:
        for connection_id in ids:
            connection = await awx.get(connection_id)
            assert "active" == connection.state.value
            assert 10 == connection.token_generation


async def until_held(world: World) -> None:
    for _ in range(1000):
        if world.fake.counters.held_responses:
            break
        await asyncio.sleep(0.01)
    assert 1 == world.fake.counters.held_responses
    assert 1 == world.fake.counters.refreshes  # the provider rotated


async def kill_mid_rotation(world: World) -> tuple[str, int]:
    """A worker starts a refresh; the fake rotates and holds; the worker is SIGKILLed."""
    (connection_id,) = await world.connect(1)
    (victim,) = await world.spawn(1)
    world.fake.inject(Fault(FaultKind.HOLD_AFTER_COMMIT, grant_type="refresh_token"))
    world.clock.advance(301)
    await victim.send({"cmd": "tokens", "ids": [connection_id], "per_connection": 3})
    await until_held(world)
    victim.kill()  # ...and the worker dies before it could store the new tokens
    await victim.process.wait()
    world.fake.release_held()
    return connection_id, world.fake.counters.token_requests


async def test_killed_rotation_recovered_inside_grace(world: World) -> None:
    """Another process resumes the journal with the same token inside the grace window."""
    connection_id, _ = await kill_mid_rotation(world)
    world.clock.advance(21)  # the victim's lease (20 s) expired; grace (60 s) still holds
    (rescuer,) = await world.spawn(1)
    answer = await rescuer.ask({"cmd": "get", "id": connection_id})
    assert "active" == answer["state"], answer
    assert 1 == answer["generation"]
    assert "active" == world.fake.grant_status(answer["token"])
    assert 1 == world.fake.counters.grace_reissues
    assert 0 == world.fake.counters.reuse_violations
    assert 0 == world.fake.counters.invalidations


async def test_killed_rotation_past_grace_is_invalidated_without_a_stale_request(
    world: World,
) -> None:
    """Past the grace window the next process stops: invalidated, nothing stale sent."""
    connection_id, requests = await kill_mid_rotation(world)
    world.clock.advance(61)
    (rescuer,) = await world.spawn(1)
    answer = await rescuer.ask({"cmd": "get", "id": connection_id})
    assert "ConnectionInvalidatedError" == answer["error"], answer
    assert "invalidated" == answer["state"]
    assert "grace window" in answer["reason"]
    assert requests == world.fake.counters.token_requests
    assert 0 == world.fake.counters.reuse_violations


async def test_killed_consumer_resumes_without_losing_events(world: World) -> None:
    """A durable consumer killed mid-stream and restarted sees every event, in order."""
    ids = await world.connect(6)  # 3 events each: begin, code_received, exchanged
    async with world.manager() as awx:
        expected = [(e.connection_id, e.sequence) for cid in ids for e in await awx.history(cid)]
    (first,) = await world.spawn(1)
    await first.send({"cmd": "consume", "name": "onboarding", "limit": 1000})
    seen_first = [tuple((await first.read())["event"]) for _ in range(8)]
    first.kill()
    await first.process.wait()
    # Whatever it printed before dying was handled too (and maybe committed).
    assert first.process.stdout is not None
    leftover = (await first.process.stdout.read()).splitlines()
    seen_first.extend(tuple(orjson.loads(line)["event"]) for line in leftover)
    (second,) = await world.spawn(1)
    await second.send({"cmd": "consume", "name": "onboarding", "limit": 1000})
    seen_second = []
    while len(set(seen_first) | set(seen_second)) < len(expected):
        seen_second.append(tuple((await second.read())["event"]))
    second.kill()  # it would wait for more events for ever
    await second.process.wait()
    delivered = set(seen_first) | set(seen_second)
    assert set(expected) == delivered  # none missing
    for run in (seen_first, seen_second):
        for connection_id in ids:
            sequences = [seq for cid, seq in run if cid == connection_id]
            assert sorted(sequences) == sequences  # per-connection order
    # At-least-once: the restart resumed from a committed offset, not from 0.
    assert len(seen_second) < len(expected)


async def stored(world: World, connection_id: str, state: str, timeout: float = 20.0) -> Any:  # noqa: ASYNC109
    """
    The stored record once it is in *state*, read straight from the store:
    no manager of the test's own, which would settle the connection itself.
    """
    store = make_store(world.spec)
    await store.open()
    try:
        async with asyncio.timeout(timeout):
            while True:
                record = await store.get(connection_id)
                if record is not None and state == record.state.value:
                    return record
                await asyncio.sleep(0.05)
    finally:
        await store.aclose()


async def test_sigterm_mid_rotation_lets_the_rotation_finish(world: World) -> None:
    """
    A worker stopped gracefully (SIGTERM, aclose()) while its refresh is on
    its way: the answer is awaited and stored, the callers get the tokens,
    and the provider never sees the old token again.
    """
    (connection_id,) = await world.connect(1)
    (worker,) = await world.spawn(1)
    world.fake.inject(Fault(FaultKind.DELAY, grant_type="refresh_token", delay=1.0))
    world.clock.advance(301)
    sent = world.fake.counters.token_requests
    answer = await worker.ask({"cmd": "start", "ids": [connection_id], "per_connection": 3})
    assert {"started": 3} == answer
    for _ in range(1000):
        if world.fake.counters.token_requests > sent:
            break
        await asyncio.sleep(0.01)
    worker.process.send_signal(signal.SIGTERM)  # the refresh is in the provider's hands
    assert {"closed": True, "outcomes": ["token"] * 3} == await worker.read()
    assert 0 == await asyncio.wait_for(worker.process.wait(), 30)
    record = await stored(world, connection_id, "active", timeout=1)
    assert 1 == record.tokens.generation
    assert 1 == world.fake.counters.refreshes
    assert 0 == world.fake.counters.grace_reissues
    assert 0 == world.fake.counters.reuse_violations


async def test_a_killed_workers_rotation_is_settled_by_an_idle_process(world: World) -> None:
    """
    The worker dies after the provider rotated; nobody ever asks for the
    connection again. A process that merely runs (no caller) settles it
    inside the grace window, on its own periodic scan.
    """
    connection_id, _ = await kill_mid_rotation(world)
    await world.spawn(1, settle_interval=0.1)  # makes no call at all
    await asyncio.sleep(0.3)  # its scans find the journal, its lease still the victim's
    world.clock.advance(21)  # the victim's lease lapses; the grace window holds
    record = await stored(world, connection_id, "active")
    assert 1 == record.tokens.generation
    assert 1 == world.fake.counters.grace_reissues
    assert 0 == world.fake.counters.reuse_violations
    assert 0 == world.fake.counters.invalidations


async def test_a_rotation_a_timed_out_close_left_is_settled_by_the_next_process(
    world: World,
) -> None:
    """
    aclose() gives up on a rotation held longer than close_timeout; the
    journal it leaves is settled by the next process that opens the store.
    """
    (connection_id,) = await world.connect(1)
    (worker,) = await world.spawn(1, close_timeout=0.2)
    world.fake.inject(Fault(FaultKind.HOLD_AFTER_COMMIT, grant_type="refresh_token"))
    world.clock.advance(301)
    await worker.ask({"cmd": "start", "ids": [connection_id], "per_connection": 1})
    await until_held(world)
    worker.process.send_signal(signal.SIGTERM)
    answer = await worker.read()
    assert {"closed": True, "outcomes": ["ManagerClosedError"]} == answer
    await worker.process.wait()
    world.fake.release_held()
    world.clock.advance(21)
    await world.spawn(1)  # opens the store: its first scan settles the journal
    record = await stored(world, connection_id, "active")
    assert 1 == record.tokens.generation
    assert 1 == world.fake.counters.grace_reissues
    assert 0 == world.fake.counters.reuse_violations
