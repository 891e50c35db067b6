"""
awx_connection.blocking: the real manager on its own loop thread, called
from plain threads, against the real fake Airwallex (on a loop thread of
its own, as a test of a Flask or Django app would run it).

These tests are synchronous on purpose: they are written as a WSGI app's
tests are, with no event loop in the test's thread.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from werkzeug.datastructures import MultiDict

from awx_connection import (
    BlockingCallError,
    CallbackError,
    CallTimeoutError,
    Config,
    ConfigurationError,
    Connection,
    ConnectionEvent,
    ConnectionNotFoundError,
    ConnectionRevokedError,
    ConnectionState,
    Endpoints,
    KeyRing,
    ManagerClosedError,
    StoreNotMigratedError,
    TimingPolicy,
    UnknownStateError,
)
from awx_connection.blocking import ApiResponse, BlockingManager, BlockingState, WebhookReply
from awx_connection.stores import MemoryStore, PostgresStore, SQLiteStore
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"
WEBHOOK_SECRET = "whsec_blocking_test"
LOOP_THREAD = "awx-connection-loop"

T = TypeVar("T")


class FakeThread:
    """The fake Airwallex served by an event loop on a thread of its own."""

    def __init__(self, clock: ManualClock) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-airwallex")
        self.thread.start()
        self.fake = FakeAirwallex(clock=clock, redirect_uris=[REDIRECT_URI])
        self.wait(self.fake.start())

    def wait(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def run(self, function: Callable[[], T]) -> T:
        """Run *function* on the fake's loop (its webhooks need a running loop)."""

        async def call() -> T:
            return function()

        result: T = self.wait(call())
        return result

    def close(self) -> None:
        self.wait(self.fake.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def served(clock: ManualClock) -> Iterator[FakeThread]:
    served = FakeThread(clock)
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def fake(served: FakeThread) -> FakeAirwallex:
    return served.fake


@pytest.fixture
def config(fake: FakeAirwallex) -> Config:
    return Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=REDIRECT_URI,
        endpoints=Endpoints.from_base_url(fake.base_url),
        timing=TimingPolicy(backoff_base=0.001, backoff_max=0.01, resume_delay=0.01),
        default_scopes=("account_details:read",),
        webhook_secrets=(WEBHOOK_SECRET,),
    )


@pytest.fixture
def awx(config: Config, clock: ManualClock) -> Iterator[BlockingManager]:
    # settle=False: tests that count token requests start every flight themselves.
    with BlockingManager(config, clock=clock, keepalive=False, settle=False) as awx:
        yield awx


def connect(awx: BlockingManager, fake: FakeAirwallex, tenant: str = "acme") -> Connection:
    """Begin, consent at the fake, complete: an active connection."""
    request = awx.begin_authorization(external_id=tenant)
    return awx.complete_authorization(fake.approve(request.url))


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


# -- the flow -------------------------------------------------------------------


def test_connect_token_and_api_call_from_a_plain_thread(
    awx: BlockingManager, fake: FakeAirwallex
) -> None:
    """The whole async API, called without an event loop: the real manager answers."""
    connection = connect(awx, fake)
    assert ConnectionState.ACTIVE == connection.state
    assert "acme" == connection.external_id
    assert connection == awx.get(connection.id)
    assert [connection.id] == [c.id for c in awx.connections(external_id="acme")]
    assert awx.access_token(connection.id)
    history = awx.history(connection.id)
    assert [1, ConnectionState.ACTIVE] == [history[0].sequence, history[-1].dest]

    response = awx.request(connection.id, "GET", "/api/v1/account/")

    assert isinstance(response, ApiResponse)
    assert 200 == response.status
    assert response.ok
    assert connection.account_id == response.json()["id"]
    assert response.json() == orjson.loads(response.text())
    assert response.headers["content-type"].startswith("application/json")
    assert 1 == awx.statistics().connections_cached


