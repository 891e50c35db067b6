"""
Intents on a real manager, a real SQLite file and the real fake Airwallex:
``CONNECTED`` fires once per code exchange and never on a refresh (a
caller's, a forced one, keep-alive's), ``NEEDS_CUSTOMER`` on every end, and
a durable consumer filtered by intent skips the rest and resumes past them.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from awx_connection import (
    Config,
    ConnectionEvent,
    ConnectionInvalidatedError,
    ConnectionManager,
    ConnectionState,
    ConnectionUnusableError,
    Intent,
    KeyRing,
    NetworkError,
    ProviderUnavailableError,
    Trigger,
)
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

DAY = 86400.0


def with_code(redirect: str, code: str) -> str:
    """The redirect *redirect* with its ``code`` replaced (a code Airwallex never issued)."""
    parts = urlsplit(redirect)
    query = dict(parse_qsl(parts.query))
    query["code"] = code
    return parts._replace(query=urlencode(query)).geturl()


async def test_connected_fires_once_per_exchange_never_on_a_refresh(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """Connect, three kinds of refresh, a revoke and a reconnect: CONNECTED exactly twice."""
    store = SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate())
    async with ConnectionManager(
        awx_config, store=store, clock=awx_clock, keepalive=False, settle=False
    ) as awx:
        connected: list[ConnectionEvent] = []
        needs: list[ConnectionEvent] = []
        everything: list[ConnectionEvent] = []
        awx.subscribe(connected.append, intents=[Intent.CONNECTED])
        awx.subscribe(needs.append, intents=[Intent.NEEDS_CUSTOMER])
        awx.subscribe(everything.append)
        by_state: list[ConnectionEvent] = []
        awx.subscribe(by_state.append, states=[ConnectionState.ACTIVE])

        request = await awx.begin_authorization(external_id="customer-1")
        connection = await awx.complete_authorization(awx_fake.approve(request.url))
        assert [Trigger.EXCHANGED] == [e.trigger for e in connected]

        # A caller's refresh (the access token aged), a forced one, a keep-alive one.
        awx_clock.advance(600)
        await awx.access_token(connection.id)
        await awx.refresh(connection.id)
        awx_clock.advance(50 * DAY)
        report = await awx.keepalive_pass()
        assert 1 == report.rotated
        refreshes = [e for e in everything if e.trigger is Trigger.REFRESHED]
        assert 3 == len(refreshes)
        assert all(e.intent is Intent.ROUTINE for e in refreshes)
        assert 1 == len(connected)
        # states=[ACTIVE] still means what it says: the refreshes are in it.
        assert 4 == len(by_state)

        # The customer disconnects; the next refresh finds out.
        awx_fake.disconnect(connection.account_id or "")
        awx_clock.advance(600)
        with contextlib.suppress(ConnectionUnusableError):
            await awx.access_token(connection.id)
        assert [ConnectionState.REVOKED] == [e.dest for e in needs]

        # Reconnected: CONNECTED again, the same connection.
        again = await awx.reauthorize(connection.id)
        assert Intent.AWAITING_CUSTOMER is everything[-1].intent
        await awx.complete_authorization(awx_fake.approve(again.url))
        assert [connection.id, connection.id] == [e.connection_id for e in connected]
        history = await awx.history(connection.id)
    # Stored events carry their intent too (derived from the trigger).
    assert [e.intent for e in history] == [e.intent for e in everything]


async def test_denied_failed_and_expired_need_the_customer(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """A refusal, a rejected code and an aged-out refresh token: NEEDS_CUSTOMER, once each."""
    store = SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate())
    async with ConnectionManager(
        awx_config, store=store, clock=awx_clock, keepalive=False, settle=False
    ) as awx:
        needs: list[ConnectionEvent] = []
        connected: list[ConnectionEvent] = []
        awx.subscribe(needs.append, intents=[Intent.NEEDS_CUSTOMER])
        awx.subscribe(connected.append, intents=[Intent.CONNECTED])

        denied = await awx.begin_authorization()
        await awx.complete_authorization(awx_fake.deny(denied.url))
        failed = await awx.begin_authorization()
        redirect = with_code(awx_fake.approve(failed.url), "not-a-code-airwallex-issued")
        assert ConnectionState.FAILED is (await awx.complete_authorization(redirect)).state
        idle = await awx.begin_authorization()
        await awx.complete_authorization(awx_fake.approve(idle.url))
        awx_clock.advance(91 * DAY)
        assert 1 == (await awx.keepalive_pass()).expired
    assert [ConnectionState.DENIED, ConnectionState.FAILED, ConnectionState.EXPIRED] == [
        e.dest for e in needs
    ]
    assert [idle.connection_id] == [e.connection_id for e in connected]


async def test_durable_consumer_by_intent_skips_the_rest_and_resumes_past_them(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """consumer(intents=[CONNECTED]) sees only exchanges; its offset moves past skipped events."""
    path = tmp_path / "awx.db"
    keys = KeyRing.generate()
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock, settle=False
    ) as awx:
        first = await awx.begin_authorization()
        one = await awx.complete_authorization(awx_fake.approve(first.url))
        awx_clock.advance(600)
        await awx.access_token(one.id)  # two ROUTINE events after the CONNECTED one
        async with awx.consumer("onboarding", intents=[Intent.CONNECTED]) as events:
            got = [await anext(events)]
        assert [(one.id, Trigger.EXCHANGED)] == [(e.connection_id, e.trigger) for e in got]
        stored = await awx.store.read_outbox(after=0)
        # Handed out and handled (the block ended normally): committed there.
        assert await awx.store.get_offset("onboarding") == next(
            p for p, e in stored if e.trigger is Trigger.EXCHANGED
        )

    # A restart, later events of both kinds: only the new exchange comes out.
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=keys), clock=awx_clock, settle=False
    ) as awx:
        await awx.refresh(one.id)
        second = await awx.begin_authorization()
        two = await awx.complete_authorization(awx_fake.approve(second.url))
        await awx.refresh(two.id)
        consumer = awx.consumer("onboarding", intents=[Intent.CONNECTED], poll_interval=0.01)
        async with consumer as events:
            got = [await anext(events)]
            # Nothing after it is CONNECTED: asking for more reads the
            # refresh events past it, commits them and waits.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(anext(events), 0.3)
        assert [two.id] == [e.connection_id for e in got]
        last = (await awx.store.read_outbox(after=0))[-1][0]
        assert last == await awx.store.get_offset("onboarding")


async def test_an_outage_is_routine_and_a_lost_grace_window_needs_the_customer(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """
    503s (the provider certainly did not rotate: refresh_aborted) change
    nothing the application must act on; rotations unanswered past the grace
    window (invalidate) need the customer. The two rows the other tests
    cannot reach without faults.
    """
    events: list[ConnectionEvent] = []
    awx_manager.subscribe(events.append)
    request = await awx_manager.begin_authorization()
    connection = await awx_manager.complete_authorization(awx_fake.approve(request.url))

    attempts = awx_manager.config.timing.max_attempts
    awx_fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=attempts))
    awx_clock.advance(301)
    with pytest.raises(ProviderUnavailableError):
        await awx_manager.access_token(connection.id)
    aborted = [e for e in events if e.trigger is Trigger.REFRESH_ABORTED]
    assert [Intent.ROUTINE] == [e.intent for e in aborted]
    assert [] == [e for e in events if e.intent is Intent.NEEDS_CUSTOMER]
    assert 1 == len([e for e in events if e.intent is Intent.CONNECTED])

    awx_fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token", times=10))
    awx_clock.advance(301)
    with pytest.raises(NetworkError):
        await awx_manager.access_token(connection.id)
    awx_clock.advance(60)  # the first attempt's grace window is over
    with pytest.raises(ConnectionInvalidatedError):
        await awx_manager.access_token(connection.id)
    needs = [e for e in events if e.intent is Intent.NEEDS_CUSTOMER]
    assert [Trigger.INVALIDATE] == [e.trigger for e in needs]
    assert 1 == len([e for e in events if e.intent is Intent.CONNECTED])
