"""
The public API's types, as a user's type checker sees them.

Never run: ``mypy`` checks this file (``[tool.mypy] files`` in
pyproject.toml; ``tests/unit/test_typing.py`` checks that it stays listed), so a public
signature that loses its types, or starts returning ``Any``, fails CI.
Every name is imported the way the documentation imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import assert_type

import aiohttp
from aiohttp import web

from awx_connection import (
    AuthorizationRequest,
    Config,
    Connection,
    ConnectionEvent,
    ConnectionManager,
    ConnectionState,
    EventConsumer,
    Intent,
    KeepaliveReport,
    KeyRing,
    ManagerStatistics,
    Secret,
    Store,
    Subscription,
    Trigger,
    WebhookResult,
)
from awx_connection.aiohttp import webhook_handler
from awx_connection.stores import MemoryStore, SQLiteStore, open_store
from awx_connection.testing import FakeAirwallex, ManualClock


async def lifecycle(config: Config, keys: KeyRing) -> None:
    store = open_store("sqlite:///awx.db", keys=keys)
    assert_type(store, Store)
    assert_type(SQLiteStore("awx.db", keys=keys), SQLiteStore)
    assert_type(MemoryStore(), MemoryStore)

    async with ConnectionManager(config, store=store) as awx:
        assert_type(awx, ConnectionManager)
        request = await awx.begin_authorization(scopes=["r:awx_action:balances_view"])
        assert_type(request, AuthorizationRequest)
        assert_type(request.url, str)
        connection = await awx.complete_authorization("https://partner.example/cb?code=c&state=s")
        assert_type(connection, Connection)
        assert_type(connection.state, ConnectionState)
        assert_type(connection.id, str)
        assert_type(await awx.get(connection.id), Connection)
        assert_type(await awx.connections(states=[ConnectionState.ACTIVE]), list[Connection])
        assert_type(await awx.load(), int)
        assert_type(await awx.access_token(connection.id), str)
        assert_type(await awx.refresh(connection.id), Connection)
        assert_type(await awx.history(connection.id), list[ConnectionEvent])
        response = await awx.request(connection.id, "GET", "/api/v1/account/")
        assert_type(response, aiohttp.ClientResponse)
        assert_type(await awx.handle_webhook({}, b"{}"), WebhookResult)
        assert_type(await awx.keepalive_pass(), KeepaliveReport)
        assert_type(await awx.settle_unfinished(), KeepaliveReport)
        assert_type(await awx.prune_events(), int)
        assert_type(awx.statistics(), ManagerStatistics)
        assert_type(awx.consumer("workflows"), EventConsumer)
        assert_type(awx.consumer("onboarding", intents=[Intent.CONNECTED]), EventConsumer)
        assert_type(await awx.find(external_id="customer-7"), list[Connection])

        def on_event(event: ConnectionEvent) -> None:
            assert_type(event.trigger, Trigger)
            assert_type(event.source, ConnectionState | None)
            assert_type(event.dest, ConnectionState)
            assert_type(event.sequence, int)
            assert_type(event.intent, Intent)

        assert_type(awx.subscribe(on_event, states=[ConnectionState.ACTIVE]), Subscription)
        assert_type(awx.subscribe(on_event, intents=[Intent.CONNECTED]), Subscription)
        async for event in awx.events(triggers=[Trigger.REVOKE]):
            assert_type(event, ConnectionEvent)
        handler = webhook_handler(awx)
        assert_type(handler, Callable[[web.Request], Awaitable[web.StreamResponse]])


def secrets(secret: Secret) -> None:
    assert_type(secret.reveal(), str)
    assert_type(secret.fingerprint, str)
    assert_type(str(secret), str)


def fake(clock: ManualClock) -> None:
    assert_type(clock.now(), float)
    assert_type(FakeAirwallex(clock=clock), FakeAirwallex)
