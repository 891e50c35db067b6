"""
The storage contract, run against every store.

Each test in the first part runs once per store (the ``store`` fixture:
memory, SQLite, PostgreSQL), so every backend keeps the six promises of
:mod:`awx_connection._store` the same way. Durable stores get a fresh
:class:`~awx_connection.KeyRing`, so every contract test also runs through
encryption. The ``postgres`` parameter needs the real server (see
``tests/conftest.py``); deselect it with ``-m "not postgres"``.

Key rotation runs against the durable stores only (``new_durable_store``).
The ``sqlite``-only tests at the end cover what only a file can do: survive
a reopen, be read by another process, hold a corrupt row, be migrated.
Encryption at rest itself is tested in ``tests/test_encryption.py``.

A ``record.version`` that is not ``expected_version + 1`` is a caller bug:
every store raises :class:`ValueError` before looking at its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import textwrap
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import orjson
import pytest

import awx_connection.stores
from awx_connection import DecryptionError, KeyRing, WebhookClaim
from awx_connection._errors import (
    ConfigurationError,
    InvalidArgumentError,
    StoreError,
    VersionConflictError,
)
from awx_connection._events import ConnectionEvent
from awx_connection._records import (
    ConnectionRecord,
    ConnectionSummary,
    PendingAuthorization,
    RotationJournal,
    dump_event,
    dump_record,
)
from awx_connection._secrets import Secret
from awx_connection._states import ConnectionState, Trigger
from awx_connection._tokens import TokenSet
from awx_connection.stores import MemoryStore, SQLiteStore, open_store
from awx_connection.stores._sqlite import MIGRATIONS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from awx_connection._store import Store

S = ConnectionState

#: Builds an unopened store with the given keys; every call of one factory
#: reaches the same data (file or schema), so a test can reopen it.
StoreFactory = Callable[[KeyRing | None], "Store"]
StoreT = TypeVar("StoreT", bound="Store")


def make_record(connection_id: str = "c1", **changes: Any) -> ConnectionRecord:
    """A pending version-1 record with a state hash, secrets and tokens."""
    record = ConnectionRecord(
        id=connection_id,
        state=S.PENDING,
        version=1,
        sequence=1,
        created_at=1000.0,
        updated_at=1000.0,
        reason="begin",
        scopes=("r:awx_action:balances_view", "w:awx_action:transfers_edit"),
        external_id=f"ext-{connection_id}",
        account_id=None,
        authorization=PendingAuthorization(
            state_hash=f"hash-{connection_id}",
            expires_at=1600.0,
            redirect_uri="https://partner.example/callback",
            sign_up=True,
            code_verifier=Secret(f"verifier-{connection_id}"),
        ),
        code=Secret("code-1"),
        tokens=TokenSet(
            access_token=Secret("access-1"),
            refresh_token=Secret("refresh-1"),
            access_expires_at=1300.0,
            refresh_expires_at=9000.0,
            issued_at=1000.0,
            generation=2,
            scope=("r:awx_action:balances_view",),
        ),
        journal=RotationJournal(generation=2, started_at=1001.0, attempts=1),
    )
    return attrs.evolve(record, **changes)


def make_event(connection_id: str = "c1", sequence: int = 1, **changes: Any) -> ConnectionEvent:
    """The event that goes with *sequence* of *connection_id*."""
    event = ConnectionEvent(
        connection_id=connection_id,
        sequence=sequence,
        trigger=Trigger.BEGIN if sequence == 1 else Trigger.CODE_RECEIVED,
        source=None if sequence == 1 else S.PENDING,
        dest=S.PENDING if sequence == 1 else S.AUTHORIZED,
        reason=f"step {sequence}",
        at=1000.0 + sequence,
        external_id=f"ext-{connection_id}",
    )
    return attrs.evolve(event, **changes)


def next_version(record: ConnectionRecord, **changes: Any) -> ConnectionRecord:
    """*record* moved one version and one event on."""
    return attrs.evolve(record, version=record.version + 1, sequence=record.sequence + 1, **changes)


async def insert(store: Store, connection_id: str = "c1", **changes: Any) -> ConnectionRecord:
    record = make_record(connection_id, **changes)
    await store.insert(record, make_event(connection_id))
    return record


async def update(
    store: Store,
    record: ConnectionRecord,
    *,
    event: bool = True,
    release_lease: str | None = None,
    **changes: Any,
) -> ConnectionRecord:
    """Move *record* one version on in *store*, with its next event unless ``event=False``."""
    newer = next_version(record, **changes)
    await store.update(
        newer,
        expected_version=record.version,
        event=make_event(record.id, newer.sequence) if event else None,
        release_lease=release_lease,
    )
    return newer


@contextlib.asynccontextmanager
async def opened(store: StoreT) -> AsyncIterator[StoreT]:
    """*store*, opened, and closed on exit."""
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def _factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if kind == "memory":
        return lambda keys: MemoryStore()
    # keys=None: plaintext, which is the point of the tests that pass it.
    if kind == "sqlite":
        return lambda keys: SQLiteStore(
            tmp_path / "awx.db", keys=keys, allow_plaintext=keys is None
        )
    # Only now, so that memory and SQLite never need a PostgreSQL server.
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema: str = request.getfixturevalue("postgres_schema")
    return lambda keys: awx_connection.stores.PostgresStore(
        dsn, keys=keys, schema=schema, allow_plaintext=keys is None
    )


# Sync fixtures: getfixturevalue() of the async postgres_schema cannot run
# inside an async fixture, whose event loop is already running.
@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of unopened stores of each kind."""
    return _factory(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of unopened stores of each kind that encrypts at rest."""
    return _factory(request.param, request, tmp_path)


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[Store]:
    """Each store, with a fresh key ring where it takes one, opened and closed after the test."""
    async with opened(new_store(KeyRing.generate())) as store:
        yield store


# --- the contract, for every store -------------------------------------------------------


async def test_insert_then_get_returns_the_same_record(store: Store) -> None:
    """A stored record comes back equal in every field, secrets included."""
    record = await insert(store)
    loaded = await store.get("c1")
    assert loaded == record
    assert loaded is not None
    assert loaded.tokens is not None
    assert loaded.tokens.refresh_token.reveal() == "refresh-1"
    assert await store.get("missing") is None


async def test_insert_of_an_existing_id_raises_store_error(store: Store) -> None:
    """Inserting an id twice fails and keeps the first record."""
    first = await insert(store)
    with pytest.raises(StoreError, match="c1"):
        await store.insert(make_record(reason="again", authorization=None), make_event())
    assert await store.get("c1") == first


async def test_update_with_the_expected_version_replaces_the_record(store: Store) -> None:
    """A compare-and-swap at the stored version writes the new record and its event."""
    record = await insert(store)
    newer = next_version(record, state=S.AUTHORIZED, reason="code received")
    await store.update(newer, expected_version=1, event=make_event(sequence=2))
    assert await store.get("c1") == newer
    assert [e.sequence for e in await store.read_events("c1")] == [1, 2]


async def test_update_without_event_writes_only_the_record(store: Store) -> None:
    """``event=None`` replaces the record and leaves the log alone."""
    record = await insert(store)
    newer = next_version(record, reason="journal bumped")
    await store.update(newer, expected_version=1, event=None)
    assert await store.get("c1") == newer
    assert len(await store.read_events("c1")) == 1


async def test_stale_update_raises_conflict_and_writes_nothing(store: Store) -> None:
    """A writer holding an old version loses: no record and no event is written."""
    record = await insert(store)
    current = next_version(record, reason="winner")
    await store.update(current, expected_version=1, event=make_event(sequence=2))
    stale = next_version(record, reason="loser")
    with pytest.raises(VersionConflictError) as caught:
        await store.update(stale, expected_version=1, event=make_event(sequence=3))
    assert (caught.value.connection_id, caught.value.expected, caught.value.actual) == ("c1", 1, 2)
    assert await store.get("c1") == current
    assert [e.sequence for e in await store.read_events("c1")] == [1, 2]


async def test_update_of_a_missing_id_raises_conflict_with_no_actual(store: Store) -> None:
    """Updating a connection that does not exist is a conflict against nothing."""
    with pytest.raises(VersionConflictError) as caught:
        await store.update(make_record(version=2), expected_version=1, event=make_event())
    assert caught.value.actual is None
    assert await store.get("c1") is None
    assert await store.read_events("c1") == []


@pytest.mark.parametrize("version", [1, 3])
async def test_update_must_move_exactly_one_version(store: Store, version: int) -> None:
    """A new record whose version is not expected + 1 is refused with ValueError."""
    record = await insert(store)
    with pytest.raises(ValueError, match="version"):
        await store.update(
            attrs.evolve(record, version=version, reason="bad"), expected_version=1, event=None
        )
    assert await store.get("c1") == record


async def test_event_of_another_connection_is_refused(store: Store) -> None:
    """An event must belong to the record written with it."""
    with pytest.raises(ValueError, match="belongs"):
        await store.insert(make_record("c1"), make_event("c2"))
    assert await store.get("c1") is None


async def test_record_and_event_are_written_together(store: Store) -> None:
    """When the event cannot be stored (sequence taken) the record is not written either."""
    record = await insert(store)
    newer = next_version(record, reason="would be lost")
    with pytest.raises(StoreError, match="c1"):
        await store.update(newer, expected_version=1, event=make_event(sequence=1))
    assert await store.get("c1") == record
    assert len(await store.read_events("c1")) == 1
    # The failed write left the store usable.
    await store.update(newer, expected_version=1, event=make_event(sequence=2))
    assert await store.get("c1") == newer


async def test_find_by_state_hash_until_authorization_is_cleared(store: Store) -> None:
    """The pending authorization is found by its hash, and no longer once it is cleared."""
    record = await insert(store)
    await insert(store, "c2")
    assert await store.find_by_state_hash("hash-c1") == record
    assert await store.find_by_state_hash("hash-unknown") is None
    answered = next_version(record, state=S.AUTHORIZED, authorization=None)
    await store.update(answered, expected_version=1, event=make_event(sequence=2))
    assert await store.find_by_state_hash("hash-c1") is None
    assert (await store.find_by_state_hash("hash-c2") or record).id == "c2"


async def test_a_used_state_hash_is_not_found(store: Store) -> None:
    """An authorization whose hash was set to None (state used once) is not indexed."""
    record = await insert(store)
    assert record.authorization is not None
    used = next_version(record, authorization=attrs.evolve(record.authorization, state_hash=None))
    await store.update(used, expected_version=1, event=None)
    assert await store.find_by_state_hash("hash-c1") is None
    assert await store.get("c1") == used


async def test_a_state_hash_belongs_to_one_connection(store: Store) -> None:
    """A second connection cannot take a ``state`` hash another one holds."""
    await insert(store, "c1")
    with pytest.raises(StoreError, match="c2"):
        await insert(store, "c2", authorization=make_record("c1").authorization)
    assert await store.get("c2") is None


async def test_list_connections_filters_and_orders_oldest_first(store: Store) -> None:
    """Filters combine with AND; results are ordered by created_at, then id."""
    await insert(store, "b", created_at=3.0, account_id="acct-1")
    await insert(store, "a", created_at=3.0, account_id="acct-2")
    await insert(store, "z", created_at=1.0, account_id="acct-1", external_id="shared")
    c = await insert(store, "c", created_at=2.0, account_id="acct-1", external_id="shared")
    await store.update(
        next_version(c, state=S.ACTIVE, authorization=None), expected_version=1, event=None
    )

    async def ids(**filters: Any) -> list[str]:
        return [record.id for record in await store.list_connections(**filters)]

    assert await ids() == ["z", "c", "a", "b"]
    assert await ids(states=[S.ACTIVE]) == ["c"]
    assert await ids(states={S.ACTIVE, S.PENDING}) == ["z", "c", "a", "b"]
    assert await ids(states=[]) == []
    assert await ids(external_id="shared") == ["z", "c"]
    assert await ids(account_id="acct-1") == ["z", "c", "b"]
    assert await ids(account_id="acct-1", states=[S.PENDING]) == ["z", "b"]
    assert await ids(account_id="acct-1", external_id="shared", states=[S.ACTIVE]) == ["c"]
    assert await ids(account_id="nobody") == []


async def _insert_page_fixture(store: Store) -> list[str]:
    """Seven connections, several sharing a created_at; their ids oldest first."""
    for connection_id, created_at in [
        ("e", 2.0),
        ("a", 2.0),
        ("g", 1.0),
        ("c", 2.0),
        ("b", 3.0),
        ("f", 2.0),
        ("d", 0.5),
    ]:
        await insert(store, connection_id, created_at=created_at)
    return ["d", "g", "a", "c", "e", "f", "b"]


async def walk(store: Store, limit: int, **filters: Any) -> list[list[str]]:
    """Every page of *limit* records, each page's ids, following the last record's key."""
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_connections(after=after, limit=limit, **filters)
        pages.append([record.id for record in page])
        if len(page) < limit:
            return pages
        after = (page[-1].created_at, page[-1].id)


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8])
async def test_list_connections_pages_by_created_at_then_id(store: Store, limit: int) -> None:
    """Keyset pages (equal created_at split by id) add up to the whole listing, in order."""
    oldest_first = await _insert_page_fixture(store)
    pages = await walk(store, limit)
    assert [oldest_first[i : i + limit] for i in range(0, len(oldest_first) + 1, limit)] == pages
    assert oldest_first == [record.id for record in await store.list_connections()]


async def test_list_connections_after_is_exclusive_and_works_without_limit(store: Store) -> None:
    """*after* starts strictly after its key, inside a run of equal created_at too."""
    await _insert_page_fixture(store)

    async def ids(**filters: Any) -> list[str]:
        return [record.id for record in await store.list_connections(**filters)]

    assert ["e", "f", "b"] == await ids(after=(2.0, "c"))
    assert ["e", "f"] == await ids(after=(2.0, "c"), limit=2)
    assert ["a", "c", "e", "f", "b"] == await ids(after=(1.0, "g"))
    assert ["a", "c", "e", "f", "b"] == await ids(after=(1.5, "zzz"))
    assert ["b"] == await ids(after=(2.0, "zzz"))
    assert [] == await ids(after=(3.0, "b"))
    assert ["d", "g"] == await ids(after=(0.0, ""), limit=2)


async def test_list_connections_pages_combine_with_filters(store: Store) -> None:
    """Paging applies to the filtered listing: full pages of matching records only."""
    oldest_first = await _insert_page_fixture(store)
    for connection_id in ("g", "c", "f", "b"):
        record = await store.get(connection_id)
        assert record is not None
        await update(store, record, state=S.ACTIVE, authorization=None)
    assert [["g", "c"], ["f", "b"], []] == await walk(store, 2, states=[S.ACTIVE])
    assert [["d", "a", "e"], []] == await walk(store, 3, states={S.PENDING})
    assert [[]] == await walk(store, 2, states=[])
    assert [["c"], []] == await walk(store, 1, states=[S.ACTIVE], external_id="ext-c")
    assert oldest_first == [r for page in await walk(store, 4) for r in page]


@pytest.mark.parametrize("limit", [0, -1])
async def test_list_connections_refuses_a_limit_below_one(store: Store, limit: int) -> None:
    """A caller bug, refused before the data is looked at."""
    with pytest.raises(ValueError, match="limit"):
        await store.list_connections(limit=limit)


async def test_list_summaries_are_what_list_connections_lists(store: Store) -> None:
    """
    Same rows, same order, same pages as ``list_connections`` for any
    states, *after* and *limit*; each the summary of its record.
    """
    await _insert_page_fixture(store)
    for connection_id, generation in (("g", 3), ("c", 5), ("b", 7)):
        record = await store.get(connection_id)
        assert record is not None and record.tokens is not None
        tokens = attrs.evolve(record.tokens, generation=generation, issued_at=2000.0 + generation)
        await update(store, record, state=S.ACTIVE, authorization=None, tokens=tokens)
    record = await store.get("d")
    assert record is not None
    await update(store, record, tokens=None, journal=None)
    for filters in (
        {},
        {"states": [S.ACTIVE]},
        {"states": {S.ACTIVE, S.PENDING}, "limit": 2},
        {"states": []},
        {"after": (2.0, "c")},
        {"after": (1.0, "g"), "limit": 3},
        {"states": [S.PENDING], "after": (0.5, "d"), "limit": 1},
    ):
        records = await store.list_connections(**filters)
        summaries = await store.list_summaries(**filters)
        assert [ConnectionSummary.of(r) for r in records] == summaries, filters
    by_id = {summary.id: summary for summary in await store.list_summaries()}
    assert (S.ACTIVE, 2, 5, 2005.0, 9000.0) == (
        by_id["c"].state,
        by_id["c"].version,
        by_id["c"].generation,
        by_id["c"].issued_at,
        by_id["c"].refresh_expires_at,
    )
    assert (None, None, None) == (
        by_id["d"].generation,
        by_id["d"].issued_at,
        by_id["d"].refresh_expires_at,
    )
    with pytest.raises(ValueError, match="limit"):
        await store.list_summaries(limit=0)


async def test_summaries_are_read_without_the_keys(
    new_durable_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """
    A row sealed with a key the ring lacks is left out of ``list_connections``
    but summarised: a summary decrypts nothing, and the keep-alive pass that
    reads it then meets the row's ``DecryptionError`` on its full read.
    """
    async with opened(new_durable_store(KeyRing.generate("lost"))) as store:
        sealed_away = await insert(store, "x1", created_at=1.0)
    async with opened(new_durable_store(KeyRing.generate("kept"))) as store:
        kept = await insert(store, "a", created_at=2.0)
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [ConnectionSummary.of(sealed_away), ConnectionSummary.of(kept)] == (
                await store.list_summaries(limit=5)
            )
        assert [] == caplog.records
        assert [kept] == await store.list_connections()


async def test_unreadable_rows_are_left_out_of_pages_without_shortening_them(
    new_durable_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """
    Rows sealed with a key the ring lacks are logged once each and skipped; a
    page is still filled from the rows after them, so only the last page is
    short and a walk neither stops early nor repeats a row.
    """
    lost = KeyRing.generate("lost")
    kept = KeyRing.generate("kept")
    async with opened(new_durable_store(lost)) as store:
        for connection_id, created_at in [("x1", 1.0), ("x2", 2.0), ("x3", 2.0), ("x4", 5.0)]:
            await insert(store, connection_id, created_at=created_at)
    async with opened(new_durable_store(kept)) as store:
        for connection_id, created_at in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]:
            await insert(store, connection_id, created_at=created_at)
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            # Keys: a 1.0, x1 1.0, b 2.0, x2 2.0, x3 2.0, c 3.0, d 4.0, x4 5.0.
            assert [["a", "b"], ["c", "d"], []] == await walk(store, 2)
    logged = sorted(
        connection_id
        for connection_id in ("x1", "x2", "x3", "x4")
        for entry in caplog.records
        if f"{connection_id!r}" in entry.getMessage()
    )
    assert ["x1", "x2", "x3", "x4"] == logged
    assert {logging.ERROR} == {entry.levelno for entry in caplog.records}


async def test_read_events_in_sequence_order_after_a_position(store: Store) -> None:
    """Events come back ordered by sequence, only those after ``after``, per connection."""
    record = await insert(store)
    await insert(store, "other")
    for sequence in (2, 3, 4):
        newer = next_version(record)
        await store.update(
            newer, expected_version=record.version, event=make_event(sequence=sequence)
        )
        record = newer
    events = await store.read_events("c1")
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert events[1] == make_event(sequence=2)
    assert [e.sequence for e in await store.read_events("c1", after=2)] == [3, 4]
    assert await store.read_events("c1", after=4) == []
    assert [e.connection_id for e in await store.read_events("other")] == ["other"]


async def test_open_and_aclose_are_idempotent(store: Store) -> None:
    """Opening an open store again keeps it working, and so does closing twice."""
    record = await insert(store)
    await store.open()
    assert await store.get("c1") == record
    await store.aclose()
    await store.aclose()


async def test_concurrent_updates_have_exactly_one_winner(store: Store) -> None:
    """20 writers racing from the same version: one wins, 19 get VersionConflictError."""
    record = await insert(store)
    candidates = [next_version(record, reason=f"writer {n}") for n in range(20)]
    results = await asyncio.gather(
        *(
            store.update(candidate, expected_version=1, event=make_event(sequence=2))
            for candidate in candidates
        ),
        return_exceptions=True,
    )
    winners = [c for c, result in zip(candidates, results, strict=True) if result is None]
    conflicts = [r for r in results if isinstance(r, VersionConflictError)]
    assert len(winners) == 1
    assert len(conflicts) == 19
    assert all(conflict.actual == 2 for conflict in conflicts)
    assert await store.get("c1") == winners[0]
    assert len(await store.read_events("c1")) == 2


# --- leases ------------------------------------------------------------------------------


async def test_lease_is_granted_when_free(store: Store) -> None:
    """Nobody holds a new connection's lease: the first owner gets it."""
    await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)


