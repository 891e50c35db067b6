"""
Benchmarks that run inside the parent process, against one in-process fake
Airwallex (a real socket on 127.0.0.1) sharing a ManualClock.

The fake serves from the same event loop as the code under test, so both
sides of every HTTP comparison pay for the server alike; ratios compare
what happens on the client side.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
from _common import (
    POSTGRES_DSN,
    Sizes,
    TimedStore,
    build_store,
    failed,
    interleaved,
    median_us,
    new_keys_spec,
    paired,
    paired_ratio,
    postgres_schema,
    result,
)

from awx_connection import Config, ConnectionEvent, ConnectionManager, ConnectionState, Trigger
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


class Bench:
    """The shared fake provider, its clock and a configuration pointing at it."""

    def __init__(self, fake: FakeAirwallex, clock: ManualClock, config: Config) -> None:
        self.fake = fake
        self.clock = clock
        self.config = config

    async def connect(self, manager: ConnectionManager) -> str:
        request = await manager.begin_authorization()
        connection = await manager.complete_authorization(self.fake.approve(request.url))
        return connection.id

    async def raw_grant(self) -> tuple[str, str]:
        """A separate connection's (access token, refresh token), for raw clients."""
        async with ConnectionManager(self.config, clock=self.clock) as scratch:
            connection_id = await self.connect(scratch)
            record = await scratch.store.get(connection_id)
        assert record is not None
        assert record.tokens is not None
        return record.tokens.access_token.reveal(), record.tokens.refresh_token.reveal()

    #: What applications pass to ``manager.request()``: a path on the API host.
    api_path = "/api/v1/balances/current"

    @property
    def api_url(self) -> str:
        """The same resource as a full URL, for the raw clients."""
        return f"{self.fake.base_url}{self.api_path}"


