"""
Benchmarks that start real OS processes: several replicas sharing a store,
a subscriber in another process, loading 100,000 connections into a fresh
process, and the cold import.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from _common import (
    EPOCH,
    POSTGRES_DSN,
    REDIRECT,
    TOKEN_CHARS,
    WORKER,
    Sizes,
    build_scale_dataset,
    build_store,
    config_for,
    new_keys_spec,
    percentile,
    postgres_schema,
    result,
    stderr_tail,
)

from awx_connection import ConnectionManager
from awx_connection.testing import FakeAirwallex, FileClock, ManualClock

#: Seconds a helper process may take to answer one command.
_ANSWER_TIMEOUT = 120.0


class Worker:
    """One helper process running ``_worker.py MODE``, driven by JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, mode: str, settings: dict[str, Any], tmp: Path) -> Worker:
        log = tmp / f"worker-{mode}-{secrets.token_hex(4)}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                mode,
                orjson.dumps(settings).decode(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=dict(os.environ),
            )
        return cls(process, log)

    async def read(self, timeout: float = _ANSWER_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            await self.process.wait()
            msg = f"worker exited ({self.process.returncode}): {stderr_tail(self.log)}"
            raise RuntimeError(msg)
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(b'{"cmd": "exit"}\n')
            await self.process.stdin.drain()
            await asyncio.wait_for(self.process.wait(), 20)
        except (ConnectionError, TimeoutError):
            self.kill()
            await self.process.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@asynccontextmanager
async def store_spec(kind: str, tmp: Path, label: str) -> AsyncIterator[dict[str, Any]]:
    """A fresh store of *kind* (an SQLite file in *tmp*, or a new PostgreSQL schema)."""
    if kind == "postgres":
        async with postgres_schema() as schema:
            yield {"kind": kind, "dsn": POSTGRES_DSN, "schema": schema, "keys": new_keys_spec()}
    else:
        yield {"kind": kind, "path": str(tmp / f"{label}.db"), "keys": new_keys_spec()}


# --- several processes, one store ---------------------------------------------------------


async def bench_cross_process(sizes: Sizes, kind: str, tmp: Path) -> dict[str, Any]:
    """
    ``mp_processes`` replicas share one store, one fake and one FileClock;
    after each expiry every replica asks for a token of every connection
    five times at once. Exactly one refresh per connection per rotation
    must reach the provider, and never a reused refresh token.
    """
    name = f"cross_process_refreshes_per_rotation_{kind}"
    clock_path = tmp / f"clock-{kind}"
    clock = FileClock.create(clock_path, EPOCH)
    fake = FakeAirwallex(clock=FileClock(clock_path), redirect_uris=[REDIRECT])
    workers: list[Worker] = []
    try:
        async with fake, store_spec(kind, tmp, f"replicas-{kind}") as spec:
            config = config_for(fake.base_url, fake.client_id, fake.client_secret)
            async with ConnectionManager(config, store=build_store(spec), clock=clock) as awx:
                ids = []
                for _ in range(sizes.mp_connections):
                    request = await awx.begin_authorization()
                    connection = await awx.complete_authorization(fake.approve(request.url))
                    ids.append(connection.id)
            settings = {
                "clock": str(clock_path),
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "base_url": fake.base_url,
                "store": spec,
            }
            started = time.perf_counter()
            workers = await asyncio.gather(
                *(Worker.start("tokens", settings, tmp) for _ in range(sizes.mp_processes))
            )
            for worker in workers:
                assert {"ready": True} == await worker.read()
            spawn_s = time.perf_counter() - started
            before = fake.counters.as_dict()
            errors: list[str] = []
            round_seconds = []
            for _ in range(sizes.mp_expiries):
                clock.advance(301)
                started = time.perf_counter()
                answers = await asyncio.gather(
                    *(w.ask({"cmd": "tokens", "ids": ids, "per_connection": 5}) for w in workers)
                )
                round_seconds.append(time.perf_counter() - started)
                errors.extend(e for a in answers for e in a["errors"])
            after = fake.counters.as_dict()
            async with ConnectionManager(config, store=build_store(spec), clock=clock) as awx:
                generations = {(await awx.get(i)).token_generation for i in ids}
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
        clock.close()
    delta = {key: after[key] - before[key] for key in after}
    rotations = sizes.mp_connections * sizes.mp_expiries
    value = delta["refreshes"] / rotations
    ok = (
        value == 1.0
        and delta["reuse_violations"] == 0
        and delta["invalidations"] == 0
        and not errors
        and generations == {sizes.mp_expiries}
    )
    return result(
        name,
        value,
        "refreshes/rotation",
        "== 1.0, 0 reuse",
        ok,
        processes=sizes.mp_processes,
        connections=sizes.mp_connections,
        expiries=sizes.mp_expiries,
        refreshes=delta["refreshes"],
        reuse_violations=delta["reuse_violations"],
        invalidations=delta["invalidations"],
        concurrent_rejections=delta["concurrent_rejections"],
        token_requests=delta["token_requests"],
        errors=errors[:3],
        round_ms_p50=round(statistics.median(round_seconds) * 1e3, 1),
        spawn_s=round(spawn_s, 2),
    )


# --- a subscriber in another process --------------------------------------------------------


async def bench_pg_event_latency(sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """
    A transition committed here, seen by a durable consumer in another
    process (woken by LISTEN/NOTIFY): milliseconds from the start of the
    transition to the consumer holding the event. One transition at a time.
    """
    name = "pg_event_latency_ms_p50"
    warmup = 3
    config = config_for("http://127.0.0.1:9", "bench-client", "bench-secret")
    async with (
        store_spec("postgres", tmp, "latency") as spec,
        ConnectionManager(config, store=build_store(spec), clock=ManualClock(EPOCH)) as awx,
    ):
        request = await awx.begin_authorization()
        connection_id = request.connection_id
        settings = {"store": spec, "name": "latency", "base_url": "http://127.0.0.1:9"}
        worker = await Worker.start("consume", settings, tmp)
        try:
            first = await worker.read()  # the "begin" event: the consumer is live
            assert first["sequence"] == 1, first
            latencies, commits = [], []
            for index in range(warmup + sizes.latency_samples):
                started = time.clock_gettime(time.CLOCK_MONOTONIC)
                await awx.reauthorize(connection_id)
                committed = time.clock_gettime(time.CLOCK_MONOTONIC)
                seen = await worker.read(timeout=10)
                assert seen["sequence"] == index + 2, seen
                if index >= warmup:
                    latencies.append((seen["at"] - started) * 1e3)
                    commits.append((committed - started) * 1e3)
                await asyncio.sleep(0.005)  # one at a time: latency, not throughput
        finally:
            worker.kill()
            await worker.process.wait()
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


# --- 100,000 connections ----------------------------------------------------------------------


async def _run_once(mode: str, settings: dict[str, Any], tmp: Path) -> dict[str, Any]:
    worker = await Worker.start(mode, settings, tmp)
    try:
        return await worker.read(timeout=600)
    finally:
        worker.kill()
        await worker.process.wait()


async def bench_scale(sizes: Sizes, kind: str, tmp: Path) -> list[dict[str, Any]]:
    """
    Hold every connection of a store holding ``scale_connections`` active
    connections (two tokens of 1 KiB each) in one manager, in a fresh
    process, with ``ConnectionManager.load()``: the time, where it went, and
    the RSS growth per connection. A second fresh process does the same the
    way it had to be done before ``load()`` (``connections()``, then
    ``get()`` per id), for comparison.
    """
    count = sizes.scale_connections
    suffix = "" if kind == "sqlite" else f"_{kind}"
    async with store_spec(kind, tmp, "scale") as spec:
        build_s = await build_scale_dataset(spec, count, EPOCH)
        settings = {"store": spec, "base_url": "http://127.0.0.1:9"}
        loaded = await _run_once("load", settings, tmp)
        floors = await _run_once("floor", settings, tmp)
        compare = kind == "sqlite" or sizes.scale_postgres_one_by_one
        one_by_one = await _run_once("one_by_one", settings, tmp) if compare else None
    for answer in (loaded, one_by_one):
        if answer is None:
            continue
        if answer["count"] != count or answer["token_chars"] != TOKEN_CHARS:
            msg = f"loaded {answer['count']} connections with {answer['token_chars']}-char tokens"
            raise AssertionError(msg)
    load_s = loaded["load_s"]
    store_s = loaded["store_s"].get("list_connections", 0.0)
    per_conn = loaded["bytes_per_conn"]
    lines = [
        result(
            f"scale_100k_load_s{suffix}",
            load_s,
            "s",
            "<= 3",
            load_s <= 3,
            baseline=floors["load_floor_s"],
            baseline_is="a bare loop: the same rows read, their JSON decoded, envelopes opened",
            connections=count,
            measured="ConnectionManager.load(), default page_size",
            pages=loaded["store_calls"].get("list_connections", 0),
            # The store's paged list_connections: the query and its rows,
            # JSON decoding, decryption and the records.
            store_s=round(store_s, 3),
            # The manager's side: a holder per record, its access token revealed.
            adopt_s=round(load_s - store_s, 3),
            dataset_build_s=round(build_s, 2),
            token_us_after_load=round(loaded["token_us"], 2),
        )
    ]
    if one_by_one is not None:
        lines[0].update(
            one_by_one_s=round(one_by_one["load_s"], 3),
            one_by_one_list_s=round(one_by_one["list_s"], 3),
            one_by_one_get_each_s=round(one_by_one["load_s"] - one_by_one["list_s"], 3),
        )
    keepalive_s = loaded["keepalive_s"]
    if loaded["keepalive_checked"] != count:
        msg = f"the keep-alive pass checked {loaded['keepalive_checked']} of {count}"
        raise AssertionError(msg)
    lines.append(
        result(
            f"keepalive_pass_100k_s{suffix}",
            keepalive_s,
            "s",
            "<= 3",
            keepalive_s <= 3,
            baseline=floors["scan_floor_s"],
            baseline_is="a bare scan of the same rows' summaries (JSON decoded, nothing decrypted)",
            connections=count,
            measured="ConnectionManager.keepalive_pass() right after load(), nothing due",
        )
    )
    if kind == "sqlite":
        assert one_by_one is not None  # always compared on SQLite
        lines.append(
            result(
                "scale_100k_bytes_per_conn",
                per_conn,
                "B",
                "<= 4096",
                per_conn <= 4096,
                connections=count,
                measured="RSS growth over ConnectionManager.load(), after gc.collect()",
                token_bytes=2 * TOKEN_CHARS,
                after_malloc_trim=round(loaded["trimmed_bytes_per_conn"]),
                one_by_one_bytes_per_conn=round(one_by_one["bytes_per_conn"]),
                one_by_one_after_malloc_trim=round(one_by_one["trimmed_bytes_per_conn"]),
                rss_before_mib=round(loaded["rss_before"] / 2**20, 1),
                rss_after_mib=round(loaded["rss_after"] / 2**20, 1),
                peak_rss_mib=round(loaded["peak_rss"] / 2**20, 1),
            )
        )
    else:
        lines[0]["bytes_per_conn"] = round(per_conn)
    return lines


# --- cold start --------------------------------------------------------------------------------

_IMPORT_PROBE = """
import os, time
def rss():
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
started = time.perf_counter()
import {module}
seconds = time.perf_counter() - started
print(seconds, rss() - before)
"""


async def _import_cost(module: str) -> tuple[float, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _IMPORT_PROBE.format(module=module),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"import {module} failed: {err.decode()[-2000:]}")
    seconds, grown = out.split()
    return float(seconds), int(grown)


async def bench_import(sizes: Sizes) -> dict[str, Any]:
    """
    ``import awx_connection`` in a fresh interpreter, against ``import
    aiohttp``, the dependency the library cannot do without (a user's
    service imports it anyway): the library may add at most half of it.
    """
    ours, theirs, ratios, our_rss, their_rss = [], [], [], [], []
    for _ in range(sizes.import_runs):
        seconds, grown = await _import_cost("aiohttp")
        theirs.append(seconds * 1e3)
        their_rss.append(grown)
        seconds, grown = await _import_cost("awx_connection")
        ours.append(seconds * 1e3)
        our_rss.append(grown)
        ratios.append(ours[-1] / theirs[-1])
    ratio = statistics.median(ratios)
    value = statistics.median(ours)
    return result(
        "cold_import_ms",
        value,
        "ms",
        "<= 1.5x aiohttp",
        ratio <= 1.5,
        statistics.median(theirs),
        rss_mib=round(statistics.median(our_rss) / 2**20, 1),
        aiohttp_rss_mib=round(statistics.median(their_rss) / 2**20, 1),
    ) | {"ratio": round(ratio, 4)}