async def test_lease_is_refused_while_another_owner_holds_it(store: Store) -> None:
    """Until its deadline, a lease keeps every other owner out."""
    await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    assert not await store.acquire_lease("c1", "worker-b", until=200.0, now=0.0)
    assert not await store.acquire_lease("c1", "worker-b", until=200.0, now=99.9)


async def test_lease_is_renewed_by_its_owner(store: Store) -> None:
    """The holder can move its own deadline on, which keeps others out longer."""
    await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    assert await store.acquire_lease("c1", "worker-a", until=150.0, now=50.0)
    assert not await store.acquire_lease("c1", "worker-b", until=300.0, now=120.0)
    assert await store.acquire_lease("c1", "worker-b", until=300.0, now=150.0)


async def test_expired_lease_is_taken_over(store: Store) -> None:
    """At ``now >= until`` the lease is free again, and the old holder has lost it."""
    await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    assert await store.acquire_lease("c1", "worker-b", until=200.0, now=100.0)
    assert not await store.acquire_lease("c1", "worker-a", until=300.0, now=101.0)


async def test_lease_is_released_only_by_its_owner(store: Store) -> None:
    """release_lease by another owner does nothing; by the holder, it frees the lease."""
    await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    await store.release_lease("c1", "worker-b")
    assert not await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0)
    await store.release_lease("c1", "worker-a")
    assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0)


