"""
Webhooks: signature, tolerance, secret rotation, dedupe, unordered delivery,
and the fake provider posting real signed webhooks to a real aiohttp server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from awx_connection import (
    Config,
    ConnectionManager,
    ConnectionState,
    Endpoints,
    KeyRing,
    StoreUnavailableError,
    WebhookClaim,
    WebhookEvent,
    webhook_handler,
)
from awx_connection._webhooks import MAX_BODY_BYTES, sign
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

S = ConnectionState
REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
SECRET = "whsec_current"
OLD_SECRET = "whsec_previous"


def envelope(name: str, account_id: str | None, created_at: float, **extra: object) -> bytes:
    payload = {
        "id": extra.pop("id", f"evt_{name}_{created_at}"),
        "name": name,
        "account_id": account_id,
        "data": extra.pop("data", {}),
        "created_at": datetime.fromtimestamp(created_at, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000"),
        **extra,
    }
    return orjson.dumps(payload)


def signed(body: bytes, now: float, secret: str = SECRET) -> dict[str, str]:
    timestamp = str(int(now * 1000))
    return {"x-timestamp": timestamp, "x-signature": sign(secret, timestamp, body)}


@pytest.fixture
def config(awx_fake: FakeAirwallex) -> Config:
    return Config(
        client_id=awx_fake.client_id,
        client_secret=awx_fake.client_secret,
        redirect_uri="http://127.0.0.1:8000/airwallex/callback",
        endpoints=Endpoints.from_base_url(awx_fake.base_url),
        default_scopes=("account_details:read",),
        webhook_secrets=(SECRET, OLD_SECRET),
    )


@pytest.fixture
async def manager(
    config: Config, awx_clock: ManualClock, tmp_path: Path
) -> AsyncIterator[ConnectionManager]:
    store = SQLiteStore(tmp_path / "awx.db", keys=KeyRing.generate())
    async with ConnectionManager(config, store=store, clock=awx_clock) as manager:
        yield manager


async def active(manager: ConnectionManager, fake: FakeAirwallex) -> tuple[str, str]:
    request = await manager.begin_authorization()
    connection = await manager.complete_authorization(fake.approve(request.url))
    assert connection.account_id is not None
    return connection.id, connection.account_id


async def test_valid_disconnect_revokes(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """A signed connection.disconnected moves the account's connection to revoked."""
    connection_id, account_id = await active(manager, awx_fake)
    awx_clock.advance(10)
    body = envelope("connection.disconnected", account_id, awx_clock.now())
    result = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert (200, (connection_id,)) == (result.status, result.revoked)
    connection = await manager.get(connection_id)
    assert S.REVOKED is connection.state
    assert "webhook connection.disconnected" in connection.reason


