"""
The partner app's routes, on one :class:`~awx_connection.ConnectionManager`.

==========================================  ===========================================
``GET /``                                    dashboard (HTML)
``POST /connect``, ``POST /signup``          begin_authorization -> 302 to Airwallex
``GET <path of the redirect URI>``           complete_authorization -> 302 to ``/``
``POST /connections/{id}/disconnect``        revoke -> 302 to ``/``
``POST /connections/{id}/reconnect``         reauthorize -> 302 to Airwallex
``GET /connections/{id}/onboarding``         the embedded KYC step (HTML)
``POST /connections/{id}/onboarding/code``   embedded_authorization -> init() options
``GET /connections/{id}/history``            the connection's stored events (HTML)
``GET /connections``, ``/connections/{id}``  snapshots as JSON (no secrets in them)
``GET /connections/{id}/events``             the connection's stored events as JSON
``GET /events``                              ConnectionEvents and onboarding, SSE
``POST /airwallex/webhooks``                 ``webhook_handler(manager)``
==========================================  ===========================================

Secrets stay out of logs and pages: the access log writes paths without
query strings (the callback's query carries the code and ``state``), every
response is ``no-store`` and sends no referrer to other sites, and errors
become fixed pages instead of tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from awx_connection import (
    AuthorizationError,
    AwxConnectionError,
    Connection,
    ConnectionEvent,
    ConnectionManager,
    ConnectionNotFoundError,
    ConnectionState,
    ConnectionUnusableError,
    EmbeddedAuthorizationError,
    IllegalTransitionError,
    ProviderError,
    StateExpiredError,
    Subscription,
    SubscriptionOverflowError,
    WebhookEvent,
)
from awx_connection.aiohttp import webhook_handler

from .onboarding import Onboarding
from .pages import (
    MAX_CUSTOMER,
    dashboard_page,
    error_page,
    history_page,
    onboarding_page,
)

__all__ = [
    "APP_PATHS",
    "WEBHOOK_PATH",
    "PathOnlyAccessLogger",
    "build_app",
    "connection_json",
    "event_json",
]

WEBHOOK_PATH: Final = "/airwallex/webhooks"
#: Paths of the app's own routes, which the redirect URI must not take.
APP_PATHS: Final = frozenset(
    {"/", "/connect", "/signup", "/connections", "/events", "/favicon.ico", WEBHOOK_PATH}
)

#: How many recent events the dashboard's feed starts with.
RECENT_EVENTS: Final = 20
#: What the embedded KYC component needs (API reference "Embedded Components").
ONBOARDING_SCOPES: Final = ("onboarding:write",)

#: Seconds between SSE comments: they keep proxies from closing an idle
#: stream and let the server notice a closed tab without waiting for an event.
HEARTBEAT: Final = 15.0

_log = logging.getLogger("partner_app")

MANAGER: Final = web.AppKey("manager", ConnectionManager)
MODE: Final = web.AppKey("mode", str)
ONBOARDING: Final = web.AppKey("onboarding", Onboarding)
SDK_URL: Final = web.AppKey("sdk_url", str)
STREAMS: Final = web.AppKey[set[Subscription]]("streams")
_NONCE: Final = "partner_app.csp_nonce"
_COMPONENTS: Final = "partner_app.components_sources"


def event_json(event: ConnectionEvent) -> dict[str, Any]:
    """One lifecycle event as JSON (it carries no secret, so neither does this)."""
    return {
        "connection_id": event.connection_id,
        "sequence": event.sequence,
        "trigger": event.trigger.value,
        "source": None if event.source is None else event.source.value,
        "dest": event.dest.value,
        "reason": event.reason,
        "at": event.at,
        "account_id": event.account_id,
        "external_id": event.external_id,
    }


def connection_json(connection: Connection, onboarding: str | None = None) -> dict[str, Any]:
    """A connection snapshot as JSON: state, account, expiries, onboarding; never a token."""
    return {
        "onboarding": onboarding,
        "id": connection.id,
        "state": connection.state.value,
        "reason": connection.reason,
        "account_id": connection.account_id,
        "external_id": connection.external_id,
        "scopes": list(connection.scopes),
        "access_expires_at": connection.access_expires_at,
        "refresh_expires_at": connection.refresh_expires_at,
        "token_generation": connection.token_generation,
        "sequence": connection.sequence,
        "created_at": connection.created_at,
        "updated_at": connection.updated_at,
    }


class PathOnlyAccessLogger(AbstractAccessLogger):
    """
    Log method, path, status and time, never the query string.

    aiohttp's default format logs the request line, and the OAuth callback's
    query holds a live authorization code and the ``state``.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write one access-log line."""
        self.logger.info(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )


def _nonce(request: web.Request) -> str:
    nonce = request.get(_NONCE)
    if nonce is None:
        nonce = request[_NONCE] = secrets.token_urlsafe(16)
    return str(nonce)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def _error(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return _html(error_page(title, message, nonce=_nonce(request)), status)


def _components_sources(sdk_url: str) -> str:
    """
    Where the embedded components may load from and talk to: the SDK's
    origin (the fake's), or every Airwallex host for the real Airwallex.js,
    whose own hosts are not documented (assumed ``*.airwallex.com``).
    """
    parts = urlsplit(sdk_url)
    host = parts.hostname or ""
    if host == "airwallex.com" or host.endswith(".airwallex.com"):
        return "https://*.airwallex.com"
    return f"{parts.scheme}://{parts.netloc}"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """
    Headers for every response, errors and redirects included.

    ``no-store`` and a ``same-origin`` referrer policy because redirects to
    and from Airwallex carry ``state`` and codes in their URLs (not
    ``no-referrer``: it makes browsers send ``Origin: null`` on our own form
    posts, which :func:`_same_origin` refuses). The CSP allows only this
    response's own inline style and script (by nonce) and same-origin fetches.
    """
    nonce = request.get(_NONCE)
    source = f"'nonce-{nonce}'" if nonce else "'none'"
    # Only the onboarding step runs Airwallex's script (by nonce) and talks
    # to Airwallex from the browser; every other page stays same-origin.
    components = request.get(_COMPONENTS, "")
    extra = f" {components}" if components else ""
    frames = extra or " 'none'"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src {source}; style-src {source}; "
        f"connect-src 'self'{extra}; frame-src{frames}; img-src 'self'{extra}; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def _same_origin(request: web.Request) -> None:
    """
    Refuse a cross-site form post (a browser always sends ``Origin`` on POST).

    Not a substitute for your app's login and CSRF tokens; it stops another
    site from connecting or disconnecting accounts through a visitor's browser.
    """
    origin = request.headers.get("Origin")
    # Hosts, not schemes: behind a TLS-terminating proxy the browser says
    # https while this server sees http.
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="cross-origin request refused")


async def _recent_events(manager: ConnectionManager, connections: list[Connection]) -> list[Any]:
    """
    The last :data:`RECENT_EVENTS` stored events of the (newest 50) listed
    connections, oldest first: the feed starts with history, not empty.
    """
    events: list[ConnectionEvent] = []
    for connection in connections[:50]:
        try:
            events.extend(await manager.history(connection.id))
        except ConnectionNotFoundError:
            continue
    events.sort(key=lambda e: (e.at, e.connection_id, e.sequence))
    return events[-RECENT_EVENTS:]


async def dashboard(request: web.Request) -> web.Response:
    """List every connection, newest first, with the feed of recent then live events."""
    manager = request.app[MANAGER]
    connections = await manager.connections()
    connections.sort(key=lambda c: c.created_at, reverse=True)
    page = dashboard_page(
        connections,
        onboarding=request.app[ONBOARDING].status,
        recent=await _recent_events(manager, connections),
        mode=request.app[MODE],
        nonce=_nonce(request),
    )
    return _html(page)


async def _authorize(request: web.Request, *, sign_up: bool) -> web.Response:
    """
    Start an authorization and send the browser to Airwallex.

    The optional customer reference becomes the connection's ``external_id``:
    in your app, the id of the signed-in customer, never a form field.
    """
    _same_origin(request)
    form = await request.post()
    customer = form.get("customer")
    external_id = None
    if isinstance(customer, str) and customer.strip():
        external_id = customer.strip()[:MAX_CUSTOMER]
    try:
        authorization = await request.app[MANAGER].begin_authorization(
            sign_up=sign_up, external_id=external_id
        )
    except AwxConnectionError as exc:
        _log.warning("could not start an authorization: %s", exc)
        return _error(request, 500, "Could not start", "The connection could not be started.")
    raise web.HTTPFound(authorization.url)


async def connect(request: web.Request) -> web.Response:
    """The "Connect Airwallex" button: a pending connection, then Airwallex's consent page."""
    return await _authorize(request, sign_up=False)


async def signup(request: web.Request) -> web.Response:
    """The "Sign up for Airwallex" button: as connect, but the customer may create an account."""
    return await _authorize(request, sign_up=True)


async def callback(request: web.Request) -> web.Response:
    """
    Airwallex's redirect back: exchange the code, then show the dashboard.

    Anything but a new active connection gets an error page in words; the
    library's messages never hold the code or the state, and nothing else
    of the request is echoed.
    """
    manager = request.app[MANAGER]
    try:
        connection = await manager.complete_authorization(str(request.url))
    except StateExpiredError:
        return _error(request, 400, "Link expired", "This authorization expired; start again.")
    except AuthorizationError as exc:
        _log.warning("callback refused: %s", exc)
        return _error(request, 400, "Callback refused", f"This callback was refused: {exc}")
    except ProviderError as exc:
        _log.warning("code exchange failed: %s", exc)
        return _error(
            request, 502, "Airwallex did not answer", "The connection could not be completed."
        )
    if connection.state is ConnectionState.ACTIVE:
        raise web.HTTPFound("/")
    if connection.state is ConnectionState.DENIED:
        return _error(
            request, 200, "Not connected", f"Airwallex was not connected: {connection.reason}."
        )
    return _error(
        request, 502, "Not connected", f"Airwallex refused the connection: {connection.reason}."
    )


async def disconnect(request: web.Request) -> web.Response:
    """The Disconnect button: mark the connection revoked, back to the dashboard."""
    _same_origin(request)
    connection_id = request.match_info["connection_id"]
    try:
        await request.app[MANAGER].revoke(connection_id, "disconnected from the dashboard")
    except ConnectionNotFoundError:
        return _error(request, 404, "No such connection", "That connection does not exist.")
    except IllegalTransitionError:
        return _error(request, 409, "Not connected", "That connection holds no tokens.")
    raise web.HTTPFound("/")


async def reconnect(request: web.Request) -> web.Response:
    """
    The Reconnect button of a connection that needs the customer (revoked,
    invalidated, expired, denied, failed): the same connection, a new
    authorize URL; the callback makes it active again.
    """
    _same_origin(request)
    connection_id = request.match_info["connection_id"]
    try:
        authorization = await request.app[MANAGER].reauthorize(connection_id)
    except ConnectionNotFoundError:
        return _error(request, 404, "No such connection", "That connection does not exist.")
    except IllegalTransitionError:
        return _error(request, 409, "Still connected", "That connection needs no reconnecting.")
    raise web.HTTPFound(authorization.url)


async def onboarding(request: web.Request) -> web.Response:
    """The "Continue onboarding" step: a page that starts the embedded KYC component."""
    try:
        connection = await request.app[MANAGER].get(request.match_info["connection_id"])
    except ConnectionNotFoundError:
        return _error(request, 404, "No such connection", "That connection does not exist.")
    sdk_url = request.app[SDK_URL]
    request[_COMPONENTS] = _components_sources(sdk_url)
    status = request.app[ONBOARDING].status(connection.id)
    page = onboarding_page(connection, status=status, sdk_url=sdk_url, nonce=_nonce(request))
    return _html(page)


async def onboarding_code(request: web.Request) -> web.Response:
    """
    A fresh embedded-components code for the page's ``init()`` (JSON, no-store).

    Asked for when the component starts, not rendered into the page: the
    code lives 30 seconds and works once, so a reload needs a new one.
    """
    _same_origin(request)
    connection_id = request.match_info["connection_id"]
    try:
        code = await request.app[MANAGER].embedded_authorization(
            connection_id, scopes=ONBOARDING_SCOPES
        )
    except ConnectionNotFoundError:
        return web.json_response({"error": "no such connection"}, status=404)
    except ConnectionUnusableError as exc:
        return web.json_response({"error": f"not connected: {exc}"}, status=409)
    except (EmbeddedAuthorizationError, ProviderError) as exc:
        _log.warning("embedded components code refused: %s", exc)
        return web.json_response({"error": "Airwallex refused to start onboarding"}, status=502)
    request.app[ONBOARDING].started(connection_id)
    return web.json_response(code.init_options(enabled_elements=["onboarding"]))


async def history(request: web.Request) -> web.Response:
    """One connection's stored events, oldest first (HTML)."""
    manager = request.app[MANAGER]
    connection_id = request.match_info["connection_id"]
    try:
        connection = await manager.get(connection_id)
        events = await manager.history(connection_id)
    except ConnectionNotFoundError:
        return _error(request, 404, "No such connection", "That connection does not exist.")
    return _html(history_page(connection, events, nonce=_nonce(request)))


async def history_json(request: web.Request) -> web.Response:
    """One connection's stored events as JSON."""
    try:
        events = await request.app[MANAGER].history(request.match_info["connection_id"])
    except ConnectionNotFoundError:
        return web.json_response({"error": "no such connection"}, status=404)
    return web.json_response([event_json(e) for e in events])


def _on_account_active(app: web.Application) -> Callable[[WebhookEvent], None]:
    """The webhook subscriber: ``account.active`` moves its connections to onboarded."""

    def on_event(event: WebhookEvent) -> None:
        for connection_id in event.connection_ids:
            _log.info("connection %s: account active, onboarding done", connection_id)
            app[ONBOARDING].onboarded(connection_id)

    return on_event


async def favicon(request: web.Request) -> web.Response:
    """No icon, but no 404 in the browser's console either."""
    return web.Response(status=204)


async def list_connections(request: web.Request) -> web.Response:
    """Every connection as JSON: the dashboard's script catches up with it."""
    connections = await request.app[MANAGER].connections()
    status = request.app[ONBOARDING].status
    return web.json_response([connection_json(c, status(c.id)) for c in connections])


async def get_connection(request: web.Request) -> web.Response:
    """One connection as JSON: the dashboard reads token expiries from it."""
    try:
        connection = await request.app[MANAGER].get(request.match_info["connection_id"])
    except ConnectionNotFoundError:
        return web.json_response({"error": "no such connection"}, status=404)
    status = request.app[ONBOARDING].status(connection.id)
    return web.json_response(connection_json(connection, status))


def _frame(event: ConnectionEvent) -> bytes:
    """One SSE message; JSON has no raw newline, so one ``data:`` line holds it."""
    data = json.dumps(event_json(event), separators=(",", ":"))
    frame = f"event: connection\nid: {event.connection_id}:{event.sequence}\ndata: {data}\n\n"
    return frame.encode()


def _onboarding_frame(connection_id: str, status: str) -> bytes:
    data = json.dumps({"connection_id": connection_id, "onboarding": status})
    return f"event: onboarding\ndata: {data}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """
    Stream every ConnectionEvent of this process, and every onboarding
    change, as Server-Sent Events (``event: connection``, ``event: onboarding``).

    The subscriptions are made before the response starts, so a client that
    saw the stream open misses nothing from then on. ``manager.events()``
    bounds the queue; a client that falls that far behind is disconnected
    and its browser reconnects and catches up from ``/connections``.
    """
    subscription = request.app[MANAGER].events(maxsize=1000)
    changes = request.app[ONBOARDING].watch()
    streams = request.app[STREAMS]
    streams.add(subscription)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    iterator = aiter(subscription)
    pending: asyncio.Future[Any] | None = None  # the next ConnectionEvent
    change: asyncio.Future[Any] | None = None  # the next (connection id, onboarding)
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n: stream open\n\n")
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            if change is None:
                change = asyncio.ensure_future(changes.get())
            done, _ = await asyncio.wait(
                {pending, change}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                await response.write(b": heartbeat\n\n")
                continue
            if change in done:
                await response.write(_onboarding_frame(*change.result()))
                change = None
            if pending in done:
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    break  # the app is shutting down
                pending = None
                await response.write(_frame(event))
    except (ConnectionResetError, SubscriptionOverflowError):
        pass  # the tab went away, or fell too far behind and will reconnect
    finally:
        subscription.unsubscribe()
        streams.discard(subscription)
        request.app[ONBOARDING].unwatch(changes)
        for future in (pending, change):
            if future is not None and not future.done():
                future.cancel()
    return response


async def _close_streams(app: web.Application) -> None:
    """End every event stream at shutdown, so no handler keeps the server waiting."""
    streams: set[Subscription] = app[STREAMS]
    for subscription in tuple(streams):
        subscription.unsubscribe()


def build_app(
    manager: ConnectionManager, *, callback_path: str, mode: str, sdk_url: str
) -> web.Application:
    """
    The partner app on *manager*.

    Args:
        manager: An open manager; the caller owns it and closes it.
        callback_path: The path of ``Config.redirect_uri``, where Airwallex
            sends the customer back.
        mode: Which Airwallex this is, shown on the dashboard.
        sdk_url: Where Airwallex.js embedded components load from (the
            fake's stand-in, or Airwallex's CDN).
    """
    app = web.Application()
    app[MANAGER] = manager
    app[MODE] = mode
    app[SDK_URL] = sdk_url
    app[ONBOARDING] = Onboarding()
    app[STREAMS] = set[Subscription]()
    manager.subscribe_webhooks(_on_account_active(app), names=["account.active"])
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/", dashboard)
    app.router.add_post("/connect", connect)
    app.router.add_post("/signup", signup)
    app.router.add_get(callback_path, callback)
    app.router.add_post("/connections/{connection_id}/disconnect", disconnect)
    app.router.add_post("/connections/{connection_id}/reconnect", reconnect)
    app.router.add_get("/connections/{connection_id}/onboarding", onboarding)
    app.router.add_post("/connections/{connection_id}/onboarding/code", onboarding_code)
    app.router.add_get("/connections/{connection_id}/history", history)
    app.router.add_get("/connections/{connection_id}/events", history_json)
    app.router.add_get("/connections", list_connections)
    app.router.add_get("/connections/{connection_id}", get_connection)
    app.router.add_get("/events", events)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_post(WEBHOOK_PATH, webhook_handler(manager))
    return app
