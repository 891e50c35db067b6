"""
Shared pieces of the benchmark suite: sizes per mode, the result line,
timing helpers, stores, PostgreSQL access and the on-disk datasets.

Imported by ``run.py`` (the parent) and ``_worker.py`` (child processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import orjson

from awx_connection import (
    Config,
    ConnectionState,
    Endpoints,
    KeyRing,
    Secret,
    Store,
    TimingPolicy,
)
from awx_connection._records import ConnectionRecord, dump_record
from awx_connection._tokens import TokenSet
from awx_connection.stores import SQLiteStore

REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
#: The simulated "now" of every benchmark clock (2026-01-01T00:00:00Z).
EPOCH = 1_767_225_600.0
#: PostgreSQL, as the test-suite finds it.
POSTGRES_DSN = os.environ.get("AWX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: Characters per token in the scale dataset (each of access and refresh).
TOKEN_CHARS = 1024
#: Where a benchmark's own helper processes start.
WORKER = Path(__file__).with_name("_worker.py")


@attrs.frozen(kw_only=True)
class Sizes:
    """How much work each benchmark does; ``--smoke`` only proves the code runs."""

    mode: str
    #: Batches whose median is a micro-benchmark's value.
    rounds: int
    #: Interleaved rounds (and calls per round) of the HTTP comparisons.
    http_rounds: int
    http_batch: int
    #: Rounds of the Authlib comparison (far from its target, and httpx is slow).
    authlib_rounds: int
    callers: int = 10_000
    mp_processes: int
    mp_connections: int
    mp_expiries: int
    scale_connections: int
    #: Whether the PostgreSQL scale run also loads one connection at a time
    #: for comparison (``one_by_one_*``: about 35 s of 100,000 round trips).
    scale_postgres_one_by_one: bool
    refresh_rounds: int
    refresh_batch: int
    fanout_events: int
    fanout_rounds: int
    latency_samples: int
    import_runs: int

    @classmethod
    def for_mode(cls, mode: str) -> Sizes:
        if mode == "smoke":
            return cls(
                mode=mode,
                rounds=2,
                http_rounds=2,
                http_batch=5,
                authlib_rounds=2,
                mp_processes=2,
                mp_connections=3,
                mp_expiries=2,
                scale_connections=300,
                scale_postgres_one_by_one=True,
                refresh_rounds=2,
                refresh_batch=3,
                fanout_events=200,
                fanout_rounds=2,
                latency_samples=3,
                import_runs=1,
            )
        if mode == "quick":
            return cls(
                mode=mode,
                rounds=40,
                http_rounds=100,
                http_batch=50,
                authlib_rounds=12,
                mp_processes=8,
                mp_connections=20,
                mp_expiries=5,
                scale_connections=100_000,
                scale_postgres_one_by_one=False,
                refresh_rounds=15,
                refresh_batch=20,
                fanout_events=5_000,
                fanout_rounds=15,
                latency_samples=40,
                import_runs=7,
            )
        return cls(
            mode=mode,
            rounds=100,
            http_rounds=200,
            http_batch=50,
            authlib_rounds=40,
            mp_processes=8,
            mp_connections=20,
            mp_expiries=10,
            scale_connections=100_000,
            scale_postgres_one_by_one=True,
            refresh_rounds=40,
            refresh_batch=25,
            fanout_events=5_000,
            fanout_rounds=40,
            latency_samples=100,
            import_runs=15,
        )


def result(
    name: str,
    value: float,
    unit: str,
    target: str,
    ok: bool,
    baseline: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One output line; *extra* fields follow the standard ones."""
    line: dict[str, Any] = {
        "name": name,
        "value": round(value, 4),
        "unit": unit,
        "target": target,
        "ok": bool(ok),
    }
    if baseline is not None:
        line["baseline"] = round(baseline, 4)
        line["ratio"] = round(value / baseline, 4) if baseline else None
    line.update(extra)
    return line


