"""
What the synchronous façade costs: ``BlockingManager.request()`` called
from a plain thread, one call at a time as a WSGI view makes them, against
the same manager's ``request()`` awaited on its own loop thread (a batch
handed over in one ``call()``), the same GET to the same fake in
interleaved rounds.

Both sides run the one ``ConnectionManager`` on the one loop thread, apart
from the fake's loop (the benchmark's), as a real app is apart from
Airwallex; both read the body whole. The ratio is what the hop to the loop
thread and back costs a call, on top of a round trip to a local server
(a real one to Airwallex is a hundred times longer).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import Any

from _common import Sizes, paired_ratio, result
from _inprocess import Bench

from awx_connection import ConnectionManager
from awx_connection.blocking import BlockingManager


async def bench_blocking_request(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    name, unit, target = "blocking_request_ratio", "x", "<= 1.5"
    batch, rounds = sizes.http_batch, sizes.http_rounds
    posts = bench.fake.counters.token_requests
    blocking = BlockingManager(bench.config, clock=bench.clock)
    await asyncio.to_thread(blocking.start)
    try:

        def connect() -> str:
            request = blocking.begin_authorization()
            return blocking.complete_authorization(bench.fake.approve(request.url)).id

        connection_id = await asyncio.to_thread(connect)
        path = bench.api_path

        async def async_batch(manager: ConnectionManager) -> float:
            started = time.perf_counter()
            for _ in range(batch):
                response = await manager.request(connection_id, "GET", path)
                async with response:
                    assert response.status == 200
                    await response.read()
            return (time.perf_counter() - started) / batch * 1e6

        def blocking_batch() -> float:
            started = time.perf_counter()
            for _ in range(batch):
                assert blocking.request(connection_id, "GET", path).status == 200
            return (time.perf_counter() - started) / batch * 1e6

        base: list[float] = []
        lib: list[float] = []
        gc.disable()
        try:
            for index in range(rounds):
                pair = [
                    (base, lambda: blocking.call(async_batch)),
                    (lib, blocking_batch),
                ]
                for samples, run in reversed(pair) if index % 2 else pair:
                    samples.append(await asyncio.to_thread(run))
        finally:
            gc.enable()

        count = 10 * batch

        def tokens() -> float:
            started = time.perf_counter()
            for _ in range(count):
                blocking.access_token(connection_id)
            return (time.perf_counter() - started) / count * 1e6

        token_us = await asyncio.to_thread(tokens)
    finally:
        await asyncio.to_thread(blocking.close)
    posts = bench.fake.counters.token_requests - posts
    base_us, lib_us = statistics.median(base), statistics.median(lib)
    ratio = lib_us / base_us
    return result(
        name,
        ratio,
        unit,
        target,
        ratio <= 1.5,
        1.0,
        blocking_us=round(lib_us, 1),
        async_us=round(base_us, 1),
        per_round_ratio_p50=round(paired_ratio(lib, base), 4),
        cached_access_token_us=round(token_us, 2),
        token_posts=posts,
    )
