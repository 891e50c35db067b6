"""
The manager on durable stores: store failures, bad rows, key rotation,
durable consumers and retention, as a user of ConnectionManager sees them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from awx_connection import (
    Config,
    ConnectionEvent,
    ConnectionInvalidatedError,
    ConnectionManager,
    ConnectionRecord,
    ConnectionRevokedError,
    ConnectionState,
    DecryptionError,
    KeyRing,
    ProviderError,
    RotationJournal,
    Secret,
    StoreUnavailableError,
    TokenSet,
    Trigger,
)
from awx_connection.cli import main as cli_main
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

S = ConnectionState


@attrs.define(eq=False)
class FlakyStore:
    """A real store whose next matching calls fail as if the database went away."""

    inner: SQLiteStore
    #: method -> [calls to let through first, calls to fail]
    failures: dict[str, list[int]] = attrs.Factory(dict)

    def fail(self, method: str, *, skip: int = 0, times: int = 1) -> None:
        self.failures[method] = [skip, times]

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            plan = self.failures.get(name)
            if plan is not None and plan[0] > 0:
                plan[0] -= 1
            elif plan is not None and plan[1] > 0:
                plan[1] -= 1
                msg = f"{name}: database went away (simulated)"
                raise StoreUnavailableError(msg)
            return await target(*args, **kwargs)

        return call


async def connect(manager: ConnectionManager, fake: FakeAirwallex) -> str:
    request = await manager.begin_authorization()
    connection = await manager.complete_authorization(fake.approve(request.url))
    return connection.id


async def test_a_rotated_pair_the_store_refused_is_written_again(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """The store fails as the new tokens are written: they are written again, and kept."""
    store = FlakyStore(SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate()))
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:  # type: ignore[arg-type]
        connection_id = await connect(awx, awx_fake)
        awx_clock.advance(301)
        # REFRESH_STARTED is written, the provider rotates, then storing the
        # new tokens fails three times.
        store.fail("update", skip=1, times=3)
        token = await awx.access_token(connection_id)
        assert S.ACTIVE is (await awx.get(connection_id)).state
        assert 0 == awx.statistics().rotations_discarded
    assert "active" == awx_fake.grant_status(token)
    assert 1 == awx_fake.counters.refreshes
    assert 0 == awx_fake.counters.grace_reissues  # nothing was presented again
    assert 0 == awx_fake.counters.reuse_violations


async def test_a_pair_unstored_until_the_grace_window_closes_is_given_up(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """Past the grace window the pair is discarded, loudly; the token is never presented again."""
    store = FlakyStore(SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate()))
    async with ConnectionManager(awx_config, store=store, clock=awx_clock, settle=False) as awx:  # type: ignore[arg-type]
        connection_id = await connect(awx, awx_fake)
        awx_clock.advance(301)
        store.fail("update", skip=1, times=10**6)
        task = asyncio.ensure_future(awx.access_token(connection_id))
        await asyncio.sleep(0.1)  # the pair is being written again and again
        assert not task.done()
        awx_clock.advance(46)  # past grace - grace_margin
        with pytest.raises(StoreUnavailableError):
            await task
        assert 1 == awx.statistics().rotations_discarded
        store.failures.clear()
        with pytest.raises(ConnectionInvalidatedError):
            await awx.access_token(connection_id)
    assert 1 == awx_fake.counters.refreshes
    assert 0 == awx_fake.counters.reuse_violations


async def test_tampered_row_fails_alone(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """A tampered row raises DecryptionError naming it; other connections keep working."""
    path = tmp_path / "awx.db"
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=KeyRing.generate()), clock=awx_clock
    ) as awx:
        good = await connect(awx, awx_fake)
        bad = await connect(awx, awx_fake)
        with sqlite3.connect(path) as db:
            (data,) = db.execute("SELECT data FROM connections WHERE id = ?", (bad,)).fetchone()
            text = data.decode() if isinstance(data, bytes) else data
            i = text.index("awx1:")
            tampered = text[: i + 30] + ("A" if text[i + 30] != "A" else "B") + text[i + 31 :]
            db.execute(
                "UPDATE connections SET data = ? WHERE id = ?",
                (tampered.encode() if isinstance(data, bytes) else tampered, bad),
            )
        awx._live.clear()  # forget the cache, as a new process would
        with pytest.raises(DecryptionError) as info:
            await awx.access_token(bad)
        assert bad in str(info.value)
        assert (await awx.access_token(good)).startswith("awx_at_")
        assert [good] == [c.id for c in await awx.connections()]


async def test_prune_events_by_retention(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """Events older than event_retention are pruned; newer ones stay."""
    store = SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate())
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
        old = await connect(awx, awx_fake)
        awx_clock.advance(awx_config.timing.event_retention + 1)
        new = await connect(awx, awx_fake)
        assert 3 == await awx.prune_events()
        assert [] == await awx.history(old)
        assert 3 == len(await awx.history(new))


async def test_consumer_resumes_from_its_offset(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """A named consumer reads every event once in order and resumes where it left off."""
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as awx:
        first = await connect(awx, awx_fake)
        seen: list[tuple[str, int]] = []
        async with awx.consumer("crm", poll_interval=0.01) as events:
            async for event in events:
                seen.append((event.connection_id, event.sequence))
                if len(seen) == 3:
                    break
        assert [(first, 1), (first, 2), (first, 3)] == seen
        second = await connect(awx, awx_fake)

    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as again:
        resumed: list[tuple[str, int]] = []
        async with again.consumer("crm", poll_interval=0.01) as events:
            async for event in events:
                resumed.append((event.connection_id, event.sequence))
                if len(resumed) == 3:
                    break
    assert [(second, 1), (second, 2), (second, 3)] == resumed


async def test_consumer_redelivers_the_event_whose_handler_failed(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """At-least-once: an event whose handler raised is delivered again next time."""
    connection_id = await connect(awx_manager, awx_fake)
    with pytest.raises(RuntimeError):
        async with awx_manager.consumer("flaky", poll_interval=0.01) as events:
            async for event in events:
                if event.sequence == 2:
                    raise RuntimeError("handler bug")
    async with awx_manager.consumer("flaky", poll_interval=0.01) as events:
        event = await anext(aiter(events))
    assert (connection_id, 2) == (event.connection_id, event.sequence)


def sample_record(connection_id: str) -> tuple[ConnectionRecord, ConnectionEvent]:
    tokens = TokenSet(
        access_token=Secret("awx_at_sample"),
        refresh_token=Secret("awx_rt_sample"),
        access_expires_at=300.0,
        refresh_expires_at=9e9,
        issued_at=0.0,
        generation=0,
    )
    record = ConnectionRecord(
        id=connection_id,
        state=S.ACTIVE,
        version=1,
        sequence=1,
        created_at=0.0,
        updated_at=0.0,
        reason="sample",
        tokens=tokens,
    )
    event = ConnectionEvent(connection_id, 1, Trigger.BEGIN, None, S.ACTIVE, "sample", 0.0)
    return record, event


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli_main, list(argv))


async def test_cli_db_migrate_and_keys_rotate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db migrate` creates the schema; `keys rotate` re-encrypts to the new first key."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    old_key = KeyRing.new_key()
    monkeypatch.setenv("AWX_ENCRYPTION_KEYS", f"old:{old_key}")
    assert 0 == await run_cli("db", "migrate", "--store", url)
    assert "schema version" in capsys.readouterr().out
    # Store a connection under the old key.
    store = SQLiteStore(tmp_path / "cli.db", keys=KeyRing.parse(f"old:{old_key}"))
    await store.open()
    await store.insert(*sample_record("conn_cli"))
    await store.aclose()
    new_key = KeyRing.new_key()
    monkeypatch.setenv("AWX_ENCRYPTION_KEYS", f"new:{new_key},old:{old_key}")
    assert 0 == await run_cli("keys", "rotate", "--store", url)
    out = capsys.readouterr().out
    assert "re-encrypted 1 connection(s) with key 'new'" in out
    assert old_key not in out
    assert new_key not in out
    only_new = SQLiteStore(tmp_path / "cli.db", keys=KeyRing.parse(f"new:{new_key}"))
    await only_new.open()
    assert (await only_new.get("conn_cli")) is not None
    await only_new.aclose()


async def test_cli_keys_seal_is_the_one_command_that_accepts_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    A sealed token replaced by plaintext in the file: `connections show`
    and `keys rotate` fail with one line each (rotate naming `keys seal`),
    changing nothing; `keys seal` seals it and the connection reads again.
    No output holds the token.
    """
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}"
    spec = f"k1:{KeyRing.new_key()}"
    monkeypatch.setenv("AWX_ENCRYPTION_KEYS", spec)
    store = SQLiteStore(path, keys=KeyRing.parse(spec))
    await store.open()
    await store.insert(*sample_record("conn_plain"))
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE connections SET data = json_set(CAST(data AS TEXT), "
            "'$.tokens.access_token', 'awx_at_swapped') WHERE id = 'conn_plain'"
        )
    db.close()

    assert 1 == await run_cli("connections", "show", "conn_plain", "--store", url)
    err = capsys.readouterr().err
    assert "'conn_plain'" in err
    assert "access_token: plaintext" in err
    assert 1 == len(err.splitlines())
    assert 1 == await run_cli("keys", "rotate", "--store", url)
    err = capsys.readouterr().err
    assert "hold plaintext secrets" in err
    assert "awx-connection keys seal" in err
    assert 0 == await run_cli("keys", "seal", "--store", url)
    out, err = capsys.readouterr()
    assert "sealed or re-encrypted 1 connection(s) with key 'k1'" in out
    assert "awx_at_swapped" not in out + err
    assert 0 == await run_cli("connections", "show", "conn_plain", "--store", url)
    assert "awx_at_swapped" not in capsys.readouterr().out
    with sqlite3.connect(path) as db:
        [(data,)] = db.execute("SELECT data FROM connections WHERE id = 'conn_plain'")
    db.close()
    assert b"awx_at_swapped" not in bytes(data)


