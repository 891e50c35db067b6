"""
Many connections: the API a partner platform embeds.

:class:`ConnectionManager` ties the pieces together:

* the authorize step (:meth:`~ConnectionManager.begin_authorization`,
  :meth:`~ConnectionManager.complete_authorization`), with the code exchange
  as the action of the ``authorized`` state;
* tokens that are always valid (:meth:`~ConnectionManager.access_token`),
  with **single-flight** refresh: one in-flight rotation per connection that
  every concurrent caller awaits, so a thousand callers at expiry make one
  POST;
* **crash-safe rotation**: before each refresh POST a journal is written
  with the connection (state ``refreshing``). A lost response is retried
  with the *same* refresh token only while the provider's grace window
  surely holds; past it the connection becomes ``invalidated`` instead of
  presenting a token that could burn it;
* authorized requests (:meth:`~ConnectionManager.request`) that refresh
  once and retry once on a 401;
* every transition persisted by compare-and-swap together with its event,
  then published to subscribers.

Locking: each connection has one ``asyncio.Lock``; every transition and
every action (exchange, refresh) runs under it, so transitions of one
connection never interleave. The hot path (a fresh cached token) takes no
lock at all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Literal, Protocol, Self, TypeVar, final
from urllib.parse import urljoin, urlsplit

import aiohttp
import attrs

from ._authorize import (
    AuthorizationRequest,
    authorize_url,
    check_scopes,
    new_pkce_pair,
    new_state,
    parse_callback,
    state_hash,
)
from ._clock import Clock, SystemClock
from ._config import Config, TimingPolicy
from ._connection import Connection, _Live
from ._errors import (
    AwxConnectionError,
    ConnectionExpiredError,
    ConnectionInvalidatedError,
    ConnectionNotFoundError,
    ConnectionRevokedError,
    ConnectionUnusableError,
    IllegalTransitionError,
    InvalidClientError,
    InvalidGrantError,
    ManagerClosedError,
    ProviderError,
    RefreshTimeoutError,
    StateExpiredError,
    StoreError,
    StoreUnavailableError,
    UnknownStateError,
    VersionConflictError,
    WebhookError,
    fresh,
)
from ._events import ConnectionEvent, EventBus, EventCallback, Subscription
from ._gate import RefreshGate
from ._keepalive import KeepaliveReport, due_at
from ._machine import fire
from ._outbox import EventConsumer
from ._records import ConnectionRecord, ConnectionSummary, PendingAuthorization, RotationJournal
from ._retry import Attempt, Retries
from ._secrets import AuthHeaders, Secret, bearer_headers
from ._states import ConnectionState, Trigger
from ._statistics import ManagerStatistics
from ._store import Store
from ._text import check_text
from ._tokens import TokenSet
from ._transport import Transport
from ._webhooks import (
    DISCONNECT_EVENTS,
    WebhookCallback,
    WebhookClaim,
    WebhookEvent,
    WebhookResult,
    WebhookSubscription,
    parse_webhook,
    verify_signature,
)
from .stores import MemoryStore

__all__ = ["ConnectionManager"]

_log = logging.getLogger("awx_connection")

_S = ConnectionState
_T = Trigger
#: What a page of connections holds: records (``load()``) or summaries (keep-alive).
_P = TypeVar("_P", ConnectionRecord, ConnectionSummary)

_UNUSABLE: dict[ConnectionState, type[ConnectionUnusableError]] = {
    _S.REVOKED: ConnectionRevokedError,
    _S.INVALIDATED: ConnectionInvalidatedError,
    _S.EXPIRED: ConnectionExpiredError,
}


#: Methods retried by default (RFC 9110 section 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: API statuses worth a retry: the gateway, not the API, failed.
_RETRY_STATUSES = frozenset({502, 503, 504})

#: Times an attempt writes its journal before giving up on a slow store.
_JOURNAL_WRITES = 3
#: URLs request() remembers resolved (ConnectionManager._resolve).
_RESOLVED_MAX = 1024
#: Records a keep-alive pass reads at a time.
_KEEPALIVE_PAGE = 1000


def _unusable(record: ConnectionRecord) -> ConnectionUnusableError:
    cls = _UNUSABLE.get(record.state, ConnectionUnusableError)
    return cls(record.id, record.state, record.reason)


def _order_of(
    created_at: float, activated_at: float | None, timing: TimingPolicy
) -> Literal["before", "after", "unknown"]:
    """
    Whether a webhook created at *created_at* (Airwallex renders it to the
    second: the event happened within the second after it) surely came
    before or after the activation at *activated_at*, allowing
    ``webhook_clock_skew`` between the two clocks; else ``"unknown"``.
    """
    if activated_at is None:
        return "after"
    skew = timing.webhook_clock_skew
    if created_at + 1.0 + skew <= activated_at:
        return "before"
    if created_at - skew > activated_at:
        return "after"
    return "unknown"


def _new_connection_id() -> str:
    return "conn_" + secrets.token_hex(12)


class _LeaseLost(Exception):
    """Internal: the refresh lease is another process's now (never escapes a flight)."""


