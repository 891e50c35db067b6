"""
The day-two commands (``connections ...``, ``events tail``, ``authorize``),
run as users run them: through ``main()`` in a thread, or as a subprocess
when signals or a second process matter, against a real encrypted SQLite
file and a fake Airwallex started here.

The fake runs on the system clock, like the CLI: a subprocess cannot share
a ManualClock, and ``connections refresh`` rotates whatever the expiry, so
nothing here depends on time passing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
import pytest
import pytest_asyncio

from awx_connection import Config, ConnectionManager, ConnectionState, KeyRing
from awx_connection.cli import build_parser
from awx_connection.cli import main as cli_main
from awx_connection.stores import SQLiteStore
from awx_connection.testing import FakeAirwallex

S = ConnectionState
REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"
ROOT = Path(__file__).resolve().parents[2]
PROVIDER_VARIABLES = ("AWX_CLIENT_ID", "AWX_CLIENT_SECRET", "AWX_REDIRECT_URI", "AWX_BASE_URL")


@attrs.frozen
class Result:
    """What one CLI run printed and returned."""

    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return self.out.splitlines()

    def objects(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines()]


Cli = Callable[..., Awaitable[Result]]


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeAirwallex]:
    """A fake Airwallex on the system clock, the clock the CLI uses."""
    async with FakeAirwallex(redirect_uris=[REDIRECT_URI]) as provider:
        yield provider


@pytest_asyncio.fixture
async def store_path(fake: FakeAirwallex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """
    An encrypted SQLite store named by AWX_STORE, migrated (as `db migrate`
    would: no other command creates a store), and credentials for the fake,
    in the env.
    """
    path = tmp_path / "awx.db"
    migrated = SQLiteStore(path, keys=KeyRing.generate())
    await migrated.open()
    await migrated.aclose()
    monkeypatch.setenv("AWX_STORE", f"sqlite:///{path}")
    monkeypatch.setenv("AWX_ENCRYPTION_KEYS", f"k1:{KeyRing.new_key()}")
    monkeypatch.setenv("AWX_CLIENT_ID", fake.client_id)
    monkeypatch.setenv("AWX_CLIENT_SECRET", fake.client_secret)
    monkeypatch.setenv("AWX_REDIRECT_URI", REDIRECT_URI)
    monkeypatch.setenv("AWX_BASE_URL", fake.base_url)
    monkeypatch.setenv("AWX_SCOPES", "account_details:read")
    return path


@pytest.fixture
def cli(store_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``awx-connection ARGS`` through main() in a thread; return code and output."""

    async def run(*argv: str) -> Result:
        code = await asyncio.to_thread(cli_main, list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@asynccontextmanager
async def manager(store_path: Path) -> AsyncIterator[ConnectionManager]:
    """The application's own manager on the same store, to set up and check state."""
    store = SQLiteStore(store_path, keys=KeyRing.from_env())
    async with ConnectionManager(Config.from_env(), store=store) as awx:
        yield awx


async def connect(
    awx: ConnectionManager, fake: FakeAirwallex, external_id: str | None = None
) -> str:
    """Authorize one connection to a fresh account; return its id."""
    request = await awx.begin_authorization(external_id=external_id)
    callback = fake.approve(request.url, account_id=fake.create_account())
    connection = await awx.complete_authorization(callback)
    assert S.ACTIVE is connection.state
    return connection.id


async def seed(store_path: Path, fake: FakeAirwallex, *external_ids: str) -> list[str]:
    """Active connections for *external_ids*, created in this order."""
    async with manager(store_path) as awx:
        return [await connect(awx, fake, external_id) for external_id in external_ids]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def spawn(*argv: str) -> asyncio.subprocess.Process:
    """Start ``python -m awx_connection ARGS`` with this test's environment."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "awx_connection",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def read_objects(process: asyncio.subprocess.Process, count: int) -> list[dict[str, Any]]:
    """The next *count* JSON lines the process prints."""
    assert process.stdout is not None
    lines = [await asyncio.wait_for(process.stdout.readline(), 10) for _ in range(count)]
    return [orjson.loads(line) for line in lines]


def keys(objects: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(event["connection_id"], event["sequence"]) for event in objects]


# -- help -------------------------------------------------------------------------


async def test_help_names_every_day_two_command(cli: Cli) -> None:
    """`connections --help` and `events --help` list their subcommands; help exits 0."""
    result = await cli("connections", "--help")
    assert 0 == result.code
    for command in ("list", "show", "refresh", "disconnect", "reauthorize"):
        assert command in result.out
    result = await cli("events", "--help")
    assert 0 == result.code
    assert "tail" in result.out


async def test_reauthorize_help_warns_that_the_url_carries_state(cli: Cli) -> None:
    """`connections reauthorize --help` says the printed URL carries state, for the customer."""
    result = await cli("connections", "reauthorize", "--help")
    text = " ".join(result.out.split())
    assert "one command that prints a URL carrying the one-time OAuth 'state'" in text
    assert "hand it to the customer" in text


def leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every runnable command path of *parser* ("connections list", "diagram", ...)."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += leaf_commands(child, f"{prefix}{name} ")
    return found or [prefix.strip()]


def test_docs_show_every_command_and_exit_code() -> None:
    """docs/cli.md has an example of every command and the table of exit codes."""
    page = (ROOT / "docs" / "cli.md").read_text()
    commands = leaf_commands(build_parser())
    assert {"connections list", "events tail", "authorize"} <= set(commands)
    assert [] == [c for c in commands if f"awx-connection {c}" not in page]
    for code in (0, 1, 2, 3, 130, 141):
        assert f"\n| {code} | " in page


# -- connections list / show ------------------------------------------------------


async def test_list_prints_a_table_oldest_first(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """`connections list` prints a header and one row per connection, oldest first."""
    ids = await seed(store_path, fake, "cust-a", "cust-b")
    result = await cli("connections", "list")
    assert 0 == result.code, result.err
    header, *rows = result.lines()
    assert ["ID", "STATE", "ACCOUNT", "EXTERNAL", "ID", "GEN", "UPDATED", "REASON"] == (
        header.split()
    )
    assert ids == [row.split()[0] for row in rows]
    assert [["active", "cust-a"], ["active", "cust-b"]] == [
        [row.split()[1], row.split()[3]] for row in rows
    ]


async def test_list_json_and_filters(cli: Cli, store_path: Path, fake: FakeAirwallex) -> None:
    """--json prints one object per line; --state, --external-id, --account-id filter."""
    first, second, third = await seed(store_path, fake, "cust-a", "cust-b", "cust-c")
    async with manager(store_path) as awx:
        await awx.revoke(third)
        account = (await awx.get(second)).account_id
    assert account is not None

    everything = (await cli("connections", "list", "--json")).objects()
    assert [first, second, third] == [c["id"] for c in everything]
    assert ["active", "active", "revoked"] == [c["state"] for c in everything]
    assert [0, 0, 0] == [c["token_generation"] for c in everything]

    revoked = await cli("connections", "list", "--json", "--state", "revoked")
    assert [third] == [c["id"] for c in revoked.objects()]
    both = await cli("connections", "list", "--json", "--state", "revoked", "--state", "active")
    assert [first, second, third] == [c["id"] for c in both.objects()]
    by_external = await cli("connections", "list", "--json", "--external-id", "cust-b")
    assert [second] == [c["id"] for c in by_external.objects()]
    by_account = await cli("connections", "list", "--json", "--account-id", account)
    assert [second] == [c["id"] for c in by_account.objects()]

    none = await cli("connections", "list", "--state", "expired")
    assert (0, "") == (none.code, none.out)
    assert "no connections match" in none.err
    assert 2 == (await cli("connections", "list", "--state", "sleepy")).code


async def test_show_prints_one_connection(cli: Cli, store_path: Path, fake: FakeAirwallex) -> None:
    """`connections show ID` prints the snapshot as fields, or one JSON object."""
    (connection_id,) = await seed(store_path, fake, "cust-a")
    human = await cli("connections", "show", connection_id)
    assert 0 == human.code
    fields = dict(line.split(None, 1) for line in human.lines() if line.startswith(("id", "state")))
    assert {"id": connection_id, "state": "active"} == fields
    assert "external id       cust-a" in human.out
    (shown,) = (await cli("connections", "show", connection_id, "--json")).objects()
    assert (connection_id, "active", "cust-a", ["account_details:read"], 0) == (
        shown["id"],
        shown["state"],
        shown["external_id"],
        shown["scopes"],
        shown["token_generation"],
    )


async def test_reading_needs_no_credentials(
    cli: Cli, store_path: Path, fake: FakeAirwallex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """list, show, events tail and disconnect work without AWX_CLIENT_*; refresh exits 2."""
    (connection_id,) = await seed(store_path, fake, "cust-a")
    for name in PROVIDER_VARIABLES:
        monkeypatch.delenv(name)
    assert 0 == (await cli("connections", "list")).code
    assert 0 == (await cli("connections", "show", connection_id)).code
    assert 0 == (await cli("events", "tail", "--connection", connection_id)).code
    refresh = await cli("connections", "refresh", connection_id)
    assert 2 == refresh.code
    assert "missing environment variables: AWX_CLIENT_ID" in refresh.err
    assert 2 == (await cli("connections", "reauthorize", connection_id)).code
    disconnected = await cli("connections", "disconnect", connection_id, "--json")
    assert (0, "revoked") == (disconnected.code, disconnected.objects()[0]["state"])


@pytest.mark.parametrize(
    "argv",
    [
        ["connections", "show"],
        ["connections", "refresh"],
        ["connections", "disconnect"],
        ["connections", "reauthorize"],
        ["events", "tail", "--connection"],
    ],
    ids=lambda argv: " ".join(argv),
)
async def test_unknown_connection_exits_3(cli: Cli, argv: list[str]) -> None:
    """Every command given an unknown id exits 3 and names it."""
    result = await cli(*argv, "conn_nope")
    assert (3, "") == (result.code, result.out)
    assert "awx-connection: no connection 'conn_nope'\n" == result.err


async def test_an_argument_that_is_not_utf8_is_a_usage_error(cli: Cli, store_path: Path) -> None:
    """
    Bytes that are not UTF-8 reach argv as lone surrogates: ``connections
    list --external-id`` with one exits 2 with one line, the same on every
    store, instead of SQLite's UnicodeEncodeError traceback.
    """
    result = await cli("connections", "list", "--external-id", "cust-\udcff")
    assert (2, "") == (result.code, result.out)
    assert result.err.startswith("awx-connection: --external-id is not valid text")
    assert 1 == len(result.err.splitlines())


async def test_no_store_is_a_configuration_error(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --store or AWX_STORE, a reading command exits 2 and says why."""
    monkeypatch.delenv("AWX_STORE")
    result = await cli("connections", "list")
    assert 2 == result.code
    assert "no store: pass --store URL or set AWX_STORE" in result.err


@pytest.mark.slow
async def test_a_closed_stdout_ends_quietly(store_path: Path, fake: FakeAirwallex) -> None:
    """Output into a closed pipe (`| head`) exits 141 without a traceback."""
    await seed(store_path, fake, "cust-a")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "awx_connection",
            "events",
            "tail",
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), 10)
    assert (141, b"") == (process.returncode, err)


