"""
The in-memory store: the storage contract with nothing in the way.

For tests, examples and single-process tools that may lose every connection
on exit. Records are immutable, so the store keeps the objects themselves.
No method that writes awaits anything, so each write runs to completion
before another coroutine can touch the store: compare-and-swap and leases
need no lock, and a record and its event are written together or not at all
because every check is made before the first write.

It rejects what :class:`~awx_connection.stores.SQLiteStore`'s constraints
reject (a duplicate id, a ``state`` hash held by another connection, a
repeated event sequence), so code tested against it behaves the same on disk.

Waiting (:meth:`MemoryStore.wait_for_update`, :meth:`MemoryStore.wait_for_events`)
needs no polling: every write happens in this process, so each one wakes the
waiters directly. Waiters are plain futures created on the waiting
coroutine's own loop, so a store built outside any loop (a module global, a
fixture) works in whichever loop uses it.

Secrets stay plaintext: the records never leave the process, so there is
nothing at rest to encrypt and :meth:`MemoryStore.rotate_keys` has no work.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
from typing import TYPE_CHECKING, final

import attrs

from .._delivery import DeadLetter
from .._errors import StoreError, VersionConflictError
from .._records import ConnectionSummary
from .._store import Store
from .._webhooks import WebhookClaim
from ._common import (
    check_event,
    check_filters,
    check_limit,
    check_record,
    check_text,
    check_version,
    wait_until,
    wake,
)

if TYPE_CHECKING:
    from collections.abc import Collection

    from .._events import ConnectionEvent
    from .._records import ConnectionRecord
    from .._states import ConnectionState

__all__ = ["MemoryStore"]


@final
@attrs.define(eq=False)
class MemoryStore(Store):
    """
    A :class:`~awx_connection.Store` in dicts; nothing survives the process.

    Every method keeps the promises of the :class:`~awx_connection.Store`
    protocol, whose docstrings it inherits. It has no schema
    (:meth:`schema_version` is 0) and encrypts nothing (:meth:`rotate_keys`
    is 0).
    """

    _records: dict[str, ConnectionRecord] = attrs.field(factory=dict, init=False)
    #: ``state`` hash -> id of the connection whose pending authorization has it.
    _by_state_hash: dict[str, str] = attrs.field(factory=dict, init=False)
    #: Per connection, events keyed by sequence (insertion-ordered, O(1) duplicate check).
    _events: dict[str, dict[int, ConnectionEvent]] = attrs.field(factory=dict, init=False)
    #: Connection id -> (owner, until) of its lease.
    _leases: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False)
    #: Every stored event with its global position, in commit (= position) order.
    _outbox: list[tuple[int, ConnectionEvent]] = attrs.field(factory=list, init=False)
    #: The last position handed out; positions are never reused, even after pruning.
    _position: int = attrs.field(default=0, init=False)
    #: Consumer name -> committed position.
    _offsets: dict[str, int] = attrs.field(factory=dict, init=False)
    #: Handled webhook ids and when they were handled.
    #: Webhook ids: ``(at, claimed_by, claimed_until)``; no claim once handled.
    _webhooks: dict[str, tuple[float, str | None, float | None]] = attrs.field(
        factory=dict, init=False
    )
    #: ``(relay, name)`` -> ``(owner, until)`` of a relay lease.
    _relay_leases: dict[tuple[str, str], tuple[str, float]] = attrs.field(factory=dict, init=False)
    #: ``(relay, position)`` -> dead letter.
    _dead_letters: dict[tuple[str, int], DeadLetter] = attrs.field(factory=dict, init=False)
    #: Futures of the coroutines in wait_for_*; every write resolves them all.
    _waiters: set[asyncio.Future[None]] = attrs.field(factory=set, init=False)

    async def open(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to release; the data stays readable."""

    async def schema_version(self) -> int:
        """0: nothing to migrate."""
        return 0

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        check_text("connection_id", connection_id)
        return self._records.get(connection_id)

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        check_text("state_hash", state_hash)
        connection_id = self._by_state_hash.get(state_hash)
        return None if connection_id is None else self._records[connection_id]

    async def list_connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[ConnectionRecord]:
        check_filters(external_id=external_id, account_id=account_id)
        if limit is not None:
            check_limit(limit)
        wanted = None if states is None else frozenset(states)
        matching = (
            record
            for record in self._records.values()
            if (wanted is None or record.state in wanted)
            and (external_id is None or record.external_id == external_id)
            and (account_id is None or record.account_id == account_id)
            and (after is None or (record.created_at, record.id) > after)
        )
        if limit is None:
            return sorted(matching, key=_key)
        # A page of a large store: no need to sort every record for each one.
        return heapq.nsmallest(limit, matching, key=_key)

    async def list_summaries(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[ConnectionSummary]:
        records = await self.list_connections(states=states, after=after, limit=limit)
        return [ConnectionSummary.of(record) for record in records]

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        # Text a durable store could not hold is refused here all the same,
        # so code tested in memory fails as it would on disk.
        check_event(record, event)
        check_record(record)
        if record.id in self._records:
            msg = f"memory store: insert of connection {record.id!r} failed: the id exists"
            raise StoreError(msg)
        self._check_state_hash("insert", record)
        self._records[record.id] = record
        self._index(None, record)
        self._events[record.id] = {}
        self._append(event)
        wake(self._waiters)

    async def update(
        self,
        record: ConnectionRecord,
        *,
        expected_version: int,
        event: ConnectionEvent | None,
        release_lease: str | None = None,
    ) -> None:
        check_version(record, expected_version)
        if event is not None:
            check_event(record, event)
        check_record(record)
        current = self._records.get(record.id)
        if current is None or current.version != expected_version:
            actual = None if current is None else current.version
            raise VersionConflictError(record.id, expected_version, actual)
        self._check_state_hash("update", record)
        events = self._events[record.id]
        if event is not None and event.sequence in events:
            msg = (
                f"memory store: update of connection {record.id!r} failed: "
                f"event sequence {event.sequence} exists"
            )
            raise StoreError(msg)
        self._records[record.id] = record
        self._index(current, record)
        if event is not None:
            self._append(event)
        if release_lease is not None:
            self._release(record.id, release_lease)
        wake(self._waiters)

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        check_text("connection_id", connection_id)
        events = self._events.get(connection_id, {})
        return [events[seq] for seq in sorted(events) if seq > after]

    async def acquire_lease(
        self, connection_id: str, owner: str, *, until: float, now: float
    ) -> ConnectionRecord | None:
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        record = self._records.get(connection_id)
        if record is None:
            return None
        held = self._leases.get(connection_id)
        if held is not None and held[0] != owner and held[1] > now:
            return None
        self._leases[connection_id] = (owner, until)
        return record

    async def release_lease(self, connection_id: str, owner: str) -> None:
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        self._release(connection_id, owner)

    def _release(self, connection_id: str, owner: str) -> None:
        held = self._leases.get(connection_id)
        if held is not None and held[0] == owner:
            del self._leases[connection_id]

    async def wait_for_update(
        self,
        connection_id: str,
        *,
        after_version: int,
        timeout: float,  # noqa: ASYNC109
    ) -> ConnectionRecord | None:
        check_text("connection_id", connection_id)

        async def newer() -> ConnectionRecord | None:
            record = self._records.get(connection_id)
            return record if record is not None and record.version > after_version else None

        return await wait_until(newer, timeout, self._waiters)

    async def read_outbox(
        self, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConnectionEvent]]:
        check_limit(limit)
        start = bisect.bisect_right(self._outbox, after, key=lambda item: item[0])
        return self._outbox[start : start + limit]

    async def wait_for_events(self, *, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        async def exists() -> bool | None:
            return True if self._outbox and self._outbox[-1][0] > after else None

        return await wait_until(exists, timeout, self._waiters) is not None

    async def get_offset(self, consumer: str) -> int:
        check_text("consumer", consumer)
        return self._offsets.get(consumer, 0)

    async def commit_offset(self, consumer: str, position: int) -> None:
        check_text("consumer", consumer)
        self._offsets[consumer] = max(self._offsets.get(consumer, 0), position)

    async def prune_events(self, *, before: float) -> int:
        self._webhooks = {k: v for k, v in self._webhooks.items() if v[0] >= before}
        pruned = [event for _, event in self._outbox if event.at < before]
        if pruned:
            self._outbox = [item for item in self._outbox if item[1].at >= before]
            for event in pruned:
                del self._events[event.connection_id][event.sequence]
        return len(pruned)

    async def claim_webhook(
        self, event_id: str, *, owner: str, now: float, until: float
    ) -> WebhookClaim:
        check_text("event_id", event_id)
        check_text("owner", owner)
        held = self._webhooks.get(event_id)
        if held is not None:
            _, claimed_by, claimed_until = held
            if claimed_until is None:
                return WebhookClaim.HANDLED
            if claimed_by != owner and claimed_until > now:
                return WebhookClaim.BUSY
        self._webhooks[event_id] = (now, owner, until)
        return WebhookClaim.CLAIMED

    async def finish_webhook(self, event_id: str, *, owner: str, at: float) -> None:
        check_text("event_id", event_id)
        check_text("owner", owner)
        held = self._webhooks.get(event_id)
        if held is not None and held[1] == owner:
            self._webhooks[event_id] = (at, None, None)

    async def release_webhook(self, event_id: str, *, owner: str) -> None:
        check_text("event_id", event_id)
        check_text("owner", owner)
        held = self._webhooks.get(event_id)
        if held is not None and held[1] == owner and held[2] is not None:
            del self._webhooks[event_id]

    async def acquire_relay_lease(
        self, relay: str, name: str, owner: str, *, until: float, now: float
    ) -> bool:
        check_text("relay", relay)
        check_text("name", name)
        check_text("owner", owner)
        held = self._relay_leases.get((relay, name))
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._relay_leases[relay, name] = (owner, until)
        return True

    async def release_relay_lease(self, relay: str, name: str, owner: str) -> None:
        check_text("relay", relay)
        check_text("name", name)
        check_text("owner", owner)
        held = self._relay_leases.get((relay, name))
        if held is not None and held[0] == owner:
            del self._relay_leases[relay, name]

    async def relay_leases(self, relay: str, *, now: float) -> list[tuple[str, str]]:
        check_text("relay", relay)
        return sorted(
            (name, owner)
            for (held_by, name), (owner, until) in self._relay_leases.items()
            if held_by == relay and until > now
        )

    async def put_dead_letter(self, letter: DeadLetter) -> None:
        check_text("relay", letter.relay)
        check_text("error", letter.error)
        check_text("connection_id", letter.event.connection_id)
        check_text("reason", letter.event.reason)
        self._dead_letters[letter.relay, letter.position] = letter

    async def dead_letters(
        self, relay: str, *, after: int = 0, limit: int = 1000
    ) -> list[DeadLetter]:
        check_text("relay", relay)
        check_limit(limit)
        letters = sorted(
            (
                letter
                for (held_by, position), letter in self._dead_letters.items()
                if held_by == relay and position > after
            ),
            key=lambda letter: letter.position,
        )
        return letters[:limit]

    async def delete_dead_letter(self, relay: str, position: int) -> bool:
        check_text("relay", relay)
        return self._dead_letters.pop((relay, position), None) is not None

    async def rotate_keys(self, *, seal_plaintext: bool = False) -> int:
        """0, whatever *seal_plaintext*: nothing is encrypted in memory (nor needs to be)."""
        return 0

    def _append(self, event: ConnectionEvent) -> None:
        self._position += 1
        self._outbox.append((self._position, event))
        self._events[event.connection_id][event.sequence] = event

    def _check_state_hash(self, operation: str, record: ConnectionRecord) -> None:
        state_hash = _state_hash(record)
        owner = None if state_hash is None else self._by_state_hash.get(state_hash)
        if owner is not None and owner != record.id:
            msg = (
                f"memory store: {operation} of connection {record.id!r} failed: "
                "its state hash belongs to another connection"
            )
            raise StoreError(msg)

    def _index(self, old: ConnectionRecord | None, new: ConnectionRecord) -> None:
        old_hash = None if old is None else _state_hash(old)
        if old_hash is not None:
            del self._by_state_hash[old_hash]
        new_hash = _state_hash(new)
        if new_hash is not None:
            self._by_state_hash[new_hash] = new.id


def _state_hash(record: ConnectionRecord) -> str | None:
    """The hash :meth:`MemoryStore.find_by_state_hash` finds *record* by, if any."""
    auth = record.authorization
    return None if auth is None else auth.state_hash


def _key(record: ConnectionRecord) -> tuple[float, str]:
    """The order of :meth:`MemoryStore.list_connections`, and its paging key."""
    return (record.created_at, record.id)