@attrs.frozen
class _Sent:
    """What one refresh attempt presented, and what came back."""

    #: The tokens whose refresh token was presented.
    presented: TokenSet
    #: The journal as stored before the request.
    journal: RotationJournal
    #: True when this attempt first made the presented token unsafe.
    first_unsafe: bool
    new_tokens: TokenSet | None = None
    error: ProviderError | None = None


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """
    Pause Python's cyclic garbage collector for one page of :meth:`ConnectionManager.load`.

    A load creates objects that all survive (a record, its tokens, two
    secrets and a holder per connection). Collecting every 700 of them, and
    fully each time the heap grew by a quarter, re-examined the whole growing
    heap over and over: 0.55 s of a 3.2 s load of 100,000 connections. Paused
    per page (about 30 ms for 1,000), the young objects are examined once,
    when the page is done. Nothing is lost: cycles made meanwhile, by any
    coroutine, are collected after. Left alone if the application turned
    the collector off itself.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _ListPage(Protocol[_P]):
    """``Store.list_connections`` or ``Store.list_summaries``, as paging calls them."""

    def __call__(
        self,
        *,
        states: Collection[ConnectionState] | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> Awaitable[list[_P]]: ...


async def _each_page(
    list_page: _ListPage[_P],
    states: Collection[ConnectionState] | None,
    page_size: int,
    handle: Callable[[list[_P]], None],
) -> None:
    """
    Call *handle* with every stored connection of *states* that *list_page*
    (``Store.list_connections`` or ``list_summaries``) returns, a page at a
    time (keyset paging on ``(created_at, id)``), the cyclic collector
    paused while each page is read and handled.
    """
    if states is not None:
        states = frozenset(states)
    after: tuple[float, str] | None = None
    while True:
        with _collector_paused():
            page = await list_page(states=states, after=after, limit=page_size)
            handle(page)
        if len(page) < page_size:
            return
        last = page[-1]
        after = (last.created_at, last.id)


@final
@attrs.define(eq=False, repr=False)
class ConnectionManager:
    """
    Holds many Airwallex partner connections for one OAuth client.

    Use it as an async context manager (or call :meth:`open` and
    :meth:`aclose`)::

        store = SQLiteStore("awx.db", keys=KeyRing.from_env())
        async with ConnectionManager(config, store=store) as awx:
            request = await awx.begin_authorization(scopes=["account_details:read"])
            ...  # redirect the customer to request.url
            connection = await awx.complete_authorization(callback_url)
            token = await awx.access_token(connection.id)

    Args:
        config: Client credentials, endpoints and timing.
        store: Where connections live; an in-memory store by default. The
            manager opens it and closes it.
        clock: Time source; share a :class:`~awx_connection.testing.ManualClock`
            with the fake provider in tests.
        session: An :class:`aiohttp.ClientSession` to share; by default the
            manager creates and closes its own.
    """

    #: Fixed for the manager's life: its transport and caches are built from it.
    config: Config = attrs.field(on_setattr=attrs.setters.frozen)
    store: Store = attrs.field(factory=MemoryStore, kw_only=True)
    clock: Clock = attrs.field(factory=SystemClock, kw_only=True)
    _transport: Transport = attrs.field(init=False)
    _session: aiohttp.ClientSession | None = attrs.field(
        default=None, kw_only=True, alias="session"
    )
    _bus: EventBus = attrs.field(factory=EventBus, init=False, repr=False)
    # Internal state stays out of the repr: it is large, and the live cache
    # holds revealed access tokens for the hot path.
    _live: dict[str, _Live] = attrs.field(factory=dict, init=False, repr=False)
    #: The refresh flights in progress (one per connection at most).
    _tasks: set[asyncio.Task[Any]] = attrs.field(factory=set, init=False, repr=False)
    #: Flights between sending a refresh token and storing what came of it:
    #: aclose() lets these finish, and abandons the others.
    _sending: set[asyncio.Task[Any]] = attrs.field(factory=set, init=False, repr=False)
    #: The background loops (keep-alive, settling), by name.
    _loops: dict[str, asyncio.Task[None]] = attrs.field(factory=dict, init=False, repr=False)
    _closing: bool = attrs.field(default=False, init=False)
    _closed: asyncio.Event | None = attrs.field(default=None, init=False, repr=False)
    #: Rotate idle connections' refresh tokens before they age out: a pass
    #: ``TimingPolicy.keepalive_first_delay`` after :meth:`open`, then every
    #: ``keepalive_interval``. On by default: without it an idle connection
    #: ends ``expired`` after 60-90 days. Leases keep replicas from rotating
    #: twice. Turn it off for one-shot scripts (the CLI does).
    keepalive: bool = attrs.field(default=True, kw_only=True)
    #: Settle rotations left unfinished (``refreshing``) without waiting for
    #: a caller: one of this process whose retries ran out with its token
    #: maybe sent, and any process's (crashed, shut down, cut off from the
    #: store) found by a scan at :meth:`open` and every
    #: ``TimingPolicy.settle_interval``, inside the grace window. Off only
    #: where every flight must be started by the code itself (one-shot
    #: scripts, tests that count requests).
    settle: bool = attrs.field(default=True, kw_only=True)
    _webhook_subscribers: list[WebhookSubscription] = attrs.field(
        factory=list, init=False, repr=False
    )
    _refresh_gate: RefreshGate = attrs.field(init=False, repr=False)
    _counts: collections.Counter[str] = attrs.field(
        factory=collections.Counter, init=False, repr=False
    )
    #: request()'s resolved URLs, by what the caller passed (see _resolve).
    _resolved: dict[str, str] = attrs.field(factory=dict, init=False, repr=False)
    #: This manager's identity as a lease owner: host, process, random.
    _owner: str = attrs.field(init=False)

    def __repr__(self) -> str:
        # Short on purpose: a repr lands in logs and tracebacks, and the
        # internals (the live cache holds revealed access tokens) must not.
        return (
            f"<ConnectionManager client_id={self.config.client_id!r} "
            f"store={type(self.store).__name__} connections_cached={len(self._live)}>"
        )

    def __attrs_post_init__(self) -> None:
        self._transport = Transport(self.config, session=self._session)
        self._refresh_gate = RefreshGate(self.config.timing.max_concurrent_refreshes)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """
        Open the store (creating its schema) and start the background loops
        (keep-alive, settling) that are on. Idempotent.

        Raises:
            ManagerClosedError: The manager was closed; make a new one.
        """
        self._check_open()
        await self.store.open()
        if self.keepalive:
            self._start_loop("keepalive", self._keepalive_loop())
        if self.settle:
            self._start_loop("settle", self._settle_loop())

    def _start_loop(self, name: str, loop: Coroutine[Any, Any, None]) -> None:
        if name in self._loops:
            loop.close()
            return
        task = asyncio.get_running_loop().create_task(loop, name=f"awx-connection-{name}")
        self._loops[name] = task

    async def aclose(self) -> None:
        """
        Close the manager: finish what may have reached Airwallex, abandon
        the rest, then close subscriptions, the transport and the store.
        Idempotent; a second call waits for the first.

        A rotation whose refresh token may already be on its way is let
        finish (its answer stored), for at most
        ``TimingPolicy.close_timeout``: cancelling it would leave the
        provider's new tokens unknown and the connection to be rescued by
        the next process inside the grace window. Flights that had not sent
        anything are cancelled; their callers, and anyone calling from now
        on, get :class:`~awx_connection.ManagerClosedError`. A journal left
        behind (a timeout here, a crash) is resumed by any process that
        opens the store, without waiting for a caller.
        """
        if self._closed is not None:
            await self._closed.wait()
            return
        self._closing = True
        self._closed = asyncio.Event()
        try:
            for task in self._loops.values():
                task.cancel()
            await asyncio.gather(*self._loops.values(), return_exceptions=True)
            await self._drain_flights()
            await self._bus.aclose(timeout=self.config.timing.close_wait)
            await self._transport.aclose()
        finally:
            self._live.clear()
            try:
                await self.store.aclose()
            finally:
                self._closed.set()

    async def _drain_flights(self) -> None:
        """Let flights that may have sent a token finish (bounded); cancel the others."""
        flights = set(self._tasks)
        if not flights:
            return
        for task in flights - self._sending:
            task.cancel()
        _, late = await asyncio.wait(flights, timeout=self.config.timing.close_wait)
        for task in late:
            _log.warning(
                "%s did not finish within close_timeout; its journal is left for the "
                "next process to resume",
                task.get_name(),
            )
            task.cancel()
        if late:
            await asyncio.wait(late)

    def _check_open(self) -> None:
        if self._closing:
            raise ManagerClosedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- events -------------------------------------------------------------

    def subscribe(
        self,
        callback: EventCallback,
        *,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
    ) -> Subscription:
        """
        Call *callback* (sync or async) for every matching lifecycle event.

        Events of one connection reach each subscriber in sequence order. A
        callback that raises is logged; other subscribers and the transition
        are unaffected.
        """
        return self._bus.subscribe(callback, triggers=triggers, states=states)

    def events(
        self,
        *,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
        maxsize: int = 10_000,
    ) -> Subscription:
        """Subscribe for ``async for event in manager.events(...)``."""
        return self._bus.stream(triggers=triggers, states=states, maxsize=maxsize)

    def consumer(self, name: str, *, batch: int = 100, poll_interval: float = 1.0) -> EventConsumer:
        """
        A durable, at-least-once reader of every connection's events, named
        *name*; it resumes from its committed position after a restart, in
        any process sharing the store. See :class:`EventConsumer`.
        """
        if not name:
            msg = "a consumer needs a name"
            raise ValueError(msg)
        return EventConsumer(self.store, name, batch=batch, poll_interval=poll_interval)

    async def prune_events(self) -> int:
        """Delete stored events older than ``TimingPolicy.event_retention``; return how many."""
        cutoff = self.clock.now() - self.config.timing.event_retention
        return await self.store.prune_events(before=cutoff)

    async def history(self, connection_id: str) -> list[ConnectionEvent]:
        """Every stored event of *connection_id*, in order."""
        await self._get_live(connection_id)
        return await self.store.read_events(connection_id)

    # -- reading ------------------------------------------------------------

    async def get(self, connection_id: str) -> Connection:
        """
        The current snapshot of *connection_id*.

        Raises:
            ConnectionNotFoundError: No such connection.
        """
        live = await self._get_live(connection_id)
        return Connection.from_record(live.record)

    async def connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
    ) -> list[Connection]:
        """Snapshots of every stored connection matching all filters."""
        self._check_open()
        records = await self.store.list_connections(
            states=states, external_id=external_id, account_id=account_id
        )
        return [Connection.from_record(r) for r in records]

    async def load(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        page_size: int = 1000,
    ) -> int:
        """
        Hold every stored connection (of *states*, all when omitted) in this
        manager, so that :meth:`access_token` serves each one from memory.

        Call it once after :meth:`open` in a process that will use many
        connections (a worker starting up, a replica joining): without it,
        each connection is read from the store on its first use, one round
        trip each. The store is read a page of *page_size* records at a time
        (keyset paging on ``(created_at, id)``), so the memory it takes
        beyond the held connections is one page, whatever the store's size.

        A connection this manager already holds keeps its record unless the
        stored one is newer (a higher version). A row that does not decrypt
        or decode is logged (logger ``awx_connection.stores``) and left out,
        as :meth:`connections` does; its first use then raises
        :class:`~awx_connection.DecryptionError`. Secrets are decrypted here,
        not on first use: a tampered row is found now, not mid-request.

        Python's cyclic garbage collector is paused while each page is read
        and adopted (about 30 ms for 1,000), unless the application turned
        it off itself: collecting over and over while the heap only grows
        was a sixth of the time of a large load. Cycles made meanwhile are
        collected after the page.

        Returns:
            How many connections the manager holds now.

        Raises:
            ValueError: *page_size* is less than 1.
        """
        if page_size < 1:
            msg = f"page_size must be at least 1, not {page_size}"
            raise ValueError(msg)
        self._check_open()

        def adopt(page: list[ConnectionRecord]) -> None:
            for record in page:
                self._adopt(record)

        await _each_page(self.store.list_connections, states, page_size, adopt)
        return len(self._live)

    # -- authorization ------------------------------------------------------

    async def begin_authorization(
        self,
        *,
        scopes: Sequence[str] | None = None,
        sign_up: bool = False,
        pkce: bool | None = None,
        external_id: str | None = None,
    ) -> AuthorizationRequest:
        """
        Create a ``pending`` connection and the URL to send the customer to.

        Args:
            scopes: Scopes to request; ``Config.default_scopes`` when omitted.
            sign_up: Add ``sign_up=true``: Airwallex lets a new customer
                create an account first, then authorize, in one flow.
            pkce: Use PKCE (S256); ``Config.pkce`` when omitted.
            external_id: Your key for this connection (e.g. a customer id).

        Raises:
            ConfigurationError: No or invalid scopes.
            InvalidArgumentError: *external_id* is not ``None`` or a string
                that encodes as UTF-8; nothing was stored.
        """
        self._check_open()
        check_text("external_id", external_id, optional=True)
        chosen = check_scopes(self.config.default_scopes if scopes is None else scopes)
        now = self.clock.now()
        connection_id = _new_connection_id()
        auth, url = self._new_authorization(chosen, sign_up=sign_up, pkce=pkce, now=now)
        reason = "authorization started" + (" with sign-up" if sign_up else "")
        record, event = fire(
            None,
            _T.BEGIN,
            reason,
            {
                "id": connection_id,
                "scopes": chosen,
                "external_id": external_id,
                "authorization": auth,
            },
            now=now,
            write_id=secrets.token_hex(8),
        )
        await self.store.insert(record, event)
        self._live[connection_id] = _Live(record, timing=self.config.timing)
        self._publish(event)
        return AuthorizationRequest(connection_id, url, auth.expires_at)

    async def reauthorize(
        self,
        connection_id: str,
        *,
        scopes: Sequence[str] | None = None,
        sign_up: bool = False,
        pkce: bool | None = None,
    ) -> AuthorizationRequest:
        """
        Move a finished (revoked, invalidated, expired, denied, failed) or
        still pending connection back to ``pending`` with a new authorize URL.
        The old tokens are dropped; the connection keeps its id and history.

        Raises:
            IllegalTransitionError: The connection is active, refreshing or authorized.
        """
        live = await self._get_live(connection_id)
        async with live.lock:
            record = live.record
            chosen = check_scopes(record.scopes if scopes is None else scopes)
            auth, url = self._new_authorization(
                chosen, sign_up=sign_up, pkce=pkce, now=self.clock.now()
            )
            await self._transition(
                live,
                _T.REAUTHORIZE,
                f"reauthorization started (was {record.state.value})",
                authorization=auth,
                scopes=chosen,
                tokens=None,
                code=None,
                journal=None,
            )
        return AuthorizationRequest(connection_id, url, auth.expires_at)

    def _new_authorization(
        self, scopes: tuple[str, ...], *, sign_up: bool, pkce: bool | None, now: float
    ) -> tuple[PendingAuthorization, str]:
        state = new_state()
        use_pkce = self.config.pkce if pkce is None else pkce
        verifier, challenge = new_pkce_pair() if use_pkce else (None, None)
        auth = PendingAuthorization(
            state_hash=state_hash(state),
            expires_at=now + self.config.timing.state_ttl,
            redirect_uri=self.config.redirect_uri,
            sign_up=sign_up,
            code_verifier=verifier,
        )
        url = authorize_url(
            self.config.endpoints.authorize_url,
            client_id=self.config.client_id,
            redirect_uri=self.config.redirect_uri,
            scopes=scopes,
            state=state,
            sign_up=sign_up,
            code_challenge=challenge,
        )
        return auth, url

    async def complete_authorization(
        self, callback: str | Mapping[str, str | Sequence[str]]
    ) -> Connection:
        """
        Accept the redirect back from Airwallex and, for a code, exchange it.

        Args:
            callback: The full redirect URL, its query string, or its query
                parameters as your web framework parsed them.

        Returns:
            The connection: ``active`` after a successful exchange, ``denied``
            when the customer declined, ``failed`` when the provider rejected
            the code.

        Raises:
            CallbackError: Malformed callback; nothing changed.
            UnknownStateError: Forged, replayed or already used ``state``; nothing changed.
            StateExpiredError: The authorization expired; nothing changed.
            ProviderError: The exchange failed transiently after retries; the
                connection stays ``authorized`` and :meth:`exchange` retries.
        """
        self._check_open()
        parsed = parse_callback(callback)
        # The raw callback carries the code and the state: out of the locals
        # a traceback of an exchange error, rendered with them, would show.
        del callback
        digest = state_hash(parsed.state)
        record = await self.store.find_by_state_hash(digest)
        if record is None:
            msg = "no pending authorization has this state (unknown, replayed or already used)"
            raise UnknownStateError(msg)
        live = self._adopt(record)
        async with live.lock:
            current = live.record
            auth = current.authorization
            if current.state is not _S.PENDING or auth is None or auth.state_hash is None:
                msg = "no pending authorization has this state (unknown, replayed or already used)"
                raise UnknownStateError(msg)
            if not secrets.compare_digest(auth.state_hash, digest):
                msg = "no pending authorization has this state (unknown, replayed or already used)"
                raise UnknownStateError(msg)
            if self.clock.now() >= auth.expires_at:
                raise StateExpiredError(current.id)
            if parsed.error is not None:
                detail = f": {parsed.error_description}" if parsed.error_description else ""
                await self._transition(
                    live,
                    _T.DENIED,
                    f"{parsed.error}{detail}",
                    authorization=None,
                )
                return Connection.from_record(live.record)
            try:
                await self._transition(
                    live,
                    _T.CODE_RECEIVED,
                    "authorization code received",
                    authorization=attrs.evolve(auth, state_hash=None),
                    code=parsed.code,
                )
            except VersionConflictError:
                # Another process accepted the same callback first.
                msg = "this state was used by a concurrent callback"
                raise UnknownStateError(msg) from None
            await self._exchange(live)
            return Connection.from_record(live.record)

    async def exchange(self, connection_id: str) -> Connection:
        """
        Retry the code exchange of an ``authorized`` connection (after a
        transient failure of :meth:`complete_authorization`).

        Raises:
            IllegalTransitionError: The connection is not ``authorized``.
        """
        live = await self._get_live(connection_id)
        async with live.lock:
            if live.record.state is not _S.AUTHORIZED:
                raise IllegalTransitionError(connection_id, _T.EXCHANGED, live.record.state)
            await self._exchange(live)
            return Connection.from_record(live.record)

    async def _exchange(self, live: _Live) -> None:
        """The action of ``authorized``: exchange the code, then fetch the account."""
        record = live.record
        auth = record.authorization
        assert record.code is not None
        assert auth is not None
        timing = self.config.timing
        async for attempt in Retries(timing.retry_backoff, limit=timing.max_attempts):
            try:
                tokens = await self._transport.exchange_code(
                    record.code,
                    redirect_uri=auth.redirect_uri,
                    code_verifier=auth.code_verifier,
                    now=self.clock.now(),
                )
            except ProviderError as exc:
                if exc.retryable and not attempt.last:
                    continue
                if isinstance(exc, InvalidClientError):
                    _log.error(
                        "connection %s: the provider rejected our client credentials; "
                        "check client_id and client_secret",
                        record.id,
                        extra={"connection_id": record.id},
                    )
                if exc.retryable:
                    _log.warning(
                        "connection %s: code exchange failed after %d attempts: %s",
                        record.id,
                        attempt.number,
                        exc,
                        extra={"connection_id": record.id, "state": record.state.value},
                    )
                    raise
                await self._transition(
                    live,
                    _T.EXCHANGE_REJECTED,
                    f"code exchange rejected ({exc.code or exc.status})",
                    code=None,
                    authorization=None,
                )
                return
            break
        account_id = await self._fetch_account_id(record.id, tokens.access_token)
        await self._transition(
            live,
            _T.EXCHANGED,
            "tokens received",
            tokens=tokens,
            code=None,
            authorization=None,
            account_id=account_id or record.account_id,
            activated_at=self.clock.now(),
        )

    async def _fetch_account_id(self, connection_id: str, access_token: Secret) -> str | None:
        """``GET /api/v1/account/``, best effort: a failure is logged, not fatal."""
        try:
            account = await self._transport.fetch_account(access_token)
        except ProviderError as exc:
            _log.warning(
                "connection %s: could not fetch the account (%s); will retry after a refresh",
                connection_id,
                exc,
                extra={"connection_id": connection_id},
            )
            return None
        account_id: str = account["id"]
        return account_id

    # -- tokens ---------------------------------------------------------------

    async def access_token(self, connection_id: str) -> str:
        """
        A valid access token for *connection_id*, refreshing if needed.

        The token stays valid for at least the refresh skew
        (``min(60 s, 20 %)`` of its lifetime by default). Concurrent callers
        share one refresh.

        Raises:
            ConnectionNotFoundError: No such connection.
            ConnectionUnusableError: The connection is not active (its
                subclass tells revoked, invalidated or expired apart).
            ProviderError: The refresh failed transiently and the current
                token is too close to expiry to hand out.
        """
        live = self._live.get(connection_id)
        if live is not None and live.fresh_until > self.clock.now():
            return live.token  # type: ignore[return-value]  # set whenever fresh_until is finite
        live = live or await self._get_live(connection_id)
        tokens = await self._fresh_tokens(live, stale_generation=None)
        return tokens.access_token.reveal()

    async def refresh(self, connection_id: str) -> Connection:
        """
        Rotate the tokens of *connection_id* now, whatever their expiry.

        Joins a refresh already in flight instead of starting a second one.
        """
        live = await self._get_live(connection_id)
        tokens = live.record.tokens
        stale = tokens.generation if tokens is not None else None
        await self._fresh_tokens(live, stale_generation=stale)
        return Connection.from_record(live.record)

    async def revoke(
        self, connection_id: str, reason: str = "disconnected by the partner"
    ) -> Connection:
        """
        Mark an ``active`` or ``refreshing`` connection ``revoked`` (your
        customer disconnected, or a webhook said so). Waits for an in-flight
        refresh to finish first.
        """
        live = await self._get_live(connection_id)
        async with live.lock:
            await self._transition(live, _T.REVOKE, reason, journal=None)
        return Connection.from_record(live.record)

    async def _fresh_tokens(self, live: _Live, *, stale_generation: int | None) -> TokenSet:
        """
        Single-flight: join the connection's in-flight refresh or start one.

        With *stale_generation*, tokens of that generation or older are not
        good enough (a 401 proved them dead): a joined flight that returns
        them is followed by one of our own.
        """
        while True:
            task = live.refresh_task
            joined = task is not None
            if task is None:
                if live.failure is not None and self.clock.now() < live.failed_until:
                    # The provider just failed this refresh for good: answer
                    # with the same error rather than asking again (a copy:
                    # each caller gets its own traceback).
                    raise fresh(live.failure)
                self._check_open()
                task = self._start_flight(live, stale_generation, "refresh")
            # shield: a caller that gives up (timeout, cancel) must not abort
            # the refresh that every other caller is waiting for.
            try:
                tokens = await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if task.cancelled() and self._closing and not (current and current.cancelling()):
                    # aclose() abandoned the flight before it sent anything.
                    raise ManagerClosedError from None
                raise
            except AwxConnectionError as exc:
                # Every joined caller would otherwise raise the one object.
                error = fresh(exc)
            else:
                if not joined or stale_generation is None or tokens.generation > stale_generation:
                    return tokens
                continue
            raise error

    def _flight_done(self, live: _Live, task: asyncio.Task[TokenSet]) -> None:
        self._tasks.discard(task)
        self._sending.discard(task)
        if live.refresh_task is task:
            live.refresh_task = None
        if task.cancelled():
            return
        error = task.exception()  # also marks it retrieved for callers that gave up
        if error is None:
            live.failure = None
            live.failed_until = float("-inf")
            return
        timing = self.config.timing
        if isinstance(error, ProviderError):
            cooldown = (
                timing.invalid_client_cooldown
                if isinstance(error, InvalidClientError)
                else timing.failure_cooldown
            )
            live.failure = error
            live.failed_until = self.clock.now() + cooldown
        if (
            self.settle
            and not self._closing
            and not isinstance(error, InvalidClientError)
            and self._unsafe(live)
        ):
            # Whatever ended the flight (the provider, the store, a lost
            # lease), a token that may have been sent is resumable only
            # inside the grace window: settle it without waiting for a caller.
            asyncio.get_running_loop().call_later(timing.settle_delay, self._settle_rotation, live)

    @staticmethod
    def _unsafe(live: _Live) -> bool:
        """Whether the connection waits in ``refreshing`` with a token that may have been sent."""
        record = live.record
        journal = record.journal
        return (
            record.state is _S.REFRESHING
            and journal is not None
            and journal.unsafe_since is not None
        )

    def _settle_rotation(self, live: _Live) -> None:
        """
        A rotation whose retries ran out with its token maybe sent stays
        resumable only until the grace window closes. Settle it before then
        whether or not a caller asks again (a caller may hold a fresh access
        token for minutes): one more flight, which callers join. If that
        fails the same way, the next is scheduled (``settle_delay`` apart);
        past the deadline the
        attempt ends it as ``invalidated`` without sending. A disconnected
        customer's connection ends ``revoked``, as it should.
        """
        if self._closing or live.refresh_task is not None or not self._unsafe(live):
            return
        self._start_flight(live, None, "settle")

    def _start_flight(
        self, live: _Live, stale_generation: int | None, kind: str
    ) -> asyncio.Task[TokenSet]:
        """The connection's one refresh flight, which every caller joins."""
        task = asyncio.get_running_loop().create_task(
            self._refresh_flight(live, stale_generation),
            name=f"awx-connection-{kind}-{live.record.id}",
        )
        live.refresh_task = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._flight_done(live, t))
        return task

    def _needs_refresh(self, record: ConnectionRecord, stale_generation: int | None) -> bool:
        tokens = record.tokens
        if record.state is not _S.ACTIVE or tokens is None:
            return True
        if stale_generation is not None and tokens.generation <= stale_generation:
            return True
        skew = self.config.timing.skew(tokens.access_lifetime)
        return self.clock.now() >= tokens.access_expires_at - skew

    async def _refresh_flight(self, live: _Live, stale_generation: int | None) -> TokenSet:
        """
        One rotation for this process: under the connection's local lock,
        take the cross-process lease, or wait for the process that holds it.

        A rotation costs three store calls: the lease (which reads the
        record in the same step), the journal, and the new tokens (which
        also end the lease).
        """
        async with live.lock:
            loop = asyncio.get_running_loop()
            give_up_at = loop.time() + self.config.timing.lease_wait
            conflicts = 0
            while True:
                record = live.record
                if not self._needs_refresh(record, stale_generation):
                    # A flight that finished while we queued for the lock.
                    assert record.tokens is not None
                    return record.tokens
                if record.state not in (_S.ACTIVE, _S.REFRESHING) or record.tokens is None:
                    # Our copy may be old (reauthorized elsewhere): ask once.
                    await self._reload(live)
                    if live.record.state not in (_S.ACTIVE, _S.REFRESHING):
                        raise _unusable(live.record)
                    if live.record is not record:
                        continue
                    raise _unusable(record)  # pragma: no cover - active without tokens
                if await self._take_lease(live):
                    try:
                        # The lease came with the stored record: another
                        # process may have rotated since we cached ours, and
                        # presenting our older refresh token would be a reuse.
                        record = live.record
                        if not self._needs_refresh(record, stale_generation):
                            assert record.tokens is not None
                            return record.tokens
                        if record.state not in (_S.ACTIVE, _S.REFRESHING):
                            raise _unusable(record)
                        return await self._rotate(live)
                    except VersionConflictError:
                        # Another writer changed the connection under us (a
                        # webhook revoked it, a paused holder woke up). Our
                        # journal, if any, is in the store: look again.
                        conflicts += 1
                        if conflicts > 3:
                            raise
                        continue
                    except _LeaseLost:
                        # Our lease lapsed while we queued for a token-endpoint
                        # slot, and another process holds it now: wait for it
                        # below, like any process that finds the lease taken,
                        # for a full lease_wait from now.
                        conflicts += 1
                        if conflicts > 3:
                            raise RefreshTimeoutError(record.id) from None
                        give_up_at = loop.time() + self.config.timing.lease_wait
                    finally:
                        await self._release_lease(live)
                # Someone else rotates: wait for their write, then look again.
                remaining = give_up_at - loop.time()
                if remaining <= 0:
                    raise RefreshTimeoutError(record.id)
                newer = await self.store.wait_for_update(
                    record.id, after_version=record.version, timeout=min(remaining, 1.0)
                )
                if newer is not None:
                    live.record = newer

    async def _still_ours(self, live: _Live) -> None:
        """
        Right before a refresh POST: make sure the lease is still ours and
        nobody wrote the connection meanwhile.

        Shortly after it was taken or renewed (on the injected clock every
        replica shares), the lease cannot lapse before a POST sent now is
        over, so nobody else can take it meanwhile: nothing to check.
        "Shortly" is half of what the lease has beyond ``request_timeout``
        (5 s by default), leaving the other half as slack. Later (a slow retry, a
        paused process), it may have been taken, used and released by
        another process; renewing it then succeeds, so the renewal alone
        proves nothing. The record read with the renewal does: if the
        version moved, another process rotated or resumed our journal, and
        sending our token again would be a reuse.

        Raises:
            _LeaseLost: Someone else holds the lease now; the caller waits.
            VersionConflictError: The connection changed; the caller re-reads.
        """
        if live.leased and self.clock.now() < live.lease_sure_until:
            return
        expected = live.record.version
        if not await self._take_lease(live, adopt=False):
            raise _LeaseLost(live.record.id)
        if live.record.version != expected:
            raise VersionConflictError(live.record.id, expected, live.record.version)

    async def _take_lease(self, live: _Live, *, adopt: bool = True) -> bool:
        """
        Take or renew this process's refresh lease on the connection.

        The store answers with its record: a newer one replaces ours (with
        *adopt*, else only when it differs, which the caller then reports).
        """
        now = self.clock.now()
        ttl = self.config.timing.lease_ttl
        stored = await self.store.acquire_lease(
            live.record.id, self._owner, until=now + ttl, now=now
        )
        if stored is None:
            live.leased = False
            live.lease_sure_until = float("-inf")
            return False
        live.leased = True
        # A POST sent before this is over (answered or timed out) with half
        # of the lease's spare term still ahead: ttl 20 s, request timeout
        # 10 s -> 5 s (TimingPolicy keeps the timeout below the lease).
        live.lease_sure_until = now + (ttl - self.config.timing.request_timeout) / 2
        if stored.version > live.record.version or (
            not adopt and stored.version != live.record.version
        ):
            live.record = stored
        return True

    async def _release_lease(self, live: _Live) -> None:
        if not live.leased:
            return  # the rotation's last write ended it
        live.leased = False
        live.lease_sure_until = float("-inf")
        try:
            await self.store.release_lease(live.record.id, self._owner)
        except StoreError as exc:
            # Harmless: the lease expires by itself.
            _log.warning(
                "connection %s: could not release the refresh lease: %s",
                live.record.id,
                exc,
                extra={"connection_id": live.record.id},
            )

    async def _rotate(self, live: _Live) -> TokenSet:
        """
        The action of ``refreshing``: present the refresh token until the
        provider answers, the grace window closes, or attempts run out.

        From the moment an attempt may write its journal until what came of
        it is stored, the flight is *sending* (``_sending``): aclose() lets
        it finish. Between attempts (backoff) it is not, and a closing
        manager stops it there.
        """
        timing = self.config.timing
        task = asyncio.current_task()
        assert task is not None
        presented: TokenSet | None = None
        async for attempt in Retries(timing.retry_backoff, limit=timing.max_attempts):
            self._check_open()
            if presented is not None:
                # After a failed attempt (and its backoff): a 429 "concurrent
                # refresh" means someone else holds this token right now;
                # see whether they finished.
                await self._reload(live)
                adopted = live.record.tokens
                if (
                    live.record.state is _S.ACTIVE
                    and adopted is not None
                    and adopted.generation > presented.generation
                ):
                    return adopted
            # Everything an attempt decides from the clock and the lease (the
            # grace deadline, whether the lease is still ours) is decided
            # after a slot is free: a refresh queued behind an outage's
            # backlog may wait longer than its lease, and another replica
            # may have rotated meanwhile. A token that may already have
            # reached the provider has a deadline, so its retry goes first.
            await self._until_quiet(live)
            journal = live.record.journal
            urgent = journal is not None and journal.unsafe_since is not None
            try:
                async with self._refresh_gate.slot(urgent=urgent):
                    self._check_open()
                    self._sending.add(task)
                    sent = await self._attempt(live)
                if sent.error is None:
                    return await self._store_rotated(live, sent)
                tokens = await self._after_failed_attempt(live, sent, attempt)
                if tokens is not None:
                    return tokens
            finally:
                self._sending.discard(task)
            presented = sent.presented
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    async def _after_failed_attempt(
        self, live: _Live, sent: _Sent, attempt: Attempt
    ) -> TokenSet | None:
        """
        Record what a failed attempt taught, and decide: tokens to return
        (another writer rotated), ``None`` to retry, or raise.
        """
        connection_id = live.record.id
        exc = sent.error
        assert exc is not None
        if isinstance(exc, InvalidGrantError):
            self._counts["refresh_failure:InvalidGrantError"] += 1
            return await self._after_invalid_grant(live, sent.presented)
        self._counts[f"refresh_failure:{type(exc).__name__}"] += 1
        journal = sent.journal
        if not exc.maybe_processed and sent.first_unsafe:
            # This attempt alone made the token unsafe, and it
            # certainly did not reach the provider: undo that.
            journal = attrs.evolve(journal, unsafe_since=None)
            await self._save(live, journal=journal)
        retry = exc.retryable and not attempt.last
        # A rejected client is our configuration, not the customer's:
        # every connection is affected, so it is an error.
        _log.log(
            logging.ERROR if isinstance(exc, InvalidClientError) else logging.WARNING,
            "connection %s: refresh attempt %d failed: %s%s",
            connection_id,
            attempt.number,
            exc,
            "; retrying" if retry else "",
            extra={"connection_id": connection_id, "state": live.record.state.value},
        )
        if retry:
            return None
        if journal.unsafe_since is None:
            await self._transition(
                live,
                _T.REFRESH_ABORTED,
                f"refresh failed, tokens unchanged ({exc.code or exc.status or 'network'})",
                journal=None,
            )
        raise exc

    async def _store_rotated(self, live: _Live, sent: _Sent) -> TokenSet:
        """
        Store the pair the provider just issued, writing it again (with
        backoff) while the store fails, until it is stored or the grace
        window of the presented token closes.

        The pair is the most valuable thing the process holds: the provider
        has retired the presented token, and only the pair or a resume
        inside the grace window keeps the connection. The same record is
        written every time (same ``write_id``), so a write that committed
        with its acknowledgement lost is recognised as ours. The version
        compare-and-swap is the fence: a process that resumes the journal
        meanwhile writes it again before presenting the old token, so once
        it may have sent, this write can only lose, and the pair is
        discarded rather than stored over its work.
        """
        new_tokens = sent.new_tokens
        assert new_tokens is not None
        connection_id = live.record.id
        account_id = live.record.account_id
        if account_id is None:
            account_id = await self._fetch_account_id(connection_id, new_tokens.access_token)
        new, event = self._fire(
            live,
            _T.REFRESHED,
            f"rotated to generation {new_tokens.generation}",
            tokens=new_tokens,
            journal=None,
            account_id=account_id,
        )
        record_version = live.record.version
        timing = self.config.timing
        journal = sent.journal
        # Past this, a process resuming the journal gives the rotation up.
        deadline = (
            journal.unsafe_since if journal.unsafe_since is not None else journal.started_at
        ) + (timing.grace - timing.grace_margin)
        async for attempt in Retries(timing.retry_backoff, deadline=deadline, clock=self.clock):
            try:
                if live.record.version != record_version:
                    # A failed write's re-read found another writer's record.
                    raise VersionConflictError(connection_id, record_version, live.record.version)
                await self._commit(live, new, event, release_lease=True)
            except VersionConflictError:
                # The provider rotated for us, but the connection moved in
                # the store meanwhile (a webhook revoked it, another process
                # resumed the journal). Our pair is thrown away; if another
                # replica presented the same token, the provider kept only
                # the later of the two pairs. Rare by design (the lease), so
                # loud when it happens.
                self._counts["rotations_discarded"] += 1
                _log.warning(
                    "connection %s: the provider rotated generation %d, but the "
                    "connection changed in the store meanwhile; discarding the new "
                    "tokens and re-reading",
                    connection_id,
                    sent.presented.generation,
                    extra={"connection_id": connection_id},
                )
                raise
            except StoreError as exc:
                if attempt.last:
                    self._counts["rotations_discarded"] += 1
                    _log.error(
                        "connection %s: the provider rotated generation %d, but the store "
                        "failed %d times until the grace window closed (%s); discarding "
                        "the new tokens",
                        connection_id,
                        sent.presented.generation,
                        attempt.number,
                        exc,
                        extra={"connection_id": connection_id},
                    )
                    raise
                _log.warning(
                    "connection %s: could not store the rotated tokens (%s); writing them again",
                    connection_id,
                    exc,
                    extra={"connection_id": connection_id},
                )
            else:
                return new_tokens
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    async def _until_quiet(self, live: _Live) -> None:
        """
        Before resuming another process's unfinished rotation: wait until it
        has been seen unchanged for ``resume_wait`` real seconds.

        The lease expired by the injected clock, which replicas may read
        differently (skew, or a soak that moves it in jumps); the other
        process's request may still be on its way. Its requests end within
        ``resume_wait`` of its journal's commit, real time (``_attempt``
        writes the journal again when the store was slow), so once the
        journal has stood still that long, presenting the same token again
        cannot overlap with it. A process that has been waiting on the lease
        has mostly waited long enough already.

        Raises:
            VersionConflictError: The other process finished meanwhile; the
                caller re-reads.
        """
        record = live.record
        journal = record.journal
        if record.state is not _S.REFRESHING or journal is None or journal.unsafe_since is None:
            # No journal, or one whose every attempt certainly failed: a
            # request in flight always has an unsafe journal behind it.
            return
        timing = self.config.timing
        if self.clock.now() >= journal.unsafe_since + max(
            timing.grace, timing.grace - timing.grace_margin + timing.request_timeout
        ):
            # The writer sent only before unsafe_since + grace - grace_margin
            # by its clock, and its request ended within request_timeout:
            # by ours, with the margin's slack for skew, it is over. Waiting
            # could not change the answer (invalidated).
            return
        # Short of that, even past the journal's grace deadline by this
        # process's clock: the writer's clock may disagree, and its request
        # may still succeed.
        deadline = live.journal_seen_at + timing.resume_wait
        while (remaining := deadline - time.monotonic()) > 0:
            newer = await self.store.wait_for_update(
                record.id, after_version=record.version, timeout=remaining
            )
            if newer is not None:
                live.record = newer
                raise VersionConflictError(record.id, record.version, newer.version)

    async def _attempt(self, live: _Live) -> _Sent:
        """
        One refresh attempt, holding a token-endpoint slot: journal it, check
        the grace deadline and the lease, present the refresh token.

        The journal must be committed, and the lease confirmed, promptly: a
        replica that saw the journal commit resumes it ``resume_wait`` later
        at the earliest, and this request must be over by then. A store that
        took longer than ``resume_wait - request_timeout`` to answer (a lost
        acknowledgement retried, a stalled event loop) gets the journal
        written again, which restarts every watcher's count.

        Provider errors are returned, not raised, so the caller handles them
        (and backs off) after giving the slot back.
        """
        timing = self.config.timing
        # Before writing anything: while this process queued for the slot,
        # its lease may have lapsed and another replica taken it.
        await self._still_ours(live)
        before = live.record
        if before.state not in (_S.ACTIVE, _S.REFRESHING):
            # A retry re-read a connection revoked meanwhile.
            raise _unusable(before)
        # True when this attempt first made the token unsafe (see _Sent).
        first_unsafe = before.journal is None or before.journal.unsafe_since is None
        # How late the request may start after the journal's commit. Not
        # positive when resume_delay was shrunk below request_timeout (in
        # tests): that gives the guarantee up, so there is nothing to keep.
        slack = timing.resume_wait - timing.request_timeout
        base: RotationJournal | None = None
        for writes in range(1, _JOURNAL_WRITES + 1):
            written_at = time.monotonic()
            tokens, journal, now = await self._journal(live, base)
            await self._still_ours(live)  # free while the lease is young, as it is now
            slow = time.monotonic() - written_at
            if slack <= 0 or slow <= slack:
                break
            connection_id = live.record.id
            if writes == _JOURNAL_WRITES:
                _log.warning(
                    "connection %s: the refresh journal took %.1f s to write and confirm, "
                    "%d times; not sending",
                    connection_id,
                    slow,
                    writes,
                    extra={"connection_id": connection_id},
                )
                if first_unsafe:
                    # Nothing was sent: say so, or a resumer would count a
                    # grace deadline for a token that never left.
                    await self._transition(
                        live, _T.REFRESH_ABORTED, "the store answered too slowly", journal=None
                    )
                msg = "the store answers too slowly to start a refresh safely"
                raise StoreUnavailableError(msg)
            _log.warning(
                "connection %s: the refresh journal took %.1f s to write and confirm; "
                "writing it again before sending",
                connection_id,
                slow,
                extra={"connection_id": connection_id},
            )
            # The same attempt, written again: nothing was sent meanwhile.
            base = attrs.evolve(
                journal,
                attempts=journal.attempts - 1,
                unsafe_since=None if first_unsafe else journal.unsafe_since,
            )
        self._counts["refresh_requests"] += 1
        try:
            new_tokens = await self._transport.refresh(
                tokens.refresh_token, generation=tokens.generation + 1, now=now
            )
        except ProviderError as exc:
            return _Sent(tokens, journal, first_unsafe, error=exc)
        return _Sent(tokens, journal, first_unsafe, new_tokens=new_tokens)

    async def _journal(
        self, live: _Live, base: RotationJournal | None = None
    ) -> tuple[TokenSet, RotationJournal, float]:
        """
        Write "in flight" before sending, so that a crash mid-request leaves
        a deadline behind for whoever resumes; or end the rotation instead
        (``expired``, ``invalidated``) when sending could only do harm.

        *base* replaces the stored journal when this attempt writes its own
        again (see ``_attempt``). Returns the tokens to present, the journal
        as stored, and the injected clock's reading it was written at.
        """
        timing = self.config.timing
        record = live.record
        tokens = record.tokens
        assert tokens is not None
        now = self.clock.now()
        if record.state is _S.ACTIVE:
            if now >= tokens.refresh_expires_at:
                await self._transition(live, _T.EXPIRE, "the refresh token aged out")
                raise _unusable(live.record)
            journal = RotationJournal(
                generation=tokens.generation, started_at=now, attempts=1, unsafe_since=now
            )
            await self._transition(
                live,
                _T.REFRESH_STARTED,
                f"rotating refresh token generation {tokens.generation}",
                journal=journal,
            )
            return tokens, journal, now
        journal = base or record.journal or RotationJournal(tokens.generation, now)
        if now >= tokens.refresh_expires_at:
            # Resuming a journal whose token aged out meanwhile:
            # sending it could only earn an invalid_grant.
            await self._transition(live, _T.EXPIRE, "the refresh token aged out", journal=None)
            raise _unusable(live.record)
        if (
            journal.unsafe_since is not None
            and now >= journal.unsafe_since + timing.grace - timing.grace_margin
        ):
            await self._transition(
                live,
                _T.INVALIDATE,
                "the rotation went unanswered past the grace window; "
                "the old refresh token was not presented again",
                journal=None,
            )
            raise _unusable(live.record)
        journal = attrs.evolve(
            journal,
            attempts=journal.attempts + 1,
            unsafe_since=now if journal.unsafe_since is None else journal.unsafe_since,
        )
        await self._save(live, journal=journal)
        return tokens, journal, now

    async def _after_invalid_grant(self, live: _Live, presented: TokenSet) -> TokenSet:
        """
        Re-read the store before believing ``invalid_grant``: if another
        process rotated meanwhile, adopt its tokens; otherwise revoke.
        """
        stored = await self.store.get(live.record.id)
        if (
            stored is not None
            and stored.state is _S.ACTIVE
            and stored.tokens is not None
            and stored.tokens.generation > presented.generation
        ):
            _log.info(
                "connection %s: another writer rotated first; adopting its tokens",
                stored.id,
                extra={"connection_id": stored.id},
            )
            live.record = stored
            return stored.tokens
        await self._transition(
            live,
            _T.REVOKE,
            "the provider rejected the refresh token (invalid_grant)",
            journal=None,
        )
        raise _unusable(live.record)

    # -- webhooks -------------------------------------------------------------

    def subscribe_webhooks(
        self, callback: WebhookCallback, *, names: Collection[str] | None = None
    ) -> WebhookSubscription:
        """
        Call *callback* (sync or async) for every verified webhook event
        whose name matches one of *names* (``fnmatch`` patterns such as
        ``"account.*"``; all events when omitted, unknown names included).
        Callbacks run before the delivery is answered; one that raises is
        logged and the others still run.
        """
        sub = WebhookSubscription(
            self._webhook_subscribers, callback, None if names is None else tuple(names)
        )
        self._webhook_subscribers.append(sub)
        return sub

    async def handle_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        """
        Verify, deduplicate and act on one webhook delivery, from any web
        framework: pass the request headers and the *raw* body, answer
        ``result.status``.

        The event id is claimed in the store before anything is done, so
        deliveries of one event (Airwallex retries; replicas receive them
        concurrently) are acted on once.

        * 200: handled, or a duplicate of a handled ``id``.
        * 401: bad or stale signature. 400: not a JSON webhook.
        * 409: the same event is being handled by another delivery right
          now; Airwallex's retry will find it handled.
        * 503: it could not be handled now (the store failed, or Airwallex
          could not be asked whether a disconnect is the current
          authorization's); the claim is released, so a retry handles it.

        Nothing changes unless 200.
        """
        self._check_open()
        timing = self.config.timing
        try:
            verify_signature(
                headers,
                body,
                secrets=self.config.webhook_secrets,
                now=self.clock.now(),
                tolerance=timing.webhook_tolerance,
            )
            event = parse_webhook(body)
        except WebhookError as exc:
            _log.warning("webhook refused (%s): %s", exc.status, exc)
            self._counts["webhooks_refused"] += 1
            return WebhookResult(exc.status, str(exc))
        owner = secrets.token_hex(8)
        now = self.clock.now()
        claim = await self.store.claim_webhook(
            event.id, owner=owner, now=now, until=now + timing.webhook_claim_ttl
        )
        if claim is WebhookClaim.HANDLED:
            self._counts["webhooks_handled"] += 1
            return WebhookResult(200, "duplicate", event, duplicate=True)
        if claim is WebhookClaim.BUSY:
            return WebhookResult(409, "being handled by another delivery; retry later", event)
        try:
            event, revoked = await self._act_on_webhook(event)
            await self.store.finish_webhook(event.id, owner=owner, at=self.clock.now())
        except AwxConnectionError as exc:
            _log.warning(
                "webhook %s %s could not be handled now (%s); answering 503 so it is retried",
                event.name,
                event.id,
                exc,
            )
            await self._release_webhook(event.id, owner)
            return WebhookResult(503, f"could not be handled now: {exc}", event)
        except BaseException:
            await self._release_webhook(event.id, owner)
            raise
        self._counts["webhooks_handled"] += 1
        return WebhookResult(200, "handled", event, revoked=revoked)

    async def _act_on_webhook(self, event: WebhookEvent) -> tuple[WebhookEvent, tuple[str, ...]]:
        """Tie *event* to its connections, revoke them on a disconnect, run the subscribers."""
        records: dict[str, ConnectionRecord] = {}
        for account_id in event.account_ids:
            for record in await self.store.list_connections(account_id=account_id):
                records[record.id] = record
        event = attrs.evolve(event, connection_ids=tuple(records))
        revoked: list[str] = []
        if event.name in DISCONNECT_EVENTS:
            revoked = [
                record.id
                for record in records.values()
                if await self._revoke_for_webhook(self._adopt(record), event)
            ]
        for sub in [s for s in self._webhook_subscribers if s.matches(event)]:
            await sub.deliver(event)
        return event, tuple(revoked)

    async def _release_webhook(self, event_id: str, owner: str) -> None:
        try:
            await asyncio.shield(self.store.release_webhook(event_id, owner=owner))
        except StoreError as exc:
            # Harmless: the claim runs out by itself (webhook_claim_ttl).
            _log.warning("webhook %s: could not release its claim: %s", event_id, exc)

    async def _revoke_for_webhook(self, live: _Live, event: WebhookEvent) -> bool:
        """
        Revoke the connection for a disconnect webhook, unless the event
        belongs to an earlier authorization (deliveries are unordered: an
        old disconnect must not undo a newer reconnect).

        ``created_at`` is to the second, and the two clocks may disagree;
        where that leaves the order uncertain, the provider is asked.
        """
        async with live.lock:
            await self._reload(live)
            record = live.record
            if record.state not in (_S.ACTIVE, _S.REFRESHING):
                return False
            order = _order_of(event.created_at, record.activated_at, self.config.timing)
            if order == "before":
                _log.info(
                    "connection %s: ignoring %s %s older than the current authorization",
                    record.id,
                    event.name,
                    event.id,
                    extra={"connection_id": record.id},
                )
                return False
            if order == "after":
                await self._transition(
                    live, _T.REVOKE, f"webhook {event.name} ({event.id})", journal=None
                )
                return True
        return await self._still_connected_after(live, event)

    async def _still_connected_after(self, live: _Live, event: WebhookEvent) -> bool:
        """
        A disconnect whose order with the activation is uncertain: ask
        Airwallex with the connection's own token (``GET /api/v1/account/``).
        Refused (401), or its refresh refused (``invalid_grant``): the grant
        is gone, so the connection is revoked. Any other answer but a 5xx:
        the current authorization stands, and the event was an earlier one's.

        Returns:
            Whether the connection was revoked.

        Raises:
            ProviderError: Airwallex could not be asked (a 5xx, the network);
                the webhook is answered 503 and retried later.
        """
        connection_id = live.record.id
        try:
            token = await self.access_token(connection_id)
            await self._transport.fetch_account(Secret(token))
        except ConnectionRevokedError:
            return True  # the refresh was refused: revoked, as it says
        except ConnectionUnusableError:
            return False
        except ProviderError as exc:
            if exc.status != 401:
                if exc.status is None or exc.status >= 500:
                    raise
                status: int | None = exc.status  # 403, 404: the token works
            else:
                async with live.lock:
                    if live.record.state not in (_S.ACTIVE, _S.REFRESHING):
                        return False
                    await self._transition(
                        live,
                        _T.REVOKE,
                        f"webhook {event.name} ({event.id}); the provider refused the token",
                        journal=None,
                    )
                return True
        else:
            status = 200
        _log.info(
            "connection %s: ignoring %s %s from about when it was activated; the provider "
            "still accepts its token (%s)",
            connection_id,
            event.name,
            event.id,
            status,
            extra={"connection_id": connection_id},
        )
        return False

    # -- keep-alive -----------------------------------------------------------

    async def keepalive_pass(self) -> KeepaliveReport:
        """
        Rotate every active connection whose refresh token is due
        (:func:`~awx_connection.due_at`), at most
        ``keepalive_concurrency`` at a time; expire those whose token already
        ran out; resume rotations left ``refreshing``. Safe to run in every
        replica: leases make sure one rotates.
        """
        self._check_open()
        timing = self.config.timing
        now = self.clock.now()

        def due(summary: ConnectionSummary) -> bool:
            # A connection left refreshing (its process died, or its attempts
            # ran out on lost responses) is due at once: resuming its journal
            # now, inside the grace window, beats waiting for the next use.
            if summary.state is _S.REFRESHING:
                return True
            when = due_at(summary, timing)
            return when is not None and now >= when

        return await self._rotate_each((_S.ACTIVE, _S.REFRESHING), due, "keep-alive")

    async def settle_unfinished(self) -> KeepaliveReport:
        """
        Resume every rotation left unfinished (``refreshing``) in the store,
        by this process or any other, now; report what became of them.

        A process that crashed, shut down or lost the store mid-rotation
        leaves a journal whose refresh token may have reached Airwallex. It
        is safe to present that token again only inside the grace window,
        so it must not wait for a caller. The manager runs this at
        :meth:`open` and every ``TimingPolicy.settle_interval`` unless
        ``settle=False``. Each resume takes the connection's lease, so a
        rotation still in progress in a live replica is waited for, not
        repeated; past the grace window the journal ends ``invalidated``
        without sending anything.
        """
        self._check_open()
        return await self._rotate_each((_S.REFRESHING,), lambda _: True, "settling")

    async def _rotate_each(
        self,
        states: tuple[ConnectionState, ...],
        due: Callable[[ConnectionSummary], bool],
        what: str,
    ) -> KeepaliveReport:
        """Refresh every stored connection of *states* that is *due*, a few at a time."""
        timing = self.config.timing
        # Summaries a page at a time, keeping only what is due: a pass over
        # 100,000 idle connections decrypts nothing and holds one page.
        checked = 0
        picked: list[ConnectionSummary] = []

        def pick(page: list[ConnectionSummary]) -> None:
            nonlocal checked
            checked += len(page)
            picked.extend(s for s in page if due(s))

        await _each_page(self.store.list_summaries, states, _KEEPALIVE_PAGE, pick)
        gate = asyncio.Semaphore(timing.keepalive_concurrency)
        counts = {"rotated": 0, "expired": 0, "failed": 0}

        async def rotate(summary: ConnectionSummary) -> None:
            stale = None if summary.state is _S.REFRESHING else summary.generation
            async with gate:
                try:
                    # The one full read (and decryption) of a due connection;
                    # a held copy older than the summary is read again.
                    live = await self._get_live(summary.id)
                    if live.record.version < summary.version:
                        await self._reload(live)
                    await self._fresh_tokens(live, stale_generation=stale)
                    counts["rotated"] += 1
                except ConnectionExpiredError:
                    counts["expired"] += 1
                except AwxConnectionError as exc:
                    counts["failed"] += 1
                    _log.warning(
                        "connection %s: %s rotation failed: %s",
                        summary.id,
                        what,
                        exc,
                        extra={"connection_id": summary.id},
                    )

        await asyncio.gather(*(rotate(s) for s in picked))
        return KeepaliveReport(checked=checked, **counts)

    async def _keepalive_loop(self) -> None:
        timing = self.config.timing
        # Soon after open, jittered so that replicas started together spread
        # out: a service restarted more often than keepalive_interval would
        # otherwise never run a pass at all.
        delay = timing.keepalive_first_delay * random.uniform(0.5, 1.5)
        while True:
            await asyncio.sleep(delay)
            delay = timing.keepalive_interval
            report = await self._background("keep-alive pass", self.keepalive_pass)
            if report is not None:
                _log.info(
                    "keep-alive: %d checked, %d rotated, %d expired, %d failed",
                    report.checked,
                    report.rotated,
                    report.expired,
                    report.failed,
                )

    async def _settle_loop(self) -> None:
        interval = self.config.timing.settle_interval
        while True:
            report = await self._background("settling scan", self.settle_unfinished)
            if report is not None and report.checked:
                _log.info(
                    "settling: %d unfinished, %d settled, %d expired, %d failed",
                    report.checked,
                    report.rotated,
                    report.expired,
                    report.failed,
                )
            await asyncio.sleep(interval)

    @staticmethod
    async def _background(
        what: str, run: Callable[[], Awaitable[KeepaliveReport]]
    ) -> KeepaliveReport | None:
        """One run of a background loop's work; a failure is logged, never ends the loop."""
        try:
            return await run()
        except ManagerClosedError:
            raise asyncio.CancelledError from None
        except AwxConnectionError as exc:
            _log.warning("%s failed: %s", what, exc)
        except Exception:
            # Anything else (a custom store's bug, say) must not end the
            # loop silently: no rotation would ever run again.
            _log.exception("%s crashed; the next one runs as scheduled", what)
        return None

    # -- authorized requests ------------------------------------------------

    def _resolve(self, url: str) -> str:
        """
        *url* made absolute on the API host, refused if it names another host.

        Remembered per *url*: ``urljoin`` costs about 6 µs, more than the
        rest of a cached-token request. An application calls a bounded set
        of paths, but ids make them unbounded, so the memory is cleared when
        it is full rather than grown.
        """
        absolute = self._resolved.get(url)
        if absolute is not None:
            return absolute
        base = self.config.endpoints.api_base_url
        absolute = urljoin(base + "/", url.lstrip("/")) if "://" not in url else url
        if urlsplit(absolute)[:2] != urlsplit(base)[:2]:
            msg = f"refusing to send a connection's bearer token to another host: {url!r}"
            raise ValueError(msg)
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved.clear()
        self._resolved[url] = absolute
        return absolute

    async def request(
        self,
        connection_id: str,
        method: str,
        url: str,
        *,
        retry: bool | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientResponse:
        """
        Call the Airwallex API on behalf of *connection_id*.

        *url* is a path (``/api/v1/account/``) or a URL on the configured API
        host; a bearer token is never sent to any other host. On a 401 the
        connection is refreshed once and the request retried once; a second
        401 marks it ``revoked``. Use the response as ``async with`` or call
        ``release()``. Other keyword arguments go to aiohttp. Each attempt
        ends within ``TimingPolicy.request_timeout`` unless you pass your
        own ``timeout=``.

        Args:
            retry: Retry on 502/503/504 and network errors, up to
                ``TimingPolicy.api_retries`` times with backoff. By default
                only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) are
                retried: a retried POST could, say, pay twice. A retried body
                must be replayable (bytes, str, or ``json=``).

        Raises:
            ConnectionRevokedError: The provider rejected the refresh, or
                answered 401 again right after one.
            aiohttp.ClientError: The API could not be reached (after retries);
                raised without aiohttp's frames, which hold the bearer token.
            TimeoutError: Likewise, for a request over its timeout.
        """
        # Every API call takes this path: it reads no more than it needs
        # (access_token()'s fast path is inlined, the URL is remembered).
        target = self._resolved.get(url) or self._resolve(url)
        live = self._live.get(connection_id) or await self._get_live(connection_id)
        # The token goes straight into AuthHeaders, never into a local: a
        # traceback rendered with locals would show it.
        extra = kwargs.pop("headers", None)
        if live.fresh_until > self.clock.now():
            sent = live.record  # the record whose access token is sent
            # live.token is set whenever fresh_until is finite.
            headers = bearer_headers(live.token, extra)  # type: ignore[arg-type]
        else:
            headers = bearer_headers(await self.access_token(connection_id), extra)
            sent = live.record
        if retry is None:
            retry = method in _IDEMPOTENT or method.upper() in _IDEMPOTENT
        if self._closing:
            raise ManagerClosedError
        # Per request: a session the caller passed in may have no (or a long)
        # timeout of its own. A timeout= passed to request() wins.
        kwargs.setdefault("timeout", self._transport.timeout)
        response = await self._send(method, target, headers, retry, kwargs)
        if response.status != 401:
            return response
        response.release()
        tokens = sent.tokens
        generation = tokens.generation if tokens is not None else None
        tokens = await self._fresh_tokens(live, stale_generation=generation)
        headers["Authorization"] = f"Bearer {tokens.access_token.reveal()}"
        response = await self._send(method, target, headers, retry, kwargs)
        if response.status != 401:
            return response
        response.release()
        async with live.lock:
            if live.record.state in (_S.ACTIVE, _S.REFRESHING):
                await self._transition(
                    live, _T.REVOKE, "the API answered 401 right after a refresh", journal=None
                )
        raise _unusable(live.record)

    async def _send(
        self,
        method: str,
        target: str,
        headers: AuthHeaders,
        retry: bool,
        kwargs: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        """One API call, retried on gateway errors and network failures if *retry*."""
        attempts = 1 + (self.config.timing.api_retries if retry else 0)
        for attempt in range(1, attempts + 1):
            try:
                response = await self._transport.session.request(
                    method, target, headers=headers, **kwargs
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == attempts:
                    # aiohttp's frames below session.request() (and those of
                    # the errors it chains) hold the request headers, bearer
                    # token included; a traceback rendered with locals would
                    # show them. Same error, type, message and attributes,
                    # raised from here without them.
                    raise exc.with_traceback(None) from None
            else:
                if response.status not in _RETRY_STATUSES or attempt == attempts:
                    return response
                response.release()
            await self._backoff(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- internals ----------------------------------------------------------

    def _adopt(self, record: ConnectionRecord) -> _Live:
        """The live holder for *record*, creating it from the store's copy if new."""
        live = self._live.get(record.id)
        if live is None:
            live = _Live(record, timing=self.config.timing)
            self._live[record.id] = live
        elif record.version > live.record.version:
            live.record = record
        return live

    async def _get_live(self, connection_id: str) -> _Live:
        live = self._live.get(connection_id)
        if live is not None:
            return live
        self._check_open()
        record = await self.store.get(connection_id)
        if record is None:
            raise ConnectionNotFoundError(connection_id)
        return self._adopt(record)

    async def _reload(self, live: _Live) -> None:
        """Adopt the stored record if another writer made it newer than ours."""
        stored = await self.store.get(live.record.id)
        if stored is not None and stored.version > live.record.version:
            live.record = stored

    async def _write(
        self,
        live: _Live,
        new: ConnectionRecord,
        event: ConnectionEvent | None,
        *,
        release_lease: bool = False,
    ) -> None:
        """
        Compare-and-swap *new* over ``live.record``; on a conflict, reload and re-raise.

        With *release_lease* (and the lease held) the write also ends this
        process's lease.
        """
        release = self._owner if release_lease and live.leased else None
        try:
            await self.store.update(
                new, expected_version=live.record.version, event=event, release_lease=release
            )
        except (VersionConflictError, StoreUnavailableError):
            # A lost acknowledgement can hide a committed write: if the store
            # now holds exactly our record, the write happened.
            try:
                stored = await self.store.get(new.id)
            except StoreError:
                stored = None
            if stored == new:
                self._written(live, new, released=release is not None)
                return
            if stored is not None and stored.version > live.record.version:
                live.record = stored
            raise
        self._written(live, new, released=release is not None)

    @staticmethod
    def _written(live: _Live, new: ConnectionRecord, *, released: bool) -> None:
        live.written(new)
        if released:
            live.leased = False
            live.lease_sure_until = float("-inf")

    async def _save(self, live: _Live, **changes: Any) -> None:
        """Persist a change that is not a transition (no event)."""
        record = live.record
        new = attrs.evolve(
            record,
            version=record.version + 1,
            updated_at=self.clock.now(),
            write_id=secrets.token_hex(8),
            **changes,
        )
        await self._write(live, new, None)

    async def _transition(
        self,
        live: _Live,
        trigger: Trigger,
        reason: str,
        *,
        release_lease: bool = False,
        **changes: Any,
    ) -> ConnectionEvent:
        """
        Fire *trigger*: validate through the machine, write record and event
        by compare-and-swap, then update memory and publish. The caller holds
        ``live.lock``. With *release_lease*, the write also ends this
        process's refresh lease.
        """
        new, event = self._fire(live, trigger, reason, **changes)
        await self._commit(live, new, event, release_lease=release_lease)
        return event

    def _fire(
        self, live: _Live, trigger: Trigger, reason: str, **changes: Any
    ) -> tuple[ConnectionRecord, ConnectionEvent]:
        """The record and event *trigger* makes of ``live.record``; nothing is written."""
        return fire(
            live.record,
            trigger,
            reason,
            changes,
            now=self.clock.now(),
            write_id=secrets.token_hex(8),
        )

    async def _commit(
        self,
        live: _Live,
        new: ConnectionRecord,
        event: ConnectionEvent,
        *,
        release_lease: bool = False,
    ) -> None:
        """Write what :meth:`_fire` made, then update memory and publish."""
        await self._write(live, new, event, release_lease=release_lease)
        # A cached refresh failure belongs to the state it happened in.
        live.failure = None
        live.failed_until = float("-inf")
        self._publish(event)

    def statistics(self) -> ManagerStatistics:
        """A frozen snapshot of this manager's counters (see :class:`ManagerStatistics`)."""
        counts = self._counts
        return ManagerStatistics(
            connections_cached=len(self._live),
            refreshes_in_flight=sum(1 for live in self._live.values() if live.refresh_task),
            transitions={
                k.removeprefix("transition:"): v
                for k, v in counts.items()
                if k.startswith("transition:")
            },
            refresh_requests=counts["refresh_requests"],
            refresh_failures={
                k.removeprefix("refresh_failure:"): v
                for k, v in counts.items()
                if k.startswith("refresh_failure:")
            },
            webhooks_handled=counts["webhooks_handled"],
            webhooks_refused=counts["webhooks_refused"],
            rotations_discarded=counts["rotations_discarded"],
        )

    def _publish(self, event: ConnectionEvent) -> None:
        self._counts[f"transition:{event.trigger.value}"] += 1
        if _log.isEnabledFor(logging.INFO):  # the extra dict alone costs a microsecond
            self._log_transition(event)
        self._bus.publish(event)

    @staticmethod
    def _log_transition(event: ConnectionEvent) -> None:
        _log.info(
            "connection %s: %s -> %s (%s)",
            event.connection_id,
            event.source.value if event.source else "-",
            event.dest.value,
            event.reason,
            extra={
                "connection_id": event.connection_id,
                "trigger": event.trigger.value,
                "state": event.dest.value,
                "sequence": event.sequence,
            },
        )

    async def _backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter."""
        await asyncio.sleep(random.uniform(0, self.config.timing.backoff(attempt)))
