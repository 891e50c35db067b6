"""
A child process of the chaos soak (``benchmarks/soak.py``); run as a script.

    python benchmarks/soak_worker.py worker|consumer

The first line on stdin is the JSON settings (store, fake, clock, secrets):
on stdin rather than in ``argv`` because ``argv`` is world-readable in
``ps`` and the settings carry the client secret and the encryption key.
Everything this process logs goes to stderr at DEBUG, which the parent
points at a file and later scans for leaked secrets.

``worker`` is one application replica. It opens a ConnectionManager on the
shared store with the shared FileClock, answers ``{"ready": true}`` and then
obeys one JSON command per line, answering one JSON line each:

* ``{"cmd": "round", "ids": [...], "per_connection": n, "api": [...],
  "keepalive": bool}``: all at once, ``n`` concurrent ``access_token()``
  calls per id, one ``GET /api/v1/account/`` through ``request()`` per id
  in ``api``, and a ``keepalive_pass()`` if asked; the answer counts
  successes and errors by type. Errors are data here, not failures: a
  revoked connection answers ``ConnectionRevokedError`` by design.
* ``{"cmd": "refresh", "id": ...}``: force one rotation (the parent uses
  it to kill a replica while the provider holds the rotated response);
* ``{"cmd": "exit"}``.

SIGTERM is a graceful shutdown, as a deploy would do it: the worker calls
``await manager.aclose()`` at once, whatever is in flight, answers the
command it was running (its callers' errors included), prints
``{"closed": true}`` and exits 0. A caller that gets an error the library
did not type (a bare ``CancelledError`` out of ``aclose()``, say) is
reported as ``unexpected:<type>``, which the parent counts as a defect.

Workers pass ``keepalive=False``: the parent decides when a replica runs
``keepalive_pass()``. Everything else (the manager's own settling of
unfinished rotations, and whatever it does when it opens the store) keeps
the library's defaults.

``consumer`` reads ``manager.consumer("soak")`` for ever and prints every
event as ``{"e": [connection_id, sequence]}``, flushed, so the parent knows
exactly what was handled even when it SIGKILLs this process. A store
error ends an ``EventConsumer``; the consumer then prints ``{"resumed":
true}`` and opens a fresh one a moment later, which resumes from the
committed offset (re-delivering at most a batch), as an application's
consumer loop would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from awx_connection import (
    AwxConnectionError,
    Config,
    ConnectionManager,
    Endpoints,
    KeyRing,
    Store,
    StoreError,
    TimingPolicy,
)
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FileClock

#: The consumer's name, shared by every run of the consumer process.
CONSUMER = "soak"
#: Real seconds the consumer waits after a store error before it resumes.
CONSUMER_PAUSE = 0.2


def build_store(spec: dict[str, Any]) -> Store:
    """The store the parent created: an SQLite file or a PostgreSQL schema."""
    keys = KeyRing.parse(spec["keys"])
    if spec["kind"] == "postgres":
        from awx_connection.stores import PostgresStore

        # A pool of 4 per process (default 10): seven processes of one soak
        # stay far below max_connections on a database others share too.
        return PostgresStore(spec["dsn"], keys=keys, schema=spec["schema"], max_size=4)
    return SQLiteStore(spec["path"], keys=keys)


def build_config(settings: dict[str, Any]) -> Config:
    """
    The parent's and every child's configuration.

    Backoff is tiny because retries pace real time while the soak moves
    simulated time. The request timeout is 1 s instead of 10 (the fake
    answers in milliseconds, a DELAY fault in at most 0.8 s), which makes the
    resume delay, real time too, 1.2 s instead of 12: a replica resuming a
    journal that another replica left while the soak moved the clock 21 s
    waits that long first. A rotation left maybe-sent is settled after
    0.05 s real instead of 5 s, inside the soak's few real seconds of settling.
    The retention sweep is off: the soak checks every event of the run for
    gaps, and its months of simulated time would have the sweep delete the
    older ones (tests/integration/test_retention.py covers the sweep).
    Everything else keeps the library's defaults, so
    the grace margin, lease TTL and cooldowns under test are the shipped ones.
    """
    return Config(
        client_id=settings["client_id"],
        client_secret=settings["client_secret"],
        redirect_uri=settings["redirect"],
        endpoints=Endpoints.from_base_url(settings["base_url"]),
        timing=TimingPolicy(
            backoff_base=0.005,
            backoff_max=0.05,
            request_timeout=1.0,
            settle_delay=0.05,
            prune_interval=None,
        ),
        default_scopes=("account_details:read",),
    )


def reply(payload: dict[str, Any]) -> None:
    """One answer line, flushed at once: the parent may kill us right after."""
    sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    sys.stdout.flush()


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


#: This harness's own log lines (which the secret scan reads too).
_log = logging.getLogger("soak")


def _failed(call: str, connection_id: str, exc: Exception) -> str:
    """Log a typed error with its message (scanned for secrets later), return its type."""
    _log.warning("%s(%s) failed: %s: %s", call, connection_id, type(exc).__name__, exc)
    return type(exc).__name__


async def _token(awx: ConnectionManager, connection_id: str) -> str | None:
    try:
        await awx.access_token(connection_id)
    except AwxConnectionError as exc:
        return _failed("access_token", connection_id, exc)
    return None


async def _api(awx: ConnectionManager, connection_id: str) -> str | None:
    try:
        async with await awx.request(connection_id, "GET", "/api/v1/account/") as response:
            await response.read()
            return None if response.status == 200 else f"HTTP {response.status}"
    except AwxConnectionError as exc:
        return _failed("request", connection_id, exc)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return "api:" + _failed("request", connection_id, exc)


async def _keepalive(awx: ConnectionManager) -> dict[str, int] | str:
    try:
        report = await awx.keepalive_pass()
    except AwxConnectionError as exc:
        return _failed("keepalive_pass", "*", exc)
    return {
        "checked": report.checked,
        "rotated": report.rotated,
        "expired": report.expired,
        "failed": report.failed,
    }


async def _guarded(call: Any) -> Any:
    """
    Await *call*; an exception the library did not type is a finding, so it
    is logged with its traceback and reported as ``unexpected:<type>``.
    """
    try:
        return await call
    except Exception as exc:
        _log.exception("unexpected error")
        return f"unexpected:{type(exc).__name__}"
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this caller itself is being cancelled: not the library's doing
        # Nobody cancelled this caller: the library let a cancellation of its
        # own (aclose() cancelling a refresh flight) escape to it, untyped.
        _log.exception("unexpected CancelledError in a caller nobody cancelled")
        return "unexpected:CancelledError"


async def one_round(awx: ConnectionManager, command: dict[str, Any]) -> dict[str, Any]:
    """Every call of one round at once, so replicas and callers really overlap."""
    calls = [
        _guarded(_token(awx, connection_id))
        for connection_id in command["ids"]
        for _ in range(command["per_connection"])
    ]
    calls.extend(_guarded(_api(awx, connection_id)) for connection_id in command["api"])
    keepalive_task = (
        asyncio.ensure_future(_guarded(_keepalive(awx))) if command["keepalive"] else None
    )
    results = await asyncio.gather(*calls)
    keepalive = await keepalive_task if keepalive_task is not None else None
    errors = collections.Counter(r for r in results if r is not None)
    if isinstance(keepalive, str):
        errors["keepalive:" + keepalive] += 1
        keepalive = None
    return {
        "ok": sum(r is None for r in results),
        "errors": dict(errors),
        "keepalive": keepalive,
    }


def manager(settings: dict[str, Any], clock: FileClock) -> ConnectionManager:
    """This child's manager on the shared store; keep-alive only when the parent asks."""
    return ConnectionManager(
        build_config(settings),
        store=build_store(settings["store"]),
        clock=clock,
        keepalive=False,
    )


