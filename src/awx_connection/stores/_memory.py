"""
The in-memory store: the storage contract with nothing in the way.

For tests, examples and single-process tools that may lose every connection
on exit. Records are immutable, so the store keeps the objects themselves.
No method awaits anything, so each call runs to completion before another
coroutine can touch the store: compare-and-swap needs no lock, and a record
and its event are written together or not at all because every check is made
before the first write.

It rejects what :class:`~awx_connection.stores.SQLiteStore`'s constraints
reject (a duplicate id, a ``state`` hash held by another connection, a
repeated event sequence), so code tested against it behaves the same on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import attrs

from .._errors import StoreError, VersionConflictError

if TYPE_CHECKING:
    from collections.abc import Collection

    from .._events import ConnectionEvent
    from .._records import ConnectionRecord
    from .._states import ConnectionState

__all__ = ["MemoryStore"]


@final
@attrs.define(eq=False)
class MemoryStore:
    """A :class:`~awx_connection.Store` in dicts; nothing survives the process."""

    _records: dict[str, ConnectionRecord] = attrs.field(factory=dict, init=False)
    #: ``state`` hash -> id of the connection whose pending authorization has it.
    _by_state_hash: dict[str, str] = attrs.field(factory=dict, init=False)
    #: Per connection, events keyed by sequence (insertion-ordered, O(1) duplicate check).
    _events: dict[str, dict[int, ConnectionEvent]] = attrs.field(factory=dict, init=False)

    async def open(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to release; the data stays readable."""

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        """The latest record of *connection_id*, or ``None``."""
        return self._records.get(connection_id)

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        """The connection whose pending authorization has this ``state`` hash."""
        connection_id = self._by_state_hash.get(state_hash)
        return None if connection_id is None else self._records[connection_id]

    async def list_connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
    ) -> list[ConnectionRecord]:
        """Every record matching all the given filters, oldest first."""
        wanted = None if states is None else frozenset(states)
        return sorted(
            (
                record
                for record in self._records.values()
                if (wanted is None or record.state in wanted)
                and (external_id is None or record.external_id == external_id)
                and (account_id is None or record.account_id == account_id)
            ),
            key=lambda record: (record.created_at, record.id),
        )

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        """
        Store a new connection and its first event.

        Raises:
            StoreError: The id exists already, or its ``state`` hash is taken.
            ValueError: The event belongs to another connection.
        """
        _check_event(record, event)
        if record.id in self._records:
            msg = f"memory store: insert of connection {record.id!r} failed: the id exists"
            raise StoreError(msg)
        self._check_state_hash("insert", record)
        self._records[record.id] = record
        self._index(None, record)
        self._events[record.id] = {event.sequence: event}

    async def update(
        self, record: ConnectionRecord, *, expected_version: int, event: ConnectionEvent | None
    ) -> None:
        """
        Replace the record if the stored version is *expected_version*.

        Raises:
            VersionConflictError: The stored version differs (or the record is gone).
            StoreError: The ``state`` hash or the event sequence is taken.
            ValueError: ``record.version`` is not ``expected_version + 1``, or
                the event belongs to another connection (a caller bug,
                checked before the store is looked at).
        """
        _check_version(record, expected_version)
        if event is not None:
            _check_event(record, event)
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
            events[event.sequence] = event

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        """The stored events of *connection_id* with ``sequence > after``, in order."""
        events = self._events.get(connection_id, {})
        return [events[seq] for seq in sorted(events) if seq > after]

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


def _check_version(record: ConnectionRecord, expected_version: int) -> None:
    if record.version != expected_version + 1:
        msg = (
            f"connection {record.id!r}: the new record's version must be "
            f"{expected_version + 1}, not {record.version}"
        )
        raise ValueError(msg)


def _check_event(record: ConnectionRecord, event: ConnectionEvent) -> None:
    if event.connection_id != record.id:
        msg = f"connection {record.id!r}: the event belongs to {event.connection_id!r}"
        raise ValueError(msg)
