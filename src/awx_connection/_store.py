"""
The storage contract.

A :class:`Store` keeps connection records and their events. The manager
relies on three promises, which the contract test-suite
(``tests/test_store_contract.py``) checks for every implementation:

1. **Compare-and-swap.** :meth:`Store.update` writes only if the stored
   version is ``expected_version``, and the new record's version is exactly
   one more; otherwise it raises :class:`~awx_connection.VersionConflictError`
   and writes nothing. A stale writer can never overwrite newer tokens.
2. **A state change and its event go together.** :meth:`Store.insert` and
   :meth:`Store.update` write the record and its event atomically (one
   transaction), so the event log never disagrees with the state.
3. **Lookups by ``state`` hash** find a pending authorization in any process.

Leases for cross-process single-flight, encryption at rest and the durable
consumer offsets build on this contract (see the durable-stores issue).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from ._events import ConnectionEvent
from ._records import ConnectionRecord
from ._states import ConnectionState

__all__ = ["Store"]


class Store(Protocol):
    """**Protocol:** where connections and their events live."""

    async def open(self) -> None:
        """Connect and create or upgrade the schema. Idempotent."""
        ...

    async def aclose(self) -> None:
        """Release connections and files. Idempotent."""
        ...

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        """The latest record of *connection_id*, or ``None``."""
        ...

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        """The connection whose pending authorization has this ``state`` hash."""
        ...

    async def list_connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
    ) -> list[ConnectionRecord]:
        """Every record matching all the given filters, oldest first."""
        ...

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        """
        Store a new connection (``version`` 1) and its first event.

        Raises:
            StoreError: The id exists already.
        """
        ...

    async def update(
        self, record: ConnectionRecord, *, expected_version: int, event: ConnectionEvent | None
    ) -> None:
        """
        Replace the record if the stored version is *expected_version*.

        ``record.version`` must be ``expected_version + 1``. The event, if
        any, is appended in the same transaction.

        Raises:
            VersionConflictError: The stored version differs (or the record is gone).
        """
        ...

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        """The stored events of *connection_id* with ``sequence > after``, in order."""
        ...
