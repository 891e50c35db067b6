"""
awx-connection in a FastAPI app: the program of docs/guide-fastapi.md. One
manager per process, tenants mapped to connections through ``external_id``,
and a dependency for authorized calls.

* The lifespan opens one :class:`ConnectionManager` for the whole app (one
  token cache, one single-flight refresh per connection) and closes it.
* ``GET /connect`` sends the tenant to Airwallex; the callback route
  finishes the authorization; ``POST /airwallex/webhooks`` takes webhooks.
* ``GET /connection`` shows the tenant's connection as stored (no call to
  Airwallex).
* The ``authorized_session`` dependency turns "this request's tenant" into
  an object that calls the Airwallex API for that tenant; ``/account`` uses
  it. A connection that stopped working answers 409 with where to reconnect.

The tenant comes from an ``X-Tenant`` header to keep the example short. A
real app takes it from its own authentication (a session, a verified JWT),
never from a header the client can set.

Served by any ASGI server, configured from the environment
(``Config.from_env``, ``KeyRing.from_env`` and ``AWX_STORE``)::

    uvicorn --factory fastapi_app:app_from_env --port 8000 --no-access-log

(``--no-access-log``, or a filter on the callback route: an access log
prints query strings, and the callback's carries the code and ``state``.)

Run as a script, it drives the app in-process (httpx's ``ASGITransport``)
against the embedded fake Airwallex and prints what each route answers::

    python fastapi_app.py
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse

from awx_connection import (
    USABLE,
    AuthorizationError,
    Clock,
    Config,
    Connection,
    ConnectionManager,
    ConnectionUnusableError,
    Endpoints,
    KeyRing,
    Store,
    SystemClock,
)
from awx_connection.stores import MemoryStore, open_store
from awx_connection.testing import FakeAirwallex, ManualClock

#: The largest webhook body read (Airwallex events are a few kilobytes).
MAX_WEBHOOK_BYTES = 256 * 1024


def manager_of(request: Request) -> ConnectionManager:
    """The app's one manager, opened by the lifespan."""
    manager = getattr(request.app.state, "awx", None)
    if not isinstance(manager, ConnectionManager):
        msg = "no ConnectionManager: the app's lifespan did not run"
        raise RuntimeError(msg)
    return manager


Manager = Annotated[ConnectionManager, Depends(manager_of)]


def tenant_of(x_tenant: Annotated[str | None, Header()] = None) -> str:
    """The requesting tenant; 401 without one (see the module docstring)."""
    if not x_tenant:
        raise HTTPException(401, "no tenant: send X-Tenant")
    return x_tenant


Tenant = Annotated[str, Depends(tenant_of)]


class AirwallexSession:
    """Authorized Airwallex API calls on behalf of one tenant's connection."""

    def __init__(self, manager: ConnectionManager, connection_id: str) -> None:
        self.manager = manager
        self.connection_id = connection_id

    async def get_json(self, path: str) -> Any:
        """``GET`` *path*; the manager adds a valid token and refreshes it as needed."""
        async with await self.manager.request(self.connection_id, "GET", path) as response:
            if response.status >= 400:
                raise HTTPException(502, f"Airwallex answered {response.status} to GET {path}")
            return await response.json()


async def authorized_session(manager: Manager, tenant: Tenant) -> AirwallexSession:
    """
    The tenant's usable connection, as an :class:`AirwallexSession`.

    401 without a tenant; 404 when the tenant never connected Airwallex;
    409 with the state and reason when its connection stopped working
    (revoked, expired, ...), so the front end can offer to reconnect. The
    newest usable connection wins if a tenant somehow has several.
    """
    connections = await manager.connections(external_id=tenant)
    if not connections:
        raise HTTPException(404, "this tenant has no Airwallex connection; connect at /connect")
    usable = [c for c in connections if c.state in USABLE]
    if not usable:
        newest = max(connections, key=lambda c: c.updated_at)
        raise ConnectionUnusableError(newest.id, newest.state, newest.reason)
    return AirwallexSession(manager, max(usable, key=lambda c: c.updated_at).id)


Session = Annotated[AirwallexSession, Depends(authorized_session)]


def describe(connection: Connection) -> dict[str, Any]:
    """What a front end needs to know about a connection (never a token)."""
    return {
        "connection_id": connection.id,
        "state": connection.state.value,
        "reason": connection.reason,
        "account_id": connection.account_id,
        "tenant": connection.external_id,
    }