async def test_lease_of_an_unknown_connection_is_refused(store: Store) -> None:
    """There is no lease on a connection that does not exist; releasing one is a no-op."""
    assert not await store.acquire_lease("missing", "worker-a", until=100.0, now=0.0)
    await store.release_lease("missing", "worker-a")
    assert await store.get("missing") is None


async def test_lease_never_changes_the_version_and_survives_writes(store: Store) -> None:
    """Taking, renewing and releasing leave the record alone; a write keeps the lease."""
    record = await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    assert await store.acquire_lease("c1", "worker-a", until=200.0, now=1.0)
    assert await store.get("c1") == record
    newer = await update(store, record, reason="rotated under the lease")
    assert await store.get("c1") == newer
    assert not await store.acquire_lease("c1", "worker-b", until=300.0, now=2.0)
    await store.release_lease("c1", "worker-a")
    assert await store.get("c1") == newer


async def test_concurrent_lease_requests_have_exactly_one_winner(store: Store) -> None:
    """20 owners asking for a free lease at once: exactly one gets it."""
    await insert(store)
    granted = await asyncio.gather(
        *(store.acquire_lease("c1", f"worker-{n}", until=100.0, now=0.0) for n in range(20))
    )
    assert 1 == sum(grant is not None for grant in granted)


