"""
Many connections: the API a partner platform embeds.

:class:`ConnectionManager` is a façade. Each of its jobs lives in a module
of its own, built here once and sharing one :class:`~awx_connection._core.Core`
(configuration, clock, store, transport, event bus, counters):

========================  =====================================================
authorization             ``_authorize.Authorizer``: begin, complete (the code
                          exchange is the action of ``authorized``), reauthorize
the write spine           ``_writer.Writer``: fire a row, compare-and-swap the
                          record and its event, adopt, publish
the cache, single-flight  ``_live.LiveCache``, ``_live.Flights``: one refresh in
                          flight per connection, joined by every caller
rotation                  ``_rotator.Rotator`` performing ``_rotation``'s
                          sans-I/O decisions (journal, lease, grace window)
keep-alive, settling      ``_keepalive.Sweeps``: the work no caller asks for
webhooks                  ``_intake.WebhookIntake``: claim, act, record
API calls                 ``_api.Api``: bearer, one refresh on a 401, retries
embedded components       ``_embedded.Embedded``: the code Airwallex.js starts with
========================  =====================================================

What stays here: the lifecycle (open, the background loops, a graceful
close), reading connections, and the one hot path a fresh cached token
takes (``access_token()``: one dict lookup, one comparison, no lock), which
must not pay for a call into another object.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Collection, Coroutine, Mapping, Sequence
from typing import Any, Self, final

import aiohttp
import attrs

from ._api import Api
from ._authorize import AuthorizationRequest, Authorizer, parse_callback
from ._clock import Clock, SystemClock
from ._config import Config
from ._connection import Connection
from ._core import Core
from ._embedded import Embedded, EmbeddedAuthorization
from ._events import ConnectionEvent, EventBus, EventCallback, Subscription
from ._gate import RefreshGate
from ._intake import WebhookIntake
from ._keepalive import KeepaliveReport, Sweeps
from ._live import Flights, Live, LiveCache
from ._outbox import EventConsumer
from ._rotator import Rotator
from ._states import ConnectionState, Trigger
from ._statistics import ManagerStatistics, snapshot
from ._store import Store
from ._transport import Transport
from ._webhooks import WebhookCallback, WebhookResult, WebhookSubscription
from ._writer import Writer
from .stores import MemoryStore

__all__ = ["ConnectionManager"]


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
        keepalive: Rotate idle connections' refresh tokens before they age
            out: a pass ``TimingPolicy.keepalive_first_delay`` after
            :meth:`open`, then every ``keepalive_interval``. On by default:
            without it an idle connection ends ``expired`` after 60-90 days.
            Leases keep replicas from rotating twice. Turn it off for
            one-shot scripts (the CLI does).
        settle: Settle rotations left unfinished (``refreshing``) without
            waiting for a caller: one of this process whose retries ran out
            with its token maybe sent, and any process's (crashed, shut
            down, cut off from the store) found by a scan at :meth:`open`
            and every ``TimingPolicy.settle_interval``, inside the grace
            window. Off only where every flight must be started by the code
            itself (one-shot scripts, tests that count requests).
    """

    #: Fixed for the manager's life: its transport and caches are built from it.
    config: Config = attrs.field(on_setattr=attrs.setters.frozen)
    store: Store = attrs.field(factory=MemoryStore, kw_only=True)
    clock: Clock = attrs.field(factory=SystemClock, kw_only=True)
    _session: aiohttp.ClientSession | None = attrs.field(
        default=None, kw_only=True, alias="session"
    )
    keepalive: bool = attrs.field(default=True, kw_only=True)
    settle: bool = attrs.field(default=True, kw_only=True)
    _core: Core = attrs.field(init=False)
    # The live cache's dict itself, read by the hot path without a hop.
    _live: dict[str, Live] = attrs.field(init=False)
    _cache: LiveCache = attrs.field(init=False)
    _writer: Writer = attrs.field(init=False)
    _flights: Flights = attrs.field(init=False)
    _authorizer: Authorizer = attrs.field(init=False)
    _intake: WebhookIntake = attrs.field(init=False)
    _api: Api = attrs.field(init=False)
    _embedded: Embedded = attrs.field(init=False)
    _sweeps: Sweeps = attrs.field(init=False)
    #: The token-endpoint slots every rotation of this manager queues for.
    _gate: RefreshGate = attrs.field(init=False)
    #: The background loops (keep-alive, settling), by name.
    _loops: dict[str, asyncio.Task[None]] = attrs.field(factory=dict, init=False)
    _closed: asyncio.Event | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        config = self.config
        core = self._core = Core(
            config=config,
            clock=self.clock,
            store=self.store,
            transport=Transport(config, session=self._session),
            bus=EventBus(),
            owner=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}",
        )
        cache = self._cache = LiveCache(core)
        self._live = cache.holders
        writer = self._writer = Writer(core)
        gate = self._gate = RefreshGate(config.timing.max_concurrent_refreshes)
        rotator = Rotator(core, cache, writer, gate)
        flights = self._flights = Flights(core, rotator.flight, settle=self.settle)
        self._authorizer = Authorizer(core, cache, writer)
        self._intake = WebhookIntake(core, cache, writer, self.access_token)
        self._api = Api(core, cache, flights, writer, self.access_token)
        self._embedded = Embedded(core, self._api)
        self._sweeps = Sweeps(core, cache, flights)

    def __repr__(self) -> str:
        # Short on purpose: a repr lands in logs and tracebacks, and the
        # internals (the live cache holds revealed access tokens) must not.
        return (
            f"<ConnectionManager client_id={self.config.client_id!r} "
            f"store={type(self.store).__name__} connections_cached={len(self._live)}>"
        )

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """
        Open the store (creating its schema) and start the background loops
        (keep-alive, settling) that are on. Idempotent.

        Raises:
            ManagerClosedError: The manager was closed; make a new one.
        """
        self._core.check_open()
        await self.store.open()
        if self.keepalive:
            self._start_loop("keepalive", self._sweeps.keepalive_loop())
        if self.settle:
            self._start_loop("settle", self._sweeps.settle_loop())

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
        core = self._core
        core.closing = True
        self._closed = asyncio.Event()
        wait = self.config.timing.close_wait
        try:
            for task in self._loops.values():
                task.cancel()
            await asyncio.gather(*self._loops.values(), return_exceptions=True)
            await self._flights.drain(wait)
            await core.bus.aclose(timeout=wait)
            await core.transport.aclose()
        finally:
            self._live.clear()
            try:
                await self.store.aclose()
            finally:
                self._closed.set()

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
        return self._core.bus.subscribe(callback, triggers=triggers, states=states)

    def events(
        self,
        *,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
        maxsize: int = 10_000,
    ) -> Subscription:
        """Subscribe for ``async for event in manager.events(...)``."""
        return self._core.bus.stream(triggers=triggers, states=states, maxsize=maxsize)

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
        await self._cache.get(connection_id)
        return await self.store.read_events(connection_id)

    # -- reading ------------------------------------------------------------

    async def get(self, connection_id: str) -> Connection:
        """
        The current snapshot of *connection_id*.

        Raises:
            ConnectionNotFoundError: No such connection.
        """
        live = await self._cache.get(connection_id)
        return Connection.from_record(live.record)

    async def connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
    ) -> list[Connection]:
        """Snapshots of every stored connection matching all filters."""
        self._core.check_open()
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
        self._core.check_open()
        return await self._cache.load(states, page_size)

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
        return await self._authorizer.begin(
            scopes=scopes, sign_up=sign_up, pkce=pkce, external_id=external_id
        )

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
        live = await self._cache.get(connection_id)
        return await self._authorizer.reauthorize(live, scopes=scopes, sign_up=sign_up, pkce=pkce)

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
        self._core.check_open()
        parsed = parse_callback(callback)
        # The raw callback carries the code and the state: out of the locals
        # a traceback of an exchange error, rendered with them, would show.
        del callback
        live = await self._authorizer.complete(parsed)
        return Connection.from_record(live.record)

    async def exchange(self, connection_id: str) -> Connection:
        """
        Retry the code exchange of an ``authorized`` connection (after a
        transient failure of :meth:`complete_authorization`).

        Raises:
            IllegalTransitionError: The connection is not ``authorized``.
        """
        live = await self._cache.get(connection_id)
        await self._authorizer.exchange(live)
        return Connection.from_record(live.record)

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
            ManagerClosedError: The manager is closing or closed.
        """
        live = self._live.get(connection_id)
        if live is not None and live.fresh_until > self.clock.now():
            return live.token  # type: ignore[return-value]  # set whenever fresh_until is finite
        live = live or await self._cache.get(connection_id)
        tokens = await self._flights.fresh_tokens(live, stale_generation=None)
        return tokens.access_token.reveal()

    async def refresh(self, connection_id: str) -> Connection:
        """
        Rotate the tokens of *connection_id* now, whatever their expiry.

        Joins a refresh already in flight instead of starting a second one.
        """
        live = await self._cache.get(connection_id)
        tokens = live.record.tokens
        stale = tokens.generation if tokens is not None else None
        await self._flights.fresh_tokens(live, stale_generation=stale)
        return Connection.from_record(live.record)

    async def revoke(
        self, connection_id: str, reason: str = "disconnected by the partner"
    ) -> Connection:
        """
        Mark an ``active`` or ``refreshing`` connection ``revoked`` (your
        customer disconnected, or a webhook said so). Waits for an in-flight
        refresh to finish first.

        Raises:
            IllegalTransitionError: The connection is not active or refreshing.
        """
        live = await self._cache.get(connection_id)
        async with live.lock:
            await self._writer.transition(live, Trigger.REVOKE, reason)
        return Connection.from_record(live.record)

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
            ValueError: *url* names another host than the API's.
            aiohttp.ClientError: The API could not be reached (after retries);
                raised without aiohttp's frames, which hold the bearer token.
            TimeoutError: Likewise, for a request over its timeout.
        """
        return await self._api.request(connection_id, method, url, retry, kwargs)

    async def embedded_authorization(
        self,
        connection_id: str,
        *,
        scopes: Sequence[str] = ("onboarding:write",),
        identity: str | None = None,
        on_behalf_of: str | None = None,
    ) -> EmbeddedAuthorization:
        """
        A single-use code for Airwallex.js embedded components (KYC, RFI...)
        of *connection_id*, with its PKCE verifier: pass
        ``result.init_options(enabled_elements=[...])`` to the browser's
        ``init()``. Tokens and 401s are handled as by `request()`.

        Args:
            scopes: Sent as ``scope``, a list (``onboarding:write`` for KYC).
            identity: Your id for the user (embedded SCA).
            on_behalf_of: Sent as ``x-on-behalf-of`` (a platform acting
                for one of its connected accounts).

        Raises:
            InvalidArgumentError: Bad *scopes*, *identity* or *on_behalf_of*;
                nothing was sent.
            EmbeddedAuthorizationError: Airwallex refused (e.g. a scope).
            ConnectionUnusableError: The connection is not active, or
                answered 401 again after a refresh (then ``revoked``).
        """
        return await self._embedded.authorize(connection_id, scopes, identity, on_behalf_of)

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
        return self._intake.subscribe(callback, names)

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
        return await self._intake.handle(headers, body)

    # -- keep-alive and settling ---------------------------------------------

    async def keepalive_pass(self) -> KeepaliveReport:
        """
        Rotate every active connection whose refresh token is due
        (:func:`~awx_connection.due_at`), at most
        ``keepalive_concurrency`` at a time; expire those whose token already
        ran out; resume rotations left ``refreshing``. Safe to run in every
        replica: leases make sure one rotates.
        """
        return await self._sweeps.keepalive_pass()

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
        return await self._sweeps.settle_unfinished()

    # -- statistics -----------------------------------------------------------

    def statistics(self) -> ManagerStatistics:
        """A frozen snapshot of this manager's counters (see :class:`ManagerStatistics`)."""
        return snapshot(self._core.counts, self._live.values())
