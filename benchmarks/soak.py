"""
A chaos soak: many connections, several replicas, days of simulated time,
random faults, SIGKILLs and customer disconnects, on SQLite and PostgreSQL.

    python benchmarks/soak.py --quick --json      # ~3 minutes on 2 cores
    python benchmarks/soak.py --smoke --json      # < 1 minute (tests/system/test_soak.py)
    python benchmarks/soak.py --hours 4           # 4 hours of chaos (plus checks), readable summary
    python benchmarks/soak.py --quick --orphans   # nothing touches connections left refreshing

Why a soak on top of the unit and multi-process tests: those check one
hazard at a time. Production meets them together: a lost refresh response
while another replica waits on the lease, a replica killed mid-rotation
right after a 503, a customer disconnecting while keep-alive rotates. Each
combination is improbable; running thousands of rounds makes them happen.

Each store (SQLite, then PostgreSQL, half the time budget each) gets a
fresh world: one fake Airwallex in this process, one FileClock that only
this process advances, a store, ``--processes`` worker processes
(``soak_worker.py worker``) and one durable consumer process
(``soak_worker.py consumer``). The children reach the store through
something this process can take away: PostgreSQL through a TCP proxy of
its own on 127.0.0.1 (the server itself is never touched); SQLite is one
file, whose write lock this process can hold. Every round:

1. simulated time moves: mostly a step past access-token expiry, sometimes
   a jump of hours (refresh tokens live three simulated days here, so
   keep-alive must rotate idle connections or they expire), sometimes a
   short step that needs no refresh;
2. faults are queued in the fake (lost responses, 5xx before and after the
   rotation commits, 429, delays, malformed bodies); a customer may
   disconnect (the fake revokes the grant) and a revoked connection may be
   reconnected (reauthorize, consent, code exchange);
3. every worker calls ``access_token()`` for a random subset of the
   connections, several callers per connection, a few ``request()`` API
   calls, and maybe a ``keepalive_pass()``, all concurrently;
4. sometimes a worker is SIGKILLed mid-round, or while the fake holds a
   response it has already committed (HOLD_AFTER_COMMIT); a fresh worker
   replaces it and the clock moves past the dead worker's lease (20 s) but
   stays inside the provider's grace window (60 s), as a restart would.
   Sometimes, instead of a kill, the store goes away mid-round
   (``store_outage``): SQLite's write lock is held 6.5 s by another
   connection (past the 5 s busy timeout, so writes fail with "database is
   locked"), or the PostgreSQL proxy closes every connection and resets
   every new one for 3 s; then the clock moves past the leases whose
   release failed, as after a restart;
5. connections left ``refreshing`` by an exhausted retry are touched again
   a few simulated seconds later, as a live application would (never long
   enough to leave the grace window); in orphan mode nothing touches them;
6. sometimes a worker is stopped gracefully while the fake holds a
   committed response (``sigterm_mid_rotation``): SIGTERM, on which the
   worker calls ``await manager.aclose()`` and exits; the fake then lets
   the response go (as a dropped connection) and a fresh worker takes the
   slot. A caller that got an error the library did not type (a bare
   ``CancelledError``) counts in ``untyped_errors``;
7. sometimes the provider rotates and storing the new pair fails
   (``store_outage_after_commit``): while the fake sleeps before
   committing a rotation (a DELAY fault of 0.3 s, below the 1 s request
   timeout), the store goes away as in step 4, so the worker receives the
   new pair with no store to write it to. (HOLD_AFTER_COMMIT cannot do
   this: a held response is released as a dropped connection, so the
   worker would never see the pair.) The store comes back, the clock
   standing still; 2 real seconds later the connection is used again, 50
   simulated seconds on: past the 45 s (grace - grace_margin) inside which
   a journal may be resumed, so only the library's own work in between
   (storing the pair once it can, or settling the rotation) keeps it
   active. Nothing settles it in either mode.

The consumer is SIGKILLed once mid-run and restarted; a store error ends
its reading, and it resumes from its committed offset. A final quiet phase
(no faults, healthy workers) touches every connection twice, then the
store, the fake's counters, the consumer's transcript and every log file
are checked. The RNG is seeded (``--seed``): the same seed makes the same
decisions; thread and process interleavings still differ between runs.

``--orphans`` (orphan mode; combines with any size) turns off every
deliberate touch of a connection left ``refreshing``: step 5's settling,
the fresh worker's use of the connection after a kill or a SIGTERM, and
the quiet phase's first touch. Instead, wherever the soak would have
settled, it waits up to 15 real seconds, the clock standing still inside
the grace window, until the store shows no connection left ``refreshing``
with a token maybe sent and a journal younger than 45 s: only the library
itself (an orphan resumer in any process that has the store open) can
save those. What is left then, the next clock step carries past the
grace window, and the connection's next use (ordinary traffic,
keep-alive, or the quiet phase, whose one touch comes past access-token
expiry) ends it ``invalidated``. Ordinary traffic still runs: workers
still call ``access_token()`` for random connections, including ones
another worker left ``refreshing`` in the same round.

Output: one JSON object with ``--json`` (else a readable summary). Per
store settings (``connections``, ``processes``) are per store; counters at
the top level are totals over both stores; ``stores`` has the breakdown.
``faults`` counts every fault kind and every kind of chaos (kills,
disconnects, ``store_outage``, ``store_outage_after_commit``,
``sigterm_mid_rotation``); ``orphans`` says whether orphan mode was on;
``notes`` has ``orphans`` (connections waited for) and
``orphans_unresumed`` (still refreshing after the wait), ``outage_late``
/ ``outage_missed`` (a store_outage_after_commit that could not be placed
and was not counted), ``shutdown_hung`` / ``shutdown_unclean`` (a SIGTERMed
worker that did not exit in 30 s, or not cleanly); ``events`` has
``consumer_resumes``. Exit status 0 only when reuse_violations,
invalidated, revoked_unexpected, lost_events, stuck_connections,
secrets_in_logs and untyped_errors are all 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import attrs
import orjson
from aiohttp import web
from soak_worker import build_config, build_store

from awx_connection import ConnectionManager, ConnectionState, KeyRing
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, FileClock

WORKER = Path(__file__).with_name("soak_worker.py")
REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
POSTGRES_DSN = os.environ.get("AWX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: 2026-01-01T00:00:00Z, where every soak clock starts.
EPOCH = 1_767_225_600.0

#: Refresh tokens live three simulated days (Airwallex: 60-90 days), so
#: keep-alive has to rotate idle connections within a few dozen rounds.
REFRESH_TTL = 3 * 86400.0
#: Access tokens live 300 s; the library refreshes 60 s before expiry, so
#: any step of 240 s or more forces a refresh of every token in use.
ACCESS_TTL = 300.0
#: After a SIGKILL: past the dead holder's lease (TimingPolicy.lease_ttl,
#: 20 s) so another replica may resume its journal, but well inside
#: grace - grace_margin (45 s), where resuming is still safe.
RESTART_STEP = 21.0
#: Between touches of a connection left ``refreshing``: past the library's
#: failure cooldown (5 s), so the touch really retries.
SETTLE_STEP = 6.0
#: Real seconds settling waits before a touch: the fake may still be
#: answering a dead worker's request (a DELAY fault sleeps up to 0.8 s), and
#: until it has, every resume gets "429 concurrent refresh". Real time
#: passes in production too; only the soak's clock stands still.
SETTLE_PAUSE = 1.0
#: Simulated seconds a resumed journal may age before settling stops
#: moving time (the library gives up at 45 s; keep a margin).
SETTLE_LIMIT = 40.0
#: Real seconds a child may take to start or to answer one command; the
#: longest legitimate wait is TimingPolicy.lease_wait (45 s).
ANSWER_TIMEOUT = 90.0
#: The library's WARNING for a rotation whose new tokens it could not store
#: (ManagerStatistics.rotations_discarded): a customer's disconnect landing
#: mid-rotation, or two replicas presenting the same refresh token. Counted
#: in the workers' logs, which survive their SIGKILLs.
DISCARDED = b"discarding the new tokens"
#: Real seconds the consumer may take to catch up at the end.
CATCH_UP_TIMEOUT = 30.0
#: Extra rounds at the end to consume queued faults and finish the
#: required chaos of a store before the quiet phase.
CATCH_UP_ROUNDS = 12
#: Real seconds the fake sleeps before committing the rotation whose
#: storing the soak makes fail (store_outage_after_commit): the outage
#: starts in between, so the worker gets the new pair with the store gone.
#: Below the workers' request timeout (1 s).
COMMIT_DELAY = 0.3
#: Real seconds after a store outage before the connection's next use: the
#: library may go on writing the new pair, or settle the rotation, meanwhile.
AFTER_OUTAGE = 2.0
#: The connection's next use after store_outage_after_commit, in simulated
#: seconds: past the 45 s (grace - grace_margin) up to which a journal may
#: be resumed, so only the library's own work in between can save it.
NEXT_USE_STEP = 50.0
#: Real seconds between SIGTERM and releasing the held response: the
#: worker's aclose() is under way while its rotation is still in flight.
SIGTERM_PAUSE = 0.2
#: Real seconds a worker may take to shut down after SIGTERM (its aclose()
#: is bounded by the request timeout, 1 s, and a write).
SHUTDOWN_TIMEOUT = 30.0
#: Orphan mode: real seconds the soak waits, touching nothing and leaving
#: the clock inside the grace window, for the library to resume connections
#: left refreshing with a token maybe sent (a resumer running every few
#: seconds, plus the resume delay, 1.2 s here, plus the rotation).
ORPHAN_WAIT = 15.0
#: Real seconds between looks at the store while waiting for the resumer.
ORPHAN_POLL = 0.25

#: Fault kinds queued in the fake; the kills, disconnects and consumer
#: kill are counted under their own names next to these.
FAULT_KINDS = (
    FaultKind.DROP_AFTER_COMMIT,
    FaultKind.SERVER_ERROR,
    FaultKind.SERVER_ERROR_AFTER_COMMIT,
    FaultKind.RATE_LIMIT,
    FaultKind.DELAY,
    FaultKind.MALFORMED_AFTER_COMMIT,
)
CHAOS = (
    "sigkill",
    "hold_after_commit_kill",
    "disconnect",
    "consumer_sigkill",
    "store_outage",
    "store_outage_after_commit",
    "sigterm_mid_rotation",
)
#: The counters that must all be 0 for exit status 0.
MUST_BE_ZERO = (
    "reuse_violations",
    "invalidated",
    "revoked_unexpected",
    "lost_events",
    "stuck_connections",
    "secrets_in_logs",
    "untyped_errors",
)


@attrs.frozen(kw_only=True)
class Mode:
    """How big a run is; ``rounds=None`` means: until the time budget ends."""

    name: str
    connections: int
    processes: int
    rounds: int | None
    #: Real seconds for the whole run (both stores).
    budget: float
    #: Real seconds of each store's half kept for the catch-up, quiet phase and checks.
    reserve: float
    #: Probabilities per round.
    p_kill: float = 0.06
    p_hold_kill: float = 0.04
    p_disconnect: float = 0.1
    p_reconnect: float = 0.5
    p_consumer_kill: float = 0.0
    #: Outages cost real seconds (SQLite's lock 6.5 s, a failed write after
    #: a commit about 10 s in all), so they are rarer than kills: each kind
    #: is forced once per store anyway.
    p_outage: float = 0.005
    p_outage_after_commit: float = 0.005
    p_sigterm: float = 0.02
    #: Orphan mode (--orphans): the soak never touches a connection because
    #: it was left ``refreshing``; only the library may resume it.
    orphans: bool = False


def mode_for(args: argparse.Namespace) -> Mode:
    """The mode the flags name, with --connections/--processes/--rounds overriding its sizes."""
    if args.hours is not None:
        # The hours asked for are chaos time: each store's reserve (its quiet
        # phase and checks) comes on top. (Before, it came out of them, and
        # "--hours 1.05" ran 58 minutes.)
        reserve = max(60.0, args.hours * 3600.0 * 0.05)
        stores = len([kind for kind in args.stores.split(",") if kind.strip()]) or 1
        base = Mode(
            name=f"hours={args.hours:g}",
            connections=40,
            processes=4,
            rounds=None,
            budget=args.hours * 3600.0 + stores * reserve,
            reserve=reserve,
            p_consumer_kill=0.01,
        )
    elif args.smoke:
        base = Mode(name="smoke", connections=6, processes=2, rounds=8, budget=80.0, reserve=12.0)
    else:
        base = Mode(
            name="quick", connections=40, processes=4, rounds=None, budget=170.0, reserve=25.0
        )
    return attrs.evolve(
        base,
        connections=args.connections or base.connections,
        processes=args.processes or base.processes,
        rounds=args.rounds if args.rounds is not None else base.rounds,
        orphans=args.orphans,
    )


class SoakError(Exception):
    """The harness itself failed (a child did not start, the fake did not answer)."""


# --- child processes ------------------------------------------------------------------------


class Child:
    """One ``soak_worker.py`` process; every stdout line is kept for the secret scan."""

    def __init__(self, role: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.role = role
        self.process = process
        self.log = log
        self.lines: list[bytes] = []

    @classmethod
    async def start(cls, role: str, settings: dict[str, Any], log: Path) -> Child:
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                role,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=dict(os.environ),
            )
        child = cls(role, process, log)
        try:
            await child.send(settings)
            ready = await child.read(ANSWER_TIMEOUT)
        except BaseException:
            await child.kill()
            raise
        if ready != {"ready": True}:
            await child.kill()
            msg = f"{role} did not start: {tail(log)}"
            raise SoakError(msg)
        return child

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()

    async def read(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        """The next answer, or ``None`` if the process is gone (killed, crashed)."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            return None
        self.lines.append(line)
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def ask(self, command: dict[str, Any]) -> dict[str, Any] | None:
        try:
            await self.send(command)
        except ConnectionError:
            return None
        return await self.read(ANSWER_TIMEOUT)

    async def kill(self) -> None:
        """SIGKILL (by this child's pid) and reap."""
        if self.alive:
            self.process.kill()
        await self.process.wait()

    def terminate(self) -> None:
        """SIGTERM (by this child's pid): a worker then shuts down gracefully."""
        if self.alive:
            self.process.terminate()

    async def last_words(self, timeout: float) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """Every answer left until the process exits; ``TimeoutError`` if it does not."""
        answers = []
        async with asyncio.timeout(timeout):
            while (answer := await self.read(timeout)) is not None:
                answers.append(answer)
            await self.process.wait()
        return answers

    async def stop(self) -> None:
        if not self.alive:
            return
        try:
            await self.send({"cmd": "exit"})
            await asyncio.wait_for(self.process.wait(), 20)
        except (ConnectionError, TimeoutError):
            await self.kill()


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- stores ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def store_spec(kind: str, tmp: Path, dsn: str) -> AsyncIterator[dict[str, Any]]:
    """A fresh store: an SQLite file in *tmp*, or a random PostgreSQL schema dropped after."""
    keys = "k1:" + KeyRing.new_key()
    if kind == "sqlite":
        yield {"kind": kind, "path": str(tmp / "soak.db"), "keys": keys}
        return
    import asyncpg

    schema = "awx_soak_" + secrets.token_hex(6)
    try:
        yield {"kind": kind, "dsn": dsn, "schema": schema, "keys": keys}
    finally:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()


