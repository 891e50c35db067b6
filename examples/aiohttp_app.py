"""
awx-connection in an aiohttp service: the program of docs/guide-aiohttp.md.

Configured from the environment only (``Config.from_env``,
``KeyRing.from_env`` and ``AWX_STORE``), so the same file runs against the
fake Airwallex and against Airwallex::

    python aiohttp_app.py --port 8000

Routes:

* ``GET /connect``: send the tenant to Airwallex (a dead connection is
  reauthorized, keeping its id and history);
* ``GET`` at the path of ``AWX_REDIRECT_URI``: the callback that finishes it;
* ``POST /airwallex/webhooks``: verified, deduplicated webhooks
  (``awx_connection.aiohttp.webhook_handler``); a disconnect revokes at once;
* ``GET /connection``: the tenant's connection as stored (no Airwallex call);
* ``GET /account``: the tenant's Airwallex account, fetched with its token.

The tenant comes from an ``X-Tenant`` header to keep the example short. A
real service takes it from its own authentication (a session, a verified
JWT), never from a header the client can set.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import web

from awx_connection import (
    USABLE,
    AuthorizationError,
    Config,
    ConfigurationError,
    Connection,
    ConnectionManager,
    ConnectionUnusableError,
    KeyRing,
    StoreNotMigratedError,
)
from awx_connection.aiohttp import webhook_handler
from awx_connection.stores import open_store

MANAGER = web.AppKey("awx", ConnectionManager)


def tenant_of(request: web.Request) -> str:
    """The requesting tenant; 401 without one (see the module docstring)."""
    tenant = request.headers.get("X-Tenant")
    if not tenant:
        raise web.HTTPUnauthorized(text="no tenant: send X-Tenant")
    return tenant


async def newest(manager: ConnectionManager, tenant: str) -> Connection:
    """The tenant's newest connection; 404 if it never connected."""
    connections = await manager.connections(external_id=tenant)
    if not connections:
        raise web.HTTPNotFound(text="this tenant has no Airwallex connection; connect at /connect")
    return max(connections, key=lambda c: c.updated_at)


async def connect(request: web.Request) -> web.StreamResponse:
    """302 to Airwallex's authorize page; 409 if the tenant is connected already."""
    manager, tenant = request.app[MANAGER], tenant_of(request)
    current = await manager.connections(external_id=tenant)
    if any(c.state in USABLE for c in current):
        raise web.HTTPConflict(text="this tenant is already connected")
    if current:
        authorization = await manager.reauthorize(max(current, key=lambda c: c.updated_at).id)
    else:
        authorization = await manager.begin_authorization(external_id=tenant)
    raise web.HTTPFound(authorization.url)


async def callback(request: web.Request) -> web.StreamResponse:
    """Airwallex redirects the customer here with ``?code=&state=`` (or ``?error=``)."""
    try:
        connection = await request.app[MANAGER].complete_authorization(str(request.url))
    except AuthorizationError as exc:  # forged, replayed or expired state; bad callback
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(describe(connection))


async def show_connection(request: web.Request) -> web.StreamResponse:
    """The tenant's connection as the store has it."""
    return web.json_response(describe(await newest(request.app[MANAGER], tenant_of(request))))


async def account(request: web.Request) -> web.StreamResponse:
    """One Airwallex API call; 409 with the state when the connection stopped working."""
    manager = request.app[MANAGER]
    current = await newest(manager, tenant_of(request))
    try:
        async with await manager.request(current.id, "GET", "/api/v1/account/") as response:
            if response.status >= 400:
                raise web.HTTPBadGateway(text=f"Airwallex answered {response.status}")
            return web.json_response(await response.json())
    except ConnectionUnusableError as exc:  # revoked, expired, ...: offer to reconnect
        return web.json_response(
            {"detail": str(exc), "state": exc.state.value, "reconnect": "/connect"}, status=409
        )


def describe(connection: Connection) -> dict[str, str | None]:
    """What a front end needs to know about a connection (never a token)."""
    return {
        "connection_id": connection.id,
        "state": connection.state.value,
        "reason": connection.reason,
        "account_id": connection.account_id,
        "tenant": connection.external_id,
    }


def create_app(manager: ConnectionManager) -> web.Application:
    """The service around *manager*, which it opens at startup and closes at shutdown."""

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        async with manager:
            yield

    app = web.Application()
    app[MANAGER] = manager
    app.cleanup_ctx.append(lifespan)
    app.router.add_get("/connect", connect)
    # The callback lives at the path of the registered redirect URI.
    app.router.add_get(urlsplit(manager.config.redirect_uri).path, callback)
    app.router.add_post("/airwallex/webhooks", webhook_handler(manager))
    app.router.add_get("/connection", show_connection)
    app.router.add_get("/account", account)
    return app


def app_from_env() -> web.Application:
    """
    The service configured from the environment.

    A durable store (``sqlite:///...``, ``postgresql://...``) is opened with
    ``create=False``: its schema is made by ``awx-connection db migrate``, a
    deploy step, and a service started before it fails at once, saying so.
    """
    url = os.environ.get("AWX_STORE", "memory://")
    # A durable store keeps tokens encrypted; memory:// never writes them anywhere.
    keys = None if url == "memory://" else KeyRing.from_env()
    store = open_store(url, keys=keys, create=False)
    return create_app(ConnectionManager(Config.from_env(), store=store))


def main() -> None:
    parser = argparse.ArgumentParser(description="awx-connection with aiohttp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        # access_log=None: an access log prints query strings, and the
        # callback's carries the authorization code and state.
        web.run_app(app_from_env(), host=args.host, port=args.port, access_log=None)
    except (ConfigurationError, StoreNotMigratedError) as exc:  # a setting to fix: one line
        raise SystemExit(f"aiohttp_app: {exc}") from None


if __name__ == "__main__":
    main()
