"""
What event storage costs per connection per day, with and without retention.

A connection in constant use refreshes about every 4.5 minutes (a 5-minute
access token, refreshed a minute ahead): two events each, some 640 a day.
This drives real managers, a real fake Airwallex on a ManualClock and a
real store (an encrypted SQLite file, or a PostgreSQL schema) through one
simulated day of that for ``connections`` connections, twice:

* **without retention** (``event_retention=None``): what a day adds;
* **with retention**, scaled to the simulated day (a quarter of it: 6 hours
  in the full run, swept every sixth of that, as the manager's hourly sweep
  keeps 30 days), to show the size stops growing once the retention is
  full: deleted rows' pages are reused.

Sizes are taken at the end of each half of the day: the SQLite file after
a WAL checkpoint (``PRAGMA wal_checkpoint(TRUNCATE)``, what the file
settles to), PostgreSQL's ``pg_total_relation_size`` of the events table
(heap, indexes, TOAST) after a plain ``VACUUM``. With retention, a plain
``VACUUM`` also follows each sweep, as autovacuum would: it makes dead
rows' space reusable (it does not return it to the disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from _common import EPOCH, POSTGRES_DSN, REDIRECT, Sizes, config_for, postgres_schema, result

from awx_connection import ConnectionManager, KeyRing, Store
from awx_connection.stores import PostgresStore, SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

DAY = 86400.0
#: Seconds between two refreshes of a connection in constant use.
REFRESH_EVERY = 270.0

#: Per mode: connections, and the simulated day as a fraction of a real one.
_SIZES = {"smoke": (2, 0.1), "quick": (8, 1.0), "full": (20, 1.0)}


Measure = Callable[[], Awaitable[int]]
Vacuum = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


@contextlib.asynccontextmanager
async def _store(kind: str, tmp: Path, label: str) -> AsyncIterator[tuple[Store, Measure, Vacuum]]:
    """
    A fresh store of *kind*; how to measure what its events take on disk;
    what the database does on its own after a sweep's deletes (PostgreSQL's
    autovacuum, run here at once: its threshold, 20 % of the table dead, is
    passed by every sweep of a retention six sweeps long).
    """
    keys = KeyRing.generate()
    if kind == "sqlite":
        path = tmp / f"storage-{label}.db"

        async def sqlite_bytes() -> int:
            def measure() -> int:
                db = sqlite3.connect(path)
                try:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    db.close()
                return os.path.getsize(path)

            return await asyncio.to_thread(measure)

        yield SQLiteStore(path, keys=keys), sqlite_bytes, _nothing
        return
    import asyncpg

    async with postgres_schema() as schema:

        async def vacuum() -> None:
            connection = await asyncpg.connect(POSTGRES_DSN)
            try:
                await connection.execute(f'VACUUM "{schema}".events')
            finally:
                await connection.close()

        async def pg_bytes() -> int:
            await vacuum()
            connection = await asyncpg.connect(POSTGRES_DSN)
            try:
                return int(
                    await connection.fetchval(
                        "SELECT pg_total_relation_size($1::regclass)", f'"{schema}".events'
                    )
                )
            finally:
                await connection.close()

        yield PostgresStore(POSTGRES_DSN, keys=keys, schema=schema, max_size=4), pg_bytes, vacuum


async def _day(
    kind: str, tmp: Path, connections: int, day: float, retention: float | None
) -> dict[str, Any]:
    """One simulated *day* of *connections* refreshing every 4.5 minutes; sizes per half day."""
    clock = ManualClock(EPOCH)
    label = "retention" if retention is not None else "forever"
    async with (
        FakeAirwallex(clock=clock, redirect_uris=[REDIRECT]) as fake,
        _store(kind, tmp, label) as (store, size, vacuum),
    ):
        config = config_for(fake.base_url, fake.client_id, fake.client_secret)
        # The sweep is driven here on the simulated clock (the manager's own
        # runs on real seconds): every sixth of the retention.
        timing = attrs.evolve(config.timing, event_retention=retention, prune_interval=None)
        config = attrs.evolve(config, timing=timing)
        sweep_every = retention / 6 if retention is not None else None
        async with ConnectionManager(
            config, store=store, clock=clock, keepalive=False, settle=False
        ) as awx:
            ids = []
            for _ in range(connections):
                request = await awx.begin_authorization()
                ids.append((await awx.complete_authorization(fake.approve(request.url))).id)
            sizes = [await size()]
            steps = round(day / REFRESH_EVERY)
            next_sweep = clock.now() + (sweep_every or 0)
            pruned = refreshes = 0
            started = time.perf_counter()
            for step in range(1, steps + 1):
                clock.advance(REFRESH_EVERY)
                await asyncio.gather(*(awx.refresh(cid) for cid in ids))
                refreshes += len(ids)
                if sweep_every is not None and clock.now() >= next_sweep:
                    pruned += await awx.prune_events()
                    await vacuum()
                    next_sweep += sweep_every
                if step in (steps // 2, steps):
                    sizes.append(await size())
            stored = len(await store.read_outbox(after=0, limit=10_000_000))
    return {
        "sizes": sizes,
        "refreshes": refreshes,
        "pruned": pruned,
        "stored_events": stored,
        "seconds": time.perf_counter() - started,
    }


async def bench_event_storage(sizes: Sizes, kind: str, tmp: Path) -> list[dict[str, Any]]:
    """Bytes per connection per simulated day, and the growth left with retention on."""
    connections, fraction = _SIZES[sizes.mode]
    day = DAY * fraction
    forever = await _day(kind, tmp, connections, day, None)
    kept = await _day(kind, tmp, connections, day, day / 4)
    per_day = (forever["sizes"][-1] - forever["sizes"][0]) / connections / fraction
    # The second half of the day: the retention (a quarter) is full by then.
    late_forever = forever["sizes"][-1] - forever["sizes"][1]
    late_kept = kept["sizes"][-1] - kept["sizes"][1]
    ratio = late_kept / late_forever if late_forever else 0.0
    events_per_day = forever["stored_events"] / connections / fraction
    return [
        result(
            f"event_bytes_per_conn_day_{kind}",
            per_day,
            "B/connection/day",
            "report",
            True,
            connections=connections,
            simulated_day_s=day,
            refresh_every_s=REFRESH_EVERY,
            events_per_conn_day=round(events_per_day, 1),
            bytes_per_event=round(per_day / events_per_day, 1) if events_per_day else None,
            # What the default 30-day retention holds per connection in constant use.
            retained_30d_bytes_per_conn=round(per_day * 30),
            sizes_bytes=forever["sizes"],
            run_s=round(forever["seconds"], 1),
        ),
        result(
            f"event_growth_with_retention_ratio_{kind}",
            ratio,
            "x",
            "<= 0.1",
            ratio <= 0.1,
            measured="bytes added in the day's second half, retention a quarter of the day",
            baseline=None,
            growth_with_retention_bytes=late_kept,
            growth_without_retention_bytes=late_forever,
            sizes_bytes=kept["sizes"],
            pruned_events=kept["pruned"],
            stored_events_left=kept["stored_events"],
            run_s=round(kept["seconds"], 1),
        ),
    ]