def failed(
    name: str, unit: str, target: str, *, error: str | None = None, skipped: str | None = None
) -> dict[str, Any]:
    """A line for a benchmark that could not produce a value."""
    line: dict[str, Any] = {
        "name": name,
        "value": None,
        "unit": unit,
        "target": target,
        "ok": False,
    }
    if error is not None:
        line["error"] = error
    if skipped is not None:
        line["skipped"] = skipped
    return line


async def median_us(fn: Callable[[], Awaitable[object]], *, batch: int, rounds: int) -> float:
    """Median microseconds per call over *rounds* batches of *batch* calls (GC off)."""
    samples = await batch_samples_us(fn, batch=batch, rounds=rounds)
    return statistics.median(samples)


async def batch_samples_us(
    fn: Callable[[], Awaitable[object]], *, batch: int, rounds: int
) -> list[float]:
    """Microseconds per call of each of *rounds* batches of *batch* calls (GC off)."""
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
    return samples


async def interleaved(
    fns: dict[str, Callable[[], Awaitable[object]]], *, batch: int, rounds: int
) -> dict[str, list[float]]:
    """
    Interleaved batches of every function in *fns*, the order reversed every
    other round so drift and warm-up hit all alike. Returns each one's µs
    per call, one sample per round.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for index in range(rounds):
        for name, fn in reversed(order) if index % 2 else order:
            samples[name].append(await median_us(fn, batch=batch, rounds=1))
    return samples


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median of the per-round ratios ``numerator / denominator``."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


async def paired(
    base: Callable[[], Awaitable[object]],
    lib: Callable[[], Awaitable[object]],
    *,
    batch: int,
    rounds: int,
) -> tuple[float, float, float]:
    """
    :func:`interleaved` for two: the median µs per call of *base* and of
    *lib*, and the median of the per-round ratios ``lib / base`` (a second
    opinion on the ratio of the medians, which is the reported value).
    """
    samples = await interleaved({"base": base, "lib": lib}, batch=batch, rounds=rounds)
    return (
        statistics.median(samples["base"]),
        statistics.median(samples["lib"]),
        paired_ratio(samples["lib"], samples["base"]),
    )


def percentile(values: list[float], fraction: float) -> float:
    """The *fraction* quantile (nearest rank) of *values*."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def config_for(base_url: str, client_id: str, client_secret: str) -> Config:
    """The library's configuration for a fake provider at *base_url*."""
    return Config(
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=REDIRECT,
        endpoints=Endpoints.from_base_url(base_url),
        timing=TimingPolicy(backoff_base=0.005, backoff_max=0.05),
        default_scopes=("account_details:read",),
    )


# --- stores ------------------------------------------------------------------------------


def new_keys_spec() -> str:
    """A key ring spec (``id:base64key``) that child processes can rebuild."""
    return "k1:" + KeyRing.new_key()


def build_store(spec: dict[str, Any]) -> Store:
    """The store a spec names: ``{"kind": "sqlite", "path", "keys"}`` or postgres."""
    keys = KeyRing.parse(spec["keys"])
    if spec["kind"] == "postgres":
        from awx_connection.stores import PostgresStore

        # A small pool: eight replicas with the default ten connections each
        # (plus a listener) would crowd a shared server's max_connections.
        return PostgresStore(
            spec["dsn"], keys=keys, schema=spec["schema"], max_size=spec.get("pool", 4)
        )
    return SQLiteStore(spec["path"], keys=keys)


