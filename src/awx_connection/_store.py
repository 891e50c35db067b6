"""
The storage contract, as small roles and their union.

A store keeps connection records, their events, leases, consumer offsets
and webhook ids. Each caller needs only a part of that, so the contract is
split by who uses it, and each part is a :class:`~typing.Protocol` of its
own, written once, docstrings included (the implementations inherit them):

* :class:`ConnectionStore`: the records. What the manager reads and writes
  on every transition and refresh, and the only part on the refresh path
  besides the lease.
* :class:`LeaseStore`: the right to rotate one connection's tokens. Apart
  because it is the one cross-process mutual exclusion in the contract;
  ``ConnectionStore.update(release_lease=...)`` is where the two roles touch,
  so that the last write of a rotation ends its lease in the same trip.
* :class:`Outbox`: events by global position and durable consumer offsets,
  which is all an :class:`~awx_connection.EventConsumer` needs.
* :class:`EventLog`: one connection's history, in order.
* :class:`WebhookLedger`: the claims that make Airwallex's at-least-once
  webhook deliveries act once.
* :class:`RelayLedger`: what the relays of the outbox share (leases on
  their partitions of the outbox, and the events a sink gave up on).
* :class:`Store`: all of them, plus what concerns the store as a whole:
  :meth:`~Store.open`, :meth:`~Store.aclose`, :meth:`~Store.schema_version`,
  and the maintenance that spans the roles, :meth:`~Store.prune_events`
  (events leave the log and the outbox, webhook ids the ledger) and
  :meth:`~Store.rotate_keys` (every secret of every record).

The manager takes a :class:`Store`; code that needs one role takes that
role, so a test double or a partial backend implements only it.

The nine promises the manager relies on, each checked for every
implementation by the contract suite, :mod:`awx_connection.testing.store_contract`
(also for a store of your own):

1. **Compare-and-swap** (:class:`ConnectionStore`). :meth:`~ConnectionStore.update`
   writes only if the stored version is ``expected_version``, and the new
   record's version is exactly one more; otherwise it raises
   :class:`~awx_connection.VersionConflictError` and writes nothing. A
   stale writer can never overwrite newer tokens.
2. **A state change and its event go together** (:class:`ConnectionStore`,
   :class:`EventLog`, :class:`Outbox`). :meth:`~ConnectionStore.insert` and
   :meth:`~ConnectionStore.update` write the record and its event
   atomically (one transaction), so the event log never disagrees with the
   state.
3. **Lookups by ``state`` hash** (:class:`ConnectionStore`) find a pending
   authorization in any process.
4. **Leases** (:class:`LeaseStore`). :meth:`~LeaseStore.acquire_lease`
   grants one owner at a time the right to rotate a connection's tokens,
   until a deadline on the injected clock; an expired lease can be taken
   over. The lease keeps two processes from sending the same refresh token;
   the compare-and-swap keeps a process that lost its lease (paused,
   partitioned) from overwriting newer tokens. Neither alone is enough.
5. **The outbox** (:class:`Outbox`). Events get a global ``position`` in
   commit order; :meth:`~Outbox.read_outbox` returns them in that order, and
   named consumers keep a durable offset (:meth:`~Outbox.commit_offset`),
   which gives at-least-once delivery in per-connection order across
   restarts.
6. **Secrets at rest** (:class:`Store`). Durable stores take a
   :class:`~awx_connection.KeyRing` and write every secret as an
   AES-256-GCM envelope; :meth:`~Store.rotate_keys` re-encrypts every row
   to the newest key. A row that does not decrypt raises
   :class:`~awx_connection.DecryptionError` naming the connection, and so,
   with keys, does a secret stored in plaintext: it is tampering until
   ``rotate_keys(seal_plaintext=True)`` is told otherwise.
7. **Webhook ids** (:class:`WebhookLedger`). A delivery claims its event id
   atomically before it acts, and marks it handled after (or releases the
   claim if handling failed), so Airwallex's at-least-once deliveries,
   concurrent ones included, are acted on once, in any replica.
8. **Relay leases and dead letters** (:class:`RelayLedger`).
   :meth:`~RelayLedger.acquire_relay_lease` grants a named lease of a relay
   to one owner at a time until a deadline, as connection leases are; dead
   letters are kept by ``(relay, position)`` until deleted.
9. **Bad text is one typed error** (every role). Every text argument (ids,
   owners, consumer names, filters) and every text field of a record or
   event written must be a ``str`` that encodes as UTF-8; otherwise the
   store raises :class:`~awx_connection.InvalidArgumentError` before
   touching its data, whatever its database would have done with it (the
   built-in stores share the checks of ``awx_connection.stores._common``).

A ``record.version`` that is not ``expected_version + 1``, an event of
another connection, or a ``limit`` below 1 is a caller bug: every store
raises :class:`ValueError` before looking at its data.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from ._delivery import DeadLetter
from ._events import ConnectionEvent
from ._records import ConnectionRecord, ConnectionSummary
from ._states import ConnectionState
from ._webhooks import WebhookClaim

__all__ = [
    "ConnectionStore",
    "EventLog",
    "LeaseStore",
    "Outbox",
    "RelayLedger",
    "Store",
    "WebhookLedger",
]


class ConnectionStore(Protocol):
    """**Protocol:** connection records, written by compare-and-swap."""

    # No instance dict for the stores that subclass these protocols explicitly.
    __slots__ = ()

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        """
        The latest record of *connection_id*, or ``None``.

        Raises:
            DecryptionError: A stored secret does not decrypt with the keys
                (durable stores).
            StoreError: The stored record does not decode.
            InvalidArgumentError: *connection_id* is not a string or not
                valid text.
        """
        ...

    async def find_by_state_hash(self, state_hash: str) -> ConnectionRecord | None:
        """
        The connection whose pending authorization has this ``state`` hash.

        Raises:
            DecryptionError: A stored secret does not decrypt with the keys.
            StoreError: The stored record does not decode.
            InvalidArgumentError: *state_hash* is not valid text.
        """
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
        decode) are logged (ERROR, logger ``awx_connection.stores``, naming
        the connection) and left out, so one bad row cannot take the whole
        listing down; the row is never rewritten or deleted. They do not
        count towards *limit*: the page is filled from the rows after them,
        so a page shorter than *limit* means there is nothing after it.

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
        Store a new connection (``version`` 1) and its first event, in one transaction.

        Raises:
            StoreError: The id exists already, its ``state`` hash is taken,
                or the database failed; nothing was written.
            StoreUnavailableError: The database failed while committing
                (network stores): the connection may or may not exist now;
                re-read it.
            ValueError: The event belongs to another connection.
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
        write also gives up that owner's lease (as
        :meth:`LeaseStore.release_lease` would): the last write of a
        rotation ends it without another round trip. A write that is refused
        keeps the lease where it was.

        Raises:
            VersionConflictError: The stored version differs (or the record is gone).
            StoreError: The ``state`` hash or the event sequence is taken, or
                the database failed; nothing was written.
            StoreUnavailableError: The database stayed unavailable (network
                stores): the write may or may not have happened; re-read
                before deciding.
            ValueError: ``record.version`` is not ``expected_version + 1``, or
                the event belongs to another connection (a caller bug,
                checked before the store is looked at).
            InvalidArgumentError: A text field of the record or event is not
                a string that encodes as UTF-8; nothing was written.
        """
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

        The record is read at least once, even with ``timeout=0``, so a
        version already newer returns at once. A connection that does not
        exist yet counts as version 0, so ``after_version=0`` also waits for
        an insert. A write by another process is seen too: implementations
        poll (SQLite, 5 ms doubling to 100 ms) or are woken (PostgreSQL
        LISTEN/NOTIFY, re-reading every ``recheck_interval`` regardless).

        Returns:
            The newer record, or ``None`` when *timeout* seconds passed first.

        Raises:
            DecryptionError: The newer record does not decrypt.
            InvalidArgumentError: *connection_id* is not valid text.
        """
        ...


class LeaseStore(Protocol):
    """**Protocol:** who may rotate a connection's tokens, until when."""

    __slots__ = ()

    async def acquire_lease(
        self, connection_id: str, owner: str, *, until: float, now: float
    ) -> ConnectionRecord | None:
        """
        Take or renew the connection's lease for *owner* until *until*.

        Granted when nobody holds it, when the holder's lease ended
        (``lease_until <= now``), or when *owner* holds it already (renewal).
        Of concurrent requests, in any process, one wins. Does not change
        the record or its version.

        Returns:
            The stored record, read in the same step as the grant, when
            *owner* now holds the lease; ``None`` when someone else does or
            the id is unknown. Taking the lease and reading what it protects
            together saves the rotation a round trip and leaves no moment
            between the two for another writer.

        Raises:
            DecryptionError: The record does not decrypt (the lease is held).
            InvalidArgumentError: *connection_id* or *owner* is not valid text.
        """
        ...

    async def release_lease(self, connection_id: str, owner: str) -> None:
        """Give the lease up if *owner* holds it; otherwise do nothing."""
        ...


