"""
awx-connection benchmarks.

    python benchmarks/run.py            # readable table
    python benchmarks/run.py --json     # one JSON object per line
    python benchmarks/run.py --smoke    # tiny sizes, for CI (numbers meaningless)

Each line: ``name``, ``value``, ``unit``, ``target``, ``ok`` and, where a
baseline is measured in the same run, ``baseline`` and ``ratio``. Timings are
medians of repeated batches; compare ratios, not absolute numbers, since the
machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from awx_connection import Config, ConnectionManager, Endpoints, TimingPolicy, Trigger
from awx_connection.testing import FakeAirwallex, ManualClock

REDIRECT = "http://127.0.0.1:8000/airwallex/callback"


def result(
    name: str,
    value: float,
    unit: str,
    target: str,
    ok: bool,
    baseline: float | None = None,
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "name": name,
        "value": round(value, 4),
        "unit": unit,
        "target": target,
        "ok": ok,
    }
    if baseline is not None:
        line["baseline"] = round(baseline, 4)
        line["ratio"] = round(value / baseline, 4) if baseline else None
    return line


async def median_us(fn: Callable[[], Awaitable[object]], *, batch: int, rounds: int) -> float:
    """Median microseconds per call over *rounds* batches of *batch* calls."""
    samples = []
    gc.disable()
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(batch):
                await fn()
            samples.append((time.perf_counter() - started) / batch * 1e6)
    finally:
        gc.enable()
    return statistics.median(samples)


class Bench:
    def __init__(self, fake: FakeAirwallex, clock: ManualClock) -> None:
        self.fake = fake
        self.clock = clock
        self.config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=REDIRECT,
            endpoints=Endpoints.from_base_url(fake.base_url),
            timing=TimingPolicy(backoff_base=0.001, backoff_max=0.01),
            default_scopes=("account_details:read",),
        )

    async def connect(self, manager: ConnectionManager) -> str:
        request = await manager.begin_authorization()
        connection = await manager.complete_authorization(self.fake.approve(request.url))
        return connection.id


async def bench_access_token(bench: Bench, scale: int) -> dict[str, Any]:
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        connection_id = await bench.connect(manager)
        cache = {connection_id: "token"}

        async def floor() -> str:  # the least an async token getter can cost
            return cache[connection_id]

        baseline = await median_us(floor, batch=1000, rounds=scale)
        value = await median_us(
            lambda: manager.access_token(connection_id), batch=1000, rounds=scale
        )
    return result("access_token_us", value, "us", "<= 3", value <= 3, baseline)


async def bench_coalesce(bench: Bench, callers: int) -> dict[str, Any]:
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        connection_id = await bench.connect(manager)
        bench.clock.advance(301)
        before = bench.fake.counters.token_requests
        await asyncio.gather(*(manager.access_token(connection_id) for _ in range(callers)))
        posts = bench.fake.counters.token_requests - before
    name = "coalesce_posts_10k" if callers == 10_000 else f"coalesce_posts_{callers}"
    return result(name, posts, "POSTs", "== 1", posts == 1)


async def bench_transition(bench: Bench, scale: int) -> dict[str, Any]:
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        request = await manager.begin_authorization()
        live = await manager._get_live(request.connection_id)

        async def one() -> object:
            # pending -> pending: a real transition through the machine, a
            # compare-and-swap write to the memory store and a published event.
            return await manager._transition(live, Trigger.REAUTHORIZE, "benchmark")

        value = await median_us(one, batch=200, rounds=scale)
    return result("transition_us", value, "us", "<= 25", value <= 25)


async def bench_hot_path(bench: Bench, scale: int) -> dict[str, Any]:
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        connection_id = await bench.connect(manager)
        token = await manager.access_token(connection_id)
        url = f"{bench.fake.base_url}/api/v1/balances/current"
        async with aiohttp.ClientSession() as raw:
            headers = {"Authorization": f"Bearer {token}"}

            async def direct() -> object:
                async with raw.get(url, headers=headers) as response:
                    return await response.read()

            async def through_library() -> object:
                response = await manager.request(connection_id, "GET", url)
                async with response:
                    return await response.read()

            # Interleave rounds so drift hits both sides alike.
            base_samples, lib_samples = [], []
            for _ in range(scale):
                base_samples.append(await median_us(direct, batch=50, rounds=1))
                lib_samples.append(await median_us(through_library, batch=50, rounds=1))
    baseline = statistics.median(base_samples)
    value = statistics.median(lib_samples)
    ratio = value / baseline
    return result("hot_path_ratio", ratio, "x", "<= 1.05", ratio <= 1.05, 1.0) | {
        "library_us": round(value, 1),
        "raw_aiohttp_us": round(baseline, 1),
    }


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    scale = 2 if args.smoke else (10 if args.quick else 30)
    callers = 100 if args.smoke else 10_000

    clock = ManualClock()
    lines = []
    async with FakeAirwallex(clock=clock, redirect_uris=[REDIRECT]) as fake:
        bench = Bench(fake, clock)
        lines.append(await bench_access_token(bench, scale))
        lines.append(await bench_coalesce(bench, callers))
        lines.append(await bench_transition(bench, scale))
        lines.append(await bench_hot_path(bench, scale))
    for line in lines:
        if args.json:
            print(orjson.dumps(line).decode())
    if not args.json:
        print(f"{'name':<24}{'value':>12} {'unit':<6}{'target':<10}{'ok':<6}{'baseline':>10}")
        for line in lines:
            base = line.get("baseline")
            print(
                f"{line['name']:<24}{line['value']:>12} {line['unit']:<6}{line['target']:<10}"
                f"{'yes' if line['ok'] else 'NO':<6}{'' if base is None else base:>10}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