async def test_a_granted_lease_comes_with_the_stored_record(store: Store) -> None:
    """acquire_lease answers with the record it protects (the latest), or None when refused."""
    record = await insert(store)
    newer = await update(store, record, reason="written before the lease")
    granted = await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    assert granted == newer
    assert granted is not None
    assert granted.tokens is not None
    assert granted.tokens.refresh_token.reveal() == "refresh-1"
    assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) is None
    assert await store.acquire_lease("c1", "worker-a", until=150.0, now=1.0) == newer  # renewal


async def test_an_update_can_end_its_owners_lease(store: Store) -> None:
    """update(release_lease=owner) frees that owner's lease with the write, nobody else's."""
    record = await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    newer = await update(store, record, reason="rotated", release_lease="worker-b")
    assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) is None
    newest = await update(store, newer, reason="rotated again", release_lease="worker-a")
    assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) == newest


async def test_a_refused_update_keeps_the_lease(store: Store) -> None:
    """A compare-and-swap that loses writes nothing, and the lease stays where it was."""
    record = await insert(store)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    stale = attrs.evolve(record, version=5, reason="stale")
    with pytest.raises(VersionConflictError):
        await store.update(stale, expected_version=4, event=None, release_lease="worker-a")
    assert await store.acquire_lease("c1", "worker-b", until=100.0, now=1.0) is None


# --- the outbox --------------------------------------------------------------------------


async def test_outbox_positions_increase_in_write_order_across_connections(store: Store) -> None:
    """Every event gets a larger position than the one written before, whatever its connection."""
    c1 = await insert(store, "c1")
    c2 = await insert(store, "c2")
    c1 = await update(store, c1)
    await update(store, c2)
    await update(store, c1)
    outbox = await store.read_outbox()
    assert [("c1", 1), ("c2", 1), ("c1", 2), ("c2", 2), ("c1", 3)] == [
        (event.connection_id, event.sequence) for _, event in outbox
    ]
    positions = [position for position, _ in outbox]
    assert sorted(set(positions)) == positions
    assert make_event("c2", 2) == outbox[3][1]


async def test_outbox_keeps_each_connections_events_in_sequence_order(store: Store) -> None:
    """Read through the outbox, one connection's events come in sequence order."""
    c1 = await insert(store, "c1")
    c2 = await insert(store, "c2")
    for _ in range(3):
        c2 = await update(store, c2)
        c1 = await update(store, c1)
    outbox = await store.read_outbox()
    for connection_id in ("c1", "c2"):
        assert [1, 2, 3, 4] == [e.sequence for _, e in outbox if e.connection_id == connection_id]


async def test_read_outbox_after_and_limit(store: Store) -> None:
    """``after`` skips up to a position, ``limit`` caps the batch; together they page."""
    record = await insert(store)
    for _ in range(4):
        record = await update(store, record)
    everything = await store.read_outbox()
    positions = [position for position, _ in everything]
    assert 5 == len(everything)
    assert everything[2:] == await store.read_outbox(after=positions[1])
    assert everything[:2] == await store.read_outbox(limit=2)
    assert everything[1:3] == await store.read_outbox(after=positions[0], limit=2)
    assert [] == await store.read_outbox(after=positions[-1])
    pages: list[tuple[int, ConnectionEvent]] = []
    while batch := await store.read_outbox(after=pages[-1][0] if pages else 0, limit=2):
        pages.extend(batch)
    assert everything == pages


async def test_update_without_event_adds_nothing_to_the_outbox(store: Store) -> None:
    """Only events go to the outbox; a record-only write leaves it as it was."""
    record = await insert(store)
    before = await store.read_outbox()
    await update(store, record, event=False)
    assert before == await store.read_outbox()
    assert 1 == len(before)


async def test_failed_writes_add_nothing_to_the_outbox(store: Store) -> None:
    """A lost compare-and-swap or a duplicate insert leaves no event behind."""
    record = await insert(store)
    with pytest.raises(VersionConflictError):
        await store.update(
            attrs.evolve(record, version=8), expected_version=7, event=make_event(sequence=2)
        )
    with pytest.raises(StoreError):
        await store.insert(make_record(authorization=None), make_event())
    assert [make_event()] == [event for _, event in await store.read_outbox()]


# --- consumer offsets --------------------------------------------------------------------


async def test_offset_defaults_to_zero_and_reads_back_what_was_committed(store: Store) -> None:
    """A new consumer starts at 0; a commit is read back."""
    assert 0 == await store.get_offset("billing")
    await store.commit_offset("billing", 3)
    assert 3 == await store.get_offset("billing")
    await store.commit_offset("billing", 5)
    assert 5 == await store.get_offset("billing")


async def test_offset_never_moves_back(store: Store) -> None:
    """Committing an older position (a stale checkpoint) keeps the newer one."""
    await store.commit_offset("billing", 7)
    await store.commit_offset("billing", 2)
    await store.commit_offset("billing", 7)
    assert 7 == await store.get_offset("billing")


async def test_consumers_keep_independent_offsets(store: Store) -> None:
    """One consumer's commits do not move another's."""
    await store.commit_offset("billing", 4)
    await store.commit_offset("audit", 1)
    assert (4, 1, 0) == (
        await store.get_offset("billing"),
        await store.get_offset("audit"),
        await store.get_offset("newcomer"),
    )


# --- waiting -----------------------------------------------------------------------------


async def test_wait_for_update_returns_the_newer_record_written_meanwhile(store: Store) -> None:
    """A waiter wakes with the record another task wrote after it started waiting."""
    record = await insert(store)
    waiting = asyncio.create_task(store.wait_for_update("c1", after_version=1, timeout=5.0))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    newer = await update(store, record, reason="written meanwhile")
    assert newer == await asyncio.wait_for(waiting, 2.0)


async def test_wait_for_update_returns_at_once_when_already_newer(store: Store) -> None:
    """A version already past ``after_version`` needs no waiting, even with timeout 0."""
    record = await insert(store)
    assert record == await store.wait_for_update("c1", after_version=0, timeout=0.0)


async def test_wait_for_update_times_out_with_none(store: Store) -> None:
    """No newer version within the timeout gives None; a lease is no new version."""
    await insert(store)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(store.wait_for_update("c1", after_version=1, timeout=0.1))
    await asyncio.sleep(0.01)
    assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
    assert await waiting is None
    assert 0.09 <= loop.time() - started < 2.0
    assert await store.wait_for_update("missing", after_version=0, timeout=0.01) is None


async def test_wait_for_events_is_true_when_an_event_is_written_meanwhile(store: Store) -> None:
    """A waiter for positions past the last one wakes when a new event commits."""
    record = await insert(store)
    [(last, _)] = await store.read_outbox()
    waiting = asyncio.create_task(store.wait_for_events(after=last, timeout=5.0))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    await update(store, record)
    assert await asyncio.wait_for(waiting, 2.0)


