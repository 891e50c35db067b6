"""
The synchronous façade: a real `ConnectionManager`
on an event-loop thread of its own, called from any thread.

For Django, Flask and other WSGI apps, whose views are plain functions on
a pool of threads. Nothing is re-implemented: every method hands one call
of the async manager to the loop thread (`_portal`)
and waits for it, so the token cache, the single refresh in flight per
connection, rotation safety and the stores behave exactly as they do for
async code. What cannot cross threads is turned into values first: an API
response is read whole (`ApiResponse`), a webhook's answer is a
status and a body (`WebhookReply`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, Protocol, Self, TypeVar, final

import attrs
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from ._authorize import AuthorizationRequest
from ._clock import Clock, SystemClock
from ._config import Config
from ._connection import Connection
from ._embedded import EmbeddedAuthorization
from ._errors import ConfigurationError, ManagerClosedError
from ._events import ConnectionEvent, EventCallback
from ._keepalive import KeepaliveReport
from ._manager import ConnectionManager
from ._portal import BlockingState, LoopThread
from ._states import ConnectionState, Trigger
from ._statistics import ManagerStatistics
from ._store import Store
from ._webhooks import MAX_BODY_BYTES, WebhookCallback, WebhookResult
from .stores import MemoryStore

__all__ = ["ApiResponse", "BlockingManager", "BlockingSubscription", "Headers", "WebhookReply"]

R = TypeVar("R")

_log = logging.getLogger("awx_connection.blocking")

#: The name of the loop thread (``threading.current_thread().name`` in a callback).
THREAD_NAME = "awx-connection-loop"


@final
@attrs.frozen(eq=False, repr=False)
class ApiResponse:
    """
    An Airwallex API response, read whole: an aiohttp response belongs to
    the loop that made it and cannot be read from another thread, so
    `request()` reads it on the loop and hands over this
    value instead.

    Attributes:
        method: The request's method.
        url: The URL that answered (after redirects).
        status: The HTTP status.
        reason: The status line's reason phrase, if any.
        headers: The response headers (case-insensitive, read-only).
        body: The body, as bytes.
    """

    method: str
    url: str
    status: int
    reason: str | None
    headers: CIMultiDictProxy[str]
    body: bytes

    def __repr__(self) -> str:
        # Neither the body (account data) nor the query string (the caller's
        # parameters): a repr lands in logs.
        path = self.url.split("?", 1)[0]
        return f"<ApiResponse {self.method} {path} {self.status}, {len(self.body)} bytes>"

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400

    def json(self) -> Any:
        """
        The body decoded as JSON.

        Raises:
            ValueError: The body is not JSON (``orjson.JSONDecodeError``).
        """
        return orjson.loads(self.body)

    def text(self) -> str:
        """The body decoded with the charset the ``Content-Type`` names (UTF-8 by default)."""
        content_type = self.headers.get("Content-Type", "")
        charset = "utf-8"
        for part in content_type.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        return self.body.decode(charset, errors="replace")


class WebhookReply(NamedTuple):
    """
    What to answer a webhook delivery: ``status, body = reply``. The body is
    always JSON (`content_type`), the same as
    `webhook_handler` answers.
    """

    #: The HTTP status: 200 handled (or a duplicate), 400, 401, 409, 413, 503.
    status: int
    #: The JSON body, e.g. ``{"result": "revoked 1 connection(s)"}``.
    body: bytes

    @property
    def content_type(self) -> str:
        """``application/json``."""
        return "application/json"


class Headers(Protocol):
    """
    Request headers as any framework has them: a mapping (Django's
    ``request.headers``) or anything with ``items()`` (werkzeug's
    ``Headers``, which Flask's ``request.headers`` is, is not a mapping).
    """

    def items(self) -> Iterable[tuple[str, str]]:
        """Each header's name and value."""
        ...


class _Unsubscribable(Protocol):
    def unsubscribe(self) -> None: ...


@final
class BlockingSubscription:
    """
    A subscription made through `subscribe()` or
    `subscribe_webhooks()`. Its callback runs on the
    manager's loop thread. `unsubscribe()` (or leaving a ``with``
    block) stops it, from any thread.
    """

    def __init__(self, manager: BlockingManager, subscription: _Unsubscribable) -> None:
        self._manager = manager
        self._subscription = subscription
        self._active = True

    def __repr__(self) -> str:
        return f"<BlockingSubscription {'active' if self._active else 'closed'}>"

    @property
    def active(self) -> bool:
        """Whether the callback still receives events (until unsubscribed or closed)."""
        return self._active and self._manager.state is BlockingState.RUNNING

    def unsubscribe(self) -> None:
        """Stop the callback. Idempotent; a no-op once the manager is closed."""
        if not self._active:
            return
        self._active = False
        portal = self._manager._portal
        if portal.on_loop_thread():  # from a callback: already where it must run
            self._subscription.unsubscribe()
        elif portal.state is BlockingState.RUNNING:
            subscription = self._subscription
            with contextlib.suppress(ManagerClosedError):  # closed meanwhile: nothing to stop
                portal.call_soon(lambda _: subscription.unsubscribe(), None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unsubscribe()


def _check_config(config: object) -> None:
    if not isinstance(config, Config):
        msg = f"config must be a Config, not {type(config).__name__}"
        raise ConfigurationError(msg)


def _store_or_memory(store: Store | None) -> Store:
    # A None default with a converter, not a factory: help() then reads
    # "store: Store | None = None" instead of attrs' "store = NOTHING".
    return MemoryStore() if store is None else store


def _clock_or_system(clock: Clock | None) -> Clock:
    return SystemClock() if clock is None else clock


def _timeout(timeout: float | None) -> float | None:
    return _bound(timeout, "timeout")


@final
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.frozen)
class BlockingManager:
    """
    A `ConnectionManager` for synchronous code.

    Start one per process and share it between threads; every method blocks
    the calling thread until the manager, running on an event-loop thread of
    its own, has answered:

    ```python
    awx = BlockingManager(Config.from_env(), store=open_store(url, keys=keys))
    awx.start()  # Django: in AppConfig.ready(); Flask: in create_app()
    ...
    request = awx.begin_authorization(external_id=tenant)  # in a view
    token = awx.access_token(connection_id)
    ...
    awx.close()  # or use it as a context manager
    ```

    Methods take the arguments of the async manager's method of the same
    name and raise the same errors, re-raised in the calling thread with
    their own type. Concurrent calls from many threads share what the async
    manager shares: one token cache, one refresh in flight per connection.

    Each call waits at most *timeout* seconds (its own ``timeout=``
    overrides it; ``math.inf`` waits for ever), then raises
    `CallTimeoutError` and cancels its part on the
    loop. The manager's own bounds (``TimingPolicy.request_timeout`` per
    attempt, ``lease_wait``) are shorter than the default: the timeout is a
    backstop that keeps a web worker from hanging, not a tuning knob.

    Calls fail fast, with typed errors, where they cannot work:
    `ManagerClosedError` before `start()` or
    after `close()`; `BlockingCallError` from the
    loop thread itself (a subscriber callback) or in a process forked after
    `start()` (start one in each worker instead).

    Args:
        config: As for `ConnectionManager`.
        store: Likewise; opened and closed with the manager.
        clock: Likewise.
        keepalive: Likewise: the keep-alive loop runs on the loop thread.
        settle: Likewise.
        timeout: The default bound of each call, in seconds; ``None`` or
            ``math.inf``: no bound.
    """

    #: Fixed for the manager's life, as every field here: the manager on the
    #: loop is built from them at start.
    config: Config = attrs.field(validator=lambda _, __, value: _check_config(value))
    store: Store = attrs.field(default=None, converter=_store_or_memory, kw_only=True)
    clock: Clock = attrs.field(default=None, converter=_clock_or_system, kw_only=True)
    keepalive: bool = attrs.field(default=True, kw_only=True)
    settle: bool = attrs.field(default=True, kw_only=True)
    #: The default bound of each call; ``None``: no bound.
    timeout: float | None = attrs.field(default=60.0, converter=_timeout, kw_only=True)
    _portal: LoopThread[ConnectionManager] = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: LoopThread(self._lifespan, THREAD_NAME), takes_self=True
        ),
    )

    def __repr__(self) -> str:
        # The config's client id only: the secret, the store's keys and the
        # manager's cache (revealed access tokens) stay out of logs.
        return (
            f"<BlockingManager client_id={self.config.client_id!r} "
            f"store={type(self.store).__name__} {self.state.value}>"
        )

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[ConnectionManager]:
        # Built on the loop thread: the manager's locks, tasks and HTTP
        # session belong to the loop that uses them.
        manager = ConnectionManager(
            self.config,
            store=self.store,
            clock=self.clock,
            keepalive=self.keepalive,
            settle=self.settle,
        )
        async with manager:
            yield manager

    # -- lifecycle ----------------------------------------------------------

    @property
    def state(self) -> BlockingState:
        """``new``, ``starting``, ``running``, ``closing`` or ``closed``."""
        return self._portal.state

    def start(self, *, timeout: float | None = None) -> Self:
        """
        Start the loop thread and open the manager on it (the store, the
        keep-alive and settling loops). Idempotent. Returns the manager
        itself, so ``awx = BlockingManager(...).start()`` reads well.

        Raises:
            ManagerClosedError: It was closed; make a new one.
            CallTimeoutError: Opening took longer than *timeout*.
            StoreError: The store could not be opened (any error opening
                raises here, with its own type; the thread is gone).
        """
        starting = self.state is BlockingState.NEW
        self._portal.start(self._wait(timeout))
        if starting:
            # Django has no shutdown hook, and a daemon thread is simply
            # stopped at exit: close at exit instead, letting a rotation that
            # may have reached Airwallex finish. close() unregisters it.
            atexit.register(self._close_at_exit)
        return self

    def close(self, *, timeout: float | None = None) -> None:
        """
        Close the manager as ``aclose()`` does (a rotation that may have
        reached Airwallex is let finish), end the loop and join its thread.
        Idempotent, and safe from any thread but the loop's own. Calls still
        waiting get `ManagerClosedError`. A manager still running when the
        interpreter exits is closed then (``atexit``).

        *timeout* bounds the join (no bound by default; the manager's own
        close is bounded by ``TimingPolicy.close_timeout``).

        Raises:
            BlockingCallError: Called from the loop thread.
            CallTimeoutError: The thread did not end within *timeout*.
        """
        self._portal.stop(None if timeout is None else _bound(timeout, "timeout"))
        atexit.unregister(self._close_at_exit)

    def _close_at_exit(self) -> None:
        try:
            self.close(timeout=self.config.timing.close_wait + 5.0)
        except Exception:  # the process is ending: say why, do not hang it
            _log.exception("closing the blocking manager at exit failed")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self,
        function: Callable[[ConnectionManager], Coroutine[Any, Any, R]],
        *,
        timeout: float | None = None,
    ) -> R:
        """
        Run the coroutine ``function(manager)`` on the loop thread and
        return its result: anything of the async manager this class does
        not mirror (*function* is an ``async def`` taking the manager, or a
        lambda calling one of its coroutine methods):

        ```python
        awx.call(lambda manager: manager.keepalive_pass())
        ```
        """
        return self._portal.call(function, self._wait(timeout))

    def _wait(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else _bound(timeout, "timeout")

    # -- reading ------------------------------------------------------------

    def get(self, connection_id: str, *, timeout: float | None = None) -> Connection:
        """The blocking `ConnectionManager.get()`."""
        return self.call(lambda m: m.get(connection_id), timeout=timeout)

    def connections(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        external_id: str | None = None,
        account_id: str | None = None,
        timeout: float | None = None,
    ) -> list[Connection]:
        """The blocking `ConnectionManager.connections()`."""
        return self.call(
            lambda m: m.connections(states=states, external_id=external_id, account_id=account_id),
            timeout=timeout,
        )

    def history(self, connection_id: str, *, timeout: float | None = None) -> list[ConnectionEvent]:
        """The blocking `ConnectionManager.history()`."""
        return self.call(lambda m: m.history(connection_id), timeout=timeout)

    def load(
        self,
        *,
        states: Collection[ConnectionState] | None = None,
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> int:
        """The blocking `ConnectionManager.load()`."""
        return self.call(lambda m: m.load(states=states, page_size=page_size), timeout=timeout)

    def statistics(self, *, timeout: float | None = None) -> ManagerStatistics:
        """The blocking `ConnectionManager.statistics()`."""
        return self._portal.call_soon(lambda m: m.statistics(), self._wait(timeout))

    # -- authorization ------------------------------------------------------

    def begin_authorization(
        self,
        *,
        scopes: Sequence[str] | None = None,
        sign_up: bool = False,
        pkce: bool | None = None,
        external_id: str | None = None,
        timeout: float | None = None,
    ) -> AuthorizationRequest:
        """The blocking `ConnectionManager.begin_authorization()`."""
        return self.call(
            lambda m: m.begin_authorization(
                scopes=scopes, sign_up=sign_up, pkce=pkce, external_id=external_id
            ),
            timeout=timeout,
        )

    def reauthorize(
        self,
        connection_id: str,
        *,
        scopes: Sequence[str] | None = None,
        sign_up: bool = False,
        pkce: bool | None = None,
        timeout: float | None = None,
    ) -> AuthorizationRequest:
        """The blocking `ConnectionManager.reauthorize()`."""
        return self.call(
            lambda m: m.reauthorize(connection_id, scopes=scopes, sign_up=sign_up, pkce=pkce),
            timeout=timeout,
        )

    def complete_authorization(
        self,
        callback: str | Mapping[str, str | Sequence[str]],
        *,
        timeout: float | None = None,
    ) -> Connection:
        """
        The blocking `ConnectionManager.complete_authorization()`. A
        framework's query mapping is copied first (Flask's ``request.args``
        is a multidict: every value of a repeated parameter is kept, so a
        repeated ``code`` is still refused).
        """
        if not isinstance(callback, str):
            callback = _copy_query(callback)
        return self.call(lambda m: m.complete_authorization(callback), timeout=timeout)

    def exchange(self, connection_id: str, *, timeout: float | None = None) -> Connection:
        """The blocking `ConnectionManager.exchange()`."""
        return self.call(lambda m: m.exchange(connection_id), timeout=timeout)

    # -- tokens and calls ---------------------------------------------------

    def access_token(self, connection_id: str, *, timeout: float | None = None) -> str:
        """
        The blocking `ConnectionManager.access_token()`. Any number of
        threads asking at once for a token that is due share one refresh.

        A fresh token cached by the manager is read without a hop to the
        loop thread (about 1 µs instead of about 150 µs): the same one
        lookup and one comparison as the async hot path.
        """
        manager = self._portal.resource()
        live = manager._live.get(connection_id)
        # Read from this thread while the loop may be rotating: the bound
        # first, then the token, which the loop writes in the other order
        # (Live._derive). A new bound is therefore never paired with the old
        # token; an old bound that still holds is the old token's own.
        if live is not None and live.fresh_until > self.clock.now():
            token = live.token
            if token is not None:  # revoked between the two reads
                return token
        return self.call(lambda m: m.access_token(connection_id), timeout=timeout)

    def refresh(self, connection_id: str, *, timeout: float | None = None) -> Connection:
        """The blocking `ConnectionManager.refresh()`."""
        return self.call(lambda m: m.refresh(connection_id), timeout=timeout)

    def revoke(
        self,
        connection_id: str,
        reason: str = "disconnected by the partner",
        *,
        timeout: float | None = None,
    ) -> Connection:
        """The blocking `ConnectionManager.revoke()`."""
        return self.call(lambda m: m.revoke(connection_id, reason), timeout=timeout)

    def request(
        self,
        connection_id: str,
        method: str,
        url: str,
        *,
        retry: bool | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> ApiResponse:
        """
        Call the Airwallex API on behalf of *connection_id*, as
        `ConnectionManager.request()` does (bearer token,
        one refresh and retry on a 401, retries of idempotent methods), and
        return the response read whole.

        *timeout* bounds the whole call here (every attempt and reading the
        body); each attempt is also bounded by
        ``TimingPolicy.request_timeout``. Other keyword arguments
        (``json=``, ``params=``, ``headers=``, ``data=``) go to aiohttp.

        Raises:
            ConnectionRevokedError: As for the async method.
            ValueError: *url* names another host than the API's.
            aiohttp.ClientError: The API could not be reached (after retries).
            TimeoutError: An attempt ran over ``request_timeout``.
            CallTimeoutError: The whole call ran over *timeout*.
        """

        async def read(manager: ConnectionManager) -> ApiResponse:
            response = await manager.request(connection_id, method, url, retry=retry, **kwargs)
            async with response:
                body = await response.read()
                return ApiResponse(
                    method=response.method,
                    url=str(response.url),
                    status=response.status,
                    reason=response.reason,
                    headers=CIMultiDictProxy(CIMultiDict(response.headers)),
                    body=body,
                )

        return self.call(read, timeout=timeout)

    def embedded_authorization(
        self,
        connection_id: str,
        *,
        scopes: Sequence[str] = ("onboarding:write",),
        identity: str | None = None,
        on_behalf_of: str | None = None,
        timeout: float | None = None,
    ) -> EmbeddedAuthorization:
        """The blocking `ConnectionManager.embedded_authorization()`."""
        return self.call(
            lambda m: m.embedded_authorization(
                connection_id, scopes=scopes, identity=identity, on_behalf_of=on_behalf_of
            ),
            timeout=timeout,
        )

    # -- webhooks -------------------------------------------------------------

    def handle_webhook(
        self, headers: Headers, body: bytes, *, timeout: float | None = None
    ) -> WebhookResult:
        """
        See `ConnectionManager.handle_webhook()`; the headers are
        copied first. `answer_webhook()` is the same with the answer
        made for you.
        """
        copied = dict(headers.items())
        return self.call(lambda m: m.handle_webhook(copied, body), timeout=timeout)

    def answer_webhook(
        self, headers: Headers, body: bytes, *, timeout: float | None = None
    ) -> WebhookReply:
        """
        Verify, deduplicate and act on one delivery; return the status and
        JSON body to answer, for any framework's view:

        ```python
        status, body = awx.answer_webhook(request.headers, request.get_data())
        ```

        Pass the *raw* body (the signature covers its bytes). A body over
        256 KiB is answered 413 without being looked at; read at most that
        much (Flask: check ``request.content_length`` first). Otherwise the
        answer is that of `handle_webhook()`: 200 handled or duplicate,
        401 bad signature, 400 not a webhook, 409 being handled right now,
        503 try again.
        """
        if len(body) > MAX_BODY_BYTES:
            return WebhookReply(413, orjson.dumps({"error": "body too large"}))
        result = self.handle_webhook(headers, body, timeout=timeout)
        payload: dict[str, object] = {"result": result.detail}
        if result.duplicate:
            payload["duplicate"] = True
        return WebhookReply(result.status, orjson.dumps(payload))

    # -- subscriptions --------------------------------------------------------

    def subscribe(
        self,
        callback: EventCallback,
        *,
        triggers: Collection[Trigger] | None = None,
        states: Collection[ConnectionState] | None = None,
        timeout: float | None = None,
    ) -> BlockingSubscription:
        """
        Call *callback* for every matching lifecycle event, as
        `ConnectionManager.subscribe()` does.

        A plain function runs **on the manager's loop thread**, inline with
        the transition: keep it quick (queue the work for your own worker,
        send a signal), never block on I/O, and never call this manager's
        blocking methods from it (they raise
        `BlockingCallError`: the loop would wait for
        itself). Database writes of your own belong on another thread.
        """
        subscription = self._portal.call_soon(
            lambda m: m.subscribe(callback, triggers=triggers, states=states), self._wait(timeout)
        )
        return BlockingSubscription(self, subscription)

    def subscribe_webhooks(
        self,
        callback: WebhookCallback,
        *,
        names: Collection[str] | None = None,
        timeout: float | None = None,
    ) -> BlockingSubscription:
        """
        See `ConnectionManager.subscribe_webhooks()`; the callback
        runs on the loop thread, as for `subscribe()`.
        """
        subscription = self._portal.call_soon(
            lambda m: m.subscribe_webhooks(callback, names=names), self._wait(timeout)
        )
        return BlockingSubscription(self, subscription)

    # -- keep-alive and settling ---------------------------------------------

    def keepalive_pass(self, *, timeout: float | None = None) -> KeepaliveReport:
        """The blocking `ConnectionManager.keepalive_pass()`."""
        return self.call(lambda m: m.keepalive_pass(), timeout=timeout)

    def settle_unfinished(self, *, timeout: float | None = None) -> KeepaliveReport:
        """The blocking `ConnectionManager.settle_unfinished()`."""
        return self.call(lambda m: m.settle_unfinished(), timeout=timeout)

    def prune_events(self, *, timeout: float | None = None) -> int:
        """The blocking `ConnectionManager.prune_events()`."""
        return self.call(lambda m: m.prune_events(), timeout=timeout)


def _bound(timeout: float | None, name: str) -> float | None:
    """A timeout for ``Future.result``: ``None`` for no bound, else positive seconds."""
    if timeout is None or timeout == math.inf:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        msg = f"{name} must be a positive number of seconds, math.inf or None"
        raise ConfigurationError(msg)
    return float(timeout)


def _copy_query(query: Mapping[str, str | Sequence[str]]) -> dict[str, str | list[str]]:
    """A plain copy of a query mapping, every value of a multidict kept."""
    # werkzeug's MultiDict and Django's QueryDict give one value per key from
    # items() and [key]; the callback check must see a repeated parameter.
    getlist = getattr(query, "getlist", None) or getattr(query, "getall", None)
    copied: dict[str, str | list[str]] = {}
    for key in dict.fromkeys(query):
        if getlist is not None:
            values = list(getlist(key))
            copied[key] = values[0] if len(values) == 1 else values
        else:
            value = query[key]
            copied[key] = value if isinstance(value, str) else list(value)
    return copied