def test_a_flask_multidict_callback_keeps_a_repeated_parameter(
    awx: BlockingManager, fake: FakeAirwallex
) -> None:
    """request.args of Flask gives one value per key; the copy keeps both, so it is refused."""
    request = awx.begin_authorization()
    url = fake.approve(request.url)
    query = MultiDict(
        [(k, v) for part in url.split("?", 1)[1].split("&") for k, v in [part.split("=", 1)]]
    )
    query.add("code", "another")
    with pytest.raises(CallbackError):
        awx.complete_authorization(query)
    query.poplist("code")
    query.add("code", url.split("code=", 1)[1].split("&", 1)[0])
    assert ConnectionState.ACTIVE == awx.complete_authorization(query).state


def test_reauthorize_and_revoke(awx: BlockingManager, fake: FakeAirwallex) -> None:
    """revoke() ends the connection; reauthorize() gives it a new URL, same id."""
    connection = connect(awx, fake)
    assert ConnectionState.REVOKED == awx.revoke(connection.id).state
    request = awx.reauthorize(connection.id)
    assert connection.id == request.connection_id
    again = awx.complete_authorization(fake.approve(request.url))
    assert (connection.id, ConnectionState.ACTIVE) == (again.id, again.state)


# -- errors cross the thread with their type -------------------------------------


def test_errors_raised_on_the_loop_are_raised_here_with_their_type(
    awx: BlockingManager, fake: FakeAirwallex
) -> None:
    """The caller catches the library's own errors, as with the async API."""
    with pytest.raises(ConnectionNotFoundError) as caught:
        awx.get("conn_missing")
    assert "conn_missing" == caught.value.connection_id

    request = awx.begin_authorization()
    callback = fake.approve(request.url)
    forged = callback.replace("state=", "state=x")
    with pytest.raises(UnknownStateError):
        awx.complete_authorization(forged)

    connection = awx.complete_authorization(callback)
    awx.revoke(connection.id)
    with pytest.raises(ConnectionRevokedError) as revoked:
        awx.access_token(connection.id)
    assert ConnectionState.REVOKED == revoked.value.state
    with pytest.raises(ValueError, match="host"):
        awx.request(connection.id, "GET", "https://elsewhere.example/api/v1/account/")


def test_an_error_opening_the_store_is_raised_by_start(tmp_path: Path, config: Config) -> None:
    """A store that cannot open: start() raises its error, and no thread is left."""
    store = SQLiteStore(tmp_path / "missing.db", keys=KeyRing.generate(), create=False)
    awx = BlockingManager(config, store=store)
    with pytest.raises(StoreNotMigratedError):
        awx.start()
    assert BlockingState.CLOSED == awx.state
    assert not loop_threads()
    with pytest.raises(ManagerClosedError):
        awx.get("conn_x")


def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    asyncio.run(drop())


@pytest.mark.postgres
def test_durable_stores_live_on_the_loop_thread(
    tmp_path: Path, postgres_dsn: str, config: Config, fake: FakeAirwallex, clock: ManualClock
) -> None:
    """
    SQLite and PostgreSQL (asyncpg's pool belongs to the loop that opened it):
    a connection made by one blocking manager is used by a second one that
    shares the store, as another WSGI process would.
    """
    keys = KeyRing.generate()
    schema = "awx_test_" + secrets.token_hex(6)
    stores = {
        "sqlite": lambda: SQLiteStore(tmp_path / "awx.db", keys=keys),
        "postgres": lambda: PostgresStore(postgres_dsn, keys=keys, schema=schema),
    }
    try:
        for kind, make in stores.items():
            with BlockingManager(config, store=make(), clock=clock, keepalive=False) as first:
                connection = connect(first, fake, tenant=kind)
                token = first.access_token(connection.id)
                with BlockingManager(config, store=make(), clock=clock, keepalive=False) as second:
                    assert token == second.access_token(connection.id), kind
                    clock.advance(fake.access_token_ttl + 1)
                    assert token != second.access_token(connection.id), kind
                    assert ConnectionState.ACTIVE == first.refresh(connection.id).state, kind
    finally:
        drop_schema(postgres_dsn, schema)


# -- single flight across threads -------------------------------------------------


