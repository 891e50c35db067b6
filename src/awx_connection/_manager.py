"""
Many connections: the API a partner platform embeds.

:class:`ConnectionManager` is a façade over one-job modules sharing one
:class:`~awx_connection._core.Core` (docs/architecture.md walks through
them). What stays here: reading connections, and the hot path of a fresh
cached token (``access_token()``: one dict lookup, one comparison, no
lock), which must not pay for a call into another object.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection, Mapping, Sequence
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
from ._errors import InvalidArgumentError
from ._events import ConnectionEvent, EventBus, EventCallback, Subscription
from ._gate import RefreshGate
from ._intake import WebhookIntake
from ._keepalive import KeepaliveReport, Sweeps
from ._lifecycle import Lifecycle
from ._live import Flights, Live, LiveCache
from ._outbox import EventConsumer
from ._retention import Retention
from ._rotator import Rotator
from ._states import ConnectionState, Intent, Trigger
from ._statistics import ManagerStatistics, snapshot
from ._store import Store
from ._transport import Transport
from ._webhooks import WebhookCallback, WebhookResult, WebhookSubscription
from ._writer import Writer
from .stores import MemoryStore

__all__ = ["ConnectionManager"]


# None defaults with converters, not factories: help() then reads
# "store: Store | None = None" instead of attrs' "store = NOTHING".
def _store_or_memory(store: Store | None) -> Store:
    return MemoryStore() if store is None else store


def _clock_or_system(clock: Clock | None) -> Clock:
    return SystemClock() if clock is None else clock


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
        keepalive: Run :meth:`keepalive_pass` in the background (first
            ``TimingPolicy.keepalive_first_delay`` after :meth:`open`):
            without it an idle connection ends ``expired`` after 60-90
            days. Off for one-shot scripts (the CLI's).
        settle: Run :meth:`settle_unfinished` at :meth:`open` and every
            ``TimingPolicy.settle_interval``, and settle this process's own
            failed rotations. Off only where the code must start every
            flight itself (one-shot scripts, tests that count requests).
    """

    #: Fixed for the manager's life: its transport and caches are built from it.
    config: Config = attrs.field(on_setattr=attrs.setters.frozen)
    #: Where connections live (``store=None`` gives a :class:`MemoryStore`).
    store: Store = attrs.field(default=None, converter=_store_or_memory, kw_only=True)
    #: The time source (``clock=None`` gives the :class:`SystemClock`).
    clock: Clock = attrs.field(default=None, converter=_clock_or_system, kw_only=True)
    _session: aiohttp.ClientSession | None = attrs.field(
        default=None, kw_only=True, alias="session"
    )
    #: Whether :meth:`open` starts the keep-alive loop.
    keepalive: bool = attrs.field(default=True, kw_only=True)
    #: Whether :meth:`open` starts settling.
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
    _retention: Retention = attrs.field(init=False)
    #: The token-endpoint slots every rotation of this manager queues for.
    _gate: RefreshGate = attrs.field(init=False)
    _lifecycle: Lifecycle = attrs.field(init=False)

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
        self._retention = Retention(core)
        self._lifecycle = Lifecycle(core, flights, self._live)

    def __repr__(self) -> str:
        # Short on purpose: the live cache holds revealed access tokens.
        name = type(self.store).__name__
        client, held = self.config.client_id, len(self._live)
        return f"<ConnectionManager client_id={client!r} store={name} connections_cached={held}>"

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """
        Open the store (creating its schema) and start the background loops
        (keep-alive, settling, event retention) that are on. Idempotent.

        Raises:
            ManagerClosedError: The manager was closed; make a new one.
        """
        self._core.check_open()
        await self.store.open()
        start = self._lifecycle.start
        if self.keepalive:
            start("keepalive", self._sweeps.keepalive_loop())
        if self.settle:
            start("settle", self._sweeps.settle_loop())
        if self._retention.on:
            start("retention", self._retention.loop())

    async def aclose(self) -> None:
        """
        Close the manager: finish what may have reached Airwallex, abandon
        the rest, then close subscriptions, the transport and the store.
        Idempotent; a second call waits for the first.

        A rotation whose refresh token may be on its way finishes (its
        answer stored) within ``TimingPolicy.close_timeout``; flights that
        sent nothing are cancelled, and their callers, like every later
        call, get :class:`~awx_connection.ManagerClosedError`. A journal
        left behind is resumed by any process that opens the store.
        """
        await self._lifecycle.close()

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
        intents: Collection[Intent] | None = None,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
    ) -> Subscription:
        """
        Call *callback* (sync or async) for every matching lifecycle event:
        of one of *intents* (``[Intent.CONNECTED]`` to onboard: a refresh
        never matches), *triggers* and entering one of *states* (``None``:
        any). Each subscriber gets a connection's events in sequence order;
        one that raises is logged, and nothing else is affected.
        """
        return self._core.bus.subscribe(callback, triggers=triggers, states=states, intents=intents)

    def events(
        self,
        *,
        intents: Collection[Intent] | None = None,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
        maxsize: int = 10_000,
    ) -> Subscription:
        """``async for event in manager.events(...)``; filters as :meth:`subscribe`."""
        bus = self._core.bus
        return bus.stream(triggers=triggers, states=states, intents=intents, maxsize=maxsize)

    def consumer(
        self,
        name: str,
        *,
        batch: int = 100,
        poll_interval: float = 1.0,
        intents: Collection[Intent] | None = None,
    ) -> EventConsumer:
        """
        A durable, at-least-once reader named *name* of every connection's
        events (of *intents* only: the others count as handled), resuming
        from its committed position in any process. See :class:`EventConsumer`.
        """
        if not name:
            msg = "a consumer needs a name"
            raise ValueError(msg)
        poll = poll_interval
        return EventConsumer(self.store, name, batch=batch, poll_interval=poll, intents=intents)

    async def prune_events(self) -> int:
        """Delete events older than ``TimingPolicy.event_retention`` now; how many went."""
        return await self._retention.prune()

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

    async def find(
        self, *, external_id: str | None = None, account_id: str | None = None
    ) -> list[Connection]:
        """
        The connections of one customer (your *external_id*) or Airwallex
        account, newest first, in any state (see :meth:`begin_authorization`).

        Raises:
            InvalidArgumentError: Neither filter given, or one is not valid text.
        """
        if external_id is None and account_id is None:
            msg = "find() needs external_id= or account_id="
            raise InvalidArgumentError(msg)
        found = await self.connections(external_id=external_id, account_id=account_id)
        return found[::-1]  # the store lists oldest first, by (created_at, id)

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
        trip each. The store is read *page_size* records at a time, so the
        memory it takes beyond the held connections is one page.

        A held connection keeps its record unless the stored one is newer.
        A row that does not decrypt is logged and left out (its first use
        raises :class:`~awx_connection.DecryptionError`): secrets are
        decrypted here, so a tampered row is found now, not mid-request.

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
            external_id: Your label for it (a customer id), not a unique
                key: each call makes a new connection (:meth:`find` lists a
                customer's; :meth:`reauthorize` one to keep one).

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
        The old tokens are dropped; the connection keeps its id, its
        ``external_id`` and its history. A link still out (pending, or
        authorized with its exchange unfinished) stops working: its callback
        raises :class:`~awx_connection.UnknownStateError` and changes nothing.

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

        Valid for at least the refresh skew (``min(60 s, 20 %)`` of its
        lifetime by default); concurrent callers share one refresh.

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
        Rotate the tokens of *connection_id* now, whatever their expiry
        (joining a refresh in flight rather than starting a second).
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
        customer disconnected), after any refresh in flight.

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

        *url* is a path (``/api/v1/account/``) or a URL on the API host (a
        bearer token goes to no other host). A 401 refreshes the connection
        and retries once; a second 401 marks it ``revoked``. Use the response
        as ``async with`` or ``release()`` it. Other keyword arguments go to
        aiohttp; each attempt ends within ``TimingPolicy.request_timeout``.

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
        of *connection_id*, with its PKCE verifier, for the browser's
        ``init()`` (``result.init_options(...)``); 401s as in :meth:`request`.

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
        ``"account.*"``; all when omitted), before the delivery is answered;
        one that raises is logged and the others still run.
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
        Rotate every active connection whose refresh token is due, at most
        ``keepalive_concurrency`` at a time; expire those already run out;
        resume rotations left ``refreshing``. Leases let every replica run it.
        """
        return await self._sweeps.keepalive_pass()

    async def settle_unfinished(self) -> KeepaliveReport:
        """
        Resume every rotation left unfinished (``refreshing``) in the store,
        by this process or any other, now; report what became of them.

        A crashed, stopped or cut-off process leaves a journal whose token
        may have reached Airwallex, safe to present again only inside the
        grace window: it must not wait for a caller. Runs at :meth:`open`
        and every ``TimingPolicy.settle_interval`` unless ``settle=False``;
        a rotation in progress in a live replica is waited for (its lease),
        not repeated.
        """
        return await self._sweeps.settle_unfinished()

    # -- statistics -----------------------------------------------------------

    def statistics(self) -> ManagerStatistics:
        """A frozen snapshot of this manager's counters (see :class:`ManagerStatistics`)."""
        return snapshot(self._core.counts, self._live.values())