class Outbox(Protocol):
    """**Protocol:** every connection's events in commit order, and consumers' offsets."""

    __slots__ = ()

    async def read_outbox(
        self, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, ConnectionEvent]]:
        """
        ``(position, event)`` pairs with ``position > after``, in commit order, at most *limit*.

        Positions only grow and are never reused (not even after
        :meth:`Store.prune_events`), and an event committed later never gets
        a smaller position than one already readable, so an offset never
        skips an event.

        Raises:
            ValueError: *limit* is less than 1.
        """
        ...

    async def wait_for_events(
        self,
        *,
        after: int,
        timeout: float,  # noqa: ASYNC109 - the wait is the store's own (poll or LISTEN)
    ) -> bool:
        """
        Wait (real time) until an event with ``position > after`` exists.

        Polls or is woken as :meth:`ConnectionStore.wait_for_update` is.

        Returns:
            ``True`` if there is one (at once if there already is), ``False`` on timeout.
        """
        ...

    async def get_offset(self, consumer: str) -> int:
        """The committed position of *consumer* (0 if it never committed)."""
        ...

    async def commit_offset(self, consumer: str, position: int) -> None:
        """
        Record that *consumer* processed everything up to *position*.

        An older position than the committed one is ignored: a consumer that
        restarted from a stale checkpoint, or a slower twin of it, must not
        make everyone re-read.
        """
        ...