# -- connections refresh / disconnect / reauthorize -------------------------------


async def test_refresh_rotates_exactly_once(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """`connections refresh ID` rotates once: generation +1, one refresh at the fake."""
    (connection_id,) = await seed(store_path, fake, "cust-a")
    result = await cli("connections", "refresh", connection_id, "--json")
    assert 0 == result.code, result.err
    (refreshed,) = result.objects()
    assert ("active", 1) == (refreshed["state"], refreshed["token_generation"])
    assert 1 == fake.counters.refreshes
    human = await cli("connections", "refresh", connection_id)
    assert f"{connection_id}: active, token generation 1 -> 2, access token valid" in human.out
    assert (2, 0) == (fake.counters.refreshes, fake.counters.reuse_violations)


async def test_refresh_of_a_revoked_connection_exits_1(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """Refreshing a revoked connection fails with exit 1 and sends nothing."""
    (connection_id,) = await seed(store_path, fake, "cust-a")
    await cli("connections", "disconnect", connection_id)
    requests = fake.counters.token_requests
    result = await cli("connections", "refresh", connection_id)
    assert 1 == result.code
    assert f"connection {connection_id!r} is revoked" in result.err
    assert requests == fake.counters.token_requests


async def test_disconnect_revokes_with_the_reason(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """`connections disconnect ID --reason` stores revoked and the reason; twice is a no-op."""
    (connection_id,) = await seed(store_path, fake, "cust-a")
    result = await cli("connections", "disconnect", connection_id, "--reason", "customer asked")
    assert (0, f"{connection_id}: revoked (customer asked)\n") == (result.code, result.out)
    async with manager(store_path) as awx:
        connection = await awx.get(connection_id)
        last = (await awx.history(connection_id))[-1]
    assert (S.REVOKED, "customer asked") == (connection.state, connection.reason)
    assert (S.ACTIVE, S.REVOKED, "customer asked") == (last.source, last.dest, last.reason)
    again = await cli("connections", "disconnect", connection_id, "--reason", "again")
    assert (0, f"{connection_id}: already revoked (customer asked); nothing changed\n") == (
        again.code,
        again.out,
    )


async def test_reauthorize_prints_a_url_that_reconnects(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """`connections reauthorize ID` prints one working URL; the connection is pending."""
    (connection_id,) = await seed(store_path, fake, "cust-a")
    await cli("connections", "disconnect", connection_id)
    result = await cli("connections", "reauthorize", connection_id)
    assert 0 == result.code, result.err
    (url,) = result.lines()
    assert url.startswith(fake.authorize_url + "?")
    assert "state=" in url
    assert "sign_up" not in url
    assert "is pending again (was revoked)" in result.err
    async with manager(store_path) as awx:
        assert S.PENDING is (await awx.get(connection_id)).state
        reconnected = await awx.complete_authorization(fake.approve(url))
    assert (connection_id, S.ACTIVE) == (reconnected.id, reconnected.state)


async def test_reauthorize_json_and_sign_up(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """--sign-up asks for sign-up; --json adds the URL to the connection; active exits 1."""
    (connection_id,) = await seed(store_path, fake, "cust-a")
    active = await cli("connections", "reauthorize", connection_id)
    assert 1 == active.code
    assert "is not allowed in state 'active'" in active.err
    await cli("connections", "disconnect", connection_id)
    result = await cli("connections", "reauthorize", connection_id, "--sign-up", "--json")
    (shown,) = result.objects()
    assert (connection_id, "pending", None) == (
        shown["id"],
        shown["state"],
        shown["token_generation"],
    )
    assert "sign_up=true" in shown["authorize_url"]
    assert shown["authorize_url_expires_at"] > shown["updated_at"]


# -- events tail ------------------------------------------------------------------


async def test_events_tail_prints_the_history_in_order(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """`events tail` prints every stored event in commit order; --connection narrows it."""
    first, second = await seed(store_path, fake, "cust-a", "cust-b")
    expected = [(first, 1), (first, 2), (first, 3), (second, 1), (second, 2), (second, 3)]
    assert expected == keys((await cli("events", "tail", "--json")).objects())

    human = [line.split() for line in (await cli("events", "tail")).lines()]
    assert [(cid, f"#{seq}") for cid, seq in expected] == [(p[1], p[2]) for p in human]
    assert [("-", "pending"), ("pending", "authorized"), ("authorized", "active")] == [
        (p[3], p[5]) for p in human[:3]
    ]
    assert ["[begin]", "[code_received]", "[exchanged]"] == [p[6] for p in human[:3]]
    only = (await cli("events", "tail", "--json", "--connection", second)).objects()
    assert expected[3:] == keys(only)
    assert ["begin", "code_received", "exchanged"] == [e["trigger"] for e in only]


async def test_events_tail_consumer_resumes_where_it_left_off(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """With --consumer and no --follow, each run prints only what is new, then exits."""
    (first,) = await seed(store_path, fake, "cust-a")
    read = await cli("events", "tail", "--consumer", "crm", "--json")
    assert [(first, 1), (first, 2), (first, 3)] == keys(read.objects())
    assert (0, "") == ((again := await cli("events", "tail", "--consumer", "crm")).code, again.out)
    (second,) = await seed(store_path, fake, "cust-b")
    resumed = await cli("events", "tail", "--consumer", "crm", "--json")
    assert [(second, 1), (second, 2), (second, 3)] == keys(resumed.objects())
    both = await cli("events", "tail", "--consumer", "crm", "--connection", first)
    assert 2 == both.code  # a consumer's position is global: filtering would skip events


@pytest.mark.slow
async def test_events_follow_with_a_consumer_stops_on_sigterm(
    cli: Cli, store_path: Path, fake: FakeAirwallex
) -> None:
    """--follow --consumer prints events written meanwhile, exits 0 on SIGTERM, commits."""
    (first,) = await seed(store_path, fake, "cust-a")
    process = await spawn(
        "events", "tail", "--follow", "--consumer", "ops", "--json", "--poll-interval", "0.05"
    )
    try:
        assert [(first, 1), (first, 2), (first, 3)] == keys(await read_objects(process, 3))
        async with manager(store_path) as awx:
            await awx.revoke(first)
            second = await connect(awx, fake, "cust-b")
        written = await read_objects(process, 4)
        assert [(first, 4), (second, 1), (second, 2), (second, 3)] == keys(written)
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (0, b"") == (process.returncode, out), err
    after = await cli("events", "tail", "--consumer", "ops")
    assert (0, "") == (after.code, after.out)  # everything printed was committed


@pytest.mark.slow
async def test_events_follow_without_a_consumer_stops_on_sigint(
    store_path: Path, fake: FakeAirwallex
) -> None:
    """--follow alone prints the history, then new events, and exits 0 on SIGINT."""
    (first,) = await seed(store_path, fake, "cust-a")
    process = await spawn(
        "events", "tail", "--follow", "--json", "--connection", first, "--poll-interval", "0.05"
    )
    try:
        assert [(first, 1), (first, 2), (first, 3)] == keys(await read_objects(process, 3))
        async with manager(store_path) as awx:
            await connect(awx, fake, "someone-else")  # filtered out
            await awx.refresh(first)
        written = await read_objects(process, 2)
        assert [(first, 4, "refreshing"), (first, 5, "active")] == [
            (e["connection_id"], e["sequence"], e["dest"]) for e in written
        ]
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (0, b"") == (process.returncode, out), err


# -- authorize --------------------------------------------------------------------


@pytest.mark.slow
async def test_authorize_connects_through_its_callback_server(
    store_path: Path, fake: FakeAirwallex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`authorize --no-browser --port P` prints the URL, takes the redirect, stores active."""
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    fake.register_redirect_uri(redirect_uri)
    monkeypatch.setenv("AWX_REDIRECT_URI", redirect_uri)
    process = await spawn(
        "authorize", "--no-browser", "--port", str(port), "--external-id", "dev", "--json"
    )
    try:
        assert process.stderr is not None
        printed: list[str] = []
        while not printed or not printed[-1].startswith("http"):
            line = await asyncio.wait_for(process.stderr.readline(), 10)
            assert line, "authorize exited before printing the URL"
            printed.append(line.decode().strip())
        url = printed[-1]
        assert url.startswith(fake.authorize_url + "?")
        callback = fake.approve(url)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{redirect_uri}?state=forged&code=nope") as stray:
                assert 400 == stray.status  # not the redirect it waits for: keeps waiting
            async with http.get(callback) as response:
                assert 200 == response.status
                assert "Connected" in await response.text()
        out, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert 0 == process.returncode, err
    (printed_connection,) = [orjson.loads(line) for line in out.splitlines()]
    async with manager(store_path) as awx:
        (stored,) = await awx.connections()
    assert (printed_connection["id"], S.ACTIVE, "dev") == (
        stored.id,
        stored.state,
        stored.external_id,
    )
    assert "active" == printed_connection["state"]
    assert stored.account_id is not None
    everything = "\n".join([*printed, out.decode(), err.decode()])
    assert [] == [s for s in fake.issued_secrets() if s in everything]


async def test_authorize_exits_1_when_the_customer_declines(
    store_path: Path,
    fake: FakeAirwallex,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refusal redirect ends authorize with exit 1, the connection denied, the reason said."""
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    fake.register_redirect_uri(redirect_uri)
    monkeypatch.setenv("AWX_REDIRECT_URI", redirect_uri)
    running = asyncio.ensure_future(
        asyncio.to_thread(cli_main, ["authorize", "--no-browser", "--json"])
    )
    stderr = ""
    async with asyncio.timeout(10):
        while not (urls := [u for u in stderr.split() if u.startswith(fake.authorize_url)]):
            await asyncio.sleep(0.01)
            stderr += capsys.readouterr().err
    async with aiohttp.ClientSession() as http, http.get(fake.deny(urls[0])) as response:
        assert "Not connected: denied" in await response.text()
    code = await asyncio.wait_for(running, 10)
    out, err = capsys.readouterr()
    assert 1 == code
    assert "denied" == orjson.loads(out)["state"]
    assert "awx-connection: not connected: access_denied: The user denied the request" in err


async def test_authorize_rejects_a_redirect_uri_it_cannot_serve(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--port must be AWX_REDIRECT_URI's port, and the URI plain HTTP on loopback: else 2."""
    mismatch = await cli("authorize", "--no-browser", "--port", "9999")
    assert 2 == mismatch.code
    assert "--port 9999 does not match AWX_REDIRECT_URI" in mismatch.err
    monkeypatch.setenv("AWX_REDIRECT_URI", "https://partner.example/callback")
    remote = await cli("authorize", "--no-browser")
    assert 2 == remote.code
    assert "AWX_REDIRECT_URI must be http://127.0.0.1:PORT/PATH" in remote.err


async def test_authorize_gives_up_after_the_timeout(
    cli: Cli, store_path: Path, fake: FakeAirwallex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a redirect, authorize exits 1 after --timeout; the connection stays pending."""
    port = free_port()
    monkeypatch.setenv("AWX_REDIRECT_URI", f"http://127.0.0.1:{port}/callback")
    result = await cli("authorize", "--no-browser", "--timeout", "0.2")
    assert (1, "") == (result.code, result.out)
    assert "no redirect arrived within 0.2 s" in result.err
    async with manager(store_path) as awx:
        assert [S.PENDING] == [c.state for c in await awx.connections()]


# -- secrets ----------------------------------------------------------------------


async def test_no_output_contains_a_secret(cli: Cli, store_path: Path, fake: FakeAirwallex) -> None:
    """No command, human or --json, prints a token, a code or the client secret."""
    outputs: list[str] = []
    for json in ([], ["--json"]):
        first, second = await seed(store_path, fake, "cust-a", "cust-b")
        for argv in (
            ["connections", "list"],
            ["connections", "show", first],
            ["connections", "refresh", first],
            ["connections", "disconnect", second],
            ["connections", "reauthorize", second],
            ["connections", "disconnect", first],
            ["connections", "refresh", first],  # fails: revoked
            ["events", "tail"],
            ["events", "tail", "--connection", first],
            ["events", "tail", "--consumer", "audit"],
        ):
            result = await cli(*argv, *json)
            outputs += [result.out, result.err]
    assert 2 == fake.counters.refreshes
    encryption_key = os.environ["AWX_ENCRYPTION_KEYS"].split(":", 1)[1]
    secrets = fake.issued_secrets() | {fake.client_secret, encryption_key}
    everything = "\n".join(outputs)
    assert [] == [secret for secret in secrets if secret in everything]
