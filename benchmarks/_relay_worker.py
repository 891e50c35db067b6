"""
The helper processes of the relay benchmarks (benchmarks/_relay.py).

    python _relay_worker.py relay SETTINGS_JSON     # a Relay on the store, to JetStream
    python _relay_worker.py consume SETTINGS_JSON   # the partner's JetStream consumer

``relay`` runs :class:`awx_connection.relay.Relay` until killed (what
``awx-connection events relay`` runs, here on any store spec, PostgreSQL
schema included). ``consume`` subscribes to the stream with an ordered
push consumer and prints one JSON line per message as it arrives:
``{"connection_id", "sequence", "at"}``, ``at`` on CLOCK_MONOTONIC, which
every process on the machine shares.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import nats
import orjson
from _common import build_store

from awx_connection.relay import NatsSink, Relay


async def relay(settings: dict[str, Any]) -> None:
    store = build_store(settings["store"])
    await store.open()
    sink = NatsSink(settings["nats"], stream=settings["stream"], subject_prefix=settings["prefix"])
    async with Relay(store, sink, name="bench", poll_interval=1.0) as running:
        print(orjson.dumps({"ready": True}).decode(), flush=True)
        await running.run()


async def consume(settings: dict[str, Any]) -> None:
    nc = await nats.connect(settings["nats"])
    js = nc.jetstream()
    out = sys.stdout

    async def arrived(msg: Any) -> None:
        at = time.clock_gettime(time.CLOCK_MONOTONIC)
        data = orjson.loads(msg.data)["data"]
        line = {"connection_id": data["connection_id"], "sequence": data["sequence"], "at": at}
        out.write(orjson.dumps(line).decode() + "\n")
        out.flush()

    # The stream may not exist yet: the relay creates it.
    while True:
        try:
            await js.stream_info(settings["stream"])
            break
        except Exception:
            await asyncio.sleep(0.05)
    await js.subscribe(
        f"{settings['prefix']}.>", stream=settings["stream"], cb=arrived, ordered_consumer=True
    )
    print(orjson.dumps({"ready": True}).decode(), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode, raw = sys.argv[1], sys.argv[2]
    asyncio.run({"relay": relay, "consume": consume}[mode](orjson.loads(raw)))
