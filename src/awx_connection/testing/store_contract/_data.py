"""
The records, events and small steps the contract cases are written with.

Public through :mod:`awx_connection.testing.store_contract`, so that a
store's own extra cases (a file reopened, a row corrupted by hand) build
their data the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import attrs

from ..._crypto import KeyRing
from ..._events import ConnectionEvent
from ..._records import ConnectionRecord, PendingAuthorization, RotationJournal
from ..._secrets import Secret
from ..._states import ConnectionState, Trigger
from ..._store import Store
from ..._tokens import TokenSet

__all__ = [
    "S",
    "StoreFactory",
    "insert_page_fixture",
    "insert_record",
    "make_event",
    "make_record",
    "next_version",
    "opened",
    "update_record",
    "walk",
]

S = ConnectionState


#: Builds an unopened store with the given keys (``None``: a store that
#: accepts plaintext); every store one factory builds reaches the same data
#: (file, schema), so a case can write with one key ring and read with another.
StoreFactory = Callable[[KeyRing | None], Store]
StoreT = TypeVar("StoreT", bound=Store)


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


async def insert_record(
    store: Store, connection_id: str = "c1", **changes: Any
) -> ConnectionRecord:
    """Insert ``make_record(connection_id, **changes)`` and its first event; the record."""
    record = make_record(connection_id, **changes)
    await store.insert(record, make_event(connection_id))
    return record


async def update_record(
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


async def insert_page_fixture(store: Store) -> list[str]:
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
        await insert_record(store, connection_id, created_at=created_at)
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
