"""
The child side of the multi-process benchmarks (run as a script by run.py).

    python benchmarks/_worker.py MODE '<json settings>'

Modes:

* ``tokens``: a ConnectionManager on the shared store with a FileClock,
  obeying JSON commands on stdin, one JSON answer per line on stdout:
  ``{"cmd": "tokens", "ids": [...], "per_connection": n}`` (that many
  concurrent ``access_token()`` calls per connection) and ``{"cmd": "exit"}``.
* ``consume``: a durable consumer on a PostgreSQL store; prints every event
  it receives with the CLOCK_MONOTONIC time it arrived (system-wide, so the
  parent can subtract its own readings).
* ``load`` / ``one_by_one``: open a manager on a store holding many
  connections, hold every one of them in the manager (``load``:
  ``ConnectionManager.load()``, a page of records at a time; ``one_by_one``:
  what a process had to do before it existed, ``connections()`` for the
  ids then ``get()`` each, one store read per connection), and print the
  time, where it went and the RSS growth.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import resource
import sys
import time
from typing import Any

import orjson
from _common import EPOCH, TimedStore, build_store, config_for, rss_bytes

from awx_connection import AwxConnectionError, ConnectionManager, KeyRing
from awx_connection.testing import FileClock, ManualClock


def reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    sys.stdout.flush()


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def tokens(settings: dict[str, Any]) -> None:
    clock = FileClock(settings["clock"])
    config = config_for(settings["base_url"], settings["client_id"], settings["client_secret"])
    reader = await _stdin()
    store = build_store(settings["store"])
    async with ConnectionManager(config, store=store, clock=clock) as awx:
        reply({"ready": True})
        while line := await reader.readline():
            command = orjson.loads(line)
            if command["cmd"] == "exit":
                break
            calls = [
                awx.access_token(connection_id)
                for connection_id in command["ids"]
                for _ in range(command["per_connection"])
            ]
            started = time.perf_counter()
            results = await asyncio.gather(*calls, return_exceptions=True)
            errors = [repr(r) for r in results if isinstance(r, BaseException)]
            reply(
                {"ok": not errors, "errors": errors[:5], "seconds": time.perf_counter() - started}
            )
    clock.close()


async def consume(settings: dict[str, Any]) -> None:
    config = config_for(settings["base_url"], "bench-client", "bench-secret")
    store = build_store(settings["store"])
    async with (
        ConnectionManager(config, store=store, clock=ManualClock(EPOCH)) as awx,
        awx.consumer(settings["name"]) as events,
    ):
        async for event in events:
            arrived = time.clock_gettime(time.CLOCK_MONOTONIC)
            reply({"id": event.connection_id, "sequence": event.sequence, "at": arrived})


async def load(settings: dict[str, Any], *, one_by_one: bool) -> None:
    config = config_for(settings["base_url"], "bench-client", "bench-secret")
    store = TimedStore(build_store(settings["store"]))
    manager = ConnectionManager(config, store=store, clock=ManualClock(EPOCH))  # type: ignore[arg-type]
    async with manager as awx:
        gc.collect()
        before = rss_bytes()
        store.enabled = True
        started = time.perf_counter()
        if one_by_one:
            ids = [connection.id for connection in await awx.connections()]
            listed = time.perf_counter()
            for connection_id in ids:
                await awx.get(connection_id)
            count = len(ids)
            last = ids[-1]
            del ids
        else:
            count = await awx.load()
            listed = started
            last = next(reversed(awx._live))
        loaded = time.perf_counter()
        store.enabled = False
        # Served from memory now: no store read, no decryption.
        token_started = time.perf_counter()
        token = await awx.access_token(last)
        token_us = (time.perf_counter() - token_started) * 1e6
        gc.collect()
        after = rss_bytes()
        keepalive_s = keepalive_checked = None
        if not one_by_one:
            # An hourly keep-alive pass over every held connection, none due
            # yet: it reads the store a page at a time, not the manager's copies.
            keepalive_started = time.perf_counter()
            report = await awx.keepalive_pass()
            keepalive_s = time.perf_counter() - keepalive_started
            keepalive_checked = report.checked
            gc.collect()
        # What the allocator kept of freed memory (pages of rows, listings):
        # glibc returns it only when asked.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        trimmed = rss_bytes()
        reply(
            {
                "count": count,
                "list_s": listed - started,
                "load_s": loaded - started,
                "store_calls": store.calls,
                "store_s": store.seconds,
                "rss_before": before,
                "rss_after": after,
                "bytes_per_conn": (after - before) / count,
                "trimmed_bytes_per_conn": (trimmed - before) / count,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "token_chars": len(token),
                "token_us": token_us,
                "keepalive_s": keepalive_s,
                "keepalive_checked": keepalive_checked,
            }
        )


async def floor(settings: dict[str, Any]) -> None:
    """
    What the hardware allows for a load and for a keep-alive pass, on the
    same rows in the same kind of process: read them a page of 1,000 at a
    time in ``(created_at, id)`` order straight from the database, decode
    the JSON and, for the load, open the two token envelopes of each row;
    nothing else (no record, no holder, no summary object).
    """
    spec = settings["store"]
    keys = KeyRing.parse(spec["keys"])
    fetch = await _page_fetcher(spec)

    async def walk(decrypt: bool) -> float:
        started = time.perf_counter()
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            rows = await fetch(after)
            for connection_id, data in rows:
                fields = orjson.loads(data)
                if decrypt:
                    tokens = fields["tokens"]
                    keys.decrypt(
                        tokens["access_token"], connection_id=connection_id, field="access_token"
                    )
                    keys.decrypt(
                        tokens["refresh_token"], connection_id=connection_id, field="refresh_token"
                    )
                else:
                    fields["tokens"]["refresh_expires_at"]
            if len(rows) < 1000:
                return time.perf_counter() - started
            last = orjson.loads(rows[-1][1])
            after = (last["created_at"], last["id"])

    load_s = await walk(decrypt=True)
    scan_s = await walk(decrypt=False)
    reply({"load_floor_s": load_s, "scan_floor_s": scan_s})


async def _page_fetcher(spec: dict[str, Any]) -> Any:
    """``fetch(after)``: the next 1,000 ``(id, data)`` rows of the spec's database."""
    if spec["kind"] == "postgres":
        import asyncpg

        connection = await asyncpg.connect(spec["dsn"])
        sql = (
            f'SELECT id, data FROM "{spec["schema"]}".connections '
            "WHERE (created_at, id) > ($1, $2) ORDER BY created_at, id LIMIT 1000"
        )

        async def fetch_postgres(after: tuple[float, str]) -> list[Any]:
            return [tuple(row) for row in await connection.fetch(sql, *after)]

        return fetch_postgres
    import sqlite3

    db = sqlite3.connect(spec["path"])
    sql = (
        "SELECT id, data FROM connections WHERE (created_at, id) > (?, ?) "
        "ORDER BY created_at, id LIMIT 1000"
    )

    async def fetch_sqlite(after: tuple[float, str]) -> list[Any]:
        return db.execute(sql, after).fetchall()

    return fetch_sqlite


def main() -> None:
    mode = sys.argv[1]
    settings = orjson.loads(sys.argv[2])
    if mode == "tokens":
        asyncio.run(tokens(settings))
    elif mode == "consume":
        asyncio.run(consume(settings))
    elif mode == "floor":
        asyncio.run(floor(settings))
    elif mode in ("load", "one_by_one"):
        asyncio.run(load(settings, one_by_one=mode == "one_by_one"))
    else:
        msg = f"unknown mode {mode!r}"
        raise SystemExit(msg)


if __name__ == "__main__":
    try:
        main()
    except AwxConnectionError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
