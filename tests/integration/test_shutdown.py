"""
Closing a manager: what may have reached Airwallex finishes, everything
else stops with a typed error, and nothing (a stuck subscriber included)
can hang the shutdown. tests/system/test_multiprocess.py does the same across real
processes (SIGTERM, and the next process settling what a close left).
"""

from __future__ import annotations

import asyncio
import logging

import attrs
import pytest

from awx_connection import (
    Config,
    ConnectionEvent,
    ConnectionManager,
    ConnectionState,
    ManagerClosedError,
)
from awx_connection.stores import MemoryStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

S = ConnectionState


def closing_within(config: Config, seconds: float) -> Config:
    return attrs.evolve(config, timing=attrs.evolve(config.timing, close_timeout=seconds))


async def connect(manager: ConnectionManager, fake: FakeAirwallex) -> str:
    request = await manager.begin_authorization()
    connection = await manager.complete_authorization(fake.approve(request.url))
    return connection.id


async def test_aclose_waits_for_a_refresh_already_sent(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """The provider is answering when aclose() begins: the answer is stored, callers get it."""
    store = MemoryStore()
    awx = ConnectionManager(awx_config, store=store, clock=awx_clock)
    await awx.open()
    connection_id = await connect(awx, awx_fake)
    awx_clock.advance(301)
    awx_fake.inject(Fault(FaultKind.DELAY, grant_type="refresh_token", delay=0.3))
    sent = awx_fake.counters.token_requests
    callers = [asyncio.ensure_future(awx.access_token(connection_id)) for _ in range(3)]
    while awx_fake.counters.token_requests == sent:  # noqa: ASYNC110 - the fake counts
        await asyncio.sleep(0.005)
    await awx.aclose()
    tokens = await asyncio.gather(*callers)
    assert 1 == len(set(tokens))
    assert "active" == awx_fake.grant_status(tokens[0])
    record = await store.get(connection_id)  # the memory store keeps its data when closed
    assert record is not None and S.ACTIVE is record.state
    assert record.tokens is not None and 1 == record.tokens.generation
    assert 0 == awx_fake.counters.grace_reissues


async def test_aclose_abandons_a_refresh_that_sent_nothing_with_a_typed_error(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """
    A refresh waiting for another process's lease sent nothing: aclose()
    stops it at once, and its callers get ManagerClosedError, not a bare
    CancelledError.
    """
    store = MemoryStore()
    awx = ConnectionManager(awx_config, store=store, clock=awx_clock, settle=False)
    await awx.open()
    connection_id = await connect(awx, awx_fake)
    awx_clock.advance(301)
    now = awx_clock.now()
    assert await store.acquire_lease(connection_id, "another-process", until=now + 20, now=now)
    callers = [asyncio.ensure_future(awx.access_token(connection_id)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(c.done() for c in callers)
    async with asyncio.timeout(2):  # not lease_wait (45 s)
        await awx.aclose()
        results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ManagerClosedError) for r in results), results
    assert 0 == awx_fake.counters.refreshes


async def test_every_call_after_aclose_is_a_typed_error(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A closed manager says so, whatever is asked of it."""
    awx = ConnectionManager(awx_config, clock=awx_clock)
    await awx.open()
    connection_id = await connect(awx, awx_fake)
    await awx.aclose()
    await awx.aclose()  # idempotent
    for call in (
        awx.access_token(connection_id),
        awx.get(connection_id),
        awx.refresh(connection_id),
        awx.request(connection_id, "GET", "/api/v1/account/"),
        awx.begin_authorization(),
        awx.connections(),
        awx.keepalive_pass(),
        awx.settle_unfinished(),
        awx.open(),
    ):
        with pytest.raises(ManagerClosedError):
            await call


async def test_a_subscriber_that_never_returns_cannot_hang_aclose(
    awx_config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aclose() waits close_timeout for subscribers, then cancels the stuck one and says so."""
    forever = asyncio.Event()
    seen: list[ConnectionEvent] = []

    async def stuck(event: ConnectionEvent) -> None:
        await forever.wait()

    async def fine(event: ConnectionEvent) -> None:
        seen.append(event)

    awx = ConnectionManager(closing_within(awx_config, 0.2), clock=awx_clock)
    await awx.open()
    awx.subscribe(stuck)
    awx.subscribe(fine)
    await connect(awx, awx_fake)
    with caplog.at_level(logging.ERROR, logger="awx_connection.events"):
        async with asyncio.timeout(3):
            await awx.aclose()
    assert [S.PENDING, S.AUTHORIZED, S.ACTIVE] == [e.dest for e in seen]
    [message] = [r.getMessage() for r in caplog.records if "did not finish" in r.getMessage()]
    assert "stuck" in message
    assert "2 more event(s) unhandled" in message
