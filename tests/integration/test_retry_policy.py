"""
The retry policy: no storms after a final failure, bounded refresh
concurrency, and API retries only where they are safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import attrs
import pytest
from aiohttp import web

from awx_connection import (
    Config,
    ConnectionManager,
    Endpoints,
    InvalidClientError,
    ProviderUnavailableError,
)
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock


async def connect(manager: ConnectionManager, fake: FakeAirwallex) -> str:
    request = await manager.begin_authorization()
    return (await manager.complete_authorization(fake.approve(request.url))).id


async def test_invalid_client_is_one_request_for_every_caller(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """Queued callers share one rejected request; later callers get it without asking."""
    async with ConnectionManager(awx_config, clock=awx_clock) as good:
        connection_id = await connect(good, awx_fake)
        bad_config = attrs.evolve(awx_config, client_secret="rotated-away")
        async with ConnectionManager(bad_config, store=good.store, clock=awx_clock) as bad:
            awx_clock.advance(301)
            before = awx_fake.counters.token_requests
            results = await asyncio.gather(
                *(bad.access_token(connection_id) for _ in range(100)), return_exceptions=True
            )
            assert all(isinstance(r, InvalidClientError) for r in results)
            assert 1 == awx_fake.counters.token_requests - before
            awx_clock.advance(30)  # inside the 60 s cooldown
            with pytest.raises(InvalidClientError):
                await bad.access_token(connection_id)
            assert 1 == awx_fake.counters.token_requests - before
            awx_clock.advance(31)  # past it: one new request
            with pytest.raises(InvalidClientError):
                await bad.access_token(connection_id)
            assert 2 == awx_fake.counters.token_requests - before


async def test_outage_failure_is_not_repeated_within_the_cooldown(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """After attempts are used up on 503s, callers get that error for failure_cooldown."""
    async with ConnectionManager(awx_config, clock=awx_clock) as awx:
        connection_id = await connect(awx, awx_fake)
        awx_fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=4))
        awx_clock.advance(301)
        with pytest.raises(ProviderUnavailableError):
            await awx.access_token(connection_id)
        requests = awx_fake.counters.token_requests
        with pytest.raises(ProviderUnavailableError):
            await awx.access_token(connection_id)
        assert requests == awx_fake.counters.token_requests
        awx_clock.advance(awx_config.timing.failure_cooldown)
        assert (await awx.access_token(connection_id)).startswith("awx_at_")


async def test_refreshes_across_connections_are_bounded(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """With max_concurrent_refreshes=2, ten slow refreshes go out two at a time."""
    config = attrs.evolve(
        awx_config, timing=attrs.evolve(awx_config.timing, max_concurrent_refreshes=2)
    )
    async with ConnectionManager(config, clock=awx_clock) as awx:
        ids = [await connect(awx, awx_fake) for _ in range(10)]
        awx_fake.inject(Fault(FaultKind.DELAY, grant_type="refresh_token", delay=0.05, times=10))
        awx_clock.advance(301)
        started = time.monotonic()
        await asyncio.gather(*(awx.access_token(cid) for cid in ids))
        elapsed = time.monotonic() - started
    # Ten 50 ms requests two at a time cannot finish in under 5 x 50 ms.
    assert elapsed >= 0.24
    assert 10 == awx_fake.counters.refreshes


@pytest.fixture
async def flaky_api() -> AsyncIterator[tuple[str, list[str]]]:
    """An API that answers 503 twice per path, then 200; it records each call."""
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.method)
        if calls.count(request.method) <= 2:
            return web.json_response({"code": "unavailable"}, status=503)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/api/v1/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", calls
    await runner.cleanup()


async def test_api_retries_idempotent_methods_only(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    flaky_api: tuple[str, list[str]],
) -> None:
    """GET is retried through two 503s; POST is not retried unless asked."""
    base, calls = flaky_api
    config = attrs.evolve(
        awx_config,
        endpoints=Endpoints(
            authorize_url=awx_fake.authorize_url,
            token_url=awx_fake.token_url,
            api_base_url=base,
        ),
    )
    async with ConnectionManager(config, clock=awx_clock) as awx:
        request = await awx.begin_authorization()
        connection = await awx.complete_authorization(awx_fake.approve(request.url))
        async with await awx.request(connection.id, "GET", "/api/v1/balances") as response:
            assert 200 == response.status
        assert ["GET", "GET", "GET"] == [c for c in calls if c == "GET"]
        async with await awx.request(connection.id, "POST", "/api/v1/transfers") as response:
            assert 503 == response.status
        assert 1 == calls.count("POST")
        async with await awx.request(
            connection.id, "POST", "/api/v1/transfers", retry=True, json={"x": 1}
        ) as response:
            assert 200 == response.status
