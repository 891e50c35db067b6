"""
The relay benchmarks: throughput to JetStream against a bare nats-py
publish loop of the same messages in the same run, and the latency from a
committed transition to the partner's JetStream consumer in another process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import nats
import orjson
from _common import EPOCH, Sizes, build_store, config_for, new_keys_spec, percentile, result
from _processes import store_spec

from awx_connection import ConnectionManager, KeyRing
from awx_connection._records import dump_event
from awx_connection.relay import NatsSink, OutboxItem, Relay, event_body
from awx_connection.stores import SQLiteStore
from awx_connection.testing import ManualClock
from awx_connection.testing.store_contract import insert_record, make_event

NATS_URL = os.environ.get("AWX_TEST_NATS", "nats://127.0.0.1:4222")
RELAY_WORKER = Path(__file__).with_name("_relay_worker.py")
#: Events per batch, for the relay and the bare loop alike.
BATCH = 500


def _events(sizes: Sizes) -> int:
    return {"smoke": 300, "quick": 20_000}.get(sizes.mode, 50_000)


def _rounds(sizes: Sizes) -> int:
    return {"smoke": 1, "quick": 3}.get(sizes.mode, 5)


async def nats_unreachable() -> str | None:
    """Why JetStream cannot be used, or ``None`` when it answers."""
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()
    except Exception as exc:
        return f"NATS JetStream is not reachable at {NATS_URL}: {type(exc).__name__}: {exc}"
    return None


async def _outbox_of(count: int, tmp: Path) -> SQLiteStore:
    """An SQLite store whose outbox holds *count* events of 100 connections, interleaved."""
    path = tmp / f"relay-{secrets.token_hex(4)}.db"
    store = SQLiteStore(path, keys=KeyRing.parse(new_keys_spec()))
    await store.open()
    connections = [f"conn_{n:03}" for n in range(100)]
    for connection in connections:
        await insert_record(store, connection)
    # The rest straight into the table (the store writes one transaction
    # per event, which would make building the data the slow part).
    rows = [
        (
            connection,
            sequence,
            EPOCH,
            orjson.dumps(dump_event(make_event(connection, sequence))),
        )
        for sequence in range(2, count // len(connections) + 2)
        for connection in connections
    ][: count - len(connections)]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO events (connection_id, sequence, at, data) VALUES (?, ?, ?, ?)", rows
        )
    return store


async def _bare_loop(js: Any, messages: list[tuple[str, bytes, dict[str, str]]]) -> float:
    """Seconds for nats-py alone to publish *messages* in batches and wait for the acks."""
    started = time.perf_counter()
    for start in range(0, len(messages), BATCH):
        futures = [
            await js.publish_async(subject, payload, headers=dict(headers))
            for subject, payload, headers in messages[start : start + BATCH]
        ]
        await asyncio.gather(*futures)
    return time.perf_counter() - started


async def _relay_run(store: SQLiteStore, stream: str, prefix: str, name: str) -> float:
    """Seconds for a relay to deliver the whole outbox (its positions start at 0)."""
    sink = NatsSink(NATS_URL, stream=stream, subject_prefix=prefix)
    relay = Relay(store, sink, name=name, batch=BATCH)
    async with relay:  # connects, and creates the stream: not part of the time
        started = time.perf_counter()
        while await relay.step():
            pass
        seconds = time.perf_counter() - started
    return seconds


async def bench_relay_throughput(sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """
    Events per second a relay delivers from an SQLite outbox to JetStream
    (reading, encoding, publishing, acknowledgements, committing positions),
    against nats-py publishing the same messages (same subjects, bodies and
    ``Nats-Msg-Id`` headers, built beforehand) in batches of the same size.
    Interleaved rounds, each into fresh streams; the medians' ratio.
    """
    count = _events(sizes)
    store = await _outbox_of(count, tmp)
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    token = secrets.token_hex(4)
    streams: list[str] = []
    relay_rates, bare_rates = [], []
    try:
        items = [OutboxItem(p, e) for p, e in await store.read_outbox(limit=count + 1)]
        assert count == len(items), len(items)
        for round_ in range(_rounds(sizes)):
            bare_stream, bare_prefix = (
                f"BENCH_BARE_{token}_{round_}",
                f"bench_bare_{token}_{round_}",
            )
            await js.add_stream(name=bare_stream, subjects=[f"{bare_prefix}.>"])
            streams.append(bare_stream)
            sink = NatsSink(NATS_URL, subject_prefix=bare_prefix)
            messages = [
                (sink.subject(item), orjson.dumps(event_body(item)), sink.headers(item))
                for item in items
            ]
            bare_rates.append(count / await _bare_loop(js, messages))
            stream, prefix = f"BENCH_RELAY_{token}_{round_}", f"bench_relay_{token}_{round_}"
            streams.append(stream)
            relay_rates.append(
                count / await _relay_run(store, stream, prefix, f"bench-{token}-{round_}")
            )
            stored = (await js.stream_info(stream)).state.messages
            assert count == stored, f"the relay stored {stored} of {count} events"
    finally:
        for stream in streams:
            try:
                await js.delete_stream(stream)
            except Exception as exc:  # a stream never created: nothing to delete
                print(f"could not delete {stream}: {exc}", file=sys.stderr)
        await nc.close()
        await store.aclose()
    relay_rate, bare_rate = statistics.median(relay_rates), statistics.median(bare_rates)
    ratio = relay_rate / bare_rate
    return result(
        "relay_throughput_ratio",
        ratio,
        "x",
        ">= 0.5",
        ratio >= 0.5,
        relay_events_per_s=round(relay_rate),
        bare_publish_events_per_s=round(bare_rate),
        events=count,
        rounds=len(relay_rates),
    )


class _Helper:
    """A helper process of _relay_worker.py, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process, self.log = process, log

    @classmethod
    async def start(cls, mode: str, settings: dict[str, Any], tmp: Path) -> _Helper:
        log = tmp / f"relay-{mode}-{secrets.token_hex(3)}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(RELAY_WORKER),
                mode,
                orjson.dumps(settings).decode(),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        return cls(process, log)

    async def read(self, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            msg = f"{RELAY_WORKER.name} exited: {self.log.read_text()[-2000:]}"
            raise RuntimeError(msg)
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


async def bench_relay_latency(sizes: Sizes, kind: str, tmp: Path) -> dict[str, Any]:
    """
    A transition committed here; a relay process delivers it to JetStream;
    a consumer process (the partner's side) receives it: milliseconds from
    the start of the transition to the consumer holding the event. One
    transition at a time, as in pg_event_latency.
    """
    name = "relay_latency_ms_p50" + ("" if kind == "sqlite" else f"_{kind}")
    warmup = 3
    token = secrets.token_hex(4)
    stream, prefix = f"BENCH_LATENCY_{token}", f"bench_latency_{token}"
    config = config_for("http://127.0.0.1:9", "bench-client", "bench-secret")
    helpers: list[_Helper] = []
    try:
        async with store_spec(kind, tmp, f"relay-latency-{kind}") as spec:
            store = build_store(spec)
            async with ConnectionManager(config, store=store, clock=ManualClock(EPOCH)) as awx:
                request = await awx.begin_authorization()
                connection_id = request.connection_id
                settings = {"store": spec, "nats": NATS_URL, "stream": stream, "prefix": prefix}
                relay = await _Helper.start("relay", settings, tmp)
                helpers.append(relay)
                await relay.read()  # the stream exists now
                consumer = await _Helper.start("consume", settings, tmp)
                helpers.append(consumer)
                await consumer.read()
                first = await consumer.read()  # the "begin" event: the pipeline is live
                assert 1 == first["sequence"], first
                latencies, commits = [], []
                for index in range(warmup + sizes.latency_samples):
                    started = time.clock_gettime(time.CLOCK_MONOTONIC)
                    await awx.reauthorize(connection_id)
                    committed = time.clock_gettime(time.CLOCK_MONOTONIC)
                    seen = await consumer.read(timeout=10)
                    assert index + 2 == seen["sequence"], seen
                    if index >= warmup:
                        latencies.append((seen["at"] - started) * 1e3)
                        commits.append((committed - started) * 1e3)
                    await asyncio.sleep(0.005)  # one at a time: latency, not throughput
    finally:
        for helper in helpers:
            await helper.stop()
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream)
        except Exception as exc:
            print(f"could not delete {stream}: {exc}", file=sys.stderr)
        await nc.close()
    p50 = statistics.median(latencies)
    return result(
        name,
        p50,
        "ms",
        "<= 50",
        p50 <= 50,
        p90_ms=round(percentile(latencies, 0.9), 2),
        max_ms=round(max(latencies), 2),
        transition_commit_ms_p50=round(statistics.median(commits), 2),
        samples=len(latencies),
    )
