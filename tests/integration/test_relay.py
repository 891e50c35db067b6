"""
The relay in process, against the real JetStream server on 127.0.0.1:4222
and a real aiohttp receiver that verifies Standard Webhooks signatures with
the ``standardwebhooks`` package: order per connection, ids, the duplicate
window, partition sharing, retries, dead letters and their replay.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from standardwebhooks import Webhook

from awx_connection import (
    ConfigurationError,
    ConnectionEvent,
    ConnectionState,
    KeyRing,
    Secret,
    SinkError,
    Trigger,
)
from awx_connection._retry import Backoff
from awx_connection.relay import (
    PARTITIONS,
    NatsSink,
    OutboxItem,
    Relay,
    WebhookSink,
    partition_of,
    replay,
)
from awx_connection.stores import SQLiteStore
from awx_connection.testing.store_contract import insert_record, update_record


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "relay.db", keys=KeyRing.generate())
    await store.open()
    yield store
    await store.aclose()


async def write_events(store: SQLiteStore, connections: int, per_connection: int) -> int:
    """*connections* connections of *per_connection* events each, interleaved; how many."""
    records = [await insert_record(store, f"conn_{n:03}") for n in range(connections)]
    for _ in range(per_connection - 1):
        for n, record in enumerate(records):
            records[n] = await update_record(store, record)
    return connections * per_connection


async def read_stream(nats_url: str, stream: str, subjects: str) -> list[tuple[str, dict]]:
    """Every message of *stream* in stream order: ``(Nats-Msg-Id, body)``."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = info.state.messages
        sub = await js.pull_subscribe(subjects, stream=stream)
        messages: list[tuple[str, dict]] = []
        while len(messages) < total:
            for msg in await sub.fetch(min(500, total - len(messages)), timeout=5):
                messages.append((msg.headers["Nats-Msg-Id"], orjson.loads(msg.data)))
                await msg.ack()
        return messages
    finally:
        await nc.close()


def assert_in_order_per_connection(bodies: list[dict]) -> None:
    last: dict[str, int] = {}
    for body in bodies:
        data = body["data"]
        assert data["sequence"] > last.get(data["connection_id"], 0), body
        last[data["connection_id"]] = data["sequence"]


async def drain(*relays: Relay) -> None:
    """Step *relays* until none reads anything twice in a row."""
    quiet = 0
    while quiet < 2:
        counts = await asyncio.gather(*(relay.step() for relay in relays))
        quiet = quiet + 1 if not any(counts) else 0


async def test_jetstream_gets_each_event_once_in_order_by_id(
    store: SQLiteStore, nats_url: str, jetstream_stream: tuple[str, str]
) -> None:
    """Every event reaches the stream once, on its kind's subject, with its position as id."""
    stream, prefix = jetstream_stream
    total = await write_events(store, connections=20, per_connection=5)
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix)
    async with Relay(store, sink, batch=37) as relay:
        await drain(relay)
    messages = await read_stream(nats_url, stream, f"{prefix}.>")
    positions = [position for position, _ in await store.read_outbox(limit=10_000)]
    assert [str(p) for p in positions] == [msg_id for msg_id, _ in messages]
    assert total == len(messages)
    assert_in_order_per_connection([body for _, body in messages])
    first = messages[0][1]
    assert "connection.begin" == first["type"]
    assert {"connection_id", "sequence", "trigger", "dest"} <= first["data"].keys()


async def test_a_resent_batch_is_dropped_by_the_duplicate_window(
    store: SQLiteStore, nats_url: str, jetstream_stream: tuple[str, str]
) -> None:
    """What a crashed relay re-sends (same ids) is stored once."""
    stream, prefix = jetstream_stream
    await write_events(store, connections=3, per_connection=4)
    items = [OutboxItem(p, e) for p, e in await store.read_outbox()]
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix)
    await sink.open()
    try:
        await sink.deliver(items[:8])
        await sink.deliver(items)  # the first 8 again, as after a crash
    finally:
        await sink.aclose()
    messages = await read_stream(nats_url, stream, f"{prefix}.>")
    assert [item.id for item in items] == [msg_id for msg_id, _ in messages]