async def stored_text(spec: dict[str, Any]) -> str:
    """Everything the store holds on disk, as text, to look for plaintext secrets."""
    if spec["kind"] == "sqlite":
        return read_files(Path(spec["path"] + suffix) for suffix in ("", "-wal", "-journal"))
    import asyncpg

    connection = await asyncpg.connect(spec["dsn"], timeout=10)
    try:
        tables = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            spec["schema"],
        )
        parts = []
        for row in tables:
            text = await connection.fetchval(
                f'SELECT string_agg(t::text, E\'\\n\') FROM "{spec["schema"]}"."{row[0]}" t'
            )
            parts.append(text or "")
        return "\n".join(parts)
    finally:
        await connection.close()


def read_files(paths: Iterable[Path]) -> str:
    """The bytes of every existing file in *paths*, as latin-1 text (lossless)."""
    return "\n".join(p.read_bytes().decode("latin-1") for p in paths if p.exists())


# --- store outages --------------------------------------------------------------------------


class Outage(Protocol):
    """A way to take the children's store away for a few seconds, and to give it back."""

    #: Real seconds one outage lasts.
    seconds: float

    def route(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The store spec the children get: the one the outage can cut."""
        ...

    async def cut(self) -> None: ...

    async def lift(self) -> None: ...


class SQLiteWriteLock:
    """
    An SQLite outage: a connection of the soak's own holds the database's
    write lock (``BEGIN IMMEDIATE``), on a thread of its own, until lifted.
    Readers go on (WAL); every writer waits out its busy timeout (5 s) and
    fails with "database is locked". Held 6.5 s, so writes started in the
    first 1.5 s fail and later ones wait and succeed.
    """

    seconds = 6.5
    #: Real seconds after which the lock goes whatever happens: a harness
    #: bug must not lock the file for the rest of the run.
    LIMIT = 60.0

    def __init__(self, path: str) -> None:
        self.path = path
        self._lift = threading.Event()
        self._thread: threading.Thread | None = None

    def route(self, spec: dict[str, Any]) -> dict[str, Any]:
        return spec

    async def cut(self) -> None:
        """Return once the lock is held."""
        loop = asyncio.get_running_loop()
        held: asyncio.Future[None] = loop.create_future()
        self._lift.clear()
        self._thread = threading.Thread(
            target=self._hold, args=(loop, held), name="soak-sqlite-lock", daemon=True
        )
        self._thread.start()
        await held

    def _hold(self, loop: asyncio.AbstractEventLoop, held: asyncio.Future[None]) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            db.close()
            error = SoakError(f"could not take the SQLite write lock: {exc}")
            loop.call_soon_threadsafe(held.set_exception, error)
            return
        loop.call_soon_threadsafe(held.set_result, None)
        try:
            self._lift.wait(self.LIMIT)
        finally:
            db.rollback()
            db.close()

    async def lift(self) -> None:
        """Return once the lock is released."""
        self._lift.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None


class PostgresProxy:
    """
    A PostgreSQL outage: a TCP proxy on 127.0.0.1, in this process, between
    the children and the server. Cut, it closes every live connection and
    resets every new one at once, for 3 s: longer than the store's own
    retries (about 0.75 s). The server itself is never touched.
    """

    seconds = 3.0

    def __init__(self, dsn: str) -> None:
        self.parts = urllib.parse.urlsplit(dsn)
        self.upstream = (self.parts.hostname or "127.0.0.1", self.parts.port or 5432)
        self.server: asyncio.Server | None = None
        self.down = False
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self._close_links()

    def route(self, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        user, at, _ = self.parts.netloc.rpartition("@")
        netloc = f"{user}{at}127.0.0.1:{port}"
        return {**spec, "dsn": urllib.parse.urlunsplit(self.parts._replace(netloc=netloc))}

    async def cut(self) -> None:
        self.down = True
        self._close_links()

    async def lift(self) -> None:
        self.down = False

    def _close_links(self) -> None:
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, piped to the server both ways until either side closes."""
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        if self.down:  # cut while we connected
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.links.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self.links.discard(end)
                end.transport.abort()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes one way until either side closes, then close the sink."""
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    sink.transport.abort()


@contextlib.asynccontextmanager
async def outage_for(kind: str, spec: dict[str, Any]) -> AsyncIterator[Outage]:
    """A store's outage: a write lock for SQLite, a proxy that can be cut for PostgreSQL."""
    if kind == "sqlite":
        lock = SQLiteWriteLock(spec["path"])
        try:
            yield lock
        finally:
            await lock.lift()
        return
    proxy = PostgresProxy(spec["dsn"])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()


#: Signs the fake's webhooks to the sink; nothing verifies them.
WEBHOOK_SECRET = "whsec_soak_" + secrets.token_hex(16)


@contextlib.asynccontextmanager
async def webhook_sink() -> AsyncIterator[str]:
    """A 127.0.0.1 endpoint that accepts every webhook, so the fake never retries."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/webhooks"
    finally:
        await runner.cleanup()


# --- the secret scan ------------------------------------------------------------------------

#: A leak is any run of at least this many characters of a secret: enough
#: that chance matches are impossible (>= 130 random bits), short enough to
#: catch a truncated or embedded token.
WINDOW = 24
_RUN = re.compile(rb"[A-Za-z0-9_\-]{%d,}" % WINDOW)


class SecretIndex:
    """
    Every WINDOW-character slice of every secret, for a linear scan.

    Thousands of secrets against megabytes of logs: searching each secret
    would be quadratic, so the scan slides over the runs of URL-safe
    characters in the text (every issued token is URL-safe) and looks each
    slice up. Secrets with other characters are searched directly.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self.slices: set[bytes] = set()
        self.plain: set[bytes] = set()
        for value in values:
            raw = value.encode()
            if len(raw) >= WINDOW and _RUN.fullmatch(raw):
                self.slices.update(raw[i : i + WINDOW] for i in range(len(raw) - WINDOW + 1))
            elif raw:
                self.plain.add(raw)

    def count(self, data: bytes) -> int:
        """How many leaked secret slices (or plain secrets) *data* contains."""
        found = sum(raw in data for raw in self.plain)
        for match in _RUN.finditer(data):
            run = match.group()
            found += sum(run[i : i + WINDOW] in self.slices for i in range(len(run) - WINDOW + 1))
        return found


def secrets_of(fake: FakeAirwallex, spec: dict[str, Any]) -> set[str]:
    """What must never be logged: every issued code and token, the client secret, the key."""
    values = set(fake.issued_secrets()) | {fake.client_secret, spec["keys"], WEBHOOK_SECRET}
    for item in spec["keys"].split(","):
        values.add(item.partition(":")[2])
    return values


# --- one store ------------------------------------------------------------------------------


@attrs.define
class Conn:
    """What the soak knows about one connection (the store knows the rest)."""

    id: str
    account: str
    idle: bool
    #: We disconnected it and have not reconnected it since.
    disconnected: bool = False
    disconnects: int = 0
    reconnects: int = 0


class StoreSoak:
    """One store's world: fake, clock, store, workers, consumer, and the chaos."""

    def __init__(
        self, kind: str, mode: Mode, seed: int, tmp: Path, dsn: str, budget: float
    ) -> None:
        self.kind = kind
        self.mode = mode
        # Seeded per store, so each store's decisions do not depend on the other's.
        self.rng = random.Random(f"{seed}:{kind}")
        self.tmp = tmp
        self.dsn = dsn
        self.started = time.monotonic()
        self.chaos_deadline = self.started + max(budget - mode.reserve, budget * 0.3)
        # Catch-up rounds stop here, leaving half the reserve for the quiet phase and checks.
        self.hard_deadline = self.started + budget - mode.reserve / 2
        self.workers: list[Child] = []
        self.consumer: Child | None = None
        self.consumer_runs = 0
        #: Times a consumer resumed after a store error, inside its process.
        self.consumer_resumes = 0
        #: Consumer readings so far: one per process, plus one per resume.
        self.readings = 0
        self.consumer_task: asyncio.Task[None] | None = None
        self.retired: list[Child] = []
        #: (consumer reading, connection id, sequence) in the order printed.
        self.seen: list[tuple[int, str, int]] = []
        self.conns: list[Conn] = []
        self.fault_log: list[str] = []
        self.applied_base = 0
        self.chaos: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.keepalive: collections.Counter[str] = collections.Counter()
        self.notes: collections.Counter[str] = collections.Counter()
        self.rounds = 0
        self.forced: dict[str, int] = {}
        self.phases: dict[str, float] = {}
        #: This round's step was hours long: every replica runs keep-alive.
        self.big_jump = False
        self.children = 0
        #: The parent's story of the run (round, clock, chaos), for bug reports.
        self.log = logging.getLogger(f"soak.{kind}")

    # -- setup ---------------------------------------------------------------------------

    def plan(self) -> None:
        """
        Give every kind of chaos a round in the first part of the run, so
        even a short run exercises each of them at least once per store.
        """
        nominal = self.mode.rounds or 40
        last = max(2, int(nominal * 0.6))
        for name in [kind.value for kind in FAULT_KINDS] + [
            "sigkill",
            "hold_after_commit_kill",
            "store_outage",
            "store_outage_after_commit",
            "sigterm_mid_rotation",
        ]:
            self.forced[name] = self.rng.randrange(1, last)
        self.forced["disconnect"] = self.rng.randrange(1, max(2, last - 2))
        self.forced["reconnect"] = self.forced["disconnect"] + 2
        self.forced["consumer_sigkill"] = max(2, nominal // 2)

    def due(self, name: str, probability: float) -> bool:
        """Whether *name* happens this round: forced once by the plan, else by chance."""
        if name in self.forced and self.rounds >= self.forced[name]:
            return True
        return self.rng.random() < probability

    def done(self, name: str) -> None:
        self.forced.pop(name, None)

    async def run(self) -> dict[str, Any]:
        self.clock_path = self.tmp / "clock"
        self.clock = FileClock.create(self.clock_path, EPOCH)
        self.fake = FakeAirwallex(
            clock=FileClock(self.clock_path),
            redirect_uris=[REDIRECT],
            access_token_ttl=ACCESS_TTL,
            refresh_token_ttl=REFRESH_TTL,
        )
        try:
            async with (
                self.fake,
                webhook_sink() as sink_url,
                store_spec(self.kind, self.tmp, self.dsn) as spec,
                outage_for(self.kind, spec) as outage,
            ):
                # The fake announces every grant it kills (user disconnect or
                # token reuse) as a webhook; its sender keeps what it sent,
                # which tells an unexpected revocation's cause.
                self.fake.set_webhook(sink_url, WEBHOOK_SECRET)
                self.spec = spec
                self.outage = outage
                timing = build_config(self.settings()).timing
                #: How old a journal may be and still be resumed (45 s).
                self.resumable = timing.grace - timing.grace_margin
                self.store = build_store(spec)
                await self.store.open()
                try:
                    return await self._run()
                finally:
                    await self._stop_children()
                    await self.store.aclose()
        finally:
            self.clock.close()

    def settings(self) -> dict[str, Any]:
        """A child's settings: its store is the one an outage can cut (this process's is not)."""
        return {
            "clock": str(self.clock_path),
            "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret,
            "redirect": REDIRECT,
            "base_url": self.fake.base_url,
            "store": self.outage.route(self.spec),
        }

    def manager(self) -> ConnectionManager:
        """A short-lived manager for this process's own steps (connect, reconnect)."""
        return ConnectionManager(
            build_config(self.settings()), store=build_store(self.spec), clock=self.clock
        )

    async def spawn(self, role: str) -> Child:
        self.children += 1
        log = self.tmp / f"{role}-{self.children}.log"
        return await Child.start(role, self.settings(), log)

    async def _stop_children(self) -> None:
        children = [*self.workers, *self.retired]
        if self.consumer is not None:
            children.append(self.consumer)
        await asyncio.gather(*(child.stop() for child in self.workers), return_exceptions=True)
        await asyncio.gather(*(child.kill() for child in children), return_exceptions=True)
        if self.consumer_task is not None:
            self.consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.consumer_task

    async def connect(self) -> None:
        """``connections`` customers sign up and consent, each with an account of their own."""
        async with self.manager() as awx:
            for index in range(self.mode.connections):
                request = await awx.begin_authorization(sign_up=True, external_id=f"c{index}")
                connection = await awx.complete_authorization(self.fake.approve(request.url))
                assert connection.account_id is not None
                # One in five never calls the API: only keep-alive keeps it alive.
                idle = index % 5 == 4
                self.conns.append(Conn(connection.id, connection.account_id, idle))

    # -- the consumer --------------------------------------------------------------------

    async def start_consumer(self) -> None:
        self.consumer_runs += 1
        self.consumer = await self.spawn("consumer")
        self.consumer_task = asyncio.ensure_future(self._pump(self.consumer, self.consumer_runs))

    async def _pump(self, child: Child, run: int) -> None:
        """Record every event the consumer printed, until its stdout closes."""
        assert child.process.stdout is not None
        self.readings += 1
        reading = self.readings
        while line := await child.process.stdout.readline():
            child.lines.append(line)
            printed = orjson.loads(line)
            if printed.get("resumed"):
                # A fresh reading from the committed offset: it may repeat events.
                self.consumer_resumes += 1
                self.readings += 1
                reading = self.readings
                continue
            connection_id, sequence = printed["e"]
            self.seen.append((reading, connection_id, sequence))

    async def kill_consumer(self) -> None:
        """SIGKILL the consumer mid-stream; a fresh one resumes from the committed offset."""
        assert self.consumer is not None and self.consumer_task is not None
        await self.consumer.kill()
        self.log.info("SIGKILL consumer pid %s", self.consumer.process.pid)
        await self.consumer_task  # drains what it printed before dying
        self.retired.append(self.consumer)
        self.chaos["consumer_sigkill"] += 1
        await self.start_consumer()

    # -- faults --------------------------------------------------------------------------

    @property
    def applied(self) -> int:
        return self.fake.counters.faults_applied - self.applied_base

    @property
    def queued(self) -> int:
        return len(self.fault_log) - self.applied

    def inject(self, kind: FaultKind, *, delay: float | None = None, label: str = "") -> None:
        """
        Queue one fault for the next refresh POST (faults are FIFO). An
        explicit *delay* replaces the random one; a *label* counts the fault
        under that name instead of its kind (a fault that is one part of
        another kind of chaos).
        """
        status = 503
        if kind is FaultKind.DELAY and delay is None:
            delay = round(self.rng.uniform(0.05, 0.8), 3)
        elif kind is FaultKind.SERVER_ERROR:
            # 503 says "not processed"; 502 and 504 may have been: both paths.
            status = self.rng.choice((503, 503, 502, 504))
        elif kind is FaultKind.HOLD_AFTER_COMMIT:
            delay = 30.0  # released by hand long before; bounds a harness bug
        delay = delay or 0.0
        self.fake.inject(Fault(kind, grant_type="refresh_token", delay=delay, status=status))
        self.log.info("fault queued: %s (status %s, delay %s)", kind.value, status, delay)
        self.fault_log.append(label or kind.value)

    def clear_faults(self) -> None:
        """Drop queued faults; only applied ones count."""
        self.fake.clear_faults()
        applied = self.applied
        self.notes["faults_cleared_unapplied"] += len(self.fault_log) - applied
        del self.fault_log[applied:]

    def faults_applied(self) -> collections.Counter[str]:
        return collections.Counter(self.fault_log[: self.applied])

    # -- one round -----------------------------------------------------------------------

    async def let_rotations_land(self) -> None:
        """
        Before a clock step that can carry a journal past its grace window:
        rotations in flight in any process (a background settle or
        keep-alive, which no round waits for) get up to ORPHAN_WAIT real
        seconds to land, the clock standing still. In production, minutes
        never pass in the milliseconds between two attempts of one
        rotation; here one step can, and would end a connection the
        provider still holds (seen once in a 30-minute soak on a machine at
        a load of 17: a settle's retry found its grace window 165 simulated
        seconds gone, the fake never having invalidated anything). What is
        still unsafe after the wait is left to the step, as before, and
        counted.
        """
        left = await self.unsafe()
        if not left:
            return
        self.notes["landing_waits"] += 1
        deadline = time.monotonic() + ORPHAN_WAIT
        while left and time.monotonic() < deadline:
            await asyncio.sleep(ORPHAN_POLL)
            left = await self.unsafe()
        if left:
            self.notes["landing_unlanded"] += len(left)

    def step(self) -> None:
        """Move simulated time: mostly past expiry, sometimes hours, sometimes barely."""
        roll = self.rng.random()
        if roll < 0.1:
            seconds = self.rng.uniform(3600.0, 20 * 3600.0)
            self.big_jump = True
        elif roll < 0.2:
            seconds = self.rng.uniform(10.0, 200.0)
            self.big_jump = False
        else:
            seconds = self.rng.uniform(241.0, 420.0)
            self.big_jump = False
        self.clock.advance(seconds)
        self.log.info("round %d: +%.0f s, now +%.0f s", self.rounds, seconds, self.elapsed())

    def elapsed(self) -> float:
        return self.clock.now() - EPOCH

    async def states(self) -> dict[str, ConnectionState]:
        return {r.id: r.state for r in await self.store.list_connections()}

    async def disconnect(self, states: dict[str, ConnectionState]) -> None:
        """A customer unlinks the app in Airwallex: the fake revokes the grant at once."""
        candidates = [
            c for c in self.conns if not c.disconnected and states[c.id] is ConnectionState.ACTIVE
        ]
        if not candidates:
            return
        conn = self.rng.choice(candidates)
        self.log.info("disconnect %s (%s)", conn.id, conn.account)
        if self.fake.disconnect(conn.account):
            conn.disconnected = True
            conn.disconnects += 1
            self.chaos["disconnect"] += 1
            self.done("disconnect")

    async def reconnect(self, states: dict[str, ConnectionState]) -> None:
        """A disconnected customer whose revocation the library noticed connects again."""
        candidates = [
            c for c in self.conns if c.disconnected and states[c.id] is ConnectionState.REVOKED
        ]
        if not candidates:
            return
        conn = self.rng.choice(candidates)
        self.log.info("reconnect %s (%s)", conn.id, conn.account)
        async with self.manager() as awx:
            request = await awx.reauthorize(conn.id)
            redirect = self.fake.approve(request.url, account_id=conn.account)
            connection = await awx.complete_authorization(redirect)
        if connection.state is not ConnectionState.ACTIVE:
            msg = f"reconnect of {conn.id} ended {connection.state.value}"
            raise SoakError(msg)
        conn.disconnected = False
        conn.reconnects += 1
        self.notes["reconnects"] += 1
        self.done("reconnect")

    def commands(self, states: dict[str, ConnectionState]) -> list[dict[str, Any]]:
        """This round's work for each worker: overlapping random subsets, so replicas collide."""
        busy = [c.id for c in self.conns if not c.idle]
        unnoticed = [
            c.id for c in self.conns if c.disconnected and states[c.id] is ConnectionState.ACTIVE
        ]
        keepalive_by = self.rng.randrange(len(self.workers))
        commands = []
        for index in range(len(self.workers)):
            ids = self.rng.sample(busy, self.rng.randint(max(1, len(busy) // 2), len(busy)))
            api = self.rng.sample(busy, min(2, len(busy)))
            if index == 0 and unnoticed and self.rng.random() < 0.5:
                # The application calls the API for a disconnected customer:
                # a 401, one refresh, invalid_grant: the library revokes.
                api.extend(unnoticed)
            commands.append(
                {
                    "cmd": "round",
                    "ids": ids,
                    "per_connection": self.rng.randint(1, 4),
                    "api": api,
                    "keepalive": self.big_jump or index == keepalive_by or self.rng.random() < 0.2,
                }
            )
        return commands

    def record(self, answer: dict[str, Any]) -> None:
        self.errors.update(answer["errors"])
        if answer.get("keepalive"):
            self.keepalive.update(answer["keepalive"])

    async def replace(self, worker: Child) -> Child:
        """A fresh replica in place of a dead one (same slot)."""
        self.retired.append(worker)
        fresh = await self.spawn("worker")
        self.workers[self.workers.index(worker)] = fresh
        return fresh

    async def ask_all(
        self, commands: list[dict[str, Any]], kill: int | None, *, outage: bool = False
    ) -> None:
        """
        Send every worker its command at once; with *kill*, SIGKILL that
        worker a random moment later, move time past its lease, and start
        its replacement while the others are still working; with *outage*,
        take the store away from every child for a few seconds meanwhile.
        """
        workers = list(self.workers)
        for worker, command in zip(workers, commands, strict=True):
            await worker.send(command)
        if kill is not None:
            await self.kill_mid_round(workers[kill])
        elif outage:
            await self.outage_mid_round()
        for index, worker in enumerate(workers):
            if index == kill:
                continue
            answer = await self.read_answer(worker)
            if answer is not None:
                self.record(answer)

    async def kill_mid_round(self, victim: Child) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 0.3))
        await victim.kill()
        self.log.info("SIGKILL worker pid %s mid-round", victim.process.pid)
        self.chaos["sigkill"] += 1
        self.done("sigkill")
        self.clock.advance(RESTART_STEP)
        await self.replace(victim)

    async def outage_mid_round(self) -> None:
        """
        A store outage a random moment into the round, while the workers
        refresh: SQLite's write lock held, or PostgreSQL's proxy cut. Then
        the clock moves past the lease of every worker whose release failed
        in the outage, as a restart's would (inside the grace window).
        """
        await asyncio.sleep(self.rng.uniform(0.0, 0.3))
        await self.store_outage()
        self.chaos["store_outage"] += 1
        self.done("store_outage")
        self.clock.advance(RESTART_STEP)

    async def store_outage(self) -> None:
        """Take the children's store away for ``outage.seconds`` real seconds."""
        await self.outage.cut()
        self.log.info("store outage: %s gone for %.1f s", self.kind, self.outage.seconds)
        try:
            await asyncio.sleep(self.outage.seconds)
        finally:
            await self.outage.lift()
        self.log.info("store outage over")

    async def read_answer(self, worker: Child) -> dict[str, Any] | None:
        """An answer, or None after replacing a worker that hung or died on its own."""
        try:
            answer = await worker.read(ANSWER_TIMEOUT)
        except TimeoutError:
            self.notes["hung_workers"] += 1
            await worker.kill()
            self.clock.advance(RESTART_STEP)
            await self.replace(worker)
            return None
        if answer is None:
            self.notes["crashed_workers"] += 1
            await worker.kill()
            self.clock.advance(RESTART_STEP)
            await self.replace(worker)
        return answer

    async def touch(self, worker: Child, ids: list[str], per_connection: int = 1) -> None:
        if not ids:
            return
        await worker.send(
            {
                "cmd": "round",
                "ids": ids,
                "per_connection": per_connection,
                "api": [],
                "keepalive": False,
            }
        )
        answer = await self.read_answer(worker)
        if answer is not None:
            self.record(answer)

    async def after_round(self, since: float) -> None:
        """What follows a round or a kill: settling, or in orphan mode, waiting for the library."""
        if self.mode.orphans:
            await self.wait_for_resumer()
        else:
            await self.settle(since)

    async def settle(self, since: float) -> None:
        """
        Touch connections left ``refreshing`` a few simulated seconds later,
        as a live application would, never letting their journal age past
        SETTLE_LIMIT: the library resumes a journal only inside the grace
        window, and the soak's big clock steps would otherwise push every
        such connection past it.
        """
        for _ in range(3):
            left = [
                r.id for r in await self.store.list_connections(states=[ConnectionState.REFRESHING])
            ]
            if not left:
                return
            if self.clock.now() + SETTLE_STEP - since > SETTLE_LIMIT:
                self.notes["settle_gave_up"] += len(left)
                return
            self.notes["settled"] += len(left)
            self.log.info("settle: %s left refreshing", left)
            self.clock.advance(SETTLE_STEP)
            await asyncio.sleep(SETTLE_PAUSE)
            await self.touch(self.rng.choice(self.workers), left, per_connection=2)

    async def wait_for_resumer(self) -> None:
        """
        Orphan mode's settling: touch nothing. A connection left
        ``refreshing`` with a token maybe sent can only be resumed by the
        library itself (any process that has the store open), before its
        grace window closes: give it ORPHAN_WAIT real seconds, the clock
        standing still. What is left then, the next clock step carries past
        the window, and its next use ends it ``invalidated``.
        """
        left = await self.unsafe()
        if not left:
            return
        self.notes["orphans"] += len(left)
        self.log.info("orphans: %s left refreshing; touching nothing", left)
        deadline = time.monotonic() + ORPHAN_WAIT
        while left and time.monotonic() < deadline:
            await asyncio.sleep(ORPHAN_POLL)
            left = await self.unsafe()
        if left:
            self.notes["orphans_unresumed"] += len(left)
            self.log.info("orphans: %s still refreshing after %.0f s", left, ORPHAN_WAIT)

    async def unsafe(self) -> list[str]:
        """
        Connections left ``refreshing`` with a refresh token that may have
        been sent, and that the library may still resume: those whose
        journal is younger than ``grace - grace_margin`` (45 s). Older ones
        are lost already; their next use shows it.
        """
        oldest = self.clock.now() - self.resumable
        records = await self.store.list_connections(states=[ConnectionState.REFRESHING])
        return [
            r.id
            for r in records
            if r.journal and r.journal.unsafe_since is not None and r.journal.unsafe_since > oldest
        ]

    async def rescue(self, rescuer: Child, target: str, since: float) -> None:
        """After a replica died mid-rotation: its replacement uses the connection (not orphans)."""
        if not self.mode.orphans:
            await self.touch(rescuer, [target], per_connection=3)
        await self.after_round(since)

    def rotation_target(self, states: dict[str, ConnectionState]) -> str | None:
        """
        An active connection (none if faults are still queued: a fault meant
        for its rotation would land on another request), with the clock
        moved past access-token expiry so that its next use rotates.
        """
        if self.queued:
            return None
        candidates = [
            c.id
            for c in self.conns
            if not c.disconnected and states[c.id] is ConnectionState.ACTIVE
        ]
        if not candidates:
            return None
        # Past expiry, so access_token() must rotate. (Not refresh(): in a
        # replica whose cached record is stale, refresh() adopts the newer
        # stored tokens and sends nothing.)
        self.clock.advance(self.rng.uniform(241.0, 300.0))
        return self.rng.choice(candidates)

    @staticmethod
    def use(ids: list[str], per_connection: int = 2) -> dict[str, Any]:
        return {
            "cmd": "round",
            "ids": ids,
            "per_connection": per_connection,
            "api": [],
            "keepalive": False,
        }

    @staticmethod
    async def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
        """Whether *condition* became true within *seconds* of real time (polled every 10 ms)."""
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def hold_kill(self, states: dict[str, ConnectionState]) -> None:
        """
        Kill a replica while the fake holds a refresh response it has
        already committed: the new refresh token exists only at the
        provider. A fresh replica must resume the journal inside the grace
        window (a grace re-issue), never present an older token.
        """
        await self.let_rotations_land()
        target = self.rotation_target(states)
        if target is None:
            return
        victim = self.rng.choice(self.workers)
        held = self.fake.counters.held_responses
        self.inject(FaultKind.HOLD_AFTER_COMMIT)
        await victim.send(self.use([target]))
        await self.until(lambda: self.fake.counters.held_responses > held)
        since = self.clock.now()
        await victim.kill()
        self.log.info("SIGKILL worker pid %s holding %s", victim.process.pid, target)
        self.fake.release_held()
        await asyncio.sleep(0.05)  # let the fake finish the released (dropped) response
        if self.fake.counters.held_responses > held:
            self.chaos["hold_after_commit_kill"] += 1
            self.done("hold_after_commit_kill")
        else:
            self.notes["hold_missed"] += 1
            self.chaos["sigkill"] += 1
            self.clear_faults()
        self.clock.advance(RESTART_STEP)
        rescuer = await self.replace(victim)
        await self.rescue(rescuer, target, since)

    async def sigterm_mid_rotation(self, states: dict[str, ConnectionState]) -> None:
        """
        Stop a replica gracefully while the fake holds a refresh response it
        has already committed: SIGTERM, on which the worker calls
        ``await manager.aclose()`` and exits. Then the fake lets the response
        go (as a dropped connection), and a fresh replica takes the slot.
        The rotation's callers must get tokens or a typed error; the
        connection must end active whether or not anybody uses it again.
        """
        await self.let_rotations_land()
        target = self.rotation_target(states)
        if target is None:
            return
        victim = self.rng.choice(self.workers)
        held = self.fake.counters.held_responses
        self.inject(FaultKind.HOLD_AFTER_COMMIT)
        await victim.send(self.use([target]))
        if not await self.until(lambda: self.fake.counters.held_responses > held):
            self.notes["hold_missed"] += 1
            self.clear_faults()
            answer = await self.read_answer(victim)
            if answer is not None:
                self.record(answer)
            return
        since = self.clock.now()
        victim.terminate()
        self.log.info("SIGTERM worker pid %s holding %s", victim.process.pid, target)
        await asyncio.sleep(SIGTERM_PAUSE)
        self.fake.release_held()
        await self.shut_down(victim)
        self.chaos["sigterm_mid_rotation"] += 1
        self.done("sigterm_mid_rotation")
        self.clock.advance(RESTART_STEP)
        rescuer = await self.replace(victim)
        await self.rescue(rescuer, target, since)

    async def shut_down(self, worker: Child) -> None:
        """Record what a worker shutting down still answers; kill it if it does not exit."""
        try:
            answers = await worker.last_words(SHUTDOWN_TIMEOUT)
        except TimeoutError:
            self.notes["shutdown_hung"] += 1
            await worker.kill()
            return
        for answer in answers:
            if "errors" in answer:
                self.record(answer)
        if worker.process.returncode != 0 or {"closed": True} not in answers:
            self.notes["shutdown_unclean"] += 1

    async def outage_after_commit(self, states: dict[str, ConnectionState]) -> None:
        """
        The provider rotates, then storing the new pair fails: while the
        fake sleeps before committing a rotation (a DELAY fault), the store
        goes away, so the worker receives the new pair with no store to
        write it to. The store comes back a few real seconds later, the
        clock standing still; the connection's next use comes 50 simulated
        seconds on, past the point where a journal may still be resumed:
        only the library's own work in between (storing the pair once it
        can, or settling the rotation) keeps the connection.
        """
        await self.let_rotations_land()
        target = self.rotation_target(states)
        if target is None:
            return
        worker = self.rng.choice(self.workers)
        applied = self.fake.counters.faults_applied
        self.inject(FaultKind.DELAY, delay=COMMIT_DELAY, label="store_outage_after_commit")
        await worker.send(self.use([target]))
        if not await self.until(lambda: self.fake.counters.faults_applied > applied):
            self.notes["outage_missed"] += 1
            self.clear_faults()
        else:
            taken = time.monotonic()
            await self.outage.cut()
            if time.monotonic() - taken < COMMIT_DELAY:
                self.chaos["store_outage_after_commit"] += 1
                self.done("store_outage_after_commit")
            else:
                self.notes["outage_late"] += 1  # the pair may have been stored first
            self.log.info("store outage after the commit for %s", target)
            await asyncio.sleep(self.outage.seconds)
            await self.outage.lift()
        answer = await self.read_answer(worker)
        if answer is not None:
            self.record(answer)
        await asyncio.sleep(AFTER_OUTAGE)
        self.clock.advance(NEXT_USE_STEP)
        await self.touch(self.rng.choice(self.workers), [target], per_connection=2)

    async def one_round(self, *, chaos: bool = True) -> None:
        started = time.monotonic()
        try:
            await self._one_round(chaos=chaos)
        finally:
            self.log.info("round %d took %.2f s", self.rounds, time.monotonic() - started)

    async def _one_round(self, *, chaos: bool) -> None:
        self.rounds += 1
        await self.let_rotations_land()
        self.step()
        since = self.clock.now()
        states = await self.states()
        if chaos:
            for kind in FAULT_KINDS:
                if kind.value in self.forced and self.rounds >= self.forced[kind.value]:
                    self.inject(kind)
                    self.done(kind.value)
            for _ in range(self.rng.choice((0, 0, 1, 1, 2, 3))):
                self.inject(self.rng.choice(FAULT_KINDS))
            if self.due("disconnect", self.mode.p_disconnect):
                await self.disconnect(states)
            if self.due("reconnect", self.mode.p_reconnect):
                await self.reconnect(states)
            states = await self.states()
        kill = None
        if chaos and self.due("sigkill", self.mode.p_kill):
            kill = self.rng.randrange(len(self.workers))
        outage = chaos and kill is None and self.due("store_outage", self.mode.p_outage)
        await self.ask_all(self.commands(states), kill, outage=outage)
        await self.after_round(since)
        if chaos and self.due("hold_after_commit_kill", self.mode.p_hold_kill):
            await self.hold_kill(await self.states())
        if chaos and self.due("sigterm_mid_rotation", self.mode.p_sigterm):
            await self.sigterm_mid_rotation(await self.states())
        if chaos and self.due("store_outage_after_commit", self.mode.p_outage_after_commit):
            await self.outage_after_commit(await self.states())
        if chaos and self.due("consumer_sigkill", self.mode.p_consumer_kill):
            await self.kill_consumer()
            self.done("consumer_sigkill")

    # -- the run -------------------------------------------------------------------------

    async def _run(self) -> dict[str, Any]:
        self.plan()
        await self.connect()
        self.workers = list(
            await asyncio.gather(*(self.spawn("worker") for _ in range(self.mode.processes)))
        )
        await self.start_consumer()
        self.applied_base = self.fake.counters.faults_applied
        self.phases["setup"] = time.monotonic() - self.started
        limit = self.mode.rounds if self.mode.rounds is not None else 10**7
        stopped_by_deadline = False
        for _ in range(limit):
            if time.monotonic() >= self.chaos_deadline:
                stopped_by_deadline = True
                break
            await self.one_round()
        # Catch up: finish the chaos every store must see, and let queued
        # faults be consumed, before the quiet phase clears the rest.
        for _ in range(CATCH_UP_ROUNDS):
            if (not self.forced and not self.queued) or time.monotonic() >= self.hard_deadline:
                break
            await self.one_round()
        self.phases["chaos"] = time.monotonic() - self.started - self.phases["setup"]
        await self.quiet()
        return await self.results(stopped_by_deadline)

    async def quiet(self) -> None:
        """
        No faults, healthy replicas: touch every connection twice. First a
        few seconds later (resuming any journal still in its grace window),
        then past access-token expiry, so every connection refreshes once
        more and every disconnect not yet noticed is. In orphan mode the
        first touch is left out: the library gets its real seconds to resume
        what is left, then the clock leaves every grace window behind.
        """
        self.clear_faults()
        self.fake.release_held()
        every = [c.id for c in self.conns]
        since = self.clock.now()
        if self.mode.orphans:
            await self.wait_for_resumer()
        else:
            self.clock.advance(SETTLE_STEP)
            await asyncio.gather(*(self.touch(w, every) for w in list(self.workers)))
            await self.settle(since)
        self.clock.advance(ACCESS_TTL + 1)
        since = self.clock.now()
        await asyncio.gather(*(self.touch(w, every, per_connection=2) for w in list(self.workers)))
        await self.after_round(since)

    def finding(self, conn: Conn, history: list[Any]) -> dict[str, Any]:
        """What to put in a bug report about one connection: the provider's word and its trail."""
        said = [
            f"{e['name']} ({e['data'].get('reason')}) at +{self.offset_of(e['created_at']):.0f} s"
            for e in self.fake.webhooks.sent
            if e.get("account_id") == conn.account
        ]
        return {
            "connection": conn.id,
            "external_id": f"c{self.conns.index(conn)}",
            "we_disconnected": conn.disconnects,
            "provider_said": said,
            "last_events": [
                f"{e.sequence} {e.trigger.value}: {e.source.value if e.source else '-'} -> "
                f"{e.dest.value} ({e.reason}) at +{e.at - EPOCH:.0f} s"
                for e in history[-8:]
            ],
        }

    @staticmethod
    def offset_of(iso: str) -> float:
        from datetime import datetime

        return datetime.fromisoformat(iso).timestamp() - EPOCH

    async def outbox(self) -> list[tuple[int, Any]]:
        rows: list[tuple[int, Any]] = []
        for _ in range(10**6):
            batch = await self.store.read_outbox(after=rows[-1][0] if rows else 0, limit=5000)
            if not batch:
                break
            rows.extend(batch)
        return rows

    async def results(self, stopped_by_deadline: bool) -> dict[str, Any]:
        records = await self.store.list_connections()
        history = {r.id: await self.store.read_events(r.id) for r in records}
        outbox = await self.outbox()
        expected = {(e.connection_id, e.sequence) for _, e in outbox}
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while time.monotonic() < deadline:
            if expected <= {(cid, seq) for _, cid, seq in self.seen}:
                break
            await asyncio.sleep(0.1)
        # Every child is gone before its files are scanned: nothing more gets written.
        await self._stop_children()
        seen_pairs = [(cid, seq) for _, cid, seq in self.seen]
        seen = set(seen_pairs)
        unseen = len(expected - seen)
        gaps = 0
        for record in records:
            sequences = {e.sequence for e in history[record.id]}
            gaps += len(set(range(1, record.sequence + 1)) - sequences)
        order_violations = 0
        last: dict[tuple[int, str], int] = {}
        for reading, cid, seq in self.seen:
            if seq <= last.get((reading, cid), 0):
                order_violations += 1
            last[(reading, cid)] = seq

        states = collections.Counter(r.state.value for r in records)
        by_id = {c.id: c for c in self.conns}
        revoked_unexpected = 0
        findings: list[dict[str, Any]] = []
        revocations = 0
        missed = 0
        for record in records:
            revokes = sum(e.dest is ConnectionState.REVOKED for e in history[record.id])
            revocations += revokes
            conn = by_id[record.id]
            revoked_unexpected += max(0, revokes - conn.disconnects)
            if revokes > conn.disconnects or record.state is ConnectionState.INVALIDATED:
                findings.append(self.finding(conn, history[record.id]))
            if conn.disconnected and record.state is not ConnectionState.REVOKED:
                missed += 1
        counters = self.fake.counters.as_dict()
        secret_index = SecretIndex(secrets_of(self.fake, self.spec))
        probe = min(self.fake.issued_secrets()).encode()
        if not secret_index.count(b"log line " + probe[:30] + b" tail"):
            msg = "the secret scan does not find a planted token fragment"
            raise SoakError(msg)
        leaks: dict[str, int] = {}
        discarded = 0
        children = [*self.workers, *self.retired]
        if self.consumer is not None:
            children.append(self.consumer)
        for child in children:
            log = child.log.read_bytes()
            found = secret_index.count(log) + secret_index.count(b"".join(child.lines))
            if found:
                leaks[child.log.name] = found
            discarded += log.count(DISCARDED)
        at_rest = secret_index.count((await stored_text(self.spec)).encode("latin-1", "replace"))
        self.index = secret_index
        # HOLD_AFTER_COMMIT, and the DELAY of store_outage_after_commit, are
        # parts of chaos counted under its own name.
        applied = self.faults_applied()
        faults = {kind.value: applied[kind.value] for kind in FAULT_KINDS}
        faults.update({name: self.chaos[name] for name in CHAOS})
        return {
            "rounds": self.rounds,
            "stopped_by_deadline": stopped_by_deadline,
            "connections": len(self.conns),
            "processes": len(self.workers),
            "simulated_hours": round((self.clock.now() - EPOCH) / 3600, 1),
            "faults": faults,
            "faults_injected": len(self.fault_log) + self.notes["faults_cleared_unapplied"],
            "reconnects": self.notes["reconnects"],
            "refreshes": counters["refreshes"],
            "grace_reissues": counters["grace_reissues"],
            "reuse_violations": counters["reuse_violations"],
            "rotations_discarded": discarded,
            "invalidated": states.get("invalidated", 0),
            "revoked_expected": self.chaos["disconnect"],
            "revoked_unexpected": revoked_unexpected,
            "revocations_seen": revocations,
            "revocations_missed": missed,
            "lost_events": unseen + gaps,
            "stuck_connections": states.get("refreshing", 0) + states.get("authorized", 0),
            "untyped_errors": sum(n for e, n in self.errors.items() if "unexpected:" in e),
            "secrets_in_logs": sum(leaks.values()),
            "secrets_in_logs_by_file": leaks,
            "secrets_at_rest": at_rest,
            "states": dict(sorted(states.items())),
            "findings": findings,
            "events": {
                "stored": len(outbox),
                "seen": len(seen),
                "unseen": unseen,
                "sequence_gaps": gaps,
                "duplicates": len(seen_pairs) - len(seen),
                "order_violations": order_violations,
                "consumer_runs": self.consumer_runs,
                "consumer_resumes": self.consumer_resumes,
            },
            "keepalive": dict(self.keepalive),
            "errors": dict(sorted(self.errors.items())),
            "notes": dict(sorted(self.notes.items())),
            "fake": counters,
            "seconds": round(time.monotonic() - self.started, 1),
            "seconds_by_phase": {
                **{k: round(v, 1) for k, v in self.phases.items()},
                "quiet_and_checks": round(
                    time.monotonic() - self.started - sum(self.phases.values()), 1
                ),
            },
        }


# --- the whole run --------------------------------------------------------------------------

SUMMED = (
    "refreshes",
    "grace_reissues",
    "reuse_violations",
    "rotations_discarded",
    "invalidated",
    "revoked_expected",
    "revoked_unexpected",
    "revocations_missed",
    "lost_events",
    "stuck_connections",
    "secrets_in_logs",
    "untyped_errors",
    "secrets_at_rest",
    "reconnects",
    "rounds",
)


async def soak(args: argparse.Namespace, mode: Mode, tmp: Path) -> dict[str, Any]:
    started = time.monotonic()
    # SIGTERM (a CI timeout, say) cancels the run, so every finally block
    # still kills the children and drops the PostgreSQL schema.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    share = mode.budget / len(kinds)
    stores: dict[str, Any] = {}
    indexes: list[SecretIndex] = []
    for kind in kinds:
        (tmp / kind).mkdir()
        run = StoreSoak(kind, mode, args.seed, tmp / kind, args.postgres, share)
        try:
            stores[kind] = await run.run()
            indexes.append(run.index)
        except Exception as exc:
            logging.getLogger("soak").exception("the %s soak failed", kind)
            stores[kind] = {"error": f"{type(exc).__name__}: {exc}"}
            if hasattr(run, "fake"):
                indexes.append(
                    SecretIndex(secrets_of(run.fake, getattr(run, "spec", {"keys": ""})))
                )
    report: dict[str, Any] = {
        "mode": mode.name,
        "orphans": mode.orphans,
        "seed": args.seed,
        "connections": mode.connections,
        "processes": mode.processes,
        "simulated_hours": round(sum(s.get("simulated_hours", 0) for s in stores.values()), 1),
    }
    faults: collections.Counter[str] = collections.Counter()
    for result in stores.values():
        faults.update(result.get("faults", {}))
    report["faults"] = dict(faults)
    for key in SUMMED:
        report[key] = sum(s.get(key, 0) for s in stores.values())
    report["errors"] = [f"{k}: {s['error']}" for k, s in stores.items() if "error" in s]
    report["stores"] = stores
    # The parent's own log and output are scanned too, against every store's secrets.
    for handler in logging.getLogger().handlers:
        handler.flush()
    parent_log = (tmp / "parent.log").read_bytes() if (tmp / "parent.log").exists() else b""
    draft = orjson.dumps(report)
    parent_leaks = sum(index.count(parent_log) + index.count(draft) for index in indexes)
    report["secrets_in_logs"] += parent_leaks
    report["secrets_in_parent_output"] = parent_leaks
    report["ok"] = not report["errors"] and all(report[key] == 0 for key in MUST_BE_ZERO)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"awx-connection chaos soak ({report['mode']}"
        f"{', orphan mode' if report['orphans'] else ''}, seed {report['seed']}): "
        f"{'OK' if report['ok'] else 'FAILED'} in {report['seconds']} s",
        f"  {report['connections']} connections x {report['processes']} processes per store, "
        f"{report['simulated_hours']} simulated hours, {report['rounds']} rounds, "
        f"{report['refreshes']} refreshes",
        "  faults: " + ", ".join(f"{k}={v}" for k, v in sorted(report["faults"].items())),
    ]
    lines += [f"  {key}: {report[key]}" for key in MUST_BE_ZERO]
    lines.append(
        f"  rotations_discarded (lease overlaps or disconnects): {report['rotations_discarded']}"
    )
    for kind, result in report["stores"].items():
        if "error" in result:
            lines.append(f"  {kind}: ERROR {result['error']}")
            continue
        lines.append(
            f"  {kind}: {result['rounds']} rounds, states {result['states']}, "
            f"events {result['events']}, errors {result['errors']}, notes {result['notes']}"
        )
    if report.get("logs"):
        lines.append(f"  logs kept in {report['logs']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny run for the test-suite (< 60 s)")
    size.add_argument("--quick", action="store_true", help="about 3 minutes (the default)")
    size.add_argument(
        "--hours", type=float, help="this many real hours of chaos, the stores' checks on top"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--orphans",
        action="store_true",
        help="never touch a connection left refreshing: only the library may resume it",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--postgres", default=POSTGRES_DSN, help="PostgreSQL DSN")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--rounds", type=int, help="rounds per store (default: by mode)")
    parser.add_argument("--keep-logs", action="store_true", help="keep logs even when OK")
    args = parser.parse_args(argv)
    if args.hours is not None and not args.hours > 0:
        parser.error("--hours must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = mode_for(args)
    tmp = Path(tempfile.mkdtemp(prefix="awx-soak-"))
    logging.basicConfig(
        filename=tmp / "parent.log",
        level=logging.DEBUG,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    try:
        report = asyncio.run(soak(args, mode, tmp))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"soak interrupted; logs kept in {tmp}", file=sys.stderr)
        return 2
    if not report["ok"] or args.keep_logs:
        report["logs"] = str(tmp)
    print(orjson.dumps(report).decode() if args.json else summary(report))
    if report.get("logs") is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
