"""
The storage contract.

A :class:`Store` keeps connection records and their events. The manager
relies on these promises, which the contract test-suite
(``tests/test_store_contract.py``) checks for every implementation:

1. **Compare-and-swap.** :meth:`Store.update` writes only if the stored
   version is ``expected_version``, and the new record's version is exactly
   one more; otherwise it raises :class:`~awx_connection.VersionConflictError`
   and writes nothing. A stale writer can never overwrite newer tokens.
2. **A state change and its event go together.** :meth:`Store.insert` and
   :meth:`Store.update` write the record and its event atomically (one
   transaction), so the event log never disagrees with the state.
3. **Lookups by ``state`` hash** find a pending authorization in any process.
4. **Leases.** :meth:`Store.acquire_lease` grants one owner at a time the
   right to rotate a connection's tokens, until a deadline on the injected
   clock; an expired lease can be taken over. The lease keeps two processes
   from sending the same refresh token; the compare-and-swap keeps a
   process that lost its lease (paused, partitioned) from overwriting newer
   tokens. Neither alone is enough.
5. **The outbox.** Events get a global ``position`` in commit order;
   :meth:`Store.read_outbox` returns them in that order, and named
   consumers keep a durable offset (:meth:`Store.commit_offset`), which
   gives at-least-once delivery in per-connection order across restarts.
6. **Secrets at rest.** Durable stores take a
   :class:`~awx_connection.KeyRing` and write every secret as an
   AES-256-GCM envelope; :meth:`Store.rotate_keys` re-encrypts every row to
   the newest key. A row that does not decrypt raises
   :class:`~awx_connection.DecryptionError` naming the connection, and so,
   with keys, does a secret stored in plaintext: it is tampering until
   ``rotate_keys(seal_plaintext=True)`` is told otherwise.
7. **Webhook ids.** A delivery claims its event id atomically before it
   acts, and marks it handled after (or releases the claim if handling
   failed), so Airwallex's at-least-once deliveries, concurrent ones
   included, are acted on once, in any replica.
8. **Bad text is one typed error.** Every text argument (ids, owners,
   consumer names, filters) and every text field of a record or event
   written must be a ``str`` that encodes as UTF-8; otherwise the store
   raises :class:`~awx_connection.InvalidArgumentError` before touching its
   data, whatever its database would have done with it (the built-in
   stores share the checks of ``awx_connection.stores._common``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from ._events import ConnectionEvent
from ._records import ConnectionRecord, ConnectionSummary
from ._states import ConnectionState
from ._webhooks import WebhookClaim

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
        """
        The latest record of *connection_id*, or ``None``.

        Raises:
            InvalidArgumentError: *connection_id* is not a string or not
                valid text (every store checks it, with the shared checks of
                ``awx_connection.stores._common``).
        """
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
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[ConnectionRecord]:
        """
        Every record matching all the given filters, oldest first.

        "Oldest first" is the key ``(created_at, id)``, which is also what
        pages it: with *after*, only records whose key is greater than
        *after* are returned; with *limit*, at most *limit* of them. Pass the
        key of a page's last record as the next page's *after*. Keyset paging
        rather than an offset, so a page costs the same wherever it starts
        and connections written meanwhile neither repeat nor hide others.

        Rows that cannot be read (durable stores: they do not decrypt or
        decode) are logged and left out, and do not count towards *limit*: a
        page shorter than *limit* means there is nothing after it.

        Raises:
            ValueError: *limit* is less than 1.
            InvalidArgumentError: *external_id* or *account_id* is not
                ``None`` or valid text.
        """
        ...

    async def list_summaries(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[ConnectionSummary]:
        """
        What :meth:`list_connections` would list for the same *states*,
        *after* and *limit*, as summaries: ids, states, versions and token
        times, without decrypting anything.

        What a keep-alive pass reads to find the few connections that are
        due; it then reads each of those in full. A row whose JSON does not
        decode is logged and left out (a row that only fails to decrypt is
        listed: nothing here decrypts it).

        Raises:
            ValueError: *limit* is less than 1.
        """
        ...

    async def insert(self, record: ConnectionRecord, event: ConnectionEvent) -> None:
        """
        Store a new connection (``version`` 1) and its first event.

        Raises:
            StoreError: The id exists already.
            InvalidArgumentError: A text field of the record or event is not
                a string that encodes as UTF-8; nothing was written.
        """
        ...

    async def update(
        self,
        record: ConnectionRecord,
        *,
        expected_version: int,
        event: ConnectionEvent | None,
        release_lease: str | None = None,
    ) -> None:
        """
        Replace the record if the stored version is *expected_version*.

        ``record.version`` must be ``expected_version + 1``. The event, if
        any, is appended in the same transaction. With *release_lease*, the
        write also gives up that owner's lease (as :meth:`release_lease`
        would): the last write of a rotation ends it without another round
        trip.

        Raises:
            VersionConflictError: The stored version differs (or the record is gone).
            InvalidArgumentError: A text field of the record or event is not
                a string that encodes as UTF-8; nothing was written.
        """
        ...

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        """The stored events of *connection_id* with ``sequence > after``, in order."""
        ...

    async def acquire_lease(
        self, connection_id: str, owner: str, *, until: float, now: float
    ) -> ConnectionRecord | None:
        """
        Take or renew the connection's lease for *owner* until *until*.

        Granted when nobody holds it, when the holder's lease ended
        (``lease_until <= now``), or when *owner* holds it already (renewal).
        Does not change the record's version.

        Returns:
            The stored record, read in the same step as the grant, when
            *owner* now holds the lease; ``None`` when someone else does or
            the id is unknown. Taking the lease and reading what it protects
            together saves the rotation a round trip and leaves no moment
            between the two for another writer.
        """
        ...

    async def release_lease(self, connection_id: str, owner: str) -> None:
        """Give the lease up if *owner* holds it; otherwise do nothing."""
        ...

    async def wait_for_update(
        self,
        connection_id: str,
        *,
        after_version: int,
        timeout: float,  # noqa: ASYNC109 - the wait is the store's own (poll or LISTEN)
    ) -> ConnectionRecord | None:
        """
        Wait (real time) until the stored version exceeds *after_version*.

        Returns:
            The newer record, or ``None`` when *timeout* seconds passed first.
            Implementations may poll (SQLite, with backoff) or be woken
            (PostgreSQL LISTEN/NOTIFY).
        """
        ...

    async def read_outbox(
        self, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConnectionEvent]]:
        """``(position, event)`` pairs with ``position > after``, in commit order."""
        ...

    async def wait_for_events(
        self,
        *,
        after: int,
        timeout: float,  # noqa: ASYNC109 - the wait is the store's own (poll or LISTEN)
    ) -> bool:
        """
        Wait (real time) until an event with ``position > after`` exists.

        Returns:
            ``True`` if there is one, ``False`` on timeout.
        """
        ...

    async def get_offset(self, consumer: str) -> int:
        """The committed position of *consumer* (0 if it never committed)."""
        ...

    async def commit_offset(self, consumer: str, position: int) -> None:
        """Record that *consumer* processed everything up to *position*; never moves back."""
        ...

    async def prune_events(self, *, before: float) -> int:
        """Delete events whose ``at`` is older than *before*; return how many."""
        ...

    async def rotate_keys(self, *, seal_plaintext: bool = False) -> int:
        """
        Re-encrypt every stored secret with the key ring's primary key.

        A secret stored in plaintext is refused (the row is reported as
        unreadable, a :class:`~awx_connection.StoreError` at the end) unless
        *seal_plaintext* says the store holds rows written before encryption:
        with keys, plaintext is otherwise indistinguishable from tampering.

        Returns:
            How many connections were rewritten. Versions do not change.
        """
        ...

    async def claim_webhook(
        self, event_id: str, *, owner: str, now: float, until: float
    ) -> WebhookClaim:
        """
        Claim the webhook *event_id* for *owner* (a random token of one
        delivery) until *until*, atomically: of concurrent claims, in any
        process, one wins.

        Returns:
            ``CLAIMED`` when the id was new, or its claim ran out, or
            *owner* holds it already; ``HANDLED`` when it was handled
            (:meth:`finish_webhook`); ``BUSY`` when another owner's claim is
            still running.
        """
        ...

    async def finish_webhook(self, event_id: str, *, owner: str, at: float) -> None:
        """
        Mark *event_id* handled, if *owner* holds its claim; remembered until
        :meth:`prune_events` passes *at*.
        """
        ...

    async def release_webhook(self, event_id: str, *, owner: str) -> None:
        """Drop *owner*'s claim of *event_id* if it is not handled, so a retry can claim it."""
        ...