async def run_worker(settings: dict[str, Any], reader: asyncio.StreamReader) -> None:
    clock = FileClock(settings["clock"])
    try:
        async with manager(settings, clock) as awx:
            closing = graceful_shutdown(awx)
            reply({"ready": True})
            async for command in commands(reader, closing):
                match command["cmd"]:
                    case "round":
                        reply(await one_round(awx, command))
                    case "refresh":
                        error = await _guarded(_refresh(awx, command["id"]))
                        reply({"error": error})
                    case "exit":
                        break
            if closing.done():
                await closing
                reply({"closed": True})
    finally:
        clock.close()


def graceful_shutdown(awx: ConnectionManager) -> asyncio.Future[None]:
    """
    On SIGTERM, ``await awx.aclose()`` at once, as a deploy stopping this
    replica would; the future it returns is done once ``aclose()`` returned.
    """
    loop = asyncio.get_running_loop()
    closing: asyncio.Future[None] = loop.create_future()

    async def close() -> None:
        started = time.monotonic()
        try:
            await awx.aclose()
        except Exception as exc:
            _log.exception("aclose() failed")
            closing.set_exception(exc)
            return
        _log.info("SIGTERM: aclose() returned in %.2f s", time.monotonic() - started)
        closing.set_result(None)

    def on_sigterm() -> None:
        _log.info("SIGTERM: closing the manager")
        loop.remove_signal_handler(signal.SIGTERM)
        task = loop.create_task(close(), name="soak-graceful-shutdown")
        _shutdowns.add(task)
        task.add_done_callback(_shutdowns.discard)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    return closing