def create_app(
    config: Config, *, store: Store | None = None, clock: Clock | None = None
) -> FastAPI:
    """
    The app, for *config*; *store* and *clock* as for :class:`ConnectionManager`
    (an in-memory store and the system clock by default).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with ConnectionManager(
            config,
            store=MemoryStore() if store is None else store,
            clock=SystemClock() if clock is None else clock,
        ) as manager:
            app.state.awx = manager
            yield

    app = FastAPI(title="awx-connection with FastAPI", lifespan=lifespan)

    @app.exception_handler(ConnectionUnusableError)
    async def connection_unusable(request: Request, exc: Exception) -> JSONResponse:
        # From the dependency, or from a call that found the connection dead
        # (the customer disconnected, the grant expired) during this request.
        assert isinstance(exc, ConnectionUnusableError)
        return JSONResponse(
            {"detail": str(exc), "state": exc.state.value, "reconnect": "/connect"}, status_code=409
        )

    @app.get("/connect")
    async def connect(manager: Manager, tenant: Tenant) -> RedirectResponse:
        """Send the tenant to Airwallex; a dead connection is reauthorized, keeping its history."""
        current = await manager.connections(external_id=tenant)
        if any(c.state in USABLE for c in current):
            raise HTTPException(409, "this tenant is already connected")
        if current:
            newest = max(current, key=lambda c: c.updated_at)
            authorization = await manager.reauthorize(newest.id)
        else:
            authorization = await manager.begin_authorization(external_id=tenant)
        return RedirectResponse(authorization.url, status_code=302)

    # The callback lives at the path of the registered redirect URI.
    @app.get(urlsplit(config.redirect_uri).path)
    async def callback(request: Request, manager: Manager) -> dict[str, Any]:
        """Airwallex redirects the customer here with ``?code=&state=`` (or ``?error=``)."""
        try:
            connection = await manager.complete_authorization(str(request.url))
        except AuthorizationError as exc:  # forged, replayed or expired state; bad callback
            raise HTTPException(400, str(exc)) from None
        return describe(connection)

    @app.post("/airwallex/webhooks")
    async def webhooks(request: Request, manager: Manager) -> JSONResponse:
        """Verified, deduplicated webhooks; a disconnect revokes the connection at once."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BYTES:
                return JSONResponse({"error": "body too large"}, status_code=413)
        result = await manager.handle_webhook(request.headers, bytes(body))
        return JSONResponse({"result": result.detail}, status_code=result.status)

    @app.get("/connection")
    async def show_connection(manager: Manager, tenant: Tenant) -> dict[str, Any]:
        """The tenant's newest connection as the store has it; 404 if it never connected."""
        connections = await manager.connections(external_id=tenant)
        if not connections:
            raise HTTPException(404, "this tenant has no Airwallex connection; connect at /connect")
        return describe(max(connections, key=lambda c: c.updated_at))

    @app.get("/account")
    async def account(session: Session) -> Any:
        """The tenant's Airwallex account, fetched with the tenant's connection."""
        return await session.get_json("/api/v1/account/")

    return app


def app_from_env() -> FastAPI:
    """
    The app configured from the environment, for ``uvicorn --factory``.

    A durable store (``sqlite:///...``, ``postgresql://...``) is opened with
    ``create=False``: its schema is made by ``awx-connection db migrate``, a
    deploy step, and an app started before it fails at once, saying so.
    """
    url = os.environ.get("AWX_STORE", "memory://")
    # A durable store keeps tokens encrypted; memory:// never writes them anywhere.
    keys = None if url == "memory://" else KeyRing.from_env()
    return create_app(Config.from_env(), store=open_store(url, keys=keys, create=False))


async def main() -> None:
    """Connect a tenant and read its account, all in-process against the fake."""
    redirect_uri = "http://127.0.0.1:8000/airwallex/callback"
    clock = ManualClock()
    async with FakeAirwallex(clock=clock, redirect_uris=[redirect_uri]) as fake:
        config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=redirect_uri,
            endpoints=Endpoints.from_base_url(fake.base_url),
            default_scopes=("account_details:read",),
        )
        app = create_app(config, clock=clock)
        # httpx's transport does not run the lifespan; a server would.
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
            ) as client,
        ):
            acme = {"X-Tenant": "acme"}
            response = await client.get("/connect", headers=acme)
            print(f"GET /connect -> {response.status_code}, to the authorize page")

            # The fake plays the customer who consents; Airwallex redirects back.
            callback_url = fake.approve(response.headers["location"])
            response = await client.get(callback_url)
            print(f"GET {urlsplit(callback_url).path} -> {response.status_code} {response.json()}")

            clock.advance(fake.access_token_ttl + 1)  # the next call refreshes first
            response = await client.get("/account", headers=acme)
            account = response.json()
            print(f"GET /account (acme) -> {response.status_code}, account {account['id']}")

            response = await client.get("/account", headers={"X-Tenant": "globex"})
            print(f"GET /account (globex) -> {response.status_code} {response.json()['detail']}")

            fake.disconnect(account["id"])
            response = await client.get("/account", headers=acme)
            print(f"after a disconnect: GET /account -> {response.status_code} {response.json()}")
            response = await client.get("/connect", headers=acme)
            print(f"GET /connect -> {response.status_code}: the same connection, reauthorized")


if __name__ == "__main__":
    asyncio.run(main())