class EventLog(Protocol):
    """**Protocol:** one connection's history."""

    __slots__ = ()

    async def read_events(self, connection_id: str, *, after: int = 0) -> list[ConnectionEvent]:
        """The stored events of *connection_id* with ``sequence > after``, in sequence order."""
        ...


class WebhookLedger(Protocol):
    """**Protocol:** claims on webhook event ids, so each delivery is acted on once."""

    __slots__ = ()

    async def claim_webhook(
        self, event_id: str, *, owner: str, now: float, until: float
    ) -> WebhookClaim:
        """
        Claim the webhook *event_id* for *owner* (a random token of one
        delivery) until *until*, atomically: of concurrent claims, in any
        process, one wins. A claim whose term ran out (its holder died) can
        be taken over, and the same owner's repeat (a retried call) is its
        own.

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
        :meth:`Store.prune_events` passes *at*.
        """
        ...

    async def release_webhook(self, event_id: str, *, owner: str) -> None:
        """Drop *owner*'s claim of *event_id* if it is not handled, so a retry can claim it."""
        ...


class RelayLedger(Protocol):
    """
    **Protocol:** what the relays of the outbox share: named leases (which
    relay process works on which part of the outbox) and dead letters.

    Apart from :class:`LeaseStore` because those leases are on connection
    rows; a relay's are on parts of the outbox, keyed ``(relay, name)``.
    """

    __slots__ = ()

    async def acquire_relay_lease(
        self, relay: str, name: str, owner: str, *, until: float, now: float
    ) -> bool:
        """
        Take or renew lease *name* of *relay* for *owner* until *until*.

        Granted when nobody holds it, when the holder's term ended
        (``until <= now``), or when *owner* holds it already. Of concurrent
        requests, in any process, one wins.

        Returns:
            Whether *owner* holds the lease now.

        Raises:
            InvalidArgumentError: *relay*, *name* or *owner* is not valid text.
        """
        ...

    async def release_relay_lease(self, relay: str, name: str, owner: str) -> None:
        """Give lease *name* of *relay* up if *owner* holds it; otherwise do nothing."""
        ...

    async def relay_leases(self, relay: str, *, now: float) -> list[tuple[str, str]]:
        """Every lease of *relay* still running at *now*, as ``(name, owner)``, by name."""
        ...

    async def put_dead_letter(self, letter: DeadLetter) -> None:
        """
        Keep *letter* under ``(letter.relay, letter.position)``, replacing
        one kept there already (a re-sent event that failed again).
        """
        ...

    async def dead_letters(
        self, relay: str, *, after: int = 0, limit: int = 1000
    ) -> list[DeadLetter]:
        """
        *relay*'s dead letters with ``position > after``, by position, at most *limit*.

        Raises:
            ValueError: *limit* is less than 1.
        """
        ...

    async def delete_dead_letter(self, relay: str, position: int) -> bool:
        """Forget *relay*'s dead letter at *position* (replayed); whether there was one."""
        ...