async def test_wait_for_events_answers_at_once_or_times_out(store: Store) -> None:
    """True at once when events exist past ``after``; False after the timeout otherwise."""
    assert not await store.wait_for_events(after=0, timeout=0.01)
    record = await insert(store)
    assert await store.wait_for_events(after=0, timeout=0.0)
    [(last, _)] = await store.read_outbox()
    waiting = asyncio.create_task(store.wait_for_events(after=last, timeout=0.1))
    await asyncio.sleep(0.01)
    await update(store, record, event=False)
    assert not await waiting


# --- pruning -----------------------------------------------------------------------------


async def test_prune_events_removes_only_older_events(store: Store) -> None:
    """Events with ``at < before`` go from read_events and read_outbox; the count is returned."""
    c1 = await insert(store, "c1")
    c1 = await update(store, c1)
    await update(store, c1)
    await insert(store, "c2")
    kept = [item for item in await store.read_outbox() if item[1].at >= 1002.0]
    assert 2 == await store.prune_events(before=1002.0)
    assert [2, 3] == [event.sequence for event in await store.read_events("c1")]
    assert [] == await store.read_events("c2")
    assert kept == await store.read_outbox()
    assert 0 == await store.prune_events(before=1002.0)


async def test_pruned_positions_are_never_reused(store: Store) -> None:
    """After everything is pruned, the next event still gets a larger position."""
    record = await insert(store)
    await update(store, record)
    last = (await store.read_outbox())[-1][0]
    assert 2 == await store.prune_events(before=1e12)
    assert [] == await store.read_outbox()
    await insert(store, "c2")
    [(position, event)] = await store.read_outbox()
    assert position > last
    assert make_event("c2") == event


# --- text that cannot be stored ---------------------------------------------------------

#: Values no store can hold as text: a lone surrogate (what surrogateescape
#: makes of bytes that are not UTF-8), one inside a longer string, and
#: values that are not strings at all.
BAD_TEXT = ["\ud800", "cust-\udcff", 42, b"cust-1"]

#: Every store method taking a text argument, called with a bad value there.
TEXT_ARGUMENTS: dict[str, Callable[[Store, Any], Awaitable[object]]] = {
    "get": lambda store, bad: store.get(bad),
    "find_by_state_hash": lambda store, bad: store.find_by_state_hash(bad),
    "list_connections(external_id)": lambda store, bad: store.list_connections(external_id=bad),
    "list_connections(account_id)": lambda store, bad: store.list_connections(account_id=bad),
    "list_connections(external_id, limit)": lambda store, bad: store.list_connections(
        external_id=bad, limit=2
    ),
    "read_events": lambda store, bad: store.read_events(bad),
    "acquire_lease(id)": lambda store, bad: store.acquire_lease(bad, "me", until=2.0, now=1.0),
    "acquire_lease(owner)": lambda store, bad: store.acquire_lease("c1", bad, until=2.0, now=1.0),
    "release_lease(id)": lambda store, bad: store.release_lease(bad, "me"),
    "release_lease(owner)": lambda store, bad: store.release_lease("c1", bad),
    "wait_for_update": lambda store, bad: store.wait_for_update(bad, after_version=0, timeout=0),
    "get_offset": lambda store, bad: store.get_offset(bad),
    "commit_offset": lambda store, bad: store.commit_offset(bad, 1),
    "claim_webhook(id)": lambda store, bad: store.claim_webhook(bad, owner="o", now=1, until=2),
    "claim_webhook(owner)": lambda store, bad: store.claim_webhook("e", owner=bad, now=1, until=2),
    "finish_webhook": lambda store, bad: store.finish_webhook(bad, owner="o", at=1.0),
    "release_webhook": lambda store, bad: store.release_webhook(bad, owner="o"),
}


async def _outcome(call: Awaitable[object]) -> str:
    """
    What *call* did: ``"refused"`` for an InvalidArgumentError (a ValueError
    too) whose message shows no bad value; otherwise what happened instead.
    """
    try:
        await call
    except InvalidArgumentError as exc:
        shown = [bad for bad in BAD_TEXT if repr(bad) in str(exc)]
        if shown or not isinstance(exc, ValueError):
            return f"refused, but showing {shown}"
        return "refused"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


async def test_text_arguments_that_cannot_be_stored_are_refused_alike(store: Store) -> None:
    """
    Every store refuses every bad text argument of every method with the same
    typed error, also a ValueError, naming the argument but not the value;
    before, memory answered, SQLite raised UnicodeEncodeError and PostgreSQL
    a StoreError quoting the value.
    """
    record = await insert(store, "c1")
    outcomes = {
        (method, bad): await _outcome(call(store, bad))
        for method, call in TEXT_ARGUMENTS.items()
        for bad in BAD_TEXT
    }
    assert {"refused"} == set(outcomes.values()), outcomes
    assert [record] == await store.list_connections()


def _with_bad(field: str, bad: Any) -> tuple[ConnectionRecord, ConnectionEvent]:
    """A valid record and event but for *field*, which holds *bad*."""
    record, event = make_record("c1"), make_event("c1")
    tokens, auth = record.tokens, record.authorization
    assert tokens is not None
    assert auth is not None
    if field == "id":
        return attrs.evolve(record, id=bad), attrs.evolve(event, connection_id=bad)
    if field in ("external_id", "account_id", "reason", "write_id"):
        return attrs.evolve(record, **{field: bad}), event
    if field == "scopes":
        return attrs.evolve(record, scopes=("r:awx_action:balances_view", bad)), event
    if field == "code":
        return attrs.evolve(record, code=Secret(bad)), event
    if field in ("access_token", "refresh_token"):
        return attrs.evolve(record, tokens=attrs.evolve(tokens, **{field: Secret(bad)})), event
    if field == "token scope":
        return attrs.evolve(record, tokens=attrs.evolve(tokens, scope=(bad,))), event
    if field in ("redirect_uri", "state_hash"):
        return attrs.evolve(record, authorization=attrs.evolve(auth, **{field: bad})), event
    if field == "code_verifier":
        return attrs.evolve(
            record, authorization=attrs.evolve(auth, code_verifier=Secret(bad))
        ), event
    assert field.startswith("event ")
    return record, attrs.evolve(event, **{field.removeprefix("event "): bad})


RECORD_TEXT_FIELDS = [
    "id",
    "external_id",
    "account_id",
    "reason",
    "write_id",
    "scopes",
    "code",
    "access_token",
    "refresh_token",
    "token scope",
    "redirect_uri",
    "state_hash",
    "code_verifier",
    "event reason",
    "event external_id",
    "event account_id",
]


async def test_records_with_text_that_cannot_be_stored_are_refused_alike(store: Store) -> None:
    """
    insert() and update() refuse a record or event with a bad text field
    (secrets included) with InvalidArgumentError before writing anything, on
    every store; the message never holds the value. Before, memory stored it
    and the durable stores raised orjson's TypeError or UnicodeEncodeError.
    """
    stored = await insert(store, "stored")
    outcomes = {}
    for field in RECORD_TEXT_FIELDS:
        for bad in BAD_TEXT:
            record, event = _with_bad(field, bad)
            outcomes[field, bad, "insert"] = await _outcome(store.insert(record, event))
            if field == "id":
                continue  # an update of a bad id has nothing to compare against
            newer = next_version(attrs.evolve(record, id="stored"))
            newer_event = attrs.evolve(event, connection_id="stored", sequence=2)
            outcomes[field, bad, "update"] = await _outcome(
                store.update(newer, expected_version=1, event=newer_event)
            )
            if not field.startswith("event "):
                outcomes[field, bad, "update, no event"] = await _outcome(
                    store.update(newer, expected_version=1, event=None)
                )
    assert {"refused"} == set(outcomes.values()), outcomes
    assert [stored] == await store.list_connections()
    assert 1 == len(await store.read_outbox())


