"""
The public methods of the SQL stores, written once.

:class:`~awx_connection.stores.SQLiteStore` and
:class:`~awx_connection.stores.PostgresStore` differ in their dialect,
driver, transactions, retries and ways of waiting, not in what their public
methods check, which statement each one runs, or how a row becomes a record.
That part is :class:`SQLStore`: every public method's argument checks (the
shared checks of :mod:`._common`), its statement, and the decoding of its
rows. Its docstrings are the :class:`~awx_connection.Store` protocol's,
inherited (``help()`` shows them), since it subclasses the protocol
explicitly; what a store does its own way is said in that store's module.

What a store supplies: its :class:`Statements` (the same names and
parameters in its dialect), its ``keys``, and the primitives below: three
generic ones (:meth:`SQLStore._one`, :meth:`SQLStore._all`,
:meth:`SQLStore._execute`) and one per operation that is written
differently for each database (a listing's SQL, a transaction, a wait).

**No extra hop on the hot calls.** ``get``, ``update``, ``acquire_lease``
and ``list_summaries`` run on every refresh. The generic primitives are
plain functions that *return* the awaitable of the store's one database
trip rather than coroutines of their own, so a public method here awaits
the database directly: ``get`` has one coroutine frame fewer than when each
store wrote it out. No driver is imported here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable
from typing import Any, ClassVar, Literal, TypeVar

import orjson

from .._crypto import KeyRing
from .._delivery import DeadLetter
from .._events import ConnectionEvent
from .._records import ConnectionRecord, ConnectionSummary, dump_event
from .._states import ConnectionState
from .._store import Store
from .._webhooks import WebhookClaim
from ._common import (
    StoredRow,
    check_event,
    check_filters,
    check_limit,
    check_record,
    check_text,
    check_version,
    load_listed,
    load_stored_event,
    load_stored_record,
    load_summaries,
    rotate_keys,
)

__all__ = ["SQLStore", "Statements"]

_T = TypeVar("_T")

#: A table :meth:`SQLStore._prune` deletes old rows from.
PrunedTable = Literal["events", "webhooks"]


class Statements:
    """
    The statements :class:`SQLStore` runs, in one store's dialect.

    Each takes its parameters in the order given and returns the columns
    named, in that order (rows are read by position).
    """

    __slots__ = (
        "acquire_lease",
        "acquire_relay_lease",
        "commit_offset",
        "dead_letters",
        "delete_dead_letter",
        "find",
        "finish_webhook",
        "get",
        "get_offset",
        "put_dead_letter",
        "read_events",
        "read_outbox",
        "relay_leases",
        "release_lease",
        "release_relay_lease",
        "release_webhook",
        "rotate_row",
    )

    #: ``(id)`` -> ``id, data``.
    get: str
    #: ``(state_hash)`` -> ``id, data``.
    find: str
    #: ``(connection_id, after)`` -> ``data``, by sequence.
    read_events: str
    #: ``(after, limit)`` -> ``position, connection_id, data``, by position.
    read_outbox: str
    #: ``(id, owner, until, now)``, granting -> ``id, data``; no row when refused.
    acquire_lease: str
    #: ``(id, owner)``.
    release_lease: str
    #: ``(consumer)`` -> ``position``.
    get_offset: str
    #: ``(consumer, position)``, never moving back.
    commit_offset: str
    #: ``(event_id, owner, at)``.
    finish_webhook: str
    #: ``(event_id, owner)``.
    release_webhook: str
    #: ``(id)`` -> ``version, data``.
    rotate_row: str
    #: ``(relay, name, owner, until, now)``, granting -> one row; no row when refused.
    acquire_relay_lease: str
    #: ``(relay, name, owner)``.
    release_relay_lease: str
    #: ``(relay, now)`` -> ``name, owner``, by name.
    relay_leases: str
    #: ``(relay, position, connection_id, attempts, error, at, data)``, an upsert.
    put_dead_letter: str
    #: ``(relay, after, limit)`` -> ``position, connection_id, attempts, error, at, data``.
    dead_letters: str
    #: ``(relay, position)`` -> one row if there was one.
    delete_dead_letter: str


class SQLStore(Store):
    """
    A :class:`~awx_connection.Store` on an SQL database, but for the
    database-specific primitives its subclass supplies.
    """

    __slots__ = ()

    #: The store's name in messages and log lines (``"sqlite"``, ``"postgres"``).
    _name: ClassVar[str]
    #: Whether rotate_keys decrypts rows already sealed with the primary key
    #: (and reports those that do not open) rather than skipping them unread.
    _decrypt_sealed: ClassVar[bool]

    @property
    @abstractmethod
    def keys(self) -> KeyRing | None:
        """The key ring secrets are sealed with, or ``None`` (plaintext, by ``allow_plaintext``)."""

    @property
    @abstractmethod
    def _sql(self) -> Statements:
        """The store's statements."""

    # --- records ----------------------------------------------------------------------------

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        check_text("connection_id", connection_id)
        row = await self._one(
            f"get of connection {connection_id!r}", self._sql.get, (connection_id,)
        )
        return None if row is None else load_stored_record(row[0], row[1], self.keys)

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        check_text("state_hash", state_hash)
        row = await self._one("find_by_state_hash", self._sql.find, (state_hash,))
        return None if row is None else load_stored_record(row[0], row[1], self.keys)

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
        if states is not None and not states:
            return []
        keys = self.keys
        return await self._list(
            "list_connections",
            lambda rows: load_listed(self._name, rows, keys),
            states=states,
            external_id=external_id,
            account_id=account_id,
            after=after,
            limit=limit,
        )

    async def list_summaries(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[ConnectionSummary]:
        if limit is not None:
            check_limit(limit)
        if states is not None and not states:
            return []
        return await self._list(
            "list_summaries",
            lambda rows: load_summaries(self._name, rows),
            states=states,
            external_id=None,
            account_id=None,
            after=after,
            limit=limit,
        )

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        check_event(record, event)
        check_record(record)
        await self._insert(record, event)

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
        await self._update(record, expected_version, event, release_lease)

    async def wait_for_update(
        self,
        connection_id: str,
        *,
        after_version: int,
        timeout: float,  # noqa: ASYNC109 - the Store protocol's signature
    ) -> ConnectionRecord | None:
        check_text("connection_id", connection_id)
        return await self._wait_for_update(connection_id, after_version, timeout)

    # --- leases -----------------------------------------------------------------------------

    async def acquire_lease(
        self, connection_id: str, owner: str, *, until: float, now: float
    ) -> ConnectionRecord | None:
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        row = await self._one(
            f"acquire_lease of connection {connection_id!r}",
            self._sql.acquire_lease,
            (connection_id, owner, until, now),
            write=True,
        )
        return None if row is None else load_stored_record(row[0], row[1], self.keys)

    async def release_lease(self, connection_id: str, owner: str) -> None:
        check_text("connection_id", connection_id)
        check_text("owner", owner)
        await self._execute(
            f"release_lease of connection {connection_id!r}",
            self._sql.release_lease,
            (connection_id, owner),
        )

    # --- events, outbox and offsets ---------------------------------------------------------

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        check_text("connection_id", connection_id)
        rows = await self._all(
            f"read_events of connection {connection_id!r}",
            self._sql.read_events,
            (connection_id, after),
        )
        return [load_stored_event(connection_id, row[0]) for row in rows]

    async def read_outbox(
        self, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConnectionEvent]]:
        check_limit(limit)
        rows = await self._all("read_outbox", self._sql.read_outbox, (after, limit))
        return [(row[0], load_stored_event(row[1], row[2])) for row in rows]

    async def get_offset(self, consumer: str) -> int:
        check_text("consumer", consumer)
        row = await self._one(
            f"get_offset of consumer {consumer!r}", self._sql.get_offset, (consumer,)
        )
        return 0 if row is None else int(row[0])

    async def commit_offset(self, consumer: str, position: int) -> None:
        check_text("consumer", consumer)
        await self._execute(
            f"commit_offset of consumer {consumer!r}", self._sql.commit_offset, (consumer, position)
        )

    async def prune_events(self, *, before: float) -> int:
        # Webhook ids older than the retention go too: Airwallex stops
        # retrying a delivery after about three days.
        await self._prune("webhooks", before)
        return await self._prune("events", before)

    # --- webhooks ---------------------------------------------------------------------------

    async def claim_webhook(
        self, event_id: str, *, owner: str, now: float, until: float
    ) -> WebhookClaim:
        check_text("event_id", event_id)
        check_text("owner", owner)
        return await self._claim_webhook(event_id, owner, now, until)

    async def finish_webhook(self, event_id: str, *, owner: str, at: float) -> None:
        check_text("event_id", event_id)
        check_text("owner", owner)
        await self._execute("finish_webhook", self._sql.finish_webhook, (event_id, owner, at))

    async def release_webhook(self, event_id: str, *, owner: str) -> None:
        check_text("event_id", event_id)
        check_text("owner", owner)
        await self._execute("release_webhook", self._sql.release_webhook, (event_id, owner))

    # --- relays -----------------------------------------------------------------------------

    async def acquire_relay_lease(
        self, relay: str, name: str, owner: str, *, until: float, now: float
    ) -> bool:
        check_text("relay", relay)
        check_text("name", name)
        check_text("owner", owner)
        row = await self._one(
            f"acquire_relay_lease {name!r} of relay {relay!r}",
            self._sql.acquire_relay_lease,
            (relay, name, owner, until, now),
            write=True,
        )
        return row is not None

    async def release_relay_lease(self, relay: str, name: str, owner: str) -> None:
        check_text("relay", relay)
        check_text("name", name)
        check_text("owner", owner)
        await self._execute(
            f"release_relay_lease {name!r} of relay {relay!r}",
            self._sql.release_relay_lease,
            (relay, name, owner),
        )

    async def relay_leases(self, relay: str, *, now: float) -> list[tuple[str, str]]:
        check_text("relay", relay)
        rows = await self._all(
            f"relay_leases of relay {relay!r}", self._sql.relay_leases, (relay, now)
        )
        return [(row[0], row[1]) for row in rows]

    async def put_dead_letter(self, letter: DeadLetter) -> None:
        check_text("relay", letter.relay)
        check_text("error", letter.error)
        event = letter.event
        check_text("connection_id", event.connection_id)
        check_text("reason", event.reason)
        await self._execute(
            f"put_dead_letter {letter.position} of relay {letter.relay!r}",
            self._sql.put_dead_letter,
            (
                letter.relay,
                letter.position,
                event.connection_id,
                letter.attempts,
                letter.error,
                letter.at,
                orjson.dumps(dump_event(event)).decode(),
            ),
        )

    async def dead_letters(
        self, relay: str, *, after: int = 0, limit: int = 1000
    ) -> list[DeadLetter]:
        check_text("relay", relay)
        check_limit(limit)
        rows = await self._all(
            f"dead_letters of relay {relay!r}", self._sql.dead_letters, (relay, after, limit)
        )
        return [
            DeadLetter(
                relay=relay,
                position=int(row[0]),
                event=load_stored_event(row[1], row[5]),
                attempts=int(row[2]),
                error=row[3],
                at=float(row[4]),
            )
            for row in rows
        ]

    async def delete_dead_letter(self, relay: str, position: int) -> bool:
        check_text("relay", relay)
        row = await self._one(
            f"delete_dead_letter {position} of relay {relay!r}",
            self._sql.delete_dead_letter,
            (relay, position),
            write=True,
        )
        return row is not None

    # --- keys -------------------------------------------------------------------------------

    async def rotate_keys(self, *, seal_plaintext: bool = False) -> int:
        return await rotate_keys(
            self._name,
            self.keys,
            rows=self._rotation_rows,
            write=self._reseal,
            reread=self._reread,
            seal_plaintext=seal_plaintext,
            decrypt_sealed=self._decrypt_sealed,
        )

    async def _reread(self, connection_id: str) -> tuple[int, object] | None:
        """The row's current ``(version, data)``, or ``None`` if it is gone (rotate_keys)."""
        row = await self._one(
            f"rotate_keys of connection {connection_id!r}", self._sql.rotate_row, (connection_id,)
        )
        return None if row is None else (row[0], row[1])

    # --- the primitives each store supplies -------------------------------------------------

    @abstractmethod
    def _one(
        self, action: str, sql: str, args: tuple[Any, ...], *, write: bool = False
    ) -> Awaitable[Any]:
        """
        The first row *sql* returns (``None`` if none), as one operation of
        the store named *action* in errors; *write*: the statement writes
        (it must be idempotent: a network store may retry it).
        """

    @abstractmethod
    def _all(self, action: str, sql: str, args: tuple[Any, ...]) -> Awaitable[list[Any]]:
        """Every row the query *sql* returns (as :meth:`_one` runs it)."""

    @abstractmethod
    def _execute(self, action: str, sql: str, args: tuple[Any, ...]) -> Awaitable[object]:
        """Run the idempotent write *sql* (as :meth:`_one` runs it with ``write=True``)."""

    @abstractmethod
    def _list(
        self,
        method: str,
        load: Callable[[Iterable[tuple[str, object]]], list[_T]],
        *,
        states: Collection[ConnectionState] | None,
        external_id: str | None,
        account_id: str | None,
        after: tuple[float, str] | None,
        limit: int | None,
    ) -> Awaitable[list[_T]]:
        """
        The rows matching the (checked, non-empty) filters, oldest first, as
        *load* makes them: ``load_page`` of :mod:`._common` over the store's
        keyset query.
        """

    @abstractmethod
    def _insert(self, record: ConnectionRecord, event: ConnectionEvent) -> Awaitable[None]:
        """Write the (checked) new *record* and its *event* in one transaction."""

    @abstractmethod
    def _update(
        self,
        record: ConnectionRecord,
        expected_version: int,
        event: ConnectionEvent | None,
        release_lease: str | None,
    ) -> Awaitable[None]:
        """The compare-and-swap of the (checked) *record*, its event and the lease, together."""

    @abstractmethod
    def _wait_for_update(
        self, connection_id: str, after_version: int, timeout: float
    ) -> Awaitable[ConnectionRecord | None]:
        """``wait_for_update`` of a checked *connection_id*: the store's poll or LISTEN."""

    @abstractmethod
    def _claim_webhook(
        self, event_id: str, owner: str, now: float, until: float
    ) -> Awaitable[WebhookClaim]:
        """``claim_webhook`` of checked arguments: the upsert, and what it found if it lost."""

    @abstractmethod
    def _prune(self, table: PrunedTable, before: float) -> Awaitable[int]:
        """Delete *table*'s rows with ``at < before`` in bounded batches; how many went."""

    @abstractmethod
    def _rotation_rows(self) -> AsyncGenerator[StoredRow, None]:
        """Every connection row as ``(id, version, data)``, a page at a time (rotate_keys)."""

    @abstractmethod
    def _reseal(self, connection_id: str, version: int, sealed: bytes) -> Awaitable[bool]:
        """Replace the row's data with *sealed* if its version is still *version*; whether so."""
