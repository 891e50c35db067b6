"""
examples/fastapi_app.py: its routes and its ``authorized_session`` dependency,
driven through httpx's ASGITransport against the fake Airwallex.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import orjson
import pytest_asyncio
from fastapi import FastAPI

from awx_connection import Config, ConnectionManager, ConnectionState
from awx_connection.testing import FakeAirwallex, ManualClock

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"
WEBHOOK_SECRET = "whsec_test"
ACME = {"X-Tenant": "acme"}


def load_example() -> ModuleType:
    """Import the example by path: examples/ is not a package."""
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()


@pytest_asyncio.fixture
async def app(awx_config: Config, awx_clock: ManualClock) -> AsyncIterator[FastAPI]:
    """The example app with its lifespan running (ASGITransport does not run it)."""
    config = attrs.evolve(awx_config, webhook_secrets=[WEBHOOK_SECRET])
    app: FastAPI = example.create_app(config, clock=awx_clock)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture
async def client(app: FastAPI, awx_config: Config) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose base URL is the host of the registered redirect URI."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
    ) as client:
        yield client


def manager_of(app: FastAPI) -> ConnectionManager:
    manager = app.state.awx
    assert isinstance(manager, ConnectionManager)
    return manager


async def connect(client: httpx.AsyncClient, fake: FakeAirwallex, tenant: str) -> dict[str, Any]:
    """The browser's trip: /connect, consent at the (fake) provider, the callback."""
    response = await client.get("/connect", headers={"X-Tenant": tenant})
    assert 302 == response.status_code
    response = await client.get(fake.approve(response.headers["location"]))
    assert 200 == response.status_code, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_connect_redirects_to_airwallex_for_the_tenant(
    client: httpx.AsyncClient, app: FastAPI, awx_fake: FakeAirwallex
) -> None:
    """/connect answers 302 to the authorize page and records the tenant as external_id."""
    response = await client.get("/connect", headers=ACME)
    assert 302 == response.status_code
    assert response.headers["location"].startswith(awx_fake.authorize_url)
    (pending,) = await manager_of(app).connections(external_id="acme")
    assert ConnectionState.PENDING is pending.state


async def test_callback_activates_the_tenants_connection(
    client: httpx.AsyncClient, app: FastAPI, awx_fake: FakeAirwallex
) -> None:
    """The callback route exchanges the code: the tenant's connection is active with an account."""
    body = await connect(client, awx_fake, "acme")
    assert "active" == body["state"]
    assert "acme" == body["tenant"]
    connection = await manager_of(app).get(body["connection_id"])
    assert body["account_id"] == connection.account_id is not None


async def test_callback_with_a_denial_records_it(
    client: httpx.AsyncClient, awx_fake: FakeAirwallex
) -> None:
    """A customer who declines comes back with ?error=: the connection is denied, not an error."""
    response = await client.get("/connect", headers=ACME)
    response = await client.get(awx_fake.deny(response.headers["location"]))
    assert 200 == response.status_code
    assert "denied" == response.json()["state"]


async def test_callback_with_an_unknown_state_is_400(client: httpx.AsyncClient) -> None:
    """A forged or replayed callback is refused with 400 and changes nothing."""
    response = await client.get("/airwallex/callback?code=abc&state=forged")
    assert 400 == response.status_code


async def test_callback_replayed_is_400(client: httpx.AsyncClient, awx_fake: FakeAirwallex) -> None:
    """The same callback URL a second time is refused: a state is single-use."""
    response = await client.get("/connect", headers=ACME)
    callback = awx_fake.approve(response.headers["location"])
    assert 200 == (await client.get(callback)).status_code
    assert 400 == (await client.get(callback)).status_code


async def test_account_without_a_tenant_is_401(client: httpx.AsyncClient) -> None:
    """The dependency refuses a request that names no tenant."""
    assert 401 == (await client.get("/account")).status_code


async def test_account_for_an_unknown_tenant_is_404(
    client: httpx.AsyncClient, awx_fake: FakeAirwallex
) -> None:
    """A tenant that never connected gets 404, even while another tenant is connected."""
    await connect(client, awx_fake, "acme")
    response = await client.get("/account", headers={"X-Tenant": "globex"})
    assert 404 == response.status_code


async def test_account_for_a_connected_tenant_is_its_account(
    client: httpx.AsyncClient, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """/account returns the tenant's own account, refreshing an expired token on the way."""
    acme = await connect(client, awx_fake, "acme")
    globex = await connect(client, awx_fake, "globex")
    awx_clock.advance(awx_fake.access_token_ttl + 1)
    response = await client.get("/account", headers=ACME)
    assert 200 == response.status_code
    assert acme["account_id"] == response.json()["id"]
    response = await client.get("/account", headers={"X-Tenant": "globex"})
    assert globex["account_id"] == response.json()["id"]
    assert 2 == awx_fake.counters.refreshes


async def test_account_after_a_disconnect_is_409_then_connect_reauthorizes(
    client: httpx.AsyncClient, awx_fake: FakeAirwallex
) -> None:
    """A disconnected tenant gets 409 with the state; /connect reuses the same connection."""
    body = await connect(client, awx_fake, "acme")
    awx_fake.disconnect(body["account_id"])
    response = await client.get("/account", headers=ACME)  # found out during the call
    assert 409 == response.status_code
    assert "revoked" == response.json()["state"]
    response = await client.get("/account", headers=ACME)  # known before the call
    assert 409 == response.status_code
    again = await connect(client, awx_fake, "acme")
    assert body["connection_id"] == again["connection_id"]
    assert 200 == (await client.get("/account", headers=ACME)).status_code


async def test_connect_when_already_connected_is_409(
    client: httpx.AsyncClient, awx_fake: FakeAirwallex
) -> None:
    """/connect does not start a second connection for a tenant that has a working one."""
    await connect(client, awx_fake, "acme")
    assert 409 == (await client.get("/connect", headers=ACME)).status_code


def signed(body: bytes, clock: ManualClock) -> dict[str, str]:
    """The headers Airwallex signs a webhook with."""
    timestamp = str(int(clock.now() * 1000))
    signature = hmac.new(
        WEBHOOK_SECRET.encode(), timestamp.encode() + body, hashlib.sha256
    ).hexdigest()
    return {"x-timestamp": timestamp, "x-signature": signature}


async def test_webhook_disconnect_revokes_and_unsigned_is_401(
    client: httpx.AsyncClient, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A signed connection.disconnected revokes the tenant's connection; an unsigned one is 401."""
    body = await connect(client, awx_fake, "acme")
    awx_clock.advance(1)
    awx_fake.disconnect(body["account_id"])  # what the webhook tells of
    event = orjson.dumps(
        {
            "id": "evt_1",
            "name": "connection.disconnected",
            "account_id": body["account_id"],
            "data": {},
            "created_at": datetime.fromtimestamp(awx_clock.now(), UTC).strftime(
                "%Y-%m-%dT%H:%M:%S+0000"
            ),
        }
    )
    assert 401 == (await client.post("/airwallex/webhooks", content=event)).status_code
    response = await client.post(
        "/airwallex/webhooks", content=event, headers=signed(event, awx_clock)
    )
    assert 200 == response.status_code
    response = await client.get("/account", headers=ACME)
    assert 409 == response.status_code
    assert "revoked" == response.json()["state"]