def masked_dsn(dsn: str) -> str:
    """*dsn* without its password, fit to print."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or ``None`` when it answers."""
    try:
        import asyncpg
    except ImportError as exc:
        return f"asyncpg is not installed ({exc})"
    try:
        connection = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        await connection.close()
    except Exception as exc:
        return f"PostgreSQL is not reachable at {masked_dsn(POSTGRES_DSN)}: {type(exc).__name__}"
    return None


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh schema name, dropped afterwards."""
    import asyncpg

    name = "awx_bench_" + secrets.token_hex(6)
    try:
        yield name
    finally:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await connection.close()


# --- the scale dataset -------------------------------------------------------------------


def scale_record(index: int, now: float) -> ConnectionRecord:
    """An active connection with fresh tokens of :data:`TOKEN_CHARS` characters each."""
    token_bytes = TOKEN_CHARS * 3 // 4  # base64: 4 characters per 3 bytes
    return ConnectionRecord(
        id=f"conn_{index:024x}",
        state=ConnectionState.ACTIVE,
        version=3,
        sequence=3,
        created_at=now + index * 1e-3,
        updated_at=now + index * 1e-3,
        reason="tokens received",
        scopes=("account_details:read",),
        external_id=f"customer-{index}",
        account_id=f"acct_{index:012d}",
        tokens=TokenSet(
            access_token=Secret(secrets.token_urlsafe(token_bytes)),
            refresh_token=Secret(secrets.token_urlsafe(token_bytes)),
            access_expires_at=now + 3600.0,
            refresh_expires_at=now + 90 * 86400.0,
            issued_at=now,
            generation=0,
            scope=("account_details:read",),
        ),
    )


def _columns(record: ConnectionRecord, keys: KeyRing) -> tuple[Any, ...]:
    return (
        record.id,
        record.version,
        record.state.value,
        None,
        record.external_id,
        record.account_id,
        record.created_at,
        record.updated_at,
        orjson.dumps(dump_record(record, keys)),
    )


_COLUMNS = "id, version, state, state_hash, external_id, account_id, created_at, updated_at, data"


async def build_scale_dataset(spec: dict[str, Any], count: int, now: float) -> float:
    """
    Fill the store of *spec* with *count* active connections, fast: the store
    creates its schema, then rows (sealed by ``dump_record`` with the store's
    keys, exactly as the store writes them) go in with one bulk statement.
    Returns the seconds it took.
    """
    started = time.perf_counter()
    store = build_store(spec)
    await store.open()
    await store.aclose()
    keys = KeyRing.parse(spec["keys"])
    chunk = 5_000
    if spec["kind"] == "sqlite":
        db = sqlite3.connect(spec["path"], isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            for first in range(0, count, chunk):
                rows = [
                    _columns(scale_record(i, now), keys)
                    for i in range(first, min(count, first + chunk))
                ]
                db.executemany(
                    f"INSERT INTO connections ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows
                )
            db.execute("COMMIT")
        finally:
            db.close()
    else:
        import asyncpg

        connection = await asyncpg.connect(spec["dsn"])
        try:
            for first in range(0, count, chunk):
                rows = [
                    (*row[:-1], row[-1].decode())
                    for row in (
                        _columns(scale_record(i, now), keys)
                        for i in range(first, min(count, first + chunk))
                    )
                ]
                await connection.copy_records_to_table(
                    "connections",
                    schema_name=spec["schema"],
                    columns=[c.strip() for c in _COLUMNS.split(",")],
                    records=rows,
                )
            await connection.execute(f'ANALYZE "{spec["schema"]}".connections')
        finally:
            await connection.close()
    return time.perf_counter() - started


def stderr_tail(path: Path, chars: int = 2000) -> str:
    """The end of a helper process's log, for error lines."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class TimedStore:
    """
    A store wrapper that counts and times every awaited store call, to show
    where the library's time goes; :attr:`enabled` turns the bookkeeping on.
    Wrappers are built once per method, so a disabled one costs one extra
    coroutine frame per call.
    """

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self._wrapped: dict[str, Any] = {}
        self.enabled = False
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        wrapped = self._wrapped.get(name)
        if wrapped is not None:
            return wrapped
        attribute = getattr(self._inner, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return await attribute(*args, **kwargs)
            started = time.perf_counter()
            try:
                return await attribute(*args, **kwargs)
            finally:
                self.calls[name] = self.calls.get(name, 0) + 1
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        self._wrapped[name] = timed
        return timed

    def breakdown(self, per: int) -> dict[str, list[float]]:
        """``{method: [calls, µs]}`` per unit of work (*per* units were timed)."""
        return {
            name: [round(self.calls[name] / per, 2), round(self.seconds[name] / per * 1e6)]
            for name in sorted(self.seconds, key=self.seconds.__getitem__, reverse=True)
        }
