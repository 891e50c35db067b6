"""
``awx-connection events relay`` as real processes, SIGKILLed at random points.

10,000 events are written to a SQLite store while three relay processes
run on it: two of one name publishing to the real JetStream server (they
share the partitions) and one delivering signed webhooks to a real aiohttp
receiver. Every half second or so one of them is killed with SIGKILL, mid
batch or not, and started again (sometimes under a new owner id, so its
partitions wait out their lease). At the end:

* the stream holds every event exactly once (read back, by ``Nats-Msg-Id``),
  with no gap in any connection's sequence and in order per connection;
* the receiver got every event at least once (duplicates allowed: a killed
  relay re-sends its batch), each verified, first arrivals in order per
  connection;
* both JetStream relays held partitions at the same time.

Then a dead letter and its replay through the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from standardwebhooks import Webhook

from awx_connection import KeyRing
from awx_connection.stores import SQLiteStore
from awx_connection.testing.store_contract import insert_record, update_record

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

CONNECTIONS = 200
PER_CONNECTION = 50
TOTAL = CONNECTIONS * PER_CONNECTION
#: SIGKILLs the test makes at the least, whatever the pace of its writes.
MIN_KILLS = 5


class Receiver:
    """The partner's webhook endpoint: verifies every delivery and records it."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.arrivals: list[tuple[str, str, int]] = []
        self.fail_connection: str | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = self.verifier.verify(body, dict(request.headers))
        data = payload["data"]
        if data["connection_id"] == self.fail_connection:
            return web.Response(status=500)
        self.arrivals.append(
            (request.headers["webhook-id"], data["connection_id"], data["sequence"])
        )
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