def test_fifty_threads_at_expiry_make_one_refresh(
    awx: BlockingManager, fake: FakeAirwallex, clock: ManualClock
) -> None:
    """WSGI threads asking at once for an expired token share one refresh POST."""
    connection = connect(awx, fake)
    first = awx.access_token(connection.id)
    requests_before = fake.counters.token_requests
    clock.advance(fake.access_token_ttl + 1)
    barrier = threading.Barrier(50)

    def ask() -> str:
        barrier.wait()
        return awx.access_token(connection.id)

    with ThreadPoolExecutor(50) as pool:
        tokens = list(pool.map(lambda _: ask(), range(50)))

    assert 1 == len(set(tokens))
    assert first not in tokens
    assert 1 == fake.counters.token_requests - requests_before
    assert 1 == fake.counters.refreshes


def test_tokens_read_from_threads_during_rotations_are_whole(
    awx: BlockingManager, fake: FakeAirwallex, clock: ManualClock
) -> None:
    """
    Readers on other threads take cached tokens without a hop while the
    loop rotates them: every token they get is one the fake issued and the
    newest or the one before it, never ``None`` or a mix.
    """
    connection = connect(awx, fake)
    stop = threading.Event()
    seen: list[str] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(awx.access_token(connection.id))

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    generations = [awx.access_token(connection.id)]
    for _ in range(20):
        awx.refresh(connection.id)
        generations.append(awx.access_token(connection.id))
    stop.set()
    for reader in readers:
        reader.join()

    assert seen
    assert set(seen) <= set(generations)
    assert set(generations) <= fake.issued_secrets()


# -- timeouts -------------------------------------------------------------------


def test_a_call_over_its_timeout_raises_and_the_refresh_goes_on(
    awx: BlockingManager, served: FakeThread, clock: ManualClock
) -> None:
    """
    A slow token endpoint (one real second): the caller gives up after its
    timeout with CallTimeoutError (a TimeoutError too); the shared refresh
    is not aborted, and the next call gets its tokens without a second POST.
    """
    fake = served.fake
    connection = connect(awx, fake)
    clock.advance(fake.access_token_ttl + 1)
    fake.inject(Fault(FaultKind.DELAY, delay=1.0))
    requests_before = fake.counters.token_requests

    started = time.monotonic()
    with pytest.raises(CallTimeoutError) as caught:
        awx.access_token(connection.id, timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert isinstance(caught.value, TimeoutError)

    token = awx.access_token(connection.id, timeout=math.inf)
    assert token
    assert 1 == fake.counters.token_requests - requests_before
    assert ConnectionState.ACTIVE == awx.get(connection.id).state


def test_a_bad_timeout_is_refused(config: Config) -> None:
    """Zero, negative or non-numbers: ConfigurationError, before anything starts."""
    for bad in (0, -1, "5", True):
        with pytest.raises(ConfigurationError, match="timeout"):
            BlockingManager(config, timeout=bad)  # type: ignore[arg-type]
    awx = BlockingManager(config, timeout=None)
    assert awx.timeout is None


# -- lifecycle --------------------------------------------------------------------


def test_calls_before_start_and_after_close_raise_manager_closed(config: Config) -> None:
    """Not started: say so. Closed: ManagerClosedError; close() twice joins the thread once."""
    awx = BlockingManager(config, keepalive=False)
    with pytest.raises(ManagerClosedError, match="not started"):
        awx.get("conn_x")
    assert awx is awx.start()
    assert awx is awx.start()  # idempotent
    thread = awx._portal.thread
    assert thread is not None
    assert thread.is_alive()
    assert LOOP_THREAD == thread.name
    assert BlockingState.RUNNING == awx.state

    awx.close()
    awx.close()

    assert not thread.is_alive()
    assert BlockingState.CLOSED == awx.state
    for call in (
        lambda: awx.get("conn_x"),
        lambda: awx.access_token("conn_x"),
        lambda: awx.begin_authorization(),
        lambda: awx.answer_webhook({}, b"{}"),
        lambda: awx.subscribe(print),
    ):
        with pytest.raises(ManagerClosedError):
            call()
    with pytest.raises(ManagerClosedError, match="make a new one"):
        awx.start()


def test_close_from_many_threads_at_once(config: Config) -> None:
    """Every concurrent close() returns once the thread has ended."""
    awx = BlockingManager(config, keepalive=False).start()
    thread = awx._portal.thread
    assert thread is not None
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: awx.close(), range(8)))
    assert not thread.is_alive()