async def test_partner_disconnect_with_several_accounts(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """partner_connection.disconnected revokes every account in account_ids."""
    first, first_account = await active(manager, awx_fake)
    other_account = awx_fake.create_account()
    request = await manager.begin_authorization()
    second = await manager.complete_authorization(
        awx_fake.approve(request.url, account_id=other_account)
    )
    third, _ = await active(manager, awx_fake)  # same default account as the first
    awx_clock.advance(10)
    body = envelope(
        "partner_connection.disconnected",
        None,
        awx_clock.now(),
        data={"account_ids": [first_account, other_account], "reason": "user_initiated"},
        app_id="app_1",
    )
    result = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert 200 == result.status
    assert {first, second.id, third} == set(result.revoked)


@pytest.mark.parametrize(
    ("tamper", "status"),
    [
        ("body", 401),
        ("wrong_secret", 401),
        ("stale", 401),
        ("future", 401),
        ("missing_header", 401),
        ("bad_timestamp", 401),
    ],
)
async def test_refused_signatures_change_nothing(
    manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    tamper: str,
    status: int,
) -> None:
    """Tampered body, wrong secret, stale or future timestamp: 401 and no state change."""
    connection_id, account_id = await active(manager, awx_fake)
    now = awx_clock.now()
    body = envelope("connection.disconnected", account_id, now)
    headers = signed(body, now)
    if tamper == "body":
        body = body.replace(b"connection.disconnected", b"connection.disconnecteX")
    elif tamper == "wrong_secret":
        headers = signed(body, now, secret="not-the-secret")
    elif tamper == "stale":
        headers = signed(body, now - 301)
    elif tamper == "future":
        headers = signed(body, now + 301)
    elif tamper == "missing_header":
        del headers["x-signature"]
    elif tamper == "bad_timestamp":
        headers["x-timestamp"] = "yesterday"
    result = await manager.handle_webhook(headers, body)
    assert status == result.status
    assert S.ACTIVE is (await manager.get(connection_id)).state


async def test_previous_secret_accepted_during_rotation(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """Both configured secrets verify, so a secret rotation loses no delivery."""
    connection_id, account_id = await active(manager, awx_fake)
    body = envelope("account.active", account_id, awx_clock.now())
    result = await manager.handle_webhook(signed(body, awx_clock.now(), OLD_SECRET), body)
    assert 200 == result.status
    assert result.event is not None
    assert (connection_id,) == result.event.connection_ids


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"name": "x"}', b""])
async def test_malformed_body_is_400(
    manager: ConnectionManager, awx_clock: ManualClock, body: bytes
) -> None:
    """A correctly signed body that is not a webhook envelope is answered 400."""
    result = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert 400 == result.status


async def test_duplicate_id_is_200_and_acts_once(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """The same event id twice: both 200, subscribers called once."""
    _, account_id = await active(manager, awx_fake)
    seen: list[WebhookEvent] = []
    manager.subscribe_webhooks(seen.append, names=["account.*"])
    body = envelope("account.action_required", account_id, awx_clock.now(), id="evt_1")
    first = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    second = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert (200, False) == (first.status, first.duplicate)
    assert (200, True) == (second.status, second.duplicate)
    assert ["account.action_required"] == [e.name for e in seen]


async def test_old_disconnect_does_not_undo_a_reconnect(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """Unordered delivery: a disconnect older than the current authorization is ignored."""
    connection_id, account_id = await active(manager, awx_fake)
    disconnected_at = awx_clock.now() + 5
    awx_clock.advance(10)
    await manager.revoke(connection_id, "disconnected (seen through the API)")
    again = await manager.reauthorize(connection_id)
    awx_clock.advance(10)
    await manager.complete_authorization(awx_fake.approve(again.url, account_id=account_id))
    # The old disconnect's webhook arrives only now.
    body = envelope("connection.disconnected", account_id, disconnected_at)
    result = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert (200, ()) == (result.status, result.revoked)
    assert S.ACTIVE is (await manager.get(connection_id)).state


async def test_unknown_and_account_events_reach_subscribers(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """account.* events are tied to the connection; unknown names pass through too."""
    connection_id, account_id = await active(manager, awx_fake)
    every: list[WebhookEvent] = []
    account: list[WebhookEvent] = []

    async def on_account(event: WebhookEvent) -> None:
        account.append(event)

    manager.subscribe_webhooks(every.append)
    manager.subscribe_webhooks(on_account, names=["account.*"])
    for name in ("account.suspended", "balance.va.top_up", "something.new"):
        body = envelope(name, account_id, awx_clock.now())
        assert 200 == (await manager.handle_webhook(signed(body, awx_clock.now()), body)).status
    assert ["account.suspended", "balance.va.top_up", "something.new"] == [e.name for e in every]
    assert ["account.suspended"] == [e.name for e in account]
    assert (connection_id,) == account[0].connection_ids
    assert S.ACTIVE is (await manager.get(connection_id)).state


async def test_fake_posts_signed_webhooks_to_an_aiohttp_endpoint(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """End to end: the fake signs and posts; webhook_handler verifies, revokes, dedupes."""
    app = web.Application()
    app.router.add_post("/hooks", webhook_handler(manager))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        awx_fake.set_webhook(f"http://127.0.0.1:{port}/hooks", SECRET)
        connection_id, account_id = await active(manager, awx_fake)
        seen: list[WebhookEvent] = []
        manager.subscribe_webhooks(seen.append)
        awx_fake.send_webhook("account.action_required", account_id, {"reason": "kyc"})
        awx_fake.disconnect(account_id)
        await awx_fake.flush_webhooks()
        assert S.REVOKED is (await manager.get(connection_id)).state
        assert ["account.action_required", "connection.disconnected"] == [e.name for e in seen]
        # Airwallex retries: the same envelope again is a 200 duplicate.
        awx_fake.resend_webhook(awx_fake.webhooks.sent[-1])
        await awx_fake.flush_webhooks()
        assert [200] == awx_fake.webhooks.answers[awx_fake.webhooks.sent[-1]["id"]][-1:]
        assert 2 == len(seen)
    finally:
        await runner.cleanup()


async def test_fake_retries_until_the_endpoint_answers_200(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """Non-200 answers are retried with the same event id."""
    answers = [500, 503]

    async def flaky(request: web.Request) -> web.StreamResponse:
        if answers:
            return web.Response(status=answers.pop(0))
        return await webhook_handler(manager)(request)

    app = web.Application()
    app.router.add_post("/hooks", flaky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        awx_fake.set_webhook(f"http://127.0.0.1:{port}/hooks", SECRET)
        connection_id, account_id = await active(manager, awx_fake)
        awx_fake.disconnect(account_id)
        await awx_fake.flush_webhooks()
        event_id = awx_fake.webhooks.sent[-1]["id"]
        assert [500, 503, 200] == awx_fake.webhooks.answers[event_id]
        assert S.REVOKED is (await manager.get(connection_id)).state
    finally:
        await runner.cleanup()


@pytest.fixture
async def hook_port(manager: ConnectionManager) -> AsyncIterator[int]:
    """The port of a real aiohttp server on 127.0.0.1 with webhook_handler at /hooks."""
    app = web.Application()
    app.router.add_post("/hooks", webhook_handler(manager))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def post_in_writes(port: int, head: dict[str, str], writes: list[bytes]) -> int:
    """POST /hooks over a raw socket, one TCP write per item with a pause between; the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = ["POST /hooks HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in head.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        for i, data in enumerate(writes):
            if i:
                await asyncio.sleep(0.05)  # the server sees the first part alone
            writer.write(data)
            await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_handler_verifies_a_body_that_arrives_in_two_writes(
    framing: str,
    hook_port: int,
    manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
) -> None:
    """A signed body split across TCP writes (or chunks) is verified whole, not by its prefix."""
    connection_id, account_id = await active(manager, awx_fake)
    awx_fake.disconnect(account_id)  # what the webhook reports
    body = envelope("connection.disconnected", account_id, awx_clock.now())
    head = signed(body, awx_clock.now()) | {"Content-Type": "application/json"}
    half = len(body) // 2
    if framing == "chunked":
        head["Transfer-Encoding"] = "chunked"
        writes = [chunk(body[:half]), chunk(body[half:]) + b"0\r\n\r\n"]
    else:
        head["Content-Length"] = str(len(body))
        writes = [body[:half], body[half:]]

    assert 200 == await post_in_writes(hook_port, head, writes)
    assert S.REVOKED is (await manager.get(connection_id)).state


async def test_handler_refuses_an_oversized_chunked_body_with_413(
    hook_port: int, awx_clock: ManualClock
) -> None:
    """With no Content-Length to check up front, the limit holds while reading the chunks."""
    body = b" " * (MAX_BODY_BYTES + 1)
    head = signed(body, awx_clock.now()) | {"Transfer-Encoding": "chunked"}
    half = len(body) // 2
    writes = [chunk(body[:half]), chunk(body[half:]) + b"0\r\n\r\n"]

    assert 413 == await post_in_writes(hook_port, head, writes)


def test_signature_matches_the_documented_recipe() -> None:
    """x-signature is hex HMAC-SHA256(secret, timestamp + body), as Airwallex documents."""
    import hashlib
    import hmac

    body = b'{"id":"evt_1"}'
    timestamp = str(int(time.time() * 1000))
    expected = hmac.new(b"s3cret", timestamp.encode() + body, hashlib.sha256).hexdigest()
    assert expected == sign("s3cret", timestamp, body)


# --- one event, many deliveries at once ---------------------------------------------


async def test_twenty_concurrent_deliveries_of_one_event_act_once(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """
    Twenty deliveries of one event at once (Airwallex retrying while the
    first is still being handled): one acts; the others are told to retry
    (409) or that it is a duplicate (200), and none runs the subscribers.
    """
    _, account_id = await active(manager, awx_fake)
    calls: list[str] = []

    async def slow(event: WebhookEvent) -> None:
        calls.append(event.id)
        await asyncio.sleep(0.05)

    manager.subscribe_webhooks(slow)
    body = envelope("account.active", account_id, awx_clock.now(), id="evt_once")
    results = await asyncio.gather(
        *(manager.handle_webhook(signed(body, awx_clock.now()), body) for _ in range(20))
    )
    assert ["evt_once"] == calls
    assert 1 == sum(r.detail == "handled" for r in results)
    assert {200, 409} >= {r.status for r in results}
    again = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert (200, True) == (again.status, again.duplicate)


async def deliver_to_two_replicas(
    a: ConnectionManager, b: ConnectionManager, body: bytes, now: float
) -> list[str]:
    """The same delivery to both replicas at once, subscribers recording into one list."""
    calls: list[str] = []

    async def slow(event: WebhookEvent) -> None:
        calls.append(event.id)
        await asyncio.sleep(0.05)

    a.subscribe_webhooks(slow)
    b.subscribe_webhooks(slow)
    results = await asyncio.gather(
        *(m.handle_webhook(signed(body, now), body) for m in (a, b, a, b))
    )
    assert 1 == sum(r.detail == "handled" for r in results)
    return calls


async def test_two_replicas_on_one_sqlite_file_act_on_an_event_once(
    config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, tmp_path: Path
) -> None:
    """Two managers (replicas) on one SQLite file receive the same event: one acts."""
    keys = KeyRing.generate()
    path = tmp_path / "awx.db"
    async with (
        ConnectionManager(config, store=SQLiteStore(path, keys=keys), clock=awx_clock) as a,
        ConnectionManager(config, store=SQLiteStore(path, keys=keys), clock=awx_clock) as b,
    ):
        _, account_id = await active(a, awx_fake)
        body = envelope("account.active", account_id, awx_clock.now(), id="evt_replicas")
        assert ["evt_replicas"] == await deliver_to_two_replicas(a, b, body, awx_clock.now())


@pytest.mark.postgres
async def test_two_replicas_on_postgresql_act_on_an_event_once(
    config: Config,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    postgres_dsn: str,
    postgres_schema: str,
) -> None:
    """The same across two PostgreSQL pools: the claim is one upsert, one winner."""
    from awx_connection.stores import PostgresStore

    keys = KeyRing.generate()

    def store() -> PostgresStore:
        return PostgresStore(postgres_dsn, keys=keys, schema=postgres_schema)

    async with (
        ConnectionManager(config, store=store(), clock=awx_clock) as a,
        ConnectionManager(config, store=store(), clock=awx_clock) as b,
    ):
        _, account_id = await active(a, awx_fake)
        body = envelope("account.active", account_id, awx_clock.now(), id="evt_pg")
        assert ["evt_pg"] == await deliver_to_two_replicas(a, b, body, awx_clock.now())


async def test_a_delivery_that_failed_is_handled_by_the_retry(
    manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store fails mid-handling: 503 and the claim released, so the retry acts."""
    connection_id, account_id = await active(manager, awx_fake)
    listing = SQLiteStore.list_connections
    failures = [StoreUnavailableError("the database went away (simulated)")]

    async def flaky(self: SQLiteStore, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await listing(self, **kwargs)

    monkeypatch.setattr(SQLiteStore, "list_connections", flaky)
    body = envelope("connection.disconnected", account_id, awx_clock.now() + 5, id="evt_retry")
    first = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert 503 == first.status
    assert S.ACTIVE is (await manager.get(connection_id)).state
    retry = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert (200, (connection_id,)) == (retry.status, retry.revoked)


# --- a disconnect in the second of the activation --------------------------------------


async def test_a_disconnect_in_the_second_of_the_activation_is_checked_with_the_provider(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """
    Airwallex's created_at is to the second: a disconnect in the second the
    connection was activated (here half a second later) has no certain order
    with it. The provider is asked, refuses the token, and the connection is
    revoked (it used to be ignored as older, and stay active).
    """
    awx_clock.advance(0.25)
    connection_id, account_id = await active(manager, awx_fake)
    activated = awx_clock.now()
    awx_clock.advance(0.5)
    awx_fake.disconnect(account_id)  # the customer disconnects at once
    body = envelope("connection.disconnected", account_id, activated, id="evt_same_second")
    result = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert (200, (connection_id,)) == (result.status, result.revoked)
    assert S.REVOKED is (await manager.get(connection_id)).state


async def test_an_earlier_disconnect_in_the_same_second_leaves_a_reconnect_alone(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """Disconnected, then reconnected within the second: the provider still takes the token."""
    awx_clock.advance(0.1)
    connection_id, account_id = await active(manager, awx_fake)
    awx_fake.disconnect(account_id)
    disconnected_at = awx_clock.now()
    await manager.revoke(connection_id, "disconnected (seen through the API)")
    again = await manager.reauthorize(connection_id)
    awx_clock.advance(0.3)
    await manager.complete_authorization(awx_fake.approve(again.url, account_id=account_id))
    body = envelope("connection.disconnected", account_id, disconnected_at, id="evt_earlier")
    result = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert (200, ()) == (result.status, result.revoked)
    assert S.ACTIVE is (await manager.get(connection_id)).state


async def test_a_disconnect_of_uncertain_order_is_retried_when_the_provider_is_down(
    manager: ConnectionManager, awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> None:
    """The provider cannot be asked: 503, nothing changes, and the claim is free again."""
    awx_clock.advance(0.25)
    connection_id, account_id = await active(manager, awx_fake)
    await awx_fake.aclose()  # Airwallex unreachable
    body = envelope("connection.disconnected", account_id, awx_clock.now(), id="evt_unknown")
    result = await manager.handle_webhook(signed(body, awx_clock.now()), body)
    assert 503 == result.status
    assert S.ACTIVE is (await manager.get(connection_id)).state
    now = awx_clock.now()
    claim = await manager.store.claim_webhook("evt_unknown", owner="retry", now=now, until=now)
    assert WebhookClaim.CLAIMED is claim


def test_the_fake_renders_created_at_as_airwallex_does(awx_fake: FakeAirwallex) -> None:
    """To the second, with a +0000 offset: 2025-07-24T07:16:00+0000."""
    awx_fake.set_webhook("http://127.0.0.1:9/hooks", SECRET)
    payload = awx_fake.webhooks.event("account.active", "acct_1", created_at=1753341360.987)
    assert "2025-07-24T07:16:00+0000" == payload["created_at"]