#: The running graceful shutdown, held so it is not garbage-collected mid-way.
_shutdowns: set[asyncio.Task[None]] = set()


async def commands(
    reader: asyncio.StreamReader, closing: asyncio.Future[None]
) -> AsyncIterator[dict[str, Any]]:
    """The parent's commands until stdin ends or a graceful shutdown has finished."""
    while not closing.done():
        line = asyncio.ensure_future(reader.readline())
        await asyncio.wait({line, closing}, return_when=asyncio.FIRST_COMPLETED)
        if not line.done():
            line.cancel()
            return
        if not line.result():
            return
        yield orjson.loads(line.result())


async def _refresh(awx: ConnectionManager, connection_id: str) -> str | None:
    try:
        await awx.refresh(connection_id)
    except AwxConnectionError as exc:
        return _failed("refresh", connection_id, exc)
    return None


async def run_consumer(settings: dict[str, Any], reader: asyncio.StreamReader) -> None:
    clock = FileClock(settings["clock"])
    try:
        async with manager(settings, clock) as awx:
            reply({"ready": True})
            consume = asyncio.ensure_future(_consume(awx))
            # stdin closes when the parent dies, however it dies: stop then,
            # instead of polling an idle store for ever as an orphan.
            await reader.read()
            consume.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consume
    finally:
        clock.close()


async def _consume(awx: ConnectionManager) -> None:
    """Print every event; after a store error (an outage), resume from the committed offset."""
    while True:
        try:
            # batch=20: a kill re-delivers at most 20 events (at-least-once);
            # the parent counts those duplicates but must never miss one.
            async with awx.consumer(CONSUMER, batch=20, poll_interval=0.05) as events:
                async for event in events:
                    reply({"e": [event.connection_id, event.sequence]})
        except StoreError as exc:
            _log.warning("consumer: %s; resuming from the committed offset", exc)
            reply({"resumed": True})
            await asyncio.sleep(CONSUMER_PAUSE)


async def main(mode: str) -> None:
    reader = await _stdin()
    settings = orjson.loads(await reader.readline())
    if mode == "consumer":
        await run_consumer(settings, reader)
    else:
        await run_worker(settings, reader)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(main(sys.argv[1]))
