"""
A chaos soak: many connections, several replicas, days of simulated time,
random faults, SIGKILLs and customer disconnects, on SQLite and PostgreSQL.

    python benchmarks/soak.py --quick --json      # ~3 minutes on 2 cores
    python benchmarks/soak.py --smoke --json      # < 1 minute (tests/test_soak.py)
    python benchmarks/soak.py --hours 4           # 4 hours of chaos (plus checks), readable summary

Why a soak on top of the unit and multi-process tests: those check one
hazard at a time. Production meets them together: a lost refresh response
while another replica waits on the lease, a replica killed mid-rotation
right after a 503, a customer disconnecting while keep-alive rotates. Each
combination is improbable; running thousands of rounds makes them happen.

Each store (SQLite, then PostgreSQL, half the time budget each) gets a
fresh world: one fake Airwallex in this process, one FileClock that only
this process advances, a store, ``--processes`` worker processes
(``soak_worker.py worker``) and one durable consumer process
(``soak_worker.py consumer``). Every round:

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
   stays inside the provider's grace window (60 s), as a restart would;
5. connections left ``refreshing`` by an exhausted retry are touched again
   a few simulated seconds later, as a live application would (never long
   enough to leave the grace window).

The consumer is SIGKILLed once mid-run and restarted. A final quiet phase
(no faults, healthy workers) touches every connection twice, then the
store, the fake's counters, the consumer's transcript and every log file
are checked. The RNG is seeded (``--seed``): the same seed makes the same
decisions; thread and process interleavings still differ between runs.

Output: one JSON object with ``--json`` (else a readable summary). Per
store settings (``connections``, ``processes``) are per store; counters at
the top level are totals over both stores; ``stores`` has the breakdown.
Exit status 0 only when reuse_violations, invalidated, revoked_unexpected,
lost_events, stuck_connections and secrets_in_logs are all 0.
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
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

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
CHAOS = ("sigkill", "hold_after_commit_kill", "disconnect", "consumer_sigkill")
#: The counters that must all be 0 for exit status 0.
MUST_BE_ZERO = (
    "reuse_violations",
    "invalidated",
    "revoked_unexpected",
    "lost_events",
    "stuck_connections",
    "secrets_in_logs",
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
        base = Mode(name="smoke", connections=6, processes=2, rounds=8, budget=50.0, reserve=12.0)
    else:
        base = Mode(
            name="quick", connections=40, processes=4, rounds=None, budget=170.0, reserve=25.0
        )
    return attrs.evolve(
        base,
        connections=args.connections or base.connections,
        processes=args.processes or base.processes,
        rounds=args.rounds if args.rounds is not None else base.rounds,
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
        self.consumer_task: asyncio.Task[None] | None = None
        self.retired: list[Child] = []
        #: (consumer run, connection id, sequence) in the order printed.
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
        for name in [kind.value for kind in FAULT_KINDS] + ["sigkill", "hold_after_commit_kill"]:
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
            ):
                # The fake announces every grant it kills (user disconnect or
                # token reuse) as a webhook; its sender keeps what it sent,
                # which tells an unexpected revocation's cause.
                self.fake.set_webhook(sink_url, WEBHOOK_SECRET)
                self.spec = spec
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
        return {
            "clock": str(self.clock_path),
            "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret,
            "redirect": REDIRECT,
            "base_url": self.fake.base_url,
            "store": self.spec,
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
        while line := await child.process.stdout.readline():
            child.lines.append(line)
            connection_id, sequence = orjson.loads(line)["e"]
            self.seen.append((run, connection_id, sequence))

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

    def inject(self, kind: FaultKind) -> None:
        """Queue one fault for the next refresh POST (faults are FIFO)."""
        delay, status = 0.0, 503
        if kind is FaultKind.DELAY:
            delay = round(self.rng.uniform(0.05, 0.8), 3)
        elif kind is FaultKind.SERVER_ERROR:
            # 503 says "not processed"; 502 and 504 may have been: both paths.
            status = self.rng.choice((503, 503, 502, 504))
        elif kind is FaultKind.HOLD_AFTER_COMMIT:
            delay = 30.0  # released by hand long before; bounds a harness bug
        self.fake.inject(Fault(kind, grant_type="refresh_token", delay=delay, status=status))
        self.log.info("fault queued: %s (status %s, delay %s)", kind.value, status, delay)
        self.fault_log.append(kind.value)

    def clear_faults(self) -> None:
        """Drop queued faults; only applied ones count."""
        self.fake.clear_faults()
        applied = self.applied
        self.notes["faults_cleared_unapplied"] += len(self.fault_log) - applied
        del self.fault_log[applied:]

    def faults_applied(self) -> collections.Counter[str]:
        return collections.Counter(self.fault_log[: self.applied])

    # -- one round -----------------------------------------------------------------------

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

    async def ask_all(self, commands: list[dict[str, Any]], kill: int | None) -> None:
        """
        Send every worker its command at once; with *kill*, SIGKILL that
        worker a random moment later, move time past its lease, and start
        its replacement while the others are still working.
        """
        workers = list(self.workers)
        for worker, command in zip(workers, commands, strict=True):
            await worker.send(command)
        if kill is not None:
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
            victim = workers[kill]
            await victim.kill()
            self.log.info("SIGKILL worker pid %s mid-round", victim.process.pid)
            self.chaos["sigkill"] += 1
            self.done("sigkill")
            self.clock.advance(RESTART_STEP)
            await self.replace(victim)
        for index, worker in enumerate(workers):
            if index == kill:
                continue
            answer = await self.read_answer(worker)
            if answer is not None:
                self.record(answer)

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

    async def hold_kill(self, states: dict[str, ConnectionState]) -> None:
        """
        Kill a replica while the fake holds a refresh response it has
        already committed: the new refresh token exists only at the
        provider. A fresh replica must resume the journal inside the grace
        window (a grace re-issue), never present an older token.
        """
        if self.queued:
            return  # the HOLD would land behind other faults, on another request
        candidates = [
            c.id
            for c in self.conns
            if not c.disconnected and states[c.id] is ConnectionState.ACTIVE
        ]
        if not candidates:
            return
        target = self.rng.choice(candidates)
        victim = self.rng.choice(self.workers)
        # Past expiry, so the victim's access_token() must rotate. (Not
        # refresh(): in a replica whose cached record is stale, refresh()
        # adopts the newer stored tokens and sends nothing.)
        self.clock.advance(self.rng.uniform(241.0, 300.0))
        held = self.fake.counters.held_responses
        self.inject(FaultKind.HOLD_AFTER_COMMIT)
        await victim.send(
            {"cmd": "round", "ids": [target], "per_connection": 2, "api": [], "keepalive": False}
        )
        for _ in range(500):  # up to 5 s real
            if self.fake.counters.held_responses > held:
                break
            await asyncio.sleep(0.01)
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
        await self.touch(rescuer, [target], per_connection=3)
        await self.settle(since)

    async def one_round(self, *, chaos: bool = True) -> None:
        started = time.monotonic()
        try:
            await self._one_round(chaos=chaos)
        finally:
            self.log.info("round %d took %.2f s", self.rounds, time.monotonic() - started)

    async def _one_round(self, *, chaos: bool) -> None:
        self.rounds += 1
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
        await self.ask_all(self.commands(states), kill)
        await self.settle(since)
        if chaos and self.due("hold_after_commit_kill", self.mode.p_hold_kill):
            await self.hold_kill(await self.states())
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
        more and every disconnect not yet noticed is.
        """
        self.clear_faults()
        self.fake.release_held()
        every = [c.id for c in self.conns]
        since = self.clock.now()
        self.clock.advance(SETTLE_STEP)
        await asyncio.gather(*(self.touch(w, every) for w in list(self.workers)))
        await self.settle(since)
        self.clock.advance(ACCESS_TTL + 1)
        since = self.clock.now()
        await asyncio.gather(*(self.touch(w, every, per_connection=2) for w in list(self.workers)))
        await self.settle(since)

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
        for run, cid, seq in self.seen:
            if seq <= last.get((run, cid), 0):
                order_violations += 1
            last[(run, cid)] = seq

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
        faults = {kind.value: 0 for kind in FAULT_KINDS}
        faults.update(self.faults_applied())
        faults.pop(FaultKind.HOLD_AFTER_COMMIT.value, None)
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
        f"awx-connection chaos soak ({report['mode']}, seed {report['seed']}): "
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