# --- key rotation ------------------------------------------------------------------------


async def test_memory_store_has_nothing_to_rotate() -> None:
    """Nothing is encrypted in memory, so rotate_keys rewrites nothing, sealing or not."""
    store = MemoryStore()
    await insert(store)
    assert 0 == await store.rotate_keys()
    assert 0 == await store.rotate_keys(seal_plaintext=True)


async def test_rotate_keys_seals_plaintext_rows_only_when_asked(
    new_durable_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """
    With keys, a row holding plaintext secrets does not read and
    rotate_keys() reports it (an ERROR naming it, a StoreError saying
    'keys seal') while rotating the rest; rotate_keys(seal_plaintext=True)
    seals it, with a WARNING naming it.
    """
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
    async with opened(new_durable_store(None)) as store:
        plain = await insert(store, "plain", created_at=1.0)
    async with opened(new_durable_store(KeyRing([("k1", k1)]))) as store:
        sealed = await insert(store, "sealed", created_at=2.0)
    async with opened(new_durable_store(KeyRing([("k2", k2), ("k1", k1)]))) as store:
        with pytest.raises(DecryptionError, match=r"'plain'.*plaintext, not an encrypted envelope"):
            await store.get("plain")
        with caplog.at_level(logging.WARNING, logger="awx_connection.stores"):
            with pytest.raises(StoreError, match=r"re-encrypted 1 .*'plain'.*keys seal"):
                await store.rotate_keys()
            assert [sealed] == await store.list_connections()
            assert 1 == await store.rotate_keys(seal_plaintext=True)
            assert 0 == await store.rotate_keys()
        assert [plain, sealed] == await store.list_connections()
    levels = [(r.levelno, "'plain'" in r.getMessage()) for r in caplog.records]
    assert [(logging.ERROR, True), (logging.ERROR, True), (logging.WARNING, True)] == levels
    async with opened(new_durable_store(KeyRing([("k2", k2)]))) as store:
        assert [plain, sealed] == await store.list_connections()


async def test_rotate_keys_reseals_every_row_with_the_newest_key(
    new_durable_store: StoreFactory,
) -> None:
    """After rotating [k1] to [k2, k1], every row opens with k2 alone and keeps its version."""
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
    async with opened(new_durable_store(KeyRing([("k1", k1)]))) as store:
        records = [await insert(store, "c1"), await insert(store, "c2")]
        records.append(await update(store, await insert(store, "c3")))
        records.append(await insert(store, "bare", tokens=None, code=None, authorization=None))
    async with opened(new_durable_store(KeyRing([("k2", k2), ("k1", k1)]))) as store:
        assert 3 == await store.rotate_keys()
        assert 0 == await store.rotate_keys()
        assert sorted(records, key=lambda r: r.id) == await store.list_connections()
    async with opened(new_durable_store(KeyRing([("k2", k2)]))) as store:
        assert records == [await store.get(record.id) for record in records]
        assert [2] == [r.version for r in records if r.id == "c3"]


async def test_rotate_keys_without_keys_raises_store_error(
    new_durable_store: StoreFactory,
) -> None:
    """A store opened with keys=None has no key to rotate to."""
    async with opened(new_durable_store(None)) as store:
        await insert(store)
        with pytest.raises(StoreError, match="keys"):
            await store.rotate_keys()


# --- open_store --------------------------------------------------------------------------


def test_open_store_maps_urls_to_stores(tmp_path: Path) -> None:
    """memory:// and SQLAlchemy-style sqlite URLs pick their store, path and keys."""
    assert isinstance(open_store("memory://"), MemoryStore)
    relative = open_store("sqlite:///data/awx.db", allow_plaintext=True)
    assert isinstance(relative, SQLiteStore)
    assert relative.path == "data/awx.db"
    assert relative.keys is None
    keys = KeyRing.generate()
    absolute = open_store(f"sqlite:///{tmp_path}/awx.db", keys=keys)
    assert isinstance(absolute, SQLiteStore)
    assert Path(absolute.path) == tmp_path / "awx.db"
    assert Path(absolute.path).is_absolute()
    assert absolute.keys is keys


class _FakePostgresStore:
    def __init__(
        self, dsn: str, *, keys: KeyRing | None, allow_plaintext: bool, create: bool
    ) -> None:
        self.dsn = dsn
        self.keys = keys
        self.allow_plaintext = allow_plaintext
        self.create = create


@pytest.mark.parametrize("url", ["postgresql://user:pw@db:5432/awx", "postgres://db/awx"])
def test_open_store_maps_postgres_urls_to_postgres_store(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Both PostgreSQL spellings build a PostgresStore on the whole URL, with the keys."""
    fake = types.ModuleType("awx_connection.stores._postgres")
    fake.PostgresStore = _FakePostgresStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "awx_connection.stores._postgres", fake)
    keys = KeyRing.generate()
    store = open_store(url, keys=keys)
    assert isinstance(store, _FakePostgresStore)
    assert (url, keys, False, True) == (store.dsn, store.keys, store.allow_plaintext, store.create)
    plain = open_store(url, allow_plaintext=True)
    assert isinstance(plain, _FakePostgresStore)
    assert (None, True) == (plain.keys, plain.allow_plaintext)


def test_durable_stores_without_keys_refuse_unless_plaintext_is_allowed(tmp_path: Path) -> None:
    """
    A durable store without keys would write tokens in plaintext: refused at
    construction (no file created) with an error naming 'awx-connection keys
    new', unless allow_plaintext=True. The memory store is unaffected:
    nothing of it leaves the process.
    """
    from awx_connection.stores import PostgresStore

    path = tmp_path / "awx.db"
    dsn = "postgresql://app:hunter2@db/awx"
    builders: dict[str, Callable[..., object]] = {
        "SQLiteStore": lambda **allow: SQLiteStore(path, keys=None, **allow),
        "PostgresStore": lambda **allow: PostgresStore(dsn, keys=None, **allow),
        "open_store(sqlite)": lambda **allow: open_store(f"sqlite:///{path}", **allow),
        "open_store(postgresql)": lambda **allow: open_store(dsn, **allow),
    }
    for name, build in builders.items():
        for refusing in ({}, {"allow_plaintext": False}):
            with pytest.raises(ConfigurationError, match="'awx-connection keys new'") as caught:
                build(**refusing)
            assert "allow_plaintext=True" in str(caught.value), name
            assert "hunter2" not in str(caught.value), name
        assert build(allow_plaintext=True) is not None
    assert not path.exists()
    assert isinstance(open_store("memory://"), MemoryStore)


def test_open_store_without_asyncpg_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the PostgreSQL backend cannot be imported, the error says asyncpg, not the URL."""
    monkeypatch.setitem(sys.modules, "awx_connection.stores._postgres", None)
    with pytest.raises(ConfigurationError, match="asyncpg") as caught:
        open_store("postgresql://user:hunter2@db/awx")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["mysql://user:hunter2@db/awx", "sqlite:///", "sqlite://host/x.db", "awx.db", ""]
)
def test_open_store_rejects_other_urls_without_echoing_them(url: str) -> None:
    """An unsupported URL is a ConfigurationError listing the schemes, never showing credentials."""
    with pytest.raises(ConfigurationError, match=r"memory://.*sqlite:///.*postgresql://") as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://u:hunter2@h:notaport/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@h:99999/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@h1:5432,h2:x/db", "the port of host 2 is not a number"),
        # An unencoded '@' in the password: asyncpg splits at the first one.
        ("postgresql://u:hun@ter2:pw@h/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@[::1/db", "IPv6 host's '[' is not closed"),
        ("postgresql://u:hunter2@[::1]:x/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@h1,/db", "host 2 of the host list is empty"),
        ("postgresql://u:hunter2@h/db?sslmode", "query string is malformed"),
    ],
)
def test_a_malformed_postgres_url_is_a_configuration_error_without_the_password(
    url: str, problem: str
) -> None:
    """
    open_store() and PostgresStore() refuse a URL that asyncpg would only
    refuse in open(), with a bare ValueError quoting part of it: a
    ConfigurationError naming the problem and never the password.
    """
    from awx_connection.stores import PostgresStore

    for build in (
        lambda: open_store(url, keys=KeyRing.generate()),
        lambda: PostgresStore(url, keys=KeyRing.generate()),
    ):
        with pytest.raises(ConfigurationError, match="malformed database URL") as caught:
            build()
        assert problem in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert "ter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p%40ss@db:5432/awx",
        "postgres://db/awx",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@h1,h2:5433/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://u@h:/db",
    ],
)
def test_well_formed_postgres_urls_are_accepted(url: str) -> None:
    """What asyncpg parses (encoded passwords, IPv6, host lists, sockets) still builds a store."""
    from awx_connection.stores import PostgresStore

    assert url == PostgresStore(url, keys=KeyRing.generate()).dsn


