"""
The connection lifecycle end to end: the library against the fake provider
over real sockets, sharing a manual clock.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from awx_connection import (
    CallbackError,
    Config,
    Connection,
    ConnectionEvent,
    ConnectionExpiredError,
    ConnectionInvalidatedError,
    ConnectionManager,
    ConnectionRevokedError,
    ConnectionState,
    ConnectionUnusableError,
    Endpoints,
    IllegalTransitionError,
    InvalidArgumentError,
    KeyRing,
    MalformedResponseError,
    NetworkError,
    ProviderUnavailableError,
    StateExpiredError,
    Trigger,
    UnknownStateError,
)
from awx_connection.stores import MemoryStore, SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

S = ConnectionState
KEYS = KeyRing.generate()
REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
Connect = Callable[..., Awaitable[Connection]]


def states_of(events: list[ConnectionEvent]) -> list[str]:
    return [e.dest.value for e in events]


async def test_authorize_exchange_and_account(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """begin -> consent -> callback -> active, with the account id recorded."""
    events: list[ConnectionEvent] = []
    awx_manager.subscribe(events.append)
    request = await awx_manager.begin_authorization(external_id="cust-1")
    assert (await awx_manager.get(request.connection_id)).state is S.PENDING

    connection = await awx_manager.complete_authorization(awx_fake.approve(request.url))

    assert S.ACTIVE is connection.state
    assert connection.account_id is not None
    assert connection.account_id.startswith("acct_")
    assert "cust-1" == connection.external_id
    assert ["pending", "authorized", "active"] == states_of(events)
    assert [1, 2, 3] == [e.sequence for e in events]
    assert connection.account_id == events[-1].account_id
    assert 1 == awx_fake.counters.exchanges


async def test_sign_up_flow_creates_new_account(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """sign_up=true reaches the provider and a new account is connected."""
    one = await awx_manager.begin_authorization(sign_up=True)
    two = await awx_manager.begin_authorization(sign_up=True)
    assert ["true"] == parse_qs(urlsplit(one.url).query)["sign_up"]
    a = await awx_manager.complete_authorization(awx_fake.approve(one.url))
    b = await awx_manager.complete_authorization(awx_fake.approve(two.url))
    assert a.account_id != b.account_id


async def test_denied_callback(awx_manager: ConnectionManager, awx_fake: FakeAirwallex) -> None:
    """An error redirect moves the connection to denied with the provider's reason."""
    request = await awx_manager.begin_authorization()
    connection = await awx_manager.complete_authorization(
        awx_fake.deny(request.url, error="access_denied", description="user said no")
    )
    assert S.DENIED is connection.state
    assert "access_denied: user said no" == connection.reason
    assert 0 == awx_fake.counters.token_requests