async def test_cli_keys_new_and_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys new` prints a usable key; a missing store is exit code 2 with a message."""
    assert 0 == await run_cli("keys", "new", "--id", "2026-11")
    line = capsys.readouterr().out.strip()
    assert line.startswith("2026-11:")
    assert ("2026-11",) == KeyRing.parse(line).key_ids
    monkeypatch.delenv("AWX_STORE", raising=False)
    assert 2 == await run_cli("db", "migrate")
    assert "no store" in capsys.readouterr().err
    assert 2 == await run_cli("db", "migrate", "--store", "mysql://x")


async def test_revoked_by_another_process_mid_rotation(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """A rotation whose write loses to another process's revoke ends revoked, not in a crash."""
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    async with (
        ConnectionManager(awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock) as a,
        ConnectionManager(awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock) as b,
    ):
        connection_id = await connect(a, awx_fake)
        awx_fake.inject(Fault(FaultKind.DELAY, grant_type="refresh_token", delay=0.3))
        awx_clock.advance(301)
        rotation = asyncio.ensure_future(a.access_token(connection_id))
        for _ in range(200):  # wait until the rotation is in flight
            if S.REFRESHING is (await b.get(connection_id)).state:
                break
            b._live.clear()
            await asyncio.sleep(0.005)
        await b.revoke(connection_id, "the customer asked us to disconnect")
        with pytest.raises(ConnectionRevokedError):
            await rotation
        assert S.REVOKED is (await a.get(connection_id)).state
        # The provider did rotate for A; A counted (and logged) the pair it threw away.
        assert 1 == awx_fake.counters.refreshes
        assert 1 == a.statistics().rotations_discarded
        assert 0 == b.statistics().rotations_discarded
    assert 0 == awx_fake.counters.reuse_violations


@attrs.define(eq=False)
class GatedStore:
    """A real store whose chosen calls wait at a gate (the library decides everything)."""

    inner: SQLiteStore
    #: "leased" or a Trigger value -> (reached, go)
    gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = attrs.Factory(dict)
    #: The ``now`` of every acquire_lease call.
    leases: list[float] = attrs.Factory(list)
    #: wait_for_update calls.
    waits: int = 0

    def gate(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        self.gates[name] = (asyncio.Event(), asyncio.Event())
        return self.gates[name]

    async def _pass(self, name: str) -> None:
        pair = self.gates.pop(name, None)
        if pair is not None:
            pair[0].set()
            await pair[1].wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def wait_for_update(self, *args: Any, **kwargs: Any) -> ConnectionRecord | None:
        self.waits += 1
        return await self.inner.wait_for_update(*args, **kwargs)

    async def acquire_lease(self, *args: Any, **kwargs: Any) -> ConnectionRecord | None:
        self.leases.append(kwargs["now"])
        granted = await self.inner.acquire_lease(*args, **kwargs)
        if granted is not None:
            await self._pass("leased")
        return granted

    async def update(self, record: Any, *, expected_version: int, event: Any, **kw: Any) -> None:
        if event is not None:
            await self._pass(event.trigger.value)
        await self.inner.update(record, expected_version=expected_version, event=event, **kw)


async def test_stalled_replica_never_sends_a_token_another_replica_rotated(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """A stalls past its lease; B rotates; A's identical journal write must not pass as its own."""
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock
    ) as setup:
        connection_id = await connect(setup, awx_fake)
    gated = GatedStore(SQLiteStore(path, keys=keys))
    started = gated.gate("refresh_started")
    async with (
        ConnectionManager(awx_config, store=gated, clock=awx_clock) as a,  # type: ignore[arg-type]
        ConnectionManager(awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock) as b,
    ):
        awx_clock.advance(301)
        task_a = asyncio.ensure_future(a.access_token(connection_id))
        await started[0].wait()  # A checked its lease and built its refresh_started record
        awx_clock.advance(21)  # A stalls past its 20 s lease, at the same clock reading as B
        token_b = await b.access_token(connection_id)  # B takes the lease and rotates 0 -> 1
        started[1].set()  # A's compare-and-swap now loses to an identical-looking record
        token_a = await task_a
    assert token_b == token_a
    assert 1 == awx_fake.counters.refreshes  # A never presented generation 0 again
    assert 0 == awx_fake.counters.grace_reissues
    assert 0 == awx_fake.counters.reuse_violations


@pytest.mark.parametrize(
    ("stall", "leases"),
    [(4.0, 1), (6.0, 2)],
    ids=["POST-within-5s-of-the-lease", "POST-later-renews-first"],
)
async def test_a_refresh_post_renews_the_lease_unless_it_is_young(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    tmp_path: Path,
    stall: float,
    leases: int,
) -> None:
    """
    The lease is renewed (and the record compared) before a refresh POST
    unless it is younger than (lease_ttl - request_timeout) / 2 = 5 s, so
    the POST is over before the lease can lapse.
    """
    timing = awx_config.timing
    assert 5.0 == (timing.lease_ttl - timing.request_timeout) / 2
    gated = GatedStore(SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate()))
    async with ConnectionManager(awx_config, store=gated, clock=awx_clock) as awx:  # type: ignore[arg-type]
        connection_id = await connect(awx, awx_fake)
        awx_clock.advance(301)
        leased = gated.gate("leased")
        rotation = asyncio.ensure_future(awx.refresh(connection_id))
        await leased[0].wait()
        awx_clock.advance(stall)  # time passes between the lease and the POST
        leased[1].set()
        connection = await rotation
    assert leases == len(gated.leases)
    assert 1 == connection.token_generation
    assert 1 == awx_fake.counters.refreshes
    assert 0 == awx_fake.counters.reuse_violations


async def test_a_refresh_queued_behind_the_gate_checks_its_lease_when_it_gets_a_slot(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    Replica A's refresh of Y waits for a token-endpoint slot (the gate
    bounding concurrent refreshes) while its lease on Y runs out and replica
    B rotates Y. When A gets the slot it must look at its lease again, not
    send Y's old refresh token: inside the grace window that would be a
    re-issue retiring B's stored pair, and B's next refresh a reuse.

    The soak of 2026-11-25 met this once in 511,183 refreshes.
    """
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    x, y = await connect_in_store(awx_config, awx_fake, awx_clock, SQLiteStore(path, keys=keys), 2)
    async with (
        ConnectionManager(
            one_slot(awx_config), store=SQLiteStore(path, keys=keys), clock=awx_clock
        ) as a,
        ConnectionManager(awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock) as b,
    ):
        awx_clock.advance(301)
        task_x = await occupy_the_only_slot(a, awx_fake, x)
        task_y = await queue_refresh(a, y, waiting=1)  # A leases Y and queues for the slot
        awx_clock.advance(21)  # A's lease on Y lapses while it queues
        token_b = await b.access_token(y)  # B takes Y over and rotates it
        awx_fake.release_held()  # the slot frees; X's answer is lost, A retries X
        token_a = await task_y
        await task_x
        assert token_a == token_b
        assert 0 == a.statistics().rotations_discarded  # A never sent Y's old token
        # B's stored pair is the provider's current one: the next rotation works.
        awx_clock.advance(301)
        await b.access_token(y)
        await a.access_token(y)
    assert 0 == awx_fake.counters.reuse_violations
    assert 1 == awx_fake.counters.grace_reissues  # X's lost answer, and only that


async def connect_in_store(
    config: Config, fake: FakeAirwallex, clock: ManualClock, store: SQLiteStore, count: int
) -> list[str]:
    """*count* active connections written to *store* by a manager closed again."""
    async with ConnectionManager(config, store=store, clock=clock) as setup:
        return [await connect(setup, fake) for _ in range(count)]


def one_slot(config: Config) -> Config:
    """*config* with one token-endpoint slot (max_concurrent_refreshes=1)."""
    return attrs.evolve(config, timing=attrs.evolve(config.timing, max_concurrent_refreshes=1))


async def occupy_the_only_slot(
    manager: ConnectionManager, fake: FakeAirwallex, connection_id: str
) -> asyncio.Future[str]:
    """
    A refresh of *connection_id* whose answer the fake commits and then
    holds: it keeps *manager*'s one slot until ``fake.release_held()``
    (after which the answer is lost and the manager retries).
    """
    fake.inject(Fault(FaultKind.HOLD_AFTER_COMMIT, grant_type="refresh_token"))
    task = asyncio.ensure_future(manager.access_token(connection_id))
    await held(fake)
    return task


async def queue_refresh(
    manager: ConnectionManager, connection_id: str, *, waiting: int
) -> asyncio.Future[str]:
    """A refresh of *connection_id* that has its lease and queues for a slot."""
    task = asyncio.ensure_future(manager.access_token(connection_id))
    await queued(manager, waiting)
    return task


async def queued(manager: ConnectionManager, waiting: int) -> None:
    """Until *waiting* refreshes queue for one of the manager's token-endpoint slots."""
    async with asyncio.timeout(30):
        while manager._gate.waiting < waiting:  # noqa: ASYNC110 - no event for it
            await asyncio.sleep(0.005)


async def held(fake: FakeAirwallex) -> None:
    """Until the fake holds a committed refresh answer (HOLD_AFTER_COMMIT)."""
    async with asyncio.timeout(30):
        while not fake.counters.held_responses:  # noqa: ASYNC110 - the fake has no event for it
            await asyncio.sleep(0.01)


async def test_a_refresh_whose_lease_was_taken_while_it_queued_waits_for_the_holder(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    Replica A's refresh of Y queues for a token-endpoint slot; its lease
    lapses and replica B takes it, but has written nothing yet when A gets
    the slot. A must see the lease is B's before writing anything (a journal
    written under B's lease would start the grace clock for a token A never
    sends) and wait for B's rotation like any replica that finds Y leased.
    """
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    x, y = await connect_in_store(awx_config, awx_fake, awx_clock, SQLiteStore(path, keys=keys), 2)
    store_b = GatedStore(SQLiteStore(path, keys=keys))
    async with (
        ConnectionManager(
            one_slot(awx_config), store=SQLiteStore(path, keys=keys), clock=awx_clock
        ) as a,
        ConnectionManager(awx_config, store=store_b, clock=awx_clock) as b,  # type: ignore[arg-type]
    ):
        awx_clock.advance(301)
        task_x = await occupy_the_only_slot(a, awx_fake, x)
        task_y = await queue_refresh(a, y, waiting=1)
        awx_clock.advance(21)  # A's lease on Y lapses while it queues
        started_b = store_b.gate("refresh_started")
        task_b = asyncio.ensure_future(b.access_token(y))
        async with asyncio.timeout(30):
            await started_b[0].wait()  # B holds Y's lease, its journal not yet written
        awx_fake.release_held()  # A's slot frees: A looks at Y's lease and finds B's
        await asyncio.sleep(0.2)
        assert not task_y.done()
        started_b[1].set()
        token_b = await task_b
        token_a = await task_y
        await task_x
        assert token_a == token_b
        assert 0 == a.statistics().rotations_discarded
        assert 0 == b.statistics().rotations_discarded
        stored = await b.store.get(y)
        assert stored is not None
        assert S.ACTIVE is stored.state
        assert stored.tokens is not None
        assert 1 == stored.tokens.generation
        # Y's history: one rotation, started and finished by B.
        triggers = [e.trigger for e in await b.history(y)]
        assert 1 == triggers.count(Trigger.REFRESH_STARTED)
    assert 0 == awx_fake.counters.reuse_violations


async def test_a_token_that_may_have_reached_the_provider_is_sent_before_fresh_refreshes(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    Z was left ``refreshing`` by a replica that died with its POST in flight,
    so Z's token is only safe until the grace window closes; Y's refresh is
    fresh and has no deadline. Queued behind a full token endpoint, Z goes
    first though it queued last.
    """
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    x, y, z = await connect_in_store(
        awx_config, awx_fake, awx_clock, SQLiteStore(path, keys=keys), 3
    )
    awx_clock.advance(301)
    store = SQLiteStore(path, keys=keys)
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as dead:
        # What a replica leaves behind when it dies right after sending Z's token.
        live = await dead._cache.get(z)
        assert live.record.tokens is not None
        journal = RotationJournal(
            live.record.tokens.generation, awx_clock.now(), attempts=1, unsafe_since=awx_clock.now()
        )
        await dead._writer.amend(live, state=S.REFRESHING, journal=journal)
    presented: list[bytes] = []

    async def on_chunk(_: object, __: object, params: aiohttp.TraceRequestChunkSentParams) -> None:
        presented.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        # settle=False: Z's flight must be the queued refresh below. A settle
        # scan at open would start it first, and under load it could reach the
        # token endpoint before X occupied the only slot.
        ConnectionManager(
            one_slot(awx_config),
            store=SQLiteStore(path, keys=keys),
            clock=awx_clock,
            session=session,
            settle=False,
        ) as a,
    ):
        tokens = {}
        for connection_id in (y, z):
            record = await a.store.get(connection_id)
            assert record is not None and record.tokens is not None
            tokens[connection_id] = record.tokens.refresh_token.reveal().encode()
        task_x = await occupy_the_only_slot(a, awx_fake, x)
        task_y = await queue_refresh(a, y, waiting=1)
        task_z = await queue_refresh(a, z, waiting=2)
        awx_fake.release_held()
        async with asyncio.timeout(30):
            await asyncio.gather(task_x, task_y, task_z)
    # X first (it held the slot), then X's retry of its lost answer, which
    # is urgent too; then Z before Y.
    order = [t for body in presented for t in (tokens[y], tokens[z]) if t in body]
    assert [tokens[z], tokens[y]] == order
    assert 0 == awx_fake.counters.reuse_violations


def with_resume_delay(config: Config, seconds: float) -> Config:
    return attrs.evolve(config, timing=attrs.evolve(config.timing, resume_delay=seconds))


async def test_a_replica_resumes_another_replicas_rotation_only_once_it_stood_still(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    A's refresh was answered, but A has not written the new tokens yet when
    its lease lapses (by the clock the replicas share; think of a clock
    jump, or skew). B finds A's journal and an expired lease; B must not
    present the same token while A's request may still be on its way: it
    waits until the journal has stood still for ``resume_delay``, and A's
    write lands first. Without the wait B gets a grace re-issue, which
    retires the pair A was sent.
    """
    config = with_resume_delay(awx_config, 2.0)  # A's write ends B's wait long before
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    gated = GatedStore(SQLiteStore(path, keys=keys))
    async with (
        ConnectionManager(config, store=gated, clock=awx_clock) as a,  # type: ignore[arg-type]
        ConnectionManager(config, store=SQLiteStore(path, keys=keys), clock=awx_clock) as b,
    ):
        connection_id = await connect(a, awx_fake)
        awx_clock.advance(301)
        refreshed = gated.gate(Trigger.REFRESHED.value)
        task_a = asyncio.ensure_future(a.access_token(connection_id))
        async with asyncio.timeout(30):
            await refreshed[0].wait()  # the provider rotated for A; A's write waits
        awx_clock.advance(21)  # A's lease lapses
        task_b = asyncio.ensure_future(b.access_token(connection_id))
        await asyncio.sleep(0.2)
        assert not task_b.done()  # B waits for A's journal to stand still
        refreshed[1].set()
        async with asyncio.timeout(30):
            token_a, token_b = await asyncio.gather(task_a, task_b)
        assert token_a == token_b
        assert 0 == b.statistics().refresh_requests  # B never presented the token
        assert 0 == a.statistics().rotations_discarded
    assert 1 == awx_fake.counters.refreshes
    assert 0 == awx_fake.counters.grace_reissues
    assert 0 == awx_fake.counters.reuse_violations


async def test_only_another_processs_journal_is_waited_for(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    A journal this process wrote is resumed at once; one it only read, after
    resume_delay; one whose attempts all certainly failed (not unsafe), at once.
    """
    config = with_resume_delay(awx_config, 1.0)
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    store_a = GatedStore(SQLiteStore(path, keys=keys))
    async with ConnectionManager(config, store=store_a, clock=awx_clock) as a:  # type: ignore[arg-type]
        mine, theirs, failed = [await connect(a, awx_fake) for _ in range(3)]
        awx_clock.advance(301)
        for connection_id in (mine, theirs, failed):
            # A rotation left unfinished: journal written, its token maybe sent
            # (except for `failed`).
            live = await a._cache.get(connection_id)
            assert live.record.tokens is not None
            now = awx_clock.now()
            unsafe = None if connection_id == failed else now
            journal = RotationJournal(
                live.record.tokens.generation, now, attempts=1, unsafe_since=unsafe
            )
            await a._writer.amend(live, state=S.REFRESHING, journal=journal)
        await a.access_token(mine)
        assert 0 == store_a.waits
        store_b = GatedStore(SQLiteStore(path, keys=keys))
        # settle=False: B's own scan at open would resume `theirs` meanwhile.
        async with ConnectionManager(
            config,
            store=store_b,  # type: ignore[arg-type]
            clock=awx_clock,
            settle=False,
        ) as b:
            await b.access_token(failed)
            assert 0 == store_b.waits
            loop = asyncio.get_running_loop()
            started = loop.time()
            await b.access_token(theirs)
            assert loop.time() - started >= 1.0
            assert store_b.waits >= 1
    assert 3 == awx_fake.counters.refreshes
    assert 0 == awx_fake.counters.reuse_violations


@attrs.define(eq=False)
class SlowJournalStore:
    """A real store whose first *slow* journal writes take *delay* real seconds."""

    inner: SQLiteStore
    slow: int
    delay: float
    journal_writes: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update(self, record: ConnectionRecord, **kwargs: Any) -> None:
        if record.journal is not None:
            self.journal_writes += 1
            if self.journal_writes <= self.slow:
                await asyncio.sleep(self.delay)
        await self.inner.update(record, **kwargs)


@pytest.mark.parametrize("slow", [1, 3], ids=["written-again", "gives-up"])
async def test_a_journal_slow_to_commit_is_written_again_before_sending(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    slow: int,
) -> None:
    """
    Replicas watching a journal count resume_delay from when they saw it
    commit; the request must start within resume_delay - request_timeout of
    the write. A slower store gets the journal written again (restarting
    their count); after three slow writes the attempt gives up unsent.
    """
    timing = awx_config.timing
    config = with_resume_delay(awx_config, timing.request_timeout + 0.1)
    store = SlowJournalStore(SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate()), slow, 0.2)
    async with ConnectionManager(config, store=store, clock=awx_clock) as awx:  # type: ignore[arg-type]
        connection_id = await connect(awx, awx_fake)
        awx_clock.advance(301)
        if slow == 1:
            await awx.access_token(connection_id)
            assert 1 == awx_fake.counters.refreshes
            assert 2 == store.journal_writes
        else:
            with pytest.raises(StoreUnavailableError, match="too slowly"):
                await awx.access_token(connection_id)
            assert 0 == awx_fake.counters.token_requests - 1  # the code exchange only
            # Three slow journal writes, then "aborted": back to active, no
            # deadline left behind for a token that was never sent.
            assert 3 == store.journal_writes
            stored = await awx.store.get(connection_id)
            assert stored is not None
            assert S.ACTIVE is stored.state
            assert stored.journal is None
            await awx.access_token(connection_id)  # the store is quick again
            assert 1 == awx_fake.counters.refreshes
    assert slow == sum("refresh journal took" in r.getMessage() for r in caplog.records)


async def test_a_rotation_left_maybe_sent_is_settled_without_another_caller(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    Every attempt's answer is lost after the provider committed it, so the
    rotation ends ``refreshing`` with a token that may have been sent, and
    stays usable only inside the grace window. Nobody asks again (other
    callers may hold fresh access tokens for minutes): the manager settles
    it by itself, a grace re-issue, well before the window closes.
    """
    config = attrs.evolve(awx_config, timing=attrs.evolve(awx_config.timing, settle_delay=0.01))
    async with ConnectionManager(
        config, store=SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate()), clock=awx_clock
    ) as awx:
        connection_id = await connect(awx, awx_fake)
        awx_clock.advance(301)
        attempts = awx_config.timing.max_attempts
        awx_fake.inject(
            Fault(FaultKind.SERVER_ERROR_AFTER_COMMIT, grant_type="refresh_token", times=attempts)
        )
        with pytest.raises(ProviderError):
            await awx.access_token(connection_id)
        assert S.REFRESHING is (await awx.get(connection_id)).state
        async with asyncio.timeout(10):
            while (await awx.store.get(connection_id)).state is not S.ACTIVE:  # type: ignore[union-attr]  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert 1 + attempts == awx_fake.counters.refreshes
        assert attempts == awx_fake.counters.grace_reissues
    assert 0 == awx_fake.counters.reuse_violations


async def test_a_journal_past_its_grace_window_is_given_up_without_waiting(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """
    Another process's journal, unsafe for longer than the grace window by
    this process's clock: its writer's requests are over, waiting
    ``resume_delay`` could not change the answer, so none is waited.
    """
    config = with_resume_delay(awx_config, 20.0)
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    async with ConnectionManager(
        config, store=SQLiteStore(path, keys=keys), clock=awx_clock, settle=False
    ) as a:
        connection_id = await connect(a, awx_fake)
        live = await a._cache.get(connection_id)
        assert live.record.tokens is not None
        journal = RotationJournal(
            live.record.tokens.generation, awx_clock.now(), 1, unsafe_since=awx_clock.now()
        )
        await a._writer.amend(live, state=S.REFRESHING, journal=journal)
    awx_clock.advance(config.timing.grace + 1)
    async with ConnectionManager(
        config, store=SQLiteStore(path, keys=keys), clock=awx_clock, settle=False
    ) as b:
        async with asyncio.timeout(5):  # not resume_delay (20 s)
            with pytest.raises(ConnectionInvalidatedError):
                await b.access_token(connection_id)
        assert 0 == b.statistics().refresh_requests
    assert 0 == awx_fake.counters.refreshes
