"""
A worker process for the multi-process tests (run as a script, not collected).

It opens a ConnectionManager on the shared store with a FileClock shared
with the test and the fake provider, then obeys JSON commands, one per line
on stdin, answering one JSON line each on stdout:

* ``{"cmd": "tokens", "ids": [...], "per_connection": 5}``: that many
  concurrent ``access_token()`` calls per connection, all at once;
* ``{"cmd": "get", "id": ...}``: the connection's state and generation;
* ``{"cmd": "consume", "name": ..., "limit": n}``: read the durable
  consumer, printing one line per event (flushed), until *limit* events;
* ``{"cmd": "exit"}``.

Configuration comes as one JSON argument: store, fake, clock.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

from awx_connection import (
    AwxConnectionError,
    Config,
    ConnectionManager,
    Endpoints,
    Store,
    TimingPolicy,
)
from awx_connection._crypto import KeyRing
from awx_connection.stores import open_store
from awx_connection.testing import FileClock


def build_store(spec: dict[str, Any]) -> Store:
    keys = KeyRing.parse(spec["keys"])
    if spec["kind"] == "postgres":
        from awx_connection.stores import PostgresStore

        return PostgresStore(spec["dsn"], keys=keys, schema=spec["schema"])
    return open_store(spec["url"], keys=keys)


def reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    sys.stdout.flush()


async def main(settings: dict[str, Any]) -> None:
    clock = FileClock(settings["clock"])
    config = Config(
        client_id=settings["client_id"],
        client_secret=settings["client_secret"],
        redirect_uri=settings["redirect"],
        endpoints=Endpoints.from_base_url(settings["base_url"]),
        timing=TimingPolicy(backoff_base=0.005, backoff_max=0.05, resume_delay=0.05),
        default_scopes=("account_details:read",),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with ConnectionManager(config, store=build_store(settings["store"]), clock=clock) as awx:
        reply({"ready": True})
        while line := await reader.readline():
            command = orjson.loads(line)
            match command["cmd"]:
                case "tokens":
                    calls = [
                        awx.access_token(connection_id)
                        for connection_id in command["ids"]
                        for _ in range(command["per_connection"])
                    ]
                    results = await asyncio.gather(*calls, return_exceptions=True)
                    errors = [repr(r) for r in results if isinstance(r, BaseException)]
                    reply({"ok": not errors, "errors": errors[:5]})
                case "get":
                    try:
                        token = await awx.access_token(command["id"])
                        connection = await awx.get(command["id"])
                        reply(
                            {
                                "state": connection.state.value,
                                "generation": connection.token_generation,
                                "token": token,
                            }
                        )
                    except AwxConnectionError as exc:
                        current = await awx.get(command["id"])
                        reply(
                            {
                                "error": type(exc).__name__,
                                "state": current.state.value,
                                "reason": current.reason,
                            }
                        )
                case "consume":
                    seen = 0
                    async with awx.consumer(command["name"], batch=3, poll_interval=0.05) as events:
                        async for event in events:
                            reply(
                                {
                                    "event": [event.connection_id, event.sequence],
                                    "position": events.position,
                                }
                            )
                            seen += 1
                            if seen >= command["limit"]:
                                break
                    reply({"consumed": seen})
                case "exit":
                    break
    clock.close()


if __name__ == "__main__":
    asyncio.run(main(orjson.loads(sys.argv[1])))