def test_a_call_in_progress_at_close_gets_manager_closed(
    awx: BlockingManager, served: FakeThread, clock: ManualClock
) -> None:
    """A caller waiting on a held refresh when close() runs gets ManagerClosedError or its token."""
    fake = served.fake
    connection = connect(awx, fake)
    clock.advance(fake.access_token_ttl + 1)
    fake.inject(Fault(FaultKind.HOLD_AFTER_COMMIT))
    outcome: list[object] = []

    def ask() -> None:
        try:
            outcome.append(awx.access_token(connection.id, timeout=math.inf))
        except Exception as exc:
            outcome.append(exc)

    caller = threading.Thread(target=ask)
    caller.start()
    deadline = time.monotonic() + 10
    while fake.counters.held_responses == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    closer = threading.Thread(target=awx.close)
    closer.start()
    time.sleep(0.1)
    served.run(fake.release_held)  # close waits for a rotation that reached Airwallex
    closer.join(30)
    caller.join(30)
    assert not closer.is_alive()
    assert not caller.is_alive()
    assert 1 == len(outcome)
    assert isinstance(outcome[0], str | ManagerClosedError), outcome


def test_the_context_manager_closes_on_error(config: Config) -> None:
    """Leaving the with block by an exception still ends the thread."""
    with pytest.raises(RuntimeError, match="boom"), BlockingManager(config, keepalive=False):
        assert loop_threads()
        raise RuntimeError("boom")
    assert not loop_threads()