class Store(ConnectionStore, LeaseStore, Outbox, EventLog, WebhookLedger, RelayLedger, Protocol):
    """
    **Protocol:** where connections and their events live; every role, and
    what concerns the store as a whole.
    """

    __slots__ = ()

    async def open(self) -> None:
        """Connect and create or upgrade the schema. Idempotent."""
        ...

    async def aclose(self) -> None:
        """Release connections and files. Idempotent; :meth:`open` may be called again."""
        ...

    async def schema_version(self) -> int:
        """
        How many schema migrations the store's database has applied: what
        ``awx-connection db migrate`` reports. 0 for a store without a
        schema (:class:`~awx_connection.stores.MemoryStore`). Call it after
        :meth:`open` (:class:`~awx_connection.stores.PostgresStore` also
        answers unopened).
        """
        ...

    async def prune_events(self, *, before: float) -> int:
        """
        Delete the events whose ``at`` is older than *before*; return how many.

        They disappear from :meth:`EventLog.read_events` and
        :meth:`Outbox.read_outbox` alike; positions are never reused, so
        consumers' offsets stay valid. Webhook ids handled before *before*
        are forgotten too (Airwallex stops retrying a delivery after about
        three days). Durable stores delete in bounded batches, so pruning
        millions never holds a write lock for long.
        """
        ...

    async def rotate_keys(self, *, seal_plaintext: bool = False) -> int:
        """
        Re-encrypt every stored secret with the key ring's primary key.

        Rows already sealed with the primary key are not rewritten, so a
        second run returns 0. Each row is rewritten by its own
        compare-and-swap on its version, which stays the same: a concurrent
        write is never undone (the row is re-read and tried again), so
        rotation runs alongside live traffic and can be interrupted and run
        again. Give every process the new ring first, or their writes keep
        sealing with the old key.

        A row holding a plaintext secret (written without keys, or tampered
        with: the two look the same) is not read but reported, like any
        unreadable row, unless *seal_plaintext*: then it is sealed, and
        logged (WARNING) by id. Pass it only for a store known to hold rows
        from before encryption (``awx-connection keys seal``).

        Returns:
            How many connections were rewritten (0 for a store that encrypts
            nothing, like :class:`~awx_connection.stores.MemoryStore`).
            Versions do not change.

        Raises:
            StoreError: The store has no keys; or some rows could not be read
                (each logged with its id; every other row was rotated and
                stays rotated, so the call can simply be repeated).
        """
        ...
