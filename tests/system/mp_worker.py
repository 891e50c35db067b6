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
* ``{"cmd": "start", "ids": [...], "per_connection": 3}``: start that many
  ``access_token()`` calls in the background and answer at once;
* ``{"cmd": "exit"}``.

SIGTERM closes the manager gracefully (``aclose()``), as a service stopping
does, then answers ``{"closed": true, "outcomes": [...]}`` with what each
background call ended with (``"token"`` or the error's class name) and
exits.

Configuration comes as one JSON argument: store, fake, clock, and optional
``timing`` (TimingPolicy overrides).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import orjson

from awx_connection import (
    AwxConnectionError,
    Config,
    ConnectionManager,
    Endpoints,
    KeyRing,
    Store,
    TimingPolicy,
)
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
        timing=TimingPolicy(
            backoff_base=0.005, backoff_max=0.05, resume_delay=0.05, **settings.get("timing", {})
        ),
        default_scopes=("account_details:read",),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    background: list[asyncio.Task[str]] = []
    async with ConnectionManager(config, store=build_store(settings["store"]), clock=clock) as awx:
        reply({"ready": True})
        while line := await next_line(reader, stopping):
            command = orjson.loads(line)
            match command["cmd"]:
                case "start":
                    background.extend(
                        asyncio.ensure_future(awx.access_token(connection_id))
                        for connection_id in command["ids"]
                        for _ in range(command["per_connection"])
                    )
                    reply({"started": len(background)})
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
        if stopping.is_set():
            await awx.aclose()
            outcomes = await asyncio.gather(*background, return_exceptions=True)
            reply(
                {
                    "closed": True,
                    "outcomes": [
                        type(o).__name__ if isinstance(o, BaseException) else "token"
                        for o in outcomes
                    ],
                }
            )
    clock.close()


async def next_line(reader: asyncio.StreamReader, stopping: asyncio.Event) -> bytes:
    """The next command line, or ``b""`` once SIGTERM arrived (or stdin closed)."""
    line = asyncio.ensure_future(reader.readline())
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({line, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if stopping.is_set():
        line.cancel()
        return b""
    return line.result()


if __name__ == "__main__":
    asyncio.run(main(orjson.loads(sys.argv[1])))