def test_a_forgotten_manager_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """The loop thread is a daemon: a script that never calls close() still exits."""
    script = tmp_path / "forgot.py"
    script.write_text(
        "from awx_connection import Config\n"
        "from awx_connection.blocking import BlockingManager\n"
        "config = Config(client_id='c', client_secret='s', redirect_uri='https://x.test/cb')\n"
        "awx = BlockingManager(config, keepalive=False).start()\n"
        "print(awx.connections())\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert 0 == result.returncode, result.stderr
    assert "[]" == result.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_is_told_to_start_its_own(tmp_path: Path) -> None:
    """After a fork (gunicorn --preload), the child's call raises BlockingCallError at once."""
    script = tmp_path / "fork.py"
    script.write_text(
        "import os, sys, warnings\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from awx_connection import BlockingCallError, Config\n"
        "from awx_connection.blocking import BlockingManager\n"
        "config = Config(client_id='c', client_secret='s', redirect_uri='https://x.test/cb')\n"
        "awx = BlockingManager(config, keepalive=False).start()\n"
        "late = BlockingManager(config, keepalive=False)  # made, not started\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    with late:  # started in the worker, as a post_fork hook would\n"
        "        print('child started its own:', late.connections(), flush=True)\n"
        "    try:\n"
        "        awx.connections()\n"
        "    except BlockingCallError as exc:\n"
        "        print('child:', exc, flush=True)\n"
        "    else:\n"
        "        os._exit(1)\n"
        # A normal exit: the inherited atexit close runs, and must stay quiet
        # (nothing of the parent's is here to close).
        "    sys.exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('parent:', awx.connections(), os.waitstatus_to_exitcode(status))\n"
        "awx.close()\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert 0 == result.returncode, result.stderr
    assert "before a fork" in result.stdout
    assert "start one in each worker process" in result.stdout
    assert "child started its own: []" in result.stdout
    assert "parent: [] 0" in result.stdout
    assert "" == result.stderr


# -- subscriptions ----------------------------------------------------------------


def test_subscribers_run_on_the_loop_thread_and_cannot_block_on_it(
    awx: BlockingManager, fake: FakeAirwallex
) -> None:
    """A sync callback sees each event on the loop thread; a blocking call from it is refused."""
    seen: list[tuple[str, str]] = []
    refused: list[BaseException] = []

    def on_event(event: ConnectionEvent) -> None:
        seen.append((event.dest.value, threading.current_thread().name))
        try:
            awx.get(event.connection_id)
        except BlockingCallError as exc:
            refused.append(exc)

    subscription = awx.subscribe(on_event, states=[ConnectionState.ACTIVE])
    assert subscription.active
    connection = connect(awx, fake)

    assert [("active", LOOP_THREAD)] == seen
    assert 1 == len(refused)
    assert "wait for itself" in str(refused[0])

    subscription.unsubscribe()
    subscription.unsubscribe()
    assert not subscription.active
    awx.revoke(connection.id)
    awx.complete_authorization(fake.approve(awx.reauthorize(connection.id).url))
    assert 1 == len(seen)


def test_webhook_subscribers_see_verified_events(
    awx: BlockingManager, fake: FakeAirwallex, clock: ManualClock
) -> None:
    """subscribe_webhooks: the callback gets the verified event, on the loop thread."""
    names: list[tuple[str, str]] = []
    with awx.subscribe_webhooks(
        lambda event: names.append((event.name, threading.current_thread().name)),
        names=["account.*"],
    ):
        reply = awx.answer_webhook(*signed(event("account.action_required", None, clock), clock))
        assert 200 == reply.status
    assert [("account.action_required", LOOP_THREAD)] == names


# -- webhooks -----------------------------------------------------------------------


def event(name: str, account_id: str | None, clock: ManualClock) -> bytes:
    return orjson.dumps(
        {
            "id": f"evt_{time.monotonic_ns()}",
            "name": name,
            "account_id": account_id,
            "data": {},
            "created_at": datetime.fromtimestamp(clock.now(), UTC).strftime(
                "%Y-%m-%dT%H:%M:%S+0000"
            ),
        }
    )


def signed(body: bytes, clock: ManualClock) -> tuple[dict[str, str], bytes]:
    timestamp = str(int(clock.now() * 1000))
    signature = hmac.new(
        WEBHOOK_SECRET.encode(), timestamp.encode() + body, hashlib.sha256
    ).hexdigest()
    return {"X-Timestamp": timestamp, "X-Signature": signature}, body


def test_answer_webhook_revokes_on_a_signed_disconnect(
    awx: BlockingManager, served: FakeThread, clock: ManualClock
) -> None:
    """(status, body) for a view: 200 and revoked; a duplicate 200; unsigned 401; huge 413."""
    fake = served.fake
    connection = connect(awx, fake)
    assert connection.account_id is not None
    clock.advance(1)
    served.run(lambda: fake.disconnect(connection.account_id or ""))
    headers, body = signed(event("connection.disconnected", connection.account_id, clock), clock)

    reply = awx.answer_webhook(headers, body)

    assert isinstance(reply, WebhookReply)
    status, payload = reply
    assert 200 == status
    assert "application/json" == reply.content_type
    assert "result" in orjson.loads(payload)
    assert ConnectionState.REVOKED == awx.get(connection.id).state

    again = awx.answer_webhook(headers, body)
    assert (200, True) == (again.status, orjson.loads(again.body)["duplicate"])
    assert 401 == awx.answer_webhook({}, body).status
    assert 401 == awx.handle_webhook({"x-timestamp": "1"}, body).status
    assert 413 == awx.answer_webhook(headers, b" " * (256 * 1024 + 1)).status


# -- no secret in reprs ---------------------------------------------------------------


def test_reprs_hold_no_secret(awx: BlockingManager, fake: FakeAirwallex) -> None:
    """The manager's, a response's and a subscription's reprs name no token or client secret."""
    connection = connect(awx, fake)
    token = awx.access_token(connection.id)
    response = awx.request(connection.id, "GET", "/api/v1/account/", params={"q": "private"})
    subscription = awx.subscribe(lambda _: None)
    texts = [repr(awx), repr(response), repr(subscription), repr(awx._portal), str(awx)]
    for text in texts:
        for secret in [*fake.issued_secrets(), token, "private", response.body.decode()]:
            assert secret not in text, text
    assert "running" in repr(awx)
    assert f"200, {len(response.body)} bytes" in repr(response)


def test_no_thread_or_loop_is_left_behind(config: Config) -> None:
    """Ten managers started and closed leave no loop thread and no unclosed loop behind."""
    for _ in range(10):
        with BlockingManager(config, keepalive=False) as awx:
            awx.connections()
    gc.collect()  # an unclosed loop would warn (an error here) when collected
    assert not loop_threads()


def test_a_manager_left_running_is_closed_at_exit(tmp_path: Path) -> None:
    """Django has no shutdown hook: at interpreter exit the manager closes itself."""
    script = tmp_path / "exit.py"
    script.write_text(
        "import atexit\n"
        "from awx_connection import Config\n"
        "from awx_connection.blocking import BlockingManager\n"
        "config = Config(client_id='c', client_secret='s', redirect_uri='https://x.test/cb')\n"
        "awx = BlockingManager(config, keepalive=False)\n"
        # Registered first, so run last (atexit is last in, first out).
        "def report():\n"
        "    print('at exit:', awx.state.value, awx._portal.thread.is_alive())\n"
        "atexit.register(report)\n"
        "awx.start()\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert 0 == result.returncode, result.stderr
    assert "at exit: closed False" == result.stdout.strip()


def test_call_runs_anything_the_facade_does_not_mirror(
    awx: BlockingManager, fake: FakeAirwallex
) -> None:
    """call(): an async function of the manager, on the loop thread; its result comes back."""
    connection = connect(awx, fake)

    async def names(manager: Any) -> tuple[str, int]:
        events = await manager.history(connection.id)
        return threading.current_thread().name, len(events)

    assert (LOOP_THREAD, len(awx.history(connection.id))) == awx.call(names)
    report = awx.keepalive_pass()
    assert report == awx.call(lambda manager: manager.keepalive_pass())
    assert 0 == awx.prune_events()
    assert 1 == awx.load()
    assert ConnectionState.ACTIVE == awx.refresh(connection.id).state


def test_response_text_follows_the_charset() -> None:
    """ApiResponse.text() decodes with the Content-Type's charset, UTF-8 by default."""
    from multidict import CIMultiDict, CIMultiDictProxy

    def response(content_type: str, body: bytes) -> ApiResponse:
        headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))
        return ApiResponse(
            method="GET",
            url="https://x.test/a?q=1",
            status=404,
            reason="Not Found",
            headers=headers,
            body=body,
        )

    assert "café" == response("text/plain", "café".encode()).text()
    assert "café" == response('text/plain; charset="latin-1"', "café".encode("latin-1")).text()
    assert not response("text/plain", b"").ok
    assert "<ApiResponse GET https://x.test/a 404, 0 bytes>" == repr(response("text/plain", b""))


class SlowStore(MemoryStore):
    """A store whose open() takes far longer than a start may wait."""

    async def open(self) -> None:
        await asyncio.sleep(30)


def test_a_start_over_its_timeout_raises_and_leaves_no_thread(config: Config) -> None:
    """start(timeout=...) bounds opening: CallTimeoutError, the opening cancelled, closed."""
    awx = BlockingManager(config, store=SlowStore(), keepalive=False)
    started = time.monotonic()
    with pytest.raises(CallTimeoutError, match="did not open"):
        awx.start(timeout=0.2)
    assert time.monotonic() - started < 10
    assert BlockingState.CLOSED == awx.state
    assert not loop_threads()
    with pytest.raises(ManagerClosedError):
        awx.start()


def test_embedded_authorization_from_a_plain_thread(
    awx: BlockingManager, fake: FakeAirwallex
) -> None:
    """The Airwallex.js code for embedded components, through the blocking façade."""
    connection = connect(awx, fake)
    authorization = awx.embedded_authorization(connection.id)
    assert authorization.auth_code.reveal()
    assert authorization.auth_code.reveal() not in repr(authorization)
    assert 1 == fake.counters.embedded_codes_issued