async def test_replayed_state_is_rejected_and_changes_nothing(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """A state works once: the second callback raises and the connection stays active."""
    request = await awx_manager.begin_authorization()
    callback = awx_fake.approve(request.url)
    first = await awx_manager.complete_authorization(callback)
    with pytest.raises(UnknownStateError):
        await awx_manager.complete_authorization(callback)
    after = await awx_manager.get(first.id)
    assert first == after
    assert 1 == awx_fake.counters.token_requests


async def test_unknown_state(awx_manager: ConnectionManager) -> None:
    """A forged state is rejected without touching any connection."""
    request = await awx_manager.begin_authorization()
    with pytest.raises(UnknownStateError):
        await awx_manager.complete_authorization({"state": "forged", "code": "x"})
    assert S.PENDING is (await awx_manager.get(request.connection_id)).state


async def test_expired_state(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A callback after state_ttl raises StateExpiredError and leaves the connection pending."""
    request = await awx_manager.begin_authorization()
    callback = awx_fake.approve(request.url)
    awx_clock.advance(awx_manager.config.timing.state_ttl + 1)
    before = await awx_manager.get(request.connection_id)
    with pytest.raises(StateExpiredError) as info:
        await awx_manager.complete_authorization(callback)
    assert request.connection_id in str(info.value)
    assert before == await awx_manager.get(request.connection_id)
    again = await awx_manager.reauthorize(request.connection_id)
    awx_clock.advance(1)
    connection = await awx_manager.complete_authorization(awx_fake.approve(again.url))
    assert S.ACTIVE is connection.state


@pytest.mark.parametrize(
    "callback",
    [
        "https://partner.example/cb?code=abc",  # no state
        "state=s&code=a&error=access_denied",  # both
        "state=s",  # neither
        "state=s&state=t&code=a",  # repeated
        "state=s&code=",  # empty code
        "state=" + "x" * 9000 + "&code=a",  # oversized
    ],
)
async def test_malformed_callbacks(awx_manager: ConnectionManager, callback: str) -> None:
    """Malformed redirects raise CallbackError; the pending connection is untouched."""
    request = await awx_manager.begin_authorization()
    before = await awx_manager.get(request.connection_id)
    with pytest.raises(CallbackError):
        await awx_manager.complete_authorization(callback)
    assert before == await awx_manager.get(request.connection_id)


@pytest.mark.parametrize(
    "callback",
    [{1: "a"}, {"state": "s", "code": "c", 1: "x"}, {"state": 1, "code": "c"}],
    ids=["int-name", "int-name-beside-valid-ones", "int-value"],
)
async def test_callbacks_with_names_or_values_that_are_not_strings(
    awx_manager: ConnectionManager, callback: dict[object, object]
) -> None:
    """A parsed-parameters callback with a non-string name or value is a CallbackError."""
    request = await awx_manager.begin_authorization()
    before = await awx_manager.get(request.connection_id)
    with pytest.raises(CallbackError):
        await awx_manager.complete_authorization(callback)  # type: ignore[arg-type]
    assert before == await awx_manager.get(request.connection_id)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("external_id", ["\ud800", "cust-\udcff", 42, b"cust-1"])
async def test_begin_authorization_refuses_an_external_id_it_cannot_store(
    awx_config: Config, awx_clock: ManualClock, tmp_path: Path, kind: str, external_id: object
) -> None:
    """
    A non-string or non-UTF-8 external_id is an InvalidArgumentError (also a
    ValueError) before anything is stored or published, whatever the store;
    before, memory kept it and SQLite raised a bare TypeError.
    """
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "awx.db", keys=KEYS)
    events: list[ConnectionEvent] = []
    async with ConnectionManager(awx_config, store=store, clock=awx_clock) as awx:
        awx.subscribe(events.append)
        with pytest.raises(InvalidArgumentError, match="external_id") as caught:
            await awx.begin_authorization(external_id=external_id)  # type: ignore[arg-type]
        assert isinstance(caught.value, ValueError)
        assert ([], []) == (await awx.connections(), events)
        assert [] == await store.read_outbox()


async def test_exchange_rejected_moves_to_failed(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """A code the provider refuses (here: already used) ends in failed with the code as reason."""
    request = await awx_manager.begin_authorization(pkce=False)
    callback = awx_fake.approve(request.url)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    async with aiohttp.ClientSession() as http:
        body = {
            "grant_type": "authorization_code",
            "client_id": awx_fake.client_id,
            "client_secret": awx_fake.client_secret,
            "code": code,
            "redirect_uri": awx_manager.config.redirect_uri,
        }
        async with http.post(awx_fake.token_url, json=body) as response:
            assert 200 == response.status  # someone else burnt the code first
    connection = await awx_manager.complete_authorization(callback)
    assert S.FAILED is connection.state
    assert "invalid_grant" in connection.reason
    assert connection.account_id is None


async def test_malformed_exchange_response_keeps_authorized(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """Bad token responses raise a typed error; the connection stays authorized."""
    request = await awx_manager.begin_authorization()
    awx_fake.inject(
        Fault(FaultKind.SERVER_ERROR, grant_type="authorization_code", status=503, times=10)
    )
    with pytest.raises(ProviderUnavailableError):
        await awx_manager.complete_authorization(awx_fake.approve(request.url))
    connection = await awx_manager.get(request.connection_id)
    assert S.AUTHORIZED is connection.state
    awx_fake.clear_faults()
    assert S.ACTIVE is (await awx_manager.exchange(request.connection_id)).state


async def test_access_token_cached_until_skew(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """The token is reused until min(60 s, 20 %) before expiry, then rotated once."""
    connection = await awx_connect()
    first = await awx_manager.access_token(connection.id)
    awx_clock.advance(300 - 61)
    assert first == await awx_manager.access_token(connection.id)
    assert 0 == awx_fake.counters.refreshes
    awx_clock.advance(2)
    second = await awx_manager.access_token(connection.id)
    assert first != second
    assert 1 == awx_fake.counters.refreshes
    assert 1 == (await awx_manager.get(connection.id)).token_generation


async def test_thousand_callers_one_post(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """1,000 concurrent callers at expiry make exactly one refresh POST and share its token."""
    connection = await awx_connect()
    awx_clock.advance(301)
    requests_before = awx_fake.counters.token_requests
    tokens = await asyncio.gather(*(awx_manager.access_token(connection.id) for _ in range(1000)))
    assert 1 == awx_fake.counters.token_requests - requests_before
    assert 1 == awx_fake.counters.refreshes
    assert 1 == len(set(tokens))
    assert 0 == awx_fake.counters.concurrent_rejections


async def test_refresh_event_sequence(
    awx_manager: ConnectionManager, awx_clock: ManualClock, awx_connect: Connect
) -> None:
    """A rotation emits refresh_started then refreshed; sequences have no gaps."""
    connection = await awx_connect()
    awx_clock.advance(301)
    await awx_manager.access_token(connection.id)
    history = await awx_manager.history(connection.id)
    assert list(range(1, len(history) + 1)) == [e.sequence for e in history]
    assert ["pending", "authorized", "active", "refreshing", "active"] == states_of(history)
    assert [Trigger.REFRESH_STARTED, Trigger.REFRESHED] == [e.trigger for e in history[-2:]]


async def test_lost_response_recovered_inside_grace(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """The provider rotates but the response is lost: the same token is retried in grace."""
    connection = await awx_connect()
    awx_fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token"))
    awx_clock.advance(301)
    token = await awx_manager.access_token(connection.id)
    assert 1 == awx_fake.counters.dropped_responses
    assert 1 == awx_fake.counters.grace_reissues
    assert 0 == awx_fake.counters.reuse_violations
    assert "active" == awx_fake.grant_status(token)
    assert S.ACTIVE is (await awx_manager.get(connection.id)).state
    # And the chain continues normally afterwards.
    awx_clock.advance(301)
    await awx_manager.access_token(connection.id)
    assert 0 == awx_fake.counters.reuse_violations


async def test_lost_response_past_grace_invalidates_without_stale_request(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """Unanswered rotations past the grace window stop with invalidated, never reusing."""
    connection = await awx_connect()
    # Every attempt loses its response; attempts run out inside the flight.
    awx_fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token", times=10))
    awx_clock.advance(301)
    with pytest.raises(NetworkError):
        await awx_manager.access_token(connection.id)
    assert S.REFRESHING is (await awx_manager.get(connection.id)).state
    requests = awx_fake.counters.token_requests
    awx_clock.advance(60)  # the grace window of the first attempt is over
    with pytest.raises(ConnectionInvalidatedError) as info:
        await awx_manager.access_token(connection.id)
    assert requests == awx_fake.counters.token_requests  # nothing stale was sent
    assert 0 == awx_fake.counters.reuse_violations
    assert "grace window" in (info.value.reason or "")
    assert S.INVALIDATED is (await awx_manager.get(connection.id)).state


async def test_outage_of_503_does_not_invalidate(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """503s certainly did not rotate: after a long outage the same token still works."""
    connection = await awx_connect()
    awx_fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=4))
    awx_clock.advance(301)
    with pytest.raises(ProviderUnavailableError):
        await awx_manager.access_token(connection.id)
    assert S.ACTIVE is (await awx_manager.get(connection.id)).state
    awx_clock.advance(3600)
    await awx_manager.access_token(connection.id)
    assert S.ACTIVE is (await awx_manager.get(connection.id)).state
    assert 0 == awx_fake.counters.reuse_violations


async def test_malformed_refresh_response_is_retried_in_grace(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """A 200 that is not JSON counts as a lost response: retried with the same token."""
    connection = await awx_connect()
    awx_fake.inject(Fault(FaultKind.MALFORMED_AFTER_COMMIT, grant_type="refresh_token"))
    awx_clock.advance(301)
    await awx_manager.access_token(connection.id)
    assert 1 == awx_fake.counters.grace_reissues
    assert 0 == awx_fake.counters.reuse_violations


async def test_malformed_response_error_is_typed(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """When every attempt is malformed, callers get MalformedResponseError, state refreshing."""
    connection = await awx_connect()
    awx_fake.inject(Fault(FaultKind.MALFORMED_AFTER_COMMIT, grant_type="refresh_token", times=10))
    awx_clock.advance(301)
    with pytest.raises(MalformedResponseError):
        await awx_manager.access_token(connection.id)
    assert S.REFRESHING is (await awx_manager.get(connection.id)).state


async def test_user_disconnect_detected_through_401(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """401 -> one refresh -> invalid_grant -> revoked, and the caller gets a typed error."""
    connection = await awx_connect()
    assert connection.account_id is not None
    awx_fake.disconnect(connection.account_id)
    with pytest.raises(ConnectionRevokedError):
        await awx_manager.request(connection.id, "GET", "/api/v1/account/")
    after = await awx_manager.get(connection.id)
    assert S.REVOKED is after.state
    assert "invalid_grant" in after.reason
    with pytest.raises(ConnectionRevokedError):
        await awx_manager.access_token(connection.id)


async def test_request_refreshes_once_on_401(awx_clock: ManualClock) -> None:
    """A 401 on a token we thought fresh triggers one refresh and one retry."""
    # The provider's tokens live 100 s but it does not say so; we assume 300 s.
    async with FakeAirwallex(
        clock=awx_clock, access_token_ttl=100, send_expires_in=False, redirect_uris=[REDIRECT]
    ) as fake:
        config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=REDIRECT,
            endpoints=Endpoints.from_base_url(fake.base_url),
            default_scopes=("account_details:read",),
        )
        async with ConnectionManager(config, clock=awx_clock) as manager:
            request = await manager.begin_authorization()
            connection = await manager.complete_authorization(fake.approve(request.url))
            awx_clock.advance(150)
            response = await manager.request(connection.id, "GET", "/api/v1/balances/current")
            async with response:
                assert 200 == response.status
                body = await response.json()
            assert "/api/v1/balances/current" == body["path"]
            assert 1 == fake.counters.refreshes
            assert 1 == fake.counters.api_unauthorized
            assert S.ACTIVE is (await manager.get(connection.id)).state


async def test_request_refuses_other_hosts(
    awx_manager: ConnectionManager, awx_connect: Connect
) -> None:
    """The bearer token is never sent to a host other than the API host."""
    connection = await awx_connect()
    for _ in range(2):  # refused again: a refusal is not remembered as resolved
        with pytest.raises(ValueError, match="another host"):
            await awx_manager.request(connection.id, "GET", "https://evil.example/api")
    for url in ("/api/v1/account/", "api/v1/account/", "/api/v1/account/"):
        async with await awx_manager.request(connection.id, "GET", url) as response:
            assert 200 == response.status
            assert str(response.url).startswith(awx_manager.config.endpoints.api_base_url + "/")


async def test_refresh_token_aged_out_expires(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """Past refresh_token_expires_in the connection moves to expired without a POST."""
    connection = await awx_connect()
    assert connection.refresh_expires_at is not None
    awx_clock.advance(connection.refresh_expires_at - awx_clock.now() + 1)
    requests = awx_fake.counters.token_requests
    with pytest.raises(ConnectionExpiredError):
        await awx_manager.access_token(connection.id)
    assert requests == awx_fake.counters.token_requests
    assert S.EXPIRED is (await awx_manager.get(connection.id)).state


async def test_partner_revoke_and_reauthorize(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """revoke() ends a connection; reauthorize() brings it back through pending."""
    connection = await awx_connect()
    revoked = await awx_manager.revoke(connection.id)
    assert S.REVOKED is revoked.state
    with pytest.raises(IllegalTransitionError) as info:
        await awx_manager.revoke(connection.id)
    assert connection.id in str(info.value)
    assert "revoke" in str(info.value)
    assert "revoked" in str(info.value)
    request = await awx_manager.reauthorize(connection.id)
    assert request.connection_id == connection.id
    back = await awx_manager.complete_authorization(awx_fake.approve(request.url))
    assert S.ACTIVE is back.state
    history = await awx_manager.history(connection.id)
    assert list(range(1, len(history) + 1)) == [e.sequence for e in history]


async def test_pending_connection_has_no_token(awx_manager: ConnectionManager) -> None:
    """access_token on a pending connection is a typed error naming its state."""
    request = await awx_manager.begin_authorization()
    with pytest.raises(ConnectionUnusableError) as info:
        await awx_manager.access_token(request.connection_id)
    assert S.PENDING is info.value.state


async def test_subscriber_failure_is_isolated(
    awx_manager: ConnectionManager, awx_connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising subscriber is logged; the transition stands and others still receive."""
    received: list[ConnectionEvent] = []

    def broken(event: ConnectionEvent) -> None:
        raise RuntimeError("subscriber bug")

    awx_manager.subscribe(broken)
    awx_manager.subscribe(received.append)
    connection = await awx_connect()
    assert S.ACTIVE is connection.state
    assert ["pending", "authorized", "active"] == states_of(received)
    assert "subscriber bug" in caplog.text


async def test_no_secret_in_logs_events_or_reprs(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through a lifecycle with faults, no token, code or secret is logged or shown."""
    caplog.set_level("DEBUG")
    events: list[ConnectionEvent] = []
    awx_manager.subscribe(events.append)
    connection = await awx_connect()
    awx_fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token"))
    awx_clock.advance(301)
    await awx_manager.access_token(connection.id)
    assert connection.account_id is not None
    awx_fake.disconnect(connection.account_id)
    with pytest.raises(ConnectionRevokedError) as info:
        await awx_manager.request(connection.id, "GET", "/api/v1/account/")
    latest = await awx_manager.get(connection.id)
    shown = "\n".join(
        [
            caplog.text,
            repr(events),
            repr(awx_manager),
            str(info.value),
            repr(connection),
            repr(latest),
        ]
    )
    leaked = [s for s in awx_fake.issued_secrets() if s in shown]
    assert [] == leaked


async def test_sqlite_connection_survives_a_new_process(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path
) -> None:
    """A connection made by one manager is usable by a later one on the same SQLite file."""
    from awx_connection.stores import SQLiteStore

    path = tmp_path / "awx.db"
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=KEYS), clock=awx_clock
    ) as first:
        request = await first.begin_authorization()
        connection = await first.complete_authorization(awx_fake.approve(request.url))
    awx_clock.advance(301)
    async with ConnectionManager(
        awx_config, store=SQLiteStore(path, keys=KEYS), clock=awx_clock
    ) as second:
        token = await second.access_token(connection.id)
        assert "active" == awx_fake.grant_status(token)
        assert 1 == awx_fake.counters.refreshes
        history = await second.history(connection.id)
    assert ["pending", "authorized", "active", "refreshing", "active"] == states_of(history)


async def test_second_manager_never_presents_a_rotated_token(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path
) -> None:
    """Two managers on one SQLite file take turns rotating; neither reuses a stale token."""
    from awx_connection.stores import SQLiteStore

    path = tmp_path / "awx.db"
    async with (
        ConnectionManager(awx_config, store=SQLiteStore(path, keys=KEYS), clock=awx_clock) as one,
        ConnectionManager(awx_config, store=SQLiteStore(path, keys=KEYS), clock=awx_clock) as two,
    ):
        request = await one.begin_authorization()
        connection = await one.complete_authorization(awx_fake.approve(request.url))
        await two.access_token(connection.id)  # two caches generation 0
        for turn in range(6):
            awx_clock.advance(301)
            await (one if turn % 2 else two).access_token(connection.id)
        assert 6 == awx_fake.counters.refreshes
        assert 0 == awx_fake.counters.reuse_violations
        assert 6 == (await one.get(connection.id)).token_generation


async def test_stuck_exchange_can_be_abandoned(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """An authorized connection whose exchange keeps failing can start over via reauthorize."""
    request = await awx_manager.begin_authorization()
    awx_fake.inject(
        Fault(FaultKind.SERVER_ERROR, grant_type="authorization_code", status=503, times=4)
    )
    with pytest.raises(ProviderUnavailableError):
        await awx_manager.complete_authorization(awx_fake.approve(request.url))
    again = await awx_manager.reauthorize(request.connection_id)
    assert S.PENDING is (await awx_manager.get(request.connection_id)).state
    connection = await awx_manager.complete_authorization(awx_fake.approve(again.url))
    assert S.ACTIVE is connection.state


async def test_statistics_count_what_happened(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    awx_connect: Connect,
) -> None:
    """statistics() is a frozen snapshot of transitions, refresh requests and failures."""
    connection = await awx_connect()
    awx_fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT, grant_type="refresh_token"))
    awx_clock.advance(301)
    await awx_manager.access_token(connection.id)
    stats = awx_manager.statistics()
    assert 1 == stats.connections_cached
    assert 0 == stats.refreshes_in_flight
    assert 2 == stats.refresh_requests
    assert {"NetworkError": 1} == dict(stats.refresh_failures)
    assert 1 == stats.transitions["refreshed"]
    assert 1 == stats.transitions["exchanged"]
    with pytest.raises(AttributeError):
        stats.refresh_requests = 0  # type: ignore[misc]


async def test_manager_repr_is_short_and_secret_free(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """repr(manager) names the client and store, never a cached access token."""
    connection = await awx_connect()
    token = await awx_manager.access_token(connection.id)
    text = repr(awx_manager)
    assert token not in text
    assert "connections_cached=1" in text
    assert all(secret not in text for secret in awx_fake.issued_secrets())


async def test_request_keeps_the_callers_headers_but_sets_its_own_bearer(
    awx_manager: ConnectionManager, awx_connect: Connect
) -> None:
    """Extra headers (a mapping or pairs) go along; a caller's Authorization is replaced."""
    connection = await awx_connect()
    for headers in (
        {"X-Request-Id": "r1", "Authorization": "Bearer not-the-token"},
        [("X-Request-Id", "r2"), ("Authorization", "Bearer not-the-token")],
    ):
        response = await awx_manager.request(
            connection.id, "GET", "/api/v1/account/", headers=headers
        )
        async with response:
            assert 200 == response.status
            assert response.request_info.headers["X-Request-Id"] in ("r1", "r2")
            assert "not-the-token" not in response.request_info.headers["Authorization"]


async def test_a_response_error_never_shows_the_bearer_token(
    awx_manager: ConnectionManager, awx_connect: Connect
) -> None:
    """
    aiohttp's ClientResponseError (raise_for_status, a wrong content type)
    carries the response's request_info, whose repr lists the request
    headers: the token is redacted there, and was sent all the same.
    """
    connection = await awx_connect()
    token = await awx_manager.access_token(connection.id)
    async with await awx_manager.request(connection.id, "GET", "/api/v1/account/") as ok:
        assert 200 == ok.status  # the real bearer went out
        assert token not in repr(ok.request_info)
    async with await awx_manager.request(connection.id, "GET", "/no-such") as missing:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            missing.raise_for_status()
    assert 404 == caught.value.status
    assert token not in repr(caught.value)
    assert token not in str(caught.value)
    assert "Bearer ********" == caught.value.request_info.headers["Authorization"]


async def test_each_caller_gets_its_own_error_during_a_cooldown(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """
    A refresh that failed for good is answered from memory for the cooldown,
    but with a fresh error each time: raising one object again and again
    grew its traceback by three frames a call (150,000 entries, 30 MB, over
    50,000 calls), and handed one caller's frames to the next.
    """
    request = await awx_manager.begin_authorization()
    connection = await awx_manager.complete_authorization(awx_fake.approve(request.url))
    awx_fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=4))
    awx_clock.advance(301)
    errors: list[ProviderUnavailableError] = []
    for _ in range(2000):
        with pytest.raises(ProviderUnavailableError) as caught:
            await awx_manager.access_token(connection.id)
        errors.append(caught.value)
    assert 4 == awx_fake.counters.token_requests - 1  # one flight, then the cooldown
    assert len(errors) == len({id(e) for e in errors})
    assert {503} == {e.status for e in errors}
    assert len(traceback.extract_tb(errors[-1].__traceback__)) < 10


async def test_callers_joined_to_a_failed_flight_each_get_their_own_error(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """Fifty callers share one failing flight; none shares the error object."""
    request = await awx_manager.begin_authorization()
    connection = await awx_manager.complete_authorization(awx_fake.approve(request.url))
    awx_fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", times=4))
    awx_clock.advance(301)
    results = await asyncio.gather(
        *(awx_manager.access_token(connection.id) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, ProviderUnavailableError) for r in results)
    assert 50 == len({id(r) for r in results})