async def test_a_missing_stream_is_an_error_when_not_created(
    nats_url: str, jetstream_stream: tuple[str, str]
) -> None:
    """create_stream=False: a clear configuration error, not a silent publish to nowhere."""
    stream, prefix = jetstream_stream
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix, create_stream=False)
    with pytest.raises(ConfigurationError, match="does not exist"):
        await sink.open()


async def test_an_unreachable_server_is_a_sink_error_without_credentials() -> None:
    """A server that is not there: SinkError, and the password in the URL is not in it."""
    sink = NatsSink("nats://user:hunter2@127.0.0.1:1", connect_timeout=1.0)
    with pytest.raises(SinkError) as caught:
        await sink.open()
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(sink)


async def test_two_relays_share_the_partitions_and_deliver_everything_once(
    store: SQLiteStore, nats_url: str, jetstream_stream: tuple[str, str]
) -> None:
    """Two relays of one name split the partitions; every event goes out once."""
    stream, prefix = jetstream_stream
    total = await write_events(store, connections=40, per_connection=3)
    one = Relay(store, NatsSink(nats_url, stream=stream, subject_prefix=prefix), owner="one")
    two = Relay(store, NatsSink(nats_url, stream=stream, subject_prefix=prefix), owner="two")
    async with one, two:
        await one.step()  # alone: takes every partition
        assert PARTITIONS == len(one.partitions)
        await two.step()  # registers; nothing free yet
        one._next_rebalance = two._next_rebalance = 0.0  # rebalance now, not in a third of a term
        await one.step()  # sees two relays: gives half back
        await two.step()  # takes them
        assert PARTITIONS // 2 == len(one.partitions) == len(two.partitions)
        assert not one.partitions & two.partitions
        await drain(one, two)
    messages = await read_stream(nats_url, stream, f"{prefix}.>")
    ids = [msg_id for msg_id, _ in messages]
    assert total == len(ids) == len(set(ids))
    assert_in_order_per_connection([body for _, body in messages])


class Receiver:
    """A partner's webhook endpoint: verifies each signature, records, fails on demand."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.received: list[dict] = []
        self.attempts: dict[str, int] = {}
        #: connection id -> how many first attempts of each of its events answer 503.
        self.flaky: dict[str, int] = {}
        #: connection ids whose every delivery answers 500.
        self.down: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = self.verifier.verify(body, dict(request.headers))  # raises if forged
        event_id = request.headers["webhook-id"]
        assert payload["id"] == event_id
        self.attempts[event_id] = self.attempts.get(event_id, 0) + 1
        connection = payload["data"]["connection_id"]
        if connection in self.down:
            return web.Response(status=500)
        if self.attempts[event_id] <= self.flaky.get(connection, 0):
            return web.Response(status=503)
        self.received.append(payload)
        return web.Response(status=204)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str, str]]:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    hook = Receiver(secret)
    app = web.Application()
    app.router.add_post("/hooks", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield hook, f"http://127.0.0.1:{port}/hooks", secret
    await runner.cleanup()


def webhook_sink(url: str, secret: str, attempts: int = 3) -> WebhookSink:
    return WebhookSink(url, Secret(secret), attempts=attempts, backoff=Backoff(0.001, 0.005))


async def test_webhooks_are_signed_retried_and_in_order(
    store: SQLiteStore, receiver: tuple[Receiver, str, str]
) -> None:
    """Every event arrives verified, each connection's in order, 503s retried with the same id."""
    hook, url, secret = receiver
    total = await write_events(store, connections=10, per_connection=4)
    hook.flaky = {"conn_003": 2, "conn_007": 1}
    async with Relay(store, webhook_sink(url, secret)) as relay:
        await drain(relay)
        assert total == relay.statistics.delivered
    assert total == len(hook.received)
    assert_in_order_per_connection(hook.received)
    assert 3 == max(hook.attempts.values())
    assert [] == await store.dead_letters("relay")