class Relays:
    """Relay processes by slot, started, killed and restarted."""

    def __init__(self, store_url: str, env: dict[str, str], logs: Path) -> None:
        self.store_url = store_url
        self.logs = logs
        self.env = env
        self.args: dict[str, list[str]] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        #: How many "started" lines each slot's log held before its latest start.
        self.starts: dict[str, int] = {}
        self.kills = 0

    def start(self, slot: str, args: list[str] | None = None, *, owner: str | None = None) -> None:
        if args is not None:
            self.args[slot] = args
        command = [
            sys.executable,
            "-m",
            "awx_connection",
            "events",
            "relay",
            "--store",
            self.store_url,
            "--lease-term",
            "1",
            "--poll-interval",
            "0.05",
            "--owner",
            owner or slot,
            *self.args[slot],
        ]
        self.starts[slot] = self.started(slot)
        # Files, not pipes: nobody reads them while the relays run.
        with (
            open(self.logs / f"{slot}.out", "ab") as out,
            open(self.logs / f"{slot}.err", "ab") as err,
        ):
            self.running[slot] = subprocess.Popen(command, env=self.env, stdout=out, stderr=err)

    def kill(self, slot: str) -> None:
        process = self.running[slot]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.kills += 1

    def started(self, slot: str) -> int:
        """How many times the slot's relay said it started (its signal handlers are set then)."""
        log = self.logs / f"{slot}.out"
        return log.read_text().count(" started (") if log.exists() else 0

    def stop_all(self) -> None:
        """SIGTERM every relay, once it is up; a clean stop exits 0."""
        # A relay restarted by the last kill may still be importing: a
        # SIGTERM then ends it before it can stop cleanly (exit -15).
        deadline = time.monotonic() + 20
        for slot, process in self.running.items():
            while (
                process.poll() is None
                and self.started(slot) <= self.starts[slot]
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for slot, process in self.running.items():
            process.wait(20)
            assert 0 == process.returncode, (slot, (self.logs / f"{slot}.err").read_text())


async def read_stream(nats_url: str, stream: str, subjects: str) -> list[tuple[str, dict]]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(subjects, stream=stream)
        messages: list[tuple[str, dict]] = []
        while len(messages) < total:
            for msg in await sub.fetch(min(1000, total - len(messages)), timeout=5):
                messages.append((msg.headers["Nats-Msg-Id"], orjson.loads(msg.data)))
                await msg.ack()
        return messages
    finally:
        await nc.close()


async def stream_count(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    except Exception:
        return 0
    finally:
        await nc.close()


@pytest.mark.timeout(150)
async def test_ten_thousand_events_through_killed_relays(
    tmp_path: Path,
    nats_url: str,
    jetstream_stream: tuple[str, str],
    receiver: tuple[Receiver, str, str],
) -> None:
    """No gap, order per connection, once at the broker, at least once at the receiver."""
    stream, prefix = jetstream_stream
    hook, hook_url, secret = receiver
    entry = f"k1:{KeyRing.new_key()}"
    path = tmp_path / "relay.db"
    store = SQLiteStore(path, keys=KeyRing.parse(entry))
    await store.open()
    env = {**os.environ, "AWX_ENCRYPTION_KEYS": entry, "AWX_RELAY_WEBHOOK_SECRET": secret}
    relays = Relays(f"sqlite:///{path}", env, tmp_path)
    nats_args = ["--to", nats_url, "--name", "nats", "--stream", stream, "--subject-prefix", prefix]
    hook_args = ["--to", hook_url, "--name", "hooks", "--retry-base", "0.01", "--batch", "200"]
    rng = random.Random(16)
    shared = False
    records = [await insert_record(store, f"conn_{n:04}") for n in range(CONNECTIONS)]

    async def write(rounds: int) -> None:
        for _ in range(rounds):
            for n, record in enumerate(records):
                records[n] = await update_record(store, record)
            await asyncio.sleep(0)

    async def chaos(until: asyncio.Future[None]) -> None:
        nonlocal shared
        generation = 0
        # At least MIN_KILLS, however fast the writes: on a quiet machine
        # they can end after four, and the later kills then land while the
        # relays work through what is left.
        while not until.done() or generation < MIN_KILLS:
            # Longer than a relay takes to start (about a second here), so
            # that each kill finds it at work, often mid-batch.
            await asyncio.sleep(rng.uniform(0.8, 2.0))
            leases = await store.relay_leases("nats", now=time.time())
            owners = {owner.split("#")[0] for name, owner in leases if name.startswith("p")}
            shared = shared or {"nats-a", "nats-b"} <= owners
            slot = rng.choice(sorted(relays.running))
            relays.kill(slot)
            generation += 1
            # Half the restarts come back as a new owner: the old one's
            # partitions must then run out their lease before anyone takes them.
            owner = f"{slot}#{generation}" if rng.random() < 0.5 else slot
            relays.start(slot, owner=owner)

    # A backlog first, so that the first kills land in full batches; the
    # rest is written while the relays run and are killed.
    await write(PER_CONNECTION // 2 - 1)
    relays.start("nats-a", nats_args)
    relays.start("nats-b", nats_args)
    relays.start("hooks", hook_args)
    started = time.monotonic()
    writer = asyncio.ensure_future(write(PER_CONNECTION - PER_CONNECTION // 2))
    killer = asyncio.ensure_future(chaos(writer))
    await writer
    written = time.monotonic() - started
    await killer
    # Let the relays catch up, undisturbed, and check the result.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        delivered = len({arrival[0] for arrival in hook.arrivals})
        at_broker = await stream_count(nats_url, stream)
        if delivered == TOTAL and at_broker >= TOTAL:
            break
        await asyncio.sleep(1)
    elapsed = time.monotonic() - started
    relays.stop_all()

    positions = [str(p) for p, _ in await store.read_outbox(limit=TOTAL + 1)]
    assert TOTAL == len(positions)
    messages = await read_stream(nats_url, stream, f"{prefix}.>")
    ids = [msg_id for msg_id, _ in messages]
    assert len(ids) == len(set(ids)), "a message id reached the stream twice"
    assert set(positions) == set(ids), "the stream misses events or has strangers"
    expected_next: dict[str, int] = {}
    for _, body in messages:
        data = body["data"]
        connection = data["connection_id"]
        assert expected_next.get(connection, 1) == data["sequence"], "gap or disorder at broker"
        expected_next[connection] = data["sequence"] + 1
    assert {f"conn_{n:04}": PER_CONNECTION + 1 for n in range(CONNECTIONS)} == expected_next

    seen: set[str] = set()
    first_arrivals: dict[str, list[int]] = {}
    for event_id, connection, sequence in hook.arrivals:
        if event_id not in seen:
            seen.add(event_id)
            first_arrivals.setdefault(connection, []).append(sequence)
    assert set(positions) == seen, "the webhook receiver misses events"
    for connection, sequences in first_arrivals.items():
        assert list(range(1, PER_CONNECTION + 1)) == sequences, connection
    assert relays.kills >= MIN_KILLS
    assert shared, "the two JetStream relays never held partitions at the same time"
    duplicates = len(hook.arrivals) - TOTAL
    print(
        f"\n{TOTAL} events, {relays.kills} SIGKILLs, written in {written:.1f} s, "
        f"all delivered after {elapsed:.1f} s; "
        f"webhook duplicates re-sent after kills: {duplicates}"
    )
    await store.aclose()


@pytest.mark.timeout(60)
async def test_dead_letters_listed_and_replayed_by_the_cli(
    tmp_path: Path, receiver: tuple[Receiver, str, str]
) -> None:
    """A connection the endpoint keeps refusing: dead letters, listed, then replayed (exit 0)."""
    hook, hook_url, secret = receiver
    path = tmp_path / "dead.db"
    store = SQLiteStore(path, keys=KeyRing.generate())
    await store.open()
    for n in range(3):
        record = await insert_record(store, f"conn_{n}")
        await update_record(store, record)
    await store.aclose()
    hook.fail_connection = "conn_1"
    env = {**os.environ, "AWX_ALLOW_PLAINTEXT": "1", "AWX_RELAY_WEBHOOK_SECRET": secret}
    env.pop("AWX_ENCRYPTION_KEYS", None)
    base = [sys.executable, "-m", "awx_connection", "events"]
    store_url = f"sqlite:///{path}"

    async def run(*args: str) -> tuple[int, bytes, bytes]:
        # The receiver runs on this loop: the CLI must not block it.
        process = await asyncio.create_subprocess_exec(
            *base, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out, err

    relay = await asyncio.create_subprocess_exec(
        *base, "relay", "--store", store_url, "--to", hook_url, "--attempts", "2",
        "--retry-base", "0.01", "--poll-interval", "0.05",
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while len(hook.arrivals) < 4 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls another process
        await asyncio.sleep(0.05)
    listed: list[bytes] = []
    while len(listed) < 2 and time.monotonic() < deadline:
        _, out, _ = await run("dead-letters", "list", "--store", store_url, "--json")
        listed = out.splitlines()
        await asyncio.sleep(0.05)
    relay.send_signal(signal.SIGTERM)
    out_bytes, err = await relay.communicate()
    assert 0 == relay.returncode, err.decode()
    assert b"4 delivered, 2 dead-lettered" in out_bytes
    letters = [orjson.loads(line) for line in listed]
    assert [("conn_1", 1), ("conn_1", 2)] == [
        (letter["event"]["connection_id"], letter["event"]["sequence"]) for letter in letters
    ]
    assert {"HTTP 500"} == {letter["error"] for letter in letters}
    assert secret not in out_bytes.decode() + err.decode()

    replay = ["dead-letters", "replay", "--store", store_url, "--to", hook_url]
    code, out, _ = await run(*replay, "--attempts", "1")
    assert (1, b"replayed 0, still dead 2\n") == (code, out)
    hook.fail_connection = None
    code, out, err = await run(*replay)
    assert (0, b"replayed 2, still dead 0\n") == (code, out), err
    assert (0, b"") == (await run("dead-letters", "list", "--store", store_url))[:2]
    assert [("conn_1", 1), ("conn_1", 2)] == [(c, s) for _, c, s in hook.arrivals[-2:]]