def test_stores_namespace_exports() -> None:
    """The namespace re-exports the stores and open_store; unknown names still fail."""
    assert ["MemoryStore", "PostgresStore", "SQLiteStore", "open_store"] == (
        awx_connection.stores.__all__
    )
    with pytest.raises(AttributeError, match="NoSuchStore"):
        _ = awx_connection.stores.NoSuchStore


def test_importing_the_package_imports_neither_driver() -> None:
    """
    ``import awx_connection`` loads no store driver: ``sqlite3`` and the
    SQLite store come with the first use of ``SQLiteStore``, as ``asyncpg``
    does with ``PostgresStore``.
    """
    script = (
        "import sys, awx_connection, awx_connection.stores;"
        "before = sorted(m for m in ('sqlite3', 'asyncpg', 'awx_connection.stores._sqlite')"
        " if m in sys.modules);"
        "awx_connection.stores.SQLiteStore;"
        "print(before, 'awx_connection.stores._sqlite' in sys.modules)"
    )
    assert "[] True" == _python_with_src(script)


def test_importing_stores_does_not_import_asyncpg() -> None:
    """PostgresStore is resolved lazily, so memory and SQLite users never load asyncpg."""
    script = "import sys, awx_connection.stores; print('asyncpg' in sys.modules)"
    assert "False" == _python_with_src(script)


def _python_with_src(script: str) -> str:
    """What *script* prints in a fresh interpreter importing this checkout's ``src``."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=_env_with_src(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    return result.stdout.strip()


def _env_with_src() -> dict[str, str]:
    """The environment, with this checkout's ``src`` first on PYTHONPATH."""
    src = str(Path(awx_connection.stores.__file__).parents[2])
    pythonpath = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath}


# --- SQLite only -------------------------------------------------------------------------

#: The key of the SQLite-only tests: reopened files and other processes need the same one.
KEY_BYTES = secrets.token_bytes(32)
KEYS = KeyRing([("k1", KEY_BYTES)])


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the store's file, committed and closed on exit."""
    db = sqlite3.connect(path)
    try:
        with db:
            yield db
    finally:
        db.close()


async def test_sqlite_data_survives_reopening(tmp_path: Path) -> None:
    """A new store object on the same file sees the records and events written before."""
    path = tmp_path / "awx.db"
    first = SQLiteStore(path, keys=KEYS)
    await first.open()
    record = await insert(first)
    await first.aclose()
    second = SQLiteStore(path, keys=KEYS)
    await second.open()
    try:
        assert await second.get("c1") == record
        assert await second.find_by_state_hash("hash-c1") == record
        assert await second.read_events("c1") == [make_event()]
    finally:
        await second.aclose()


async def test_sqlite_corrupt_row_raises_store_error_and_store_stays_usable(
    tmp_path: Path,
) -> None:
    """A garbage ``data`` blob fails get() with StoreError naming the id; other rows still work."""
    path = tmp_path / "awx.db"
    store = SQLiteStore(path, keys=KEYS)
    await store.open()
    try:
        await insert(store, "broken")
        healthy = await insert(store, "healthy")
        with raw(path) as db:
            db.execute("UPDATE connections SET data = ? WHERE id = 'broken'", (b"\x00garbage",))
        with pytest.raises(StoreError, match="'broken'") as caught:
            await store.get("broken")
        assert "garbage" not in str(caught.value)
        with raw(path) as db:
            db.execute("UPDATE connections SET data = '{\"id\": \"broken\"}' WHERE id = 'broken'")
        with pytest.raises(StoreError, match="'broken'"):
            await store.get("broken")
        assert await store.get("healthy") == healthy
        await store.update(next_version(healthy), expected_version=1, event=None)
        assert (await store.get("healthy") or healthy).version == 2
    finally:
        await store.aclose()


async def test_sqlite_list_connections_leaves_a_corrupt_row_out_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One undecodable row is logged as an error by id; the listing still has the rest."""
    path = tmp_path / "awx.db"
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        await insert(store, "broken", created_at=1.0)
        healthy = await insert(store, "healthy", created_at=2.0)
        with raw(path) as db:
            db.execute("UPDATE connections SET data = ? WHERE id = 'broken'", (b"\x00garbage",))
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [healthy] == await store.list_connections()
    [logged] = caplog.records
    assert ("awx_connection.stores", logging.ERROR) == (logged.name, logged.levelno)
    assert "'broken'" in logged.getMessage()
    with raw(path) as db:
        assert [(b"\x00garbage",)] == db.execute(
            "SELECT data FROM connections WHERE id = 'broken'"
        ).fetchall()


async def test_sqlite_list_summaries_leaves_a_corrupt_row_out_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row whose JSON does not decode, or is another row's, is logged by id and skipped."""
    path = tmp_path / "awx.db"
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        await insert(store, "broken", created_at=1.0)
        await insert(store, "moved", created_at=1.5)
        healthy = await insert(store, "healthy", created_at=2.0)
        with raw(path) as db:
            db.execute("UPDATE connections SET data = ? WHERE id = 'broken'", (b"\x00garbage",))
            db.execute(
                "UPDATE connections SET data = (SELECT data FROM connections WHERE id = 'healthy')"
                " WHERE id = 'moved'"
            )
        with caplog.at_level(logging.ERROR, logger="awx_connection.stores"):
            assert [ConnectionSummary.of(healthy)] == await store.list_summaries(limit=2)
    messages = [entry.getMessage() for entry in caplog.records]
    assert 2 == len(messages)
    assert "'broken'" in messages[0] and "'moved'" in messages[1]
    assert all("list_summaries left out" in message for message in messages)
    assert {logging.ERROR} == {entry.levelno for entry in caplog.records}


