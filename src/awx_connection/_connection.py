"""
One connection: the public snapshot, and the live object the manager drives.

:class:`Connection` is what users see: a frozen view of a record without
any secret. ``_Live`` is the manager's per-connection holder: the latest
record, the lock that serializes its transitions, the single in-flight
refresh, and two fields precomputed for the ``access_token()`` hot path.
"""

from __future__ import annotations

import asyncio
import time
from typing import final

import attrs

from ._config import TimingPolicy
from ._records import ConnectionRecord
from ._states import ConnectionState
from ._tokens import TokenSet

__all__ = ["Connection"]


@final
@attrs.frozen
class Connection:
    """
    A snapshot of one partner connection, safe to log and to show.

    It holds no token; use :meth:`ConnectionManager.access_token` or
    :meth:`ConnectionManager.request` for those.
    """

    id: str
    state: ConnectionState
    #: Why the connection is in this state (the last transition's reason).
    reason: str
    #: The Airwallex account, known once the connection was activated.
    account_id: str | None
    #: Your own key for this connection (for example your customer's id).
    external_id: str | None
    scopes: tuple[str, ...]
    access_expires_at: float | None
    refresh_expires_at: float | None
    #: Rotations so far (0 right after the code exchange).
    token_generation: int | None
    version: int
    #: Sequence number of the latest event.
    sequence: int
    created_at: float
    updated_at: float

    @classmethod
    def from_record(cls, record: ConnectionRecord) -> Connection:
        """The public view of *record*."""
        tokens = record.tokens
        return cls(
            id=record.id,
            state=record.state,
            reason=record.reason,
            account_id=record.account_id,
            external_id=record.external_id,
            scopes=record.scopes,
            access_expires_at=None if tokens is None else tokens.access_expires_at,
            refresh_expires_at=None if tokens is None else tokens.refresh_expires_at,
            token_generation=None if tokens is None else tokens.generation,
            version=record.version,
            sequence=record.sequence,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


@final
@attrs.define(eq=False)
class _Live:
    """
    The manager's holder for one connection in this process.

    A process may hold 100,000 of these for its whole life, most of them
    only ever read (``access_token()`` from memory), so two things are kept
    cheap: ``record`` is a property rather than an attrs ``on_setattr``
    hook, which would route every attribute write through a Python-level
    ``__setattr__`` (the hook made ``_Live()`` cost 4 µs); and the
    ``asyncio.Lock`` is made on first use, not with the holder (about 100 B
    less for a connection that is never written).
    """

    _record: ConnectionRecord = attrs.field(alias="record")
    _lock: asyncio.Lock | None = attrs.field(default=None, init=False)
    refresh_task: asyncio.Task[TokenSet] | None = None
    #: Until when ``token`` may be handed out without refreshing.
    fresh_until: float = float("-inf")
    #: The revealed access token while ``active``, else ``None``. Never in a repr.
    token: str | None = attrs.field(default=None, repr=False)
    timing: TimingPolicy | None = None
    #: The last refresh failure, handed to callers until ``failed_until``
    #: (injected clock) instead of a new request.
    failure: BaseException | None = None
    failed_until: float = float("-inf")
    #: Whether this process holds the connection's refresh lease (the
    #: rotation's last write gives it up; otherwise ``release_lease`` does).
    leased: bool = False
    #: Until when (injected clock) a refresh POST may be sent without
    #: renewing the lease first: one sent before then is over (answered or
    #: timed out) well before the lease can lapse.
    lease_sure_until: float = float("-inf")
    #: The version of the unfinished rotation (journal) last seen, and since
    #: when (``time.monotonic()``; minus infinity when this process wrote it):
    #: another process's journal is resumed only once it has been seen
    #: unchanged for ``TimingPolicy.resume_wait``.
    journal_version: int = -1
    journal_seen_at: float = float("-inf")

    def __attrs_post_init__(self) -> None:
        self._derive(self._record)

    @property
    def record(self) -> ConnectionRecord:
        """The latest record this process knows; setting it re-derives ``token``."""
        return self._record

    @record.setter
    def record(self, record: ConnectionRecord) -> None:
        self._record = record
        self._derive(record)

    @property
    def lock(self) -> asyncio.Lock:
        """
        The lock that serializes the connection's transitions, made on first use.

        Safe without a lock of its own: nothing awaits between the check and
        the assignment, so two coroutines cannot each make one. An
        ``asyncio.Lock`` binds to the running loop only when first contended.
        """
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock()
        return lock

    def written(self, record: ConnectionRecord) -> None:
        """Adopt a record this process just wrote: its journal, if any, is ours."""
        self.record = record
        self.journal_seen_at = float("-inf")

    def _derive(self, record: ConnectionRecord) -> None:
        if record.journal is not None and record.version != self.journal_version:
            self.journal_version = record.version
            self.journal_seen_at = time.monotonic()
        tokens = record.tokens
        if record.state is ConnectionState.ACTIVE and tokens is not None and self.timing:
            self.fresh_until = tokens.access_expires_at - self.timing.skew(tokens.access_lifetime)
            self.token = tokens.access_token.reveal()
        else:
            self.fresh_until = float("-inf")
            self.token = None