async def bench_access_token(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        connection_id = await bench.connect(manager)
        cache = {connection_id: "token"}

        async def floor() -> str:  # the least an async token getter can cost
            return cache[connection_id]

        baseline = await median_us(floor, batch=1000, rounds=sizes.rounds)
        value = await median_us(
            lambda: manager.access_token(connection_id), batch=1000, rounds=sizes.rounds
        )
    return result("access_token_us", value, "us", "<= 3", value <= 3, baseline)


async def bench_coalesce(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    callers = sizes.callers
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        connection_id = await bench.connect(manager)
        bench.clock.advance(301)
        before = bench.fake.counters.token_requests
        started = time.perf_counter()
        tokens = await asyncio.gather(
            *(manager.access_token(connection_id) for _ in range(callers))
        )
        seconds = time.perf_counter() - started
        posts = bench.fake.counters.token_requests - before
    name = "coalesce_posts_10k" if callers == 10_000 else f"coalesce_posts_{callers}"
    return result(
        name,
        posts,
        "POSTs",
        "== 1",
        posts == 1 and len(set(tokens)) == 1,
        callers=callers,
        distinct_tokens=len(set(tokens)),
        seconds=round(seconds, 3),
    )


async def bench_transition(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    """
    One transition through the manager (the machine fires the row, the
    record and its event are written by compare-and-swap to the memory
    store, the event is published), against its floor: one bare
    compare-and-swap write of a record and its event to the same store,
    built by hand, in interleaved batches.
    """
    async with ConnectionManager(
        bench.config, clock=bench.clock, keepalive=False, settle=False
    ) as manager:
        request = await manager.begin_authorization()
        live = await holder(manager, request.connection_id)
        delivered = []
        manager.subscribe(delivered.append)
        changes = {"authorization": live.record.authorization, "scopes": live.record.scopes}
        writer = getattr(manager, "_writer", None)  # the code before the write spine had none
        transition = writer.transition if writer is not None else manager._transition  # type: ignore[attr-defined]

        async def one() -> object:
            # pending -> pending: a real transition through the machine, a
            # compare-and-swap write to the memory store and a published event.
            return await transition(live, Trigger.REAUTHORIZE, "benchmark", **changes)

        other = (await manager.begin_authorization()).connection_id
        current = await manager.store.get(other)
        assert current is not None

        async def bare_write() -> object:
            nonlocal current
            assert current is not None
            new = attrs.evolve(current, version=current.version + 1, sequence=current.sequence + 1)
            event = ConnectionEvent(
                other, new.sequence, Trigger.REAUTHORIZE, new.state, new.state, "bare", 0.0
            )
            await manager.store.update(new, expected_version=current.version, event=event)
            current = new
            return new

        samples = await interleaved(
            {"transition": one, "floor": bare_write}, batch=200, rounds=sizes.rounds
        )
        value = statistics.median(samples["transition"])
        floor = statistics.median(samples["floor"])
        machine_us = await median_us(machine_share(live.record), batch=200, rounds=sizes.rounds)
    return result(
        "transition_us",
        value,
        "us",
        "<= 25",
        value <= 25,
        baseline=floor,
        baseline_is="one bare compare-and-swap write of a record and its event",
        machine_us=round(machine_us, 2),
        events_delivered=len(delivered),
    )


async def holder(manager: ConnectionManager, connection_id: str) -> Any:
    """The manager's live holder of *connection_id* (where the code of the day keeps it)."""
    cache = getattr(manager, "_cache", None)
    if cache is not None:
        return await cache.get(connection_id)
    return await manager._get_live(connection_id)  # type: ignore[attr-defined]


def machine_share(record: Any) -> Any:
    """The state machine's share of a transition: firing the row alone."""
    try:
        from awx_connection._machine import fire
    except ImportError:  # the code before the table ran the machine (an A/B against it)
        from awx_connection._machine import advance  # type: ignore[attr-defined]

        async def validate() -> object:
            return await advance(record.id, record.state, Trigger.REAUTHORIZE)

        return validate
    changes = {"authorization": record.authorization, "scopes": record.scopes}

    async def fired() -> object:
        return fire(record, Trigger.REAUTHORIZE, "benchmark", changes, now=0.0, write_id="w")

    return fired


async def bench_hot_path(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        connection_id = await bench.connect(manager)
        token = await manager.access_token(connection_id)
        url = bench.api_url
        posts = bench.fake.counters.token_requests
        async with aiohttp.ClientSession() as raw:
            headers = {"Authorization": f"Bearer {token}"}

            async def direct() -> object:
                async with raw.get(url, headers=headers) as response:
                    assert response.status == 200
                    return await response.read()

            async def through_library() -> object:
                response = await manager.request(connection_id, "GET", bench.api_path)
                async with response:
                    assert response.status == 200
                    return await response.read()

            base_us, lib_us, per_round = await paired(
                direct, through_library, batch=sizes.http_batch, rounds=sizes.http_rounds
            )
        posts = bench.fake.counters.token_requests - posts
    ratio = lib_us / base_us  # the ratio of the medians
    return result(
        "hot_path_ratio",
        ratio,
        "x",
        "<= 1.05",
        ratio <= 1.05,
        1.0,
        library_us=round(lib_us, 1),
        raw_aiohttp_us=round(base_us, 1),
        per_round_ratio_p50=round(per_round, 4),
        token_posts=posts,
    )


async def bench_hot_path_vs_authlib(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    """
    The same GET through the library and through Authlib's AsyncOAuth2Client
    (httpx) holding a valid token; bare httpx with a static header runs in the
    same rounds, to tell Authlib's own cost from its HTTP client's.
    """
    name, unit, target = "hot_path_vs_authlib", "x", "<= 1.0"
    try:
        import authlib.deprecate  # installs an "always" filter when first imported
        import httpx

        with warnings.catch_warnings():
            # Authlib 1.9 prefers the httpx2 fork and warns when it falls back to httpx.
            warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
            from authlib.integrations.httpx_client import AsyncOAuth2Client
    except ImportError as exc:
        return failed(
            name,
            unit,
            target,
            skipped=f"authlib/httpx not installed ({exc}); pip install -e '.[bench]'",
        )
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        connection_id = await bench.connect(manager)
        access, refresh = await bench.raw_grant()
        url = bench.api_url
        posts = bench.fake.counters.token_requests
        # Authlib judges expiry by the wall clock; the fake by the shared
        # ManualClock, on which this token stays valid for the whole run.
        token = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_at": int(time.time()) + 3600,
        }
        async with (
            AsyncOAuth2Client(
                client_id=bench.config.client_id,
                client_secret=bench.config.client_secret.reveal(),
                token=token,
                token_endpoint=bench.fake.token_url,
            ) as client,
            httpx.AsyncClient(headers={"Authorization": f"Bearer {access}"}) as bare,
        ):

            async def authlib_get() -> object:
                response = await client.get(url)
                assert response.status_code == 200
                return response.content

            async def httpx_get() -> object:
                response = await bare.get(url)
                assert response.status_code == 200
                return response.content

            async def through_library() -> object:
                response = await manager.request(connection_id, "GET", bench.api_path)
                async with response:
                    assert response.status == 200
                    return await response.read()

            samples = await interleaved(
                {"authlib": authlib_get, "httpx": httpx_get, "library": through_library},
                batch=sizes.http_batch,
                rounds=sizes.authlib_rounds,
            )
        posts = bench.fake.counters.token_requests - posts
    library_us = statistics.median(samples["library"])
    authlib_us = statistics.median(samples["authlib"])
    httpx_us = statistics.median(samples["httpx"])
    ratio = library_us / authlib_us
    return result(
        name,
        ratio,
        unit,
        target,
        ratio <= 1.0,
        1.0,
        library_us=round(library_us, 1),
        authlib_us=round(authlib_us, 1),
        bare_httpx_us=round(httpx_us, 1),
        authlib_vs_bare_httpx=round(authlib_us / httpx_us, 3),
        per_round_ratio_p50=round(paired_ratio(samples["library"], samples["authlib"]), 4),
        token_posts=posts,
    )


async def bench_event_fanout(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    subscribers, count = 10, sizes.fanout_events
    events = [
        ConnectionEvent(
            connection_id=f"conn_{i % 100:024x}",
            sequence=i + 1,
            trigger=Trigger.REFRESHED,
            source=ConnectionState.REFRESHING,
            dest=ConnectionState.ACTIVE,
            reason="rotated",
            at=bench.clock.now(),
        )
        for i in range(count)
    ]
    expected = subscribers * count

    async def library_round(manager: ConnectionManager) -> float:
        done = asyncio.Event()
        seen = 0

        async def handler(_event: ConnectionEvent) -> None:
            nonlocal seen
            seen += 1
            if seen == expected:
                done.set()

        subscriptions = [manager.subscribe(handler) for _ in range(subscribers)]
        writer = getattr(manager, "_writer", None)  # the code before the write spine had none
        publish = writer.publish if writer is not None else manager._publish  # type: ignore[attr-defined]
        started = time.perf_counter()
        for event in events:
            publish(event)  # what every transition does after its write
        await done.wait()
        seconds = time.perf_counter() - started
        for subscription in subscriptions:
            subscription.unsubscribe()
        return expected / seconds

    async def queue_round() -> float:
        done = asyncio.Event()
        seen = 0

        async def handler(_event: ConnectionEvent) -> None:
            nonlocal seen
            seen += 1
            if seen == expected:
                done.set()

        queues: list[asyncio.Queue[ConnectionEvent | None]] = [
            asyncio.Queue(maxsize=count + 1) for _ in range(subscribers)
        ]

        async def consume(queue: asyncio.Queue[ConnectionEvent | None]) -> None:
            while (event := await queue.get()) is not None:
                await handler(event)

        workers = [asyncio.create_task(consume(queue)) for queue in queues]
        started = time.perf_counter()
        for event in events:
            for queue in queues:
                queue.put_nowait(event)
        await done.wait()
        seconds = time.perf_counter() - started
        for queue in queues:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        return expected / seconds

    library_rates, queue_rates, ratios = [], [], []
    async with ConnectionManager(bench.config, clock=bench.clock) as manager:
        for index in range(sizes.fanout_rounds):
            if index % 2:
                lib = await library_round(manager)
                base = await queue_round()
            else:
                base = await queue_round()
                lib = await library_round(manager)
            library_rates.append(lib)
            queue_rates.append(base)
            ratios.append(lib / base)
    library_rate = statistics.median(library_rates)
    queue_rate = statistics.median(queue_rates)
    ratio = library_rate / queue_rate
    return result(
        "event_fanout_ratio",
        ratio,
        "x",
        ">= 0.5",
        ratio >= 0.5,
        1.0,
        library_events_per_s=round(library_rate),
        queue_events_per_s=round(queue_rate),
        per_round_ratio_p50=round(statistics.median(ratios), 4),
        subscribers=subscribers,
        events_per_round=count,
    )


#: The token endpoint's answer time assumed for ``ratio_with_provider_latency``.
PROVIDER_LATENCY_MS = 20


async def bench_refresh_throughput(
    bench: Bench, sizes: Sizes, kind: str, tmp: Path
) -> dict[str, Any]:
    """Sequential refreshes of one connection: the library (persisted) vs raw POSTs."""
    name = f"refresh_throughput_ratio_{kind}"
    if kind == "postgres":
        async with postgres_schema() as schema:
            spec = {"kind": kind, "dsn": POSTGRES_DSN, "schema": schema, "keys": new_keys_spec()}
            return await _refresh_throughput(bench, sizes, name, spec)
    spec = {"kind": kind, "path": str(tmp / "refresh.db"), "keys": new_keys_spec()}
    return await _refresh_throughput(bench, sizes, name, spec)


async def _refresh_throughput(
    bench: Bench, sizes: Sizes, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    counters = bench.fake.counters
    _, refresh_token = await bench.raw_grant()
    current = {"refresh_token": refresh_token}
    body = {
        "grant_type": "refresh_token",
        "client_id": bench.config.client_id,
        "client_secret": bench.config.client_secret.reveal(),
    }
    token_url = bench.fake.token_url
    store = TimedStore(build_store(spec))
    manager = ConnectionManager(bench.config, store=store, clock=bench.clock)  # type: ignore[arg-type]
    async with manager, aiohttp.ClientSession() as raw:
        connection_id = await bench.connect(manager)
        refreshes, reuse = counters.refreshes, counters.reuse_violations

        async def raw_refresh() -> None:
            payload = orjson.dumps(body | current)
            async with raw.post(token_url, data=payload, headers=_JSON) as response:
                assert response.status == 200, response.status
                answer = orjson.loads(await response.read())
            current["refresh_token"] = answer["refresh_token"]

        async def library_refresh() -> None:
            await manager.refresh(connection_id)

        base_us, lib_us, per_round = await paired(
            raw_refresh, library_refresh, batch=sizes.refresh_batch, rounds=sizes.refresh_rounds
        )
        # Where the library's time goes: the same refreshes with every store call timed.
        store.enabled = True
        for _ in range(sizes.refresh_batch):
            await manager.refresh(connection_id)
        store.enabled = False
        # The same pair with a provider that answers in PROVIDER_LATENCY_MS (an
        # assumed internet round trip; the fake sleeps that long before every
        # refresh it serves, for both sides alike): what the store's cost is
        # against a token endpoint that is not on the same loop.
        latency_rounds = max(1, sizes.refresh_rounds // 5)
        latency_batch = max(1, sizes.refresh_batch // 2)
        bench.fake.inject(
            Fault(
                FaultKind.DELAY,
                grant_type="refresh_token",
                delay=PROVIDER_LATENCY_MS / 1000,
                times=2 * latency_rounds * latency_batch,
            )
        )
        slow_base_us, slow_lib_us, _ = await paired(
            raw_refresh, library_refresh, batch=latency_batch, rounds=latency_rounds
        )
        connection = await manager.get(connection_id)
    expected = (
        2 * sizes.refresh_rounds * sizes.refresh_batch
        + sizes.refresh_batch
        + 2 * latency_rounds * latency_batch
    )
    refreshes = counters.refreshes - refreshes
    reuse = counters.reuse_violations - reuse
    throughput = base_us / lib_us  # rates: (1 / lib_us) / (1 / base_us)
    correct = (
        refreshes == expected
        and reuse == 0
        and connection.token_generation
        == expected - (sizes.refresh_rounds * sizes.refresh_batch + latency_rounds * latency_batch)
        and connection.state is ConnectionState.ACTIVE
    )
    return result(
        name,
        throughput,
        "x",
        ">= 0.7",
        throughput >= 0.7 and correct,
        1.0,
        library_per_s=round(1e6 / lib_us, 1),
        raw_per_s=round(1e6 / base_us, 1),
        library_us=round(lib_us, 1),
        raw_us=round(base_us, 1),
        per_round_ratio_p50=round(1 / per_round, 4),
        store_per_refresh=store.breakdown(sizes.refresh_batch),
        provider_latency_ms=PROVIDER_LATENCY_MS,
        ratio_with_provider_latency=round(slow_base_us / slow_lib_us, 4),
        refreshes=refreshes,
        reuse_violations=reuse,
        generation=connection.token_generation,
    )