async def test_sqlite_schema_version_is_recorded(tmp_path: Path) -> None:
    """open() applies every migration once and records the version in awx_schema."""
    path = tmp_path / "awx.db"
    for _ in range(2):
        store = SQLiteStore(path, keys=KEYS)
        await store.open()
        try:
            assert await store.schema_version() == len(MIGRATIONS)
        finally:
            await store.aclose()
    with raw(path) as db:
        assert db.execute("SELECT version FROM awx_schema").fetchall() == [(len(MIGRATIONS),)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A file migrated by a newer library is refused rather than misread."""
    path = tmp_path / "awx.db"
    with raw(path) as db:
        db.execute("CREATE TABLE awx_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO awx_schema VALUES (?)", (len(MIGRATIONS) + 1,))
    store = SQLiteStore(path, keys=KEYS)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.aclose()


async def test_sqlite_stores_opening_a_new_file_together_migrate_once(tmp_path: Path) -> None:
    """Several stores opening the same new file at once all end up on the same schema."""
    stores = [SQLiteStore(tmp_path / "awx.db", keys=KEYS) for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert {await store.schema_version() for store in stores} == {len(MIGRATIONS)}
        record = await insert(stores[0])
        assert await stores[-1].get("c1") == record
    finally:
        for store in stores:
            await store.aclose()


async def test_sqlite_migration_2_upgrades_a_version_1_file(tmp_path: Path) -> None:
    """A file made by the first schema gains leases, event times and consumers, data intact."""
    path = tmp_path / "awx.db"
    record = make_record()
    with raw(path) as db:
        for statement in MIGRATIONS[0].split(";"):
            db.execute(statement)
        db.execute("CREATE TABLE awx_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO awx_schema VALUES (1)")
        db.execute(
            "INSERT INTO connections VALUES ('c1', 1, 'pending', 'hash-c1', 'ext-c1', NULL, "
            "1000.0, 1000.0, ?)",
            (orjson.dumps(dump_record(record, KEYS)),),
        )
        db.execute(
            "INSERT INTO events (connection_id, sequence, data) VALUES ('c1', 1, ?)",
            (orjson.dumps(dump_event(make_event())),),
        )
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        assert len(MIGRATIONS) == await store.schema_version()
        assert record == await store.get("c1")
        assert [(1, make_event())] == await store.read_outbox()
        assert await store.acquire_lease("c1", "worker-a", until=100.0, now=0.0)
        await store.commit_offset("billing", 1)
        assert 1 == await store.prune_events(before=1002.0)


async def test_sqlite_waits_see_writes_made_through_another_store_object(tmp_path: Path) -> None:
    """Waiters poll the file, so a writer with its own connection (another process) wakes them."""
    path = tmp_path / "awx.db"
    async with (
        opened(SQLiteStore(path, keys=KEYS)) as waiter,
        opened(SQLiteStore(path, keys=KEYS)) as writer,
    ):
        record = await insert(writer)
        [(last, _)] = await waiter.read_outbox()
        update_seen = asyncio.create_task(
            waiter.wait_for_update("c1", after_version=1, timeout=5.0)
        )
        event_seen = asyncio.create_task(waiter.wait_for_events(after=last, timeout=5.0))
        await asyncio.sleep(0.05)
        assert not update_seen.done()
        assert not event_seen.done()
        newer = await update(writer, record)
        assert newer == await asyncio.wait_for(update_seen, 2.0)
        assert await asyncio.wait_for(event_seen, 2.0)


async def test_sqlite_unopened_store_raises_store_error(tmp_path: Path) -> None:
    """Using a store before open() is a StoreError, not an AttributeError."""
    with pytest.raises(StoreError, match="not open"):
        await SQLiteStore(tmp_path / "awx.db", keys=KEYS).get("c1")


@pytest.mark.slow
async def test_sqlite_record_is_readable_from_another_process(tmp_path: Path) -> None:
    """A connection written here is read back by a separate Python process."""
    path = tmp_path / "awx.db"
    store = SQLiteStore(path, keys=KEYS)
    await store.open()
    try:
        record = await insert(store)
        await store.update(next_version(record, state=S.AUTHORIZED), expected_version=1, event=None)
    finally:
        await store.aclose()
    script = textwrap.dedent(
        f"""
        import asyncio
        from awx_connection import KeyRing
        from awx_connection.stores import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r}, keys=KeyRing([("k1", {KEY_BYTES!r})]))
            await store.open()
            try:
                record = await store.get("c1")
                print(record.state.value, record.version, record.tokens.refresh_token.reveal())
            finally:
                await store.aclose()

        asyncio.run(main())
        """
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        env=_env_with_src(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["authorized", "2", "refresh-1"]


@pytest.mark.slow
async def test_sqlite_wait_for_update_sees_a_write_by_another_process(tmp_path: Path) -> None:
    """A waiter here wakes with the record a separate Python process wrote meanwhile."""
    path = tmp_path / "awx.db"
    async with opened(SQLiteStore(path, keys=KEYS)) as store:
        await insert(store)
        waiting = asyncio.create_task(store.wait_for_update("c1", after_version=1, timeout=30.0))
        script = textwrap.dedent(
            f"""
            import asyncio, attrs
            from awx_connection import KeyRing
            from awx_connection.stores import SQLiteStore

            async def main():
                store = SQLiteStore({str(path)!r}, keys=KeyRing([("k1", {KEY_BYTES!r})]))
                await store.open()
                try:
                    record = await store.get("c1")
                    newer = attrs.evolve(record, version=2, reason="from the other process")
                    await store.update(newer, expected_version=1, event=None)
                finally:
                    await store.aclose()

            asyncio.run(main())
            """
        )
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script],
            env=_env_with_src(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        newer = await asyncio.wait_for(waiting, 5.0)
    assert newer is not None
    assert (2, "from the other process") == (newer.version, newer.reason)


# --- Webhook ids -----------------------------------------------------------------------


async def test_a_webhook_id_is_claimed_once_then_handled(store: Store) -> None:
    """One claim wins; others see BUSY until it is handled, then HANDLED."""
    assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="a", now=10, until=70)
    assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="b", now=11, until=71)
    # The same owner again (a retried call) holds it still.
    assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="a", now=12, until=72)
    await store.finish_webhook("e1", owner="b", at=13)  # not b's: nothing happens
    assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="b", now=14, until=74)
    await store.finish_webhook("e1", owner="a", at=15)
    for owner in ("a", "b"):
        assert WebhookClaim.HANDLED is await store.claim_webhook(
            "e1", owner=owner, now=16, until=76
        )
    await store.release_webhook("e1", owner="a")  # handled stays handled
    assert WebhookClaim.HANDLED is await store.claim_webhook("e1", owner="c", now=17, until=77)
    assert WebhookClaim.CLAIMED is await store.claim_webhook("e2", owner="c", now=17, until=77)


async def test_a_released_or_lapsed_webhook_claim_can_be_taken(store: Store) -> None:
    """Handling failed (released) or its holder died (claim ran out): a retry claims it."""
    assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="a", now=10, until=70)
    await store.release_webhook("e1", owner="b")  # not b's to release
    assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="b", now=11, until=71)
    await store.release_webhook("e1", owner="a")
    assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="b", now=12, until=72)
    assert WebhookClaim.BUSY is await store.claim_webhook("e1", owner="c", now=71, until=131)
    assert WebhookClaim.CLAIMED is await store.claim_webhook("e1", owner="c", now=72, until=132)


async def test_concurrent_claims_of_one_webhook_id_have_one_winner(store: Store) -> None:
    """Twenty claims at once, through the store's own concurrency: exactly one wins."""
    claims = await asyncio.gather(
        *(store.claim_webhook("e1", owner=f"o{n}", now=10, until=70) for n in range(20))
    )
    assert 1 == claims.count(WebhookClaim.CLAIMED)
    assert 19 == claims.count(WebhookClaim.BUSY)


async def test_webhook_ids_are_pruned_with_events(store: Store) -> None:
    """prune_events forgets webhook ids older than the cutoff, keeps newer ones."""
    for event_id, at in (("old", 100.0), ("new", 5000.0)):
        await store.claim_webhook(event_id, owner="a", now=at, until=at + 60)
        await store.finish_webhook(event_id, owner="a", at=at)
    await store.prune_events(before=1000.0)
    assert WebhookClaim.CLAIMED is await store.claim_webhook("old", owner="b", now=6000, until=1)
    assert WebhookClaim.HANDLED is await store.claim_webhook("new", owner="b", now=6000, until=1)
