"""
Workflow across processes: the partner's own systems react to lifecycle
events delivered through NATS JetStream, and survive a SIGKILL of either
process.

Three parts, two of them separate processes:

* **the partner's web app** (this script's main process): holds the
  connections (a :class:`ConnectionManager` on an SQLite store, against
  the embedded fake Airwallex) and receives Airwallex webhooks. It forwards
  the ``account.*`` ones to JetStream before answering 200, with the
  webhook's id as ``Nats-Msg-Id``: if the publish fails it answers 503 and
  Airwallex retries, so none is lost and none is stored twice;
* **the relay** (``awx-connection events relay --to nats://...``): the
  store's outbox to JetStream, one subject per event kind;
* **the partner's consumer** (``python workflow_relay.py partner ...``), a
  durable JetStream consumer with its own database, where each message's
  effect and its id are committed together before the ack: a redelivery
  after a crash finds the id and changes nothing.

The workflow: a customer connects -> the consumer starts onboarding -> the
``account.active`` webhook arrives -> the consumer enables the feature; the
customer disconnects in Airwallex -> the connection is revoked -> the
consumer sends the customer a reconnect link -> the customer follows it and
is connected again. On the way the consumer is SIGKILLed (and restarted)
while messages are waiting for it, and the relay is SIGKILLed before the
revocation (and restarted under a new owner, which takes its partitions
over once their lease runs out). ``--chaos SEED`` kills one or the other
at random moments throughout, too.

Needs the NATS server with JetStream (``AWX_NATS``, default
nats://127.0.0.1:4222):

    python examples/workflow_relay.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import nats
import orjson
from aiohttp import web

from awx_connection import Config, ConnectionManager, Endpoints, KeyRing
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex, ManualClock

NATS_URL = os.environ.get("AWX_NATS", "nats://127.0.0.1:4222")
REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"
WEBHOOK_SECRET = "whsec-example-airwallex-endpoint"
RECONNECT_PAGE = "https://partner.example/airwallex/reconnect"
HERE = Path(__file__).resolve()


# --- the partner's consumer (a process of its own) ----------------------------------------

PARTNER_SCHEMA = """
CREATE TABLE IF NOT EXISTS handled (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS customers (
    customer TEXT PRIMARY KEY,
    account_id TEXT,
    status TEXT NOT NULL,
    onboarding_started INTEGER NOT NULL DEFAULT 0,
    account_active INTEGER NOT NULL DEFAULT 0,
    feature_enabled INTEGER NOT NULL DEFAULT 0,
    connects INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS emails (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    link TEXT NOT NULL
);
"""


def apply(db: sqlite3.Connection, kind: str, data: dict[str, Any]) -> str | None:
    """The partner's reaction to one message; what it did, for the log."""
    if kind == "connection.exchanged":  # a customer connected (first time or again)
        customer, account = data["external_id"], data["account_id"]
        row = db.execute(
            "SELECT onboarding_started FROM customers WHERE customer = ?", (customer,)
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO customers (customer, account_id, status, onboarding_started, "
                "connects) VALUES (?, ?, 'connected', 1, 1)",
                (customer, account),
            )
            return f"onboarding started for {customer} ({account})"
        db.execute(
            "UPDATE customers SET status = 'connected', account_id = ?, connects = connects + 1 "
            "WHERE customer = ?",
            (account, customer),
        )
        return f"{customer} reconnected"
    if kind in {"connection.revoke", "connection.invalidate", "connection.expire"}:
        customer = data["external_id"]
        link = f"{RECONNECT_PAGE}?customer={customer}"
        db.execute("UPDATE customers SET status = 'disconnected' WHERE customer = ?", (customer,))
        db.execute("INSERT INTO emails (customer, link) VALUES (?, ?)", (customer, link))
        return f"reconnect link sent to {customer}: {link}"
    if kind == "account.active":  # the Airwallex webhook, forwarded by the app
        db.execute(
            "UPDATE customers SET account_active = 1 WHERE account_id = ?", (data["account_id"],)
        )
        enabled = db.execute(
            "UPDATE customers SET feature_enabled = 1 WHERE account_id = ? "
            "AND onboarding_started = 1 AND feature_enabled = 0 RETURNING customer",
            (data["account_id"],),
        ).fetchall()
        return f"feature enabled for {enabled[0][0]}" if enabled else None
    return None  # begin, code_received, refreshed...: nothing to do


async def partner(args: argparse.Namespace) -> None:
    """A durable pull consumer: effect and message id in one transaction, then the ack."""
    db = sqlite3.connect(args.state, isolation_level=None)
    db.executescript(PARTNER_SCHEMA)
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    from nats.js.api import AckPolicy, ConsumerConfig

    sub = await js.pull_subscribe(
        f"{args.prefix}.>",
        durable="partner",
        stream=args.stream,
        # A message whose ack a kill prevented comes back after a second.
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0),
    )
    print("partner consumer ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            messages = await sub.fetch(50, timeout=0.5)
        except TimeoutError:  # nothing new (nats-py raises asyncio's, or its own subclass)
            continue
        for msg in messages:
            body = orjson.loads(msg.data)
            message_id = msg.headers["Nats-Msg-Id"]
            kind = msg.subject.removeprefix(f"{args.prefix}.").removeprefix("airwallex.")
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM handled WHERE id = ?", (message_id,)).fetchone():
                db.execute("ROLLBACK")  # a redelivery: its effect is in already
                done = None
            else:
                done = apply(db, kind, body.get("data", body))
                db.execute("INSERT INTO handled (id) VALUES (?)", (message_id,))
                db.execute("COMMIT")
            await msg.ack()
            if done:
                print(done, flush=True)
    await nc.close()


# --- the partner's web app, and the two processes it starts ---------------------------------


class Process:
    """A child process that can be SIGKILLed and started again."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log = name, command, env, log
        self.process: asyncio.subprocess.Process | None = None
        self.kills = 0
        self._turn = asyncio.Lock()  # --chaos and the workflow both kill

    async def start(self, *extra: str) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.command, *extra, env=self.env, stdout=log, stderr=log
            )

    async def kill_and_restart(self, *extra: str) -> None:
        async with self._turn:
            assert self.process is not None
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
            self.kills += 1
            print(f"  [SIGKILL {self.name}, restarted]", flush=True)
            await self.start(*extra)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def wait_for(db_path: Path, query: str, what: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Poll the partner's database until *query* returns a row (another process writes it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.closing(sqlite3.connect(db_path)) as db,
            contextlib.suppress(sqlite3.OperationalError),  # its schema is not there yet
        ):
            if db.execute(query).fetchone():
                return
        await asyncio.sleep(0.05)
    msg = f"timed out waiting for: {what}"
    raise TimeoutError(msg)


async def forward_account_webhooks(
    manager: ConnectionManager, js: Any, prefix: str
) -> web.Application:
    """The app's Airwallex webhook endpoint: handled by the library, account.* forwarded."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        result = await manager.handle_webhook(request.headers, body)
        if result.status == 200:
            event = orjson.loads(body)
            if str(event.get("name", "")).startswith("account."):
                try:  # before answering: a failed publish is retried by Airwallex
                    await js.publish(
                        f"{prefix}.airwallex.{event['name']}",
                        orjson.dumps({"id": event["id"], "data": event}),
                        headers={"Nats-Msg-Id": event["id"]},
                    )
                except Exception:
                    return web.json_response({"error": "try again"}, status=503)
        return web.json_response({"result": result.detail}, status=result.status)

    app = web.Application()
    app.router.add_post("/airwallex/webhooks", handle)
    return app


async def main(args: argparse.Namespace) -> None:
    work = Path.cwd()
    token = secrets.token_hex(4)
    stream, prefix = f"AWX_WORKFLOW_{token}", f"awx_workflow_{token}"
    store_path, partner_db = work / "workflow-relay.db", work / "workflow-partner.db"
    for stale in (store_path, partner_db):
        stale.unlink(missing_ok=True)
    nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=0)
    js = nc.jetstream()
    # One stream for both kinds of message: connection events (the relay's
    # prefix.connection.*) and forwarded Airwallex webhooks (prefix.airwallex.*).
    await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
    clock = ManualClock()
    relay = partner_process = None
    try:
        async with FakeAirwallex(clock=clock, redirect_uris=[REDIRECT_URI]) as fake:
            config = Config(
                client_id=fake.client_id,
                client_secret=fake.client_secret,
                redirect_uri=REDIRECT_URI,
                endpoints=Endpoints.from_base_url(fake.base_url),
                default_scopes=("account_details:read",),
                webhook_secrets=(WEBHOOK_SECRET,),
            )
            store = SQLiteStore(store_path, keys=KeyRing.generate())
            async with ConnectionManager(config, store=store, clock=clock) as manager:
                runner = web.AppRunner(await forward_account_webhooks(manager, js, prefix))
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                fake.set_webhook(f"http://127.0.0.1:{port}/airwallex/webhooks", WEBHOOK_SECRET)

                env = dict(os.environ)  # the relay needs no encryption key
                relay = Process(
                    "relay",
                    [
                        sys.executable, "-m", "awx_connection", "events", "relay",
                        "--store", f"sqlite:///{store_path}", "--to", NATS_URL,
                        "--stream", stream, "--subject-prefix", f"{prefix}.connection",
                        "--lease-term", "1", "--poll-interval", "0.05",
                    ],
                    env,
                    work / "workflow-relay.log",
                )  # fmt: skip
                partner_process = Process(
                    "partner consumer",
                    [
                        sys.executable, str(HERE), "partner", "--state", str(partner_db),
                        "--nats", NATS_URL, "--stream", stream, "--prefix", prefix,
                    ],
                    env,
                    work / "workflow-partner.log",
                )  # fmt: skip
                await relay.start("--owner", "relay-1")
                await partner_process.start()
                chaos = (
                    asyncio.ensure_future(_chaos(args.chaos, relay, partner_process))
                    if args.chaos is not None
                    else None
                )

                print("1. customer-7 connects")
                request = await manager.begin_authorization(external_id="customer-7")
                connection = await manager.complete_authorization(fake.approve(request.url))
                account = connection.account_id
                await wait_for(
                    partner_db,
                    "SELECT 1 FROM customers WHERE customer = 'customer-7' "
                    "AND onboarding_started = 1",
                    "onboarding started",
                )
                print("   partner: onboarding started")

                print("2. Airwallex sends account.active (the partner consumer is killed first)")
                # The new process takes a second to start: the message waits in the stream.
                await partner_process.kill_and_restart()
                fake.send_webhook("account.active", account, {"status": "ACTIVE"})
                await fake.flush_webhooks()
                await wait_for(
                    partner_db,
                    "SELECT 1 FROM customers WHERE customer = 'customer-7' AND feature_enabled = 1",
                    "feature enabled",
                )
                print("   partner: feature enabled")

                print("3. customer-7 disconnects in Airwallex (the relay is killed first)")
                await relay.kill_and_restart("--owner", "relay-2")
                fake.disconnect(account or "")
                await fake.flush_webhooks()
                await wait_for(
                    partner_db,
                    "SELECT 1 FROM emails WHERE customer = 'customer-7'",
                    "reconnect link",
                )
                with contextlib.closing(sqlite3.connect(partner_db)) as db:
                    (link,) = db.execute("SELECT link FROM emails").fetchone()
                print(f"   partner: reconnect link sent: {link}")

                print("4. customer-7 follows the link: the app reauthorizes, the customer approves")
                again = await manager.reauthorize(connection.id)
                await manager.complete_authorization(fake.approve(again.url))
                await wait_for(
                    partner_db,
                    "SELECT 1 FROM customers WHERE customer = 'customer-7' AND connects = 2 "
                    "AND status = 'connected'",
                    "reconnected",
                )
                print("   partner: customer-7 connected again")
                if chaos is not None:
                    chaos.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await chaos
                await runner.cleanup()
    finally:
        for child in (relay, partner_process):
            if child is not None:
                await child.stop()
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()
    with contextlib.closing(sqlite3.connect(partner_db)) as db:
        row = db.execute(
            "SELECT status, onboarding_started, feature_enabled, connects FROM customers"
        ).fetchone()
        emails = db.execute("SELECT count(*) FROM emails").fetchone()[0]
    kills = relay.kills + partner_process.kills
    print(
        f"partner's view of customer-7: status={row[0]} onboarding_started={row[1]} "
        f"feature_enabled={row[2]} connects={row[3]} reconnect_emails={emails}; "
        f"SIGKILLs: {kills}"
    )


async def _chaos(seed: int, relay: Process, partner_process: Process) -> None:
    """Kill the relay or the consumer at random moments (and restart it)."""
    rng = random.Random(seed)
    generation = 2
    while True:
        # Longer than a process takes to start (about a second), so each gets some work done.
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        if rng.random() < 0.5:
            generation += 1
            await relay.kill_and_restart("--owner", f"relay-{generation}")
        else:
            await partner_process.kill_and_restart()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chaos", type=int, metavar="SEED", help="also kill at random moments")
    sub = parser.add_subparsers(dest="role")
    part = sub.add_parser("partner", help="run the partner's JetStream consumer")
    part.add_argument("--state", required=True)
    part.add_argument("--nats", required=True)
    part.add_argument("--stream", required=True)
    part.add_argument("--prefix", required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    asyncio.run(partner(arguments) if arguments.role == "partner" else main(arguments))