async def test_dead_letter_after_the_last_attempt_then_replay(
    store: SQLiteStore, receiver: tuple[Receiver, str, str]
) -> None:
    """An endpoint failing one connection: dead letters; once fixed, replay delivers them."""
    hook, url, secret = receiver
    await write_events(store, connections=4, per_connection=3)
    hook.down = {"conn_002"}
    async with Relay(store, webhook_sink(url, secret)) as relay:
        await drain(relay)
        assert 9 == relay.statistics.delivered
        assert 3 == relay.statistics.dead_lettered
    letters = await store.dead_letters("relay")
    assert ["conn_002"] * 3 == [letter.event.connection_id for letter in letters]
    assert [3, 3, 3] == [letter.attempts for letter in letters]
    assert {"HTTP 500"} == {letter.error for letter in letters}

    sink = webhook_sink(url, secret, attempts=1)
    await sink.open()
    try:
        assert (0, 3) == await replay(store, sink)  # still down: they stay, attempts added up
        assert [4, 4, 4] == [letter.attempts for letter in await store.dead_letters("relay")]
        hook.down = set()
        assert (1, 0) == await replay(store, sink, positions=[letters[0].position])
        assert (2, 0) == await replay(store, sink)
    finally:
        await sink.aclose()
    assert [] == await store.dead_letters("relay")
    replayed = [p for p in hook.received if p["data"]["connection_id"] == "conn_002"]
    assert [1, 2, 3] == [p["data"]["sequence"] for p in replayed]
    assert [str(letter.position) for letter in letters] == [p["id"] for p in replayed]


async def test_a_relay_restarted_resumes_after_its_committed_position(
    store: SQLiteStore, receiver: tuple[Receiver, str, str]
) -> None:
    """A second run delivers only what is new: the positions survived the first."""
    hook, url, secret = receiver
    await write_events(store, connections=3, per_connection=2)
    async with Relay(store, webhook_sink(url, secret)) as relay:
        await drain(relay)
    assert 6 == len(hook.received)
    record = await store.get("conn_001")
    assert record is not None
    await update_record(store, record)
    async with Relay(store, webhook_sink(url, secret)) as relay:
        await drain(relay)
    assert 7 == len(hook.received)
    assert ("conn_001", 3) == (
        hook.received[-1]["data"]["connection_id"],
        hook.received[-1]["data"]["sequence"],
    )


def test_partitions_are_stable_and_spread() -> None:
    """The partition of a connection depends on its id only, and ids spread over all."""
    assert partition_of("conn_abc") == partition_of("conn_abc")
    assert PARTITIONS == len({partition_of(f"conn_{n}") for n in range(500)})


def test_event_ids_are_positions() -> None:
    """The stable id of an event is its outbox position."""
    event = ConnectionEvent(
        connection_id="c",
        sequence=1,
        trigger=Trigger.BEGIN,
        source=None,
        dest=ConnectionState.PENDING,
        reason="r",
        at=0.0,
    )
    assert "42" == OutboxItem(42, event).id


async def test_relay_on_postgres_to_jetstream(
    postgres_dsn: str,
    postgres_schema: str,
    nats_url: str,
    jetstream_stream: tuple[str, str],
) -> None:
    """The same promises with the PostgreSQL store (its NOTIFY wakes the relay)."""
    from awx_connection.stores import PostgresStore

    stream, prefix = jetstream_stream
    store = PostgresStore(postgres_dsn, keys=KeyRing.generate(), schema=postgres_schema)
    await store.open()
    try:
        records = [await insert_record(store, f"conn_{n}") for n in range(5)]
        for n, record in enumerate(records):
            records[n] = await update_record(store, record)
        one = Relay(store, NatsSink(nats_url, stream=stream, subject_prefix=prefix), owner="a")
        two = Relay(store, NatsSink(nats_url, stream=stream, subject_prefix=prefix), owner="b")
        async with one, two:
            await drain(one, two)
        positions = [str(p) for p, _ in await store.read_outbox()]
    finally:
        await store.aclose()
    messages = await read_stream(nats_url, stream, f"{prefix}.>")
    ids = [msg_id for msg_id, _ in messages]
    # Two relays: partitions interleave in the stream; each connection stays in order.
    assert sorted(positions) == sorted(ids)
    assert len(ids) == len(set(ids))
    assert_in_order_per_connection([body for _, body in messages])
