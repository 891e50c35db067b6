"""
"A CLI without surprises": each behaviour of that list, run as users run
the command (a subprocess, its exit code, stdout and stderr) against real
SQLite files and the real PostgreSQL server.

* Commands other than ``db migrate`` never create a store.
* ``connections list`` exits 1 and says how many rows it left out.
* ``fake-server`` errors are one line; it prints the client secret it accepts.
* Errors name flags and environment variables, not Python parameters.
* ``--version``, ``--json`` on every command (that every command has the
  option: tests/system/test_cli.py), ``--state`` in any case, an already revoked
  connection's disconnect is a no-op, ``keys rotate`` names the key to keep.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import attrs
import orjson
import pytest
import pytest_asyncio

from awx_connection import (
    ConnectionEvent,
    ConnectionRecord,
    ConnectionState,
    KeyRing,
    Secret,
    TokenSet,
    Trigger,
)
from awx_connection.stores import open_store
from awx_connection.stores._sqlite import MIGRATIONS

AWX = (sys.executable, "-m", "awx_connection")


@attrs.frozen
class Result:
    """What one run printed and returned."""

    code: int
    out: str
    err: str

    def objects(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.out.splitlines()]


async def awx(*argv: str, **environment: str) -> Result:
    """Run ``awx-connection ARGV`` with no AWX_* variable but *environment*."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWX_")}
    process = await asyncio.create_subprocess_exec(
        *AWX,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "PYTHONUNBUFFERED": "1", **environment},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def one_line(result: Result) -> str:
    """The one line of stderr, asserted to be one."""
    assert 1 == len(result.err.splitlines()), result.err
    return result.err


@pytest.fixture
def keys() -> dict[str, str]:
    """AWX_ENCRYPTION_KEYS with one fresh key."""
    return {"AWX_ENCRYPTION_KEYS": f"k1:{KeyRing.new_key()}"}


@pytest_asyncio.fixture
async def pg_url(postgres_dsn: str) -> AsyncIterator[str]:
    """
    The URL of a fresh, empty database (the CLI always uses the schema
    ``awx_connection``, so each test gets a database of its own), with a
    password that trust authentication ignores and no message may show.
    """
    name = "awx_cli_" + secrets.token_hex(6)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = postgres_dsn.rpartition("/")
        yield f"{base}/{name}".replace("postgres@", "postgres:hunter2@", 1)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def pg_schemas(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT nspname FROM pg_namespace")
    finally:
        await connection.close()
    return {row["nspname"] for row in rows}


# -- only db migrate creates a store ----------------------------------------------

#: Every command that opens a store, with what it needs besides the store.
STORE_COMMANDS = [
    ["connections", "list"],
    ["connections", "list", "--json"],
    ["connections", "show", "conn_x"],
    ["events", "tail"],
    ["events", "tail", "--consumer", "audit"],
    ["connections", "disconnect", "conn_x"],
    ["keys", "rotate"],
    ["keys", "seal"],
]


async def test_no_command_but_db_migrate_creates_a_sqlite_file(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    """
    `connections list --store sqlite:///typo.db` (and every other command but
    `db migrate`) exits 2 with one line naming the path and `db migrate`,
    and no file appears; `db migrate` creates it, then `list` works.
    """
    path = tmp_path / "typo.db"
    store = ["--store", f"sqlite:///{path}"]
    for argv in STORE_COMMANDS:
        result = await awx(*argv, *store, **keys)
        assert (2, "") == (result.code, result.out), (argv, result.err)
        line = one_line(result)
        assert str(path) in line
        assert "'awx-connection db migrate'" in line
    assert [] == files(tmp_path)
    assert 0 == (await awx("db", "migrate", *store)).code
    listed = await awx("connections", "list", *store, **keys)
    assert (0, "", "no connections match\n") == (listed.code, listed.out, listed.err)


async def test_an_older_sqlite_schema_is_not_migrated_behind_the_operators_back(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    """A file one migration behind: `list` exits 2 saying to migrate, and leaves it behind."""
    path = tmp_path / "awx.db"
    store = ["--store", f"sqlite:///{path}"]
    assert 0 == (await awx("db", "migrate", *store)).code
    with sqlite3.connect(path) as db:
        db.execute("UPDATE awx_schema SET version = ?", (len(MIGRATIONS) - 1,))
    result = await awx("connections", "list", *store, **keys)
    assert 2 == result.code
    assert "older than this library's" in one_line(result)
    assert "'awx-connection db migrate'" in result.err
    with sqlite3.connect(path) as db:
        assert (len(MIGRATIONS) - 1,) == db.execute("SELECT version FROM awx_schema").fetchone()


@pytest.mark.postgres
async def test_no_command_but_db_migrate_creates_a_postgres_schema(
    pg_url: str, keys: dict[str, str]
) -> None:
    """
    On an empty database, reading commands exit 2 naming the schema and `db
    migrate` (never the password) and create no schema; `db migrate` does.
    """
    for argv in STORE_COMMANDS:
        result = await awx(*argv, "--store", pg_url, **keys)
        assert (2, "") == (result.code, result.out), (argv, result.err)
        line = one_line(result)
        assert "schema 'awx_connection' does not exist" in line
        assert "'awx-connection db migrate'" in line
        assert "hunter2" not in line
    assert "awx_connection" not in await pg_schemas(pg_url)
    assert 0 == (await awx("db", "migrate", "--store", pg_url)).code
    assert "awx_connection" in await pg_schemas(pg_url)
    assert 0 == (await awx("connections", "list", "--store", pg_url, **keys)).code


# -- list says what it left out ---------------------------------------------------


# Sync: getfixturevalue() of the async pg_url cannot run inside an async fixture.
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store's URL, not yet migrated: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'awx.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def seed(url: str, spec: str | None, *connections: tuple[str, float]) -> None:
    """
    Active connections ``(id, created_at)``, external id ``ext-<id>``, account
    ``acct-<id>``, sealed with *spec* (``None``: in plaintext), in the store
    at *url* (migrated first).
    """
    keys = None if spec is None else KeyRing.parse(spec)
    store = open_store(url, keys=keys, allow_plaintext=keys is None)
    await store.open()
    try:
        for connection_id, created_at in connections:
            record = ConnectionRecord(
                id=connection_id,
                state=ConnectionState.ACTIVE,
                version=1,
                sequence=1,
                created_at=created_at,
                updated_at=created_at,
                reason="tokens received",
                scopes=("account_details:read",),
                external_id=f"ext-{connection_id}",
                account_id=f"acct-{connection_id}",
                tokens=TokenSet(
                    access_token=Secret(f"access-{connection_id}"),
                    refresh_token=Secret(f"refresh-{connection_id}"),
                    access_expires_at=created_at + 300,
                    refresh_expires_at=created_at + 86400,
                    issued_at=created_at,
                    generation=0,
                ),
            )
            event = ConnectionEvent(
                connection_id=connection_id,
                sequence=1,
                trigger=Trigger.BEGIN,
                source=None,
                dest=ConnectionState.ACTIVE,
                reason="seeded",
                at=created_at,
            )
            await store.insert(record, event)
    finally:
        await store.aclose()


async def test_list_exits_1_and_says_how_many_rows_a_wrong_key_left_out(store_url: str) -> None:
    """
    Rows sealed with a key AWX_ENCRYPTION_KEYS lacks: `list` (human and
    --json) prints the readable rows, then one stderr line counting and
    naming the others, and exits 1; it used to exit 0 with fewer rows.
    """
    lost, kept = f"lost:{KeyRing.new_key()}", f"kept:{KeyRing.new_key()}"
    await seed(store_url, lost, ("x1", 1.0), ("x2", 3.0))
    await seed(store_url, kept, ("a", 2.0), ("b", 4.0), ("c", 5.0))
    env = {"AWX_ENCRYPTION_KEYS": kept}
    listed = await awx("connections", "list", "--json", "--store", store_url, **env)
    assert 1 == listed.code
    assert ["a", "b", "c"] == [c["id"] for c in listed.objects()]
    line = one_line(listed)
    assert line.startswith("awx-connection: 2 connection(s) could not be read and are not shown")
    assert "AWX_ENCRYPTION_KEYS" in line
    assert "'x1', 'x2'; shown: 3" in line
    human = await awx("connections", "list", "--store", store_url, **env)
    assert (1, line) == (human.code, human.err)
    assert 4 == len(human.out.splitlines())  # header and three rows


async def test_list_counts_only_the_unreadable_rows_its_filters_match(store_url: str) -> None:
    """
    --external-id of an unreadable row: exit 1, shown 0 (never "no
    connections match"); of a readable row: exit 0, whatever else is unreadable.
    """
    lost, kept = f"lost:{KeyRing.new_key()}", f"kept:{KeyRing.new_key()}"
    await seed(store_url, lost, ("x1", 1.0))
    await seed(store_url, kept, ("a", 2.0))
    env = {"AWX_ENCRYPTION_KEYS": kept}
    hidden = await awx(
        "connections", "list", "--external-id", "ext-x1", "--store", store_url, **env
    )
    assert (1, "") == (hidden.code, hidden.out)
    assert "1 connection(s) could not be read" in one_line(hidden)
    assert "shown: 0" in hidden.err
    found = await awx(
        "connections", "list", "--json", "--account-id", "acct-a", "--store", store_url, **env
    )
    assert (0, "") == (found.code, found.err)
    assert ["a"] == [c["id"] for c in found.objects()]


async def test_list_without_keys_exits_1_rather_than_showing_nothing(store_url: str) -> None:
    """AWX_ALLOW_PLAINTEXT=1 and no keys on an encrypted store: every row counted, exit 1."""
    await seed(store_url, f"k1:{KeyRing.new_key()}", ("a", 1.0), ("b", 2.0))
    listed = await awx("connections", "list", "--store", store_url, AWX_ALLOW_PLAINTEXT="1")
    assert (1, "") == (listed.code, listed.out)
    assert "2 connection(s) could not be read" in one_line(listed)
    assert "shown: 0" in listed.err


# -- fake-server --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "70000"], "--port must be a TCP port, 0 to 65535"),
        (["--port", "-1"], "--port must be a TCP port, 0 to 65535"),
        (["--port", "http"], "--port must be a TCP port, 0 to 65535"),
        (["--redirect-uri", "notaurl"], "--redirect-uri: redirect URI must be an absolute"),
        (["--redirect-uri", "http://127.0.0.1/cb#x"], "--redirect-uri: redirect URI must not"),
    ],
    ids=["port-too-big", "port-negative", "port-not-a-number", "uri-relative", "uri-fragment"],
)
async def test_fake_server_refuses_a_bad_option_in_one_line(argv: list[str], expected: str) -> None:
    """A bad --port or --redirect-uri: exit 2 and one line (they were tracebacks)."""
    result = await awx("fake-server", *argv)
    assert (2, "") == (result.code, result.out)
    assert one_line(result).startswith(f"awx-connection: {expected}")


async def test_fake_server_on_a_port_in_use_says_so_in_one_line() -> None:
    """A port another socket listens on: exit 1, one line naming it (it was a traceback)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await awx("fake-server", "--port", str(port))
    assert (1, "") == (result.code, result.out)
    assert one_line(result) == (
        f"awx-connection: cannot listen on 127.0.0.1:{port}: address already in use; "
        "--port 0 picks a free one\n"
    )


async def test_fake_server_prints_the_client_secret_it_accepts() -> None:
    """
    The fake prints its client id and secret (test credentials, said so), as
    text or one JSON object, and its token endpoint accepts exactly them.
    """
    for json in ([], ["--json"]):
        process = await asyncio.create_subprocess_exec(
            *AWX,
            "fake-server",
            "--port",
            "0",
            "--client-secret",
            "s3cret-for-tests",
            *json,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            first = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
            if json:
                shown = orjson.loads(first)
                token_url, secret = shown["token_url"], shown["client_secret"]
                assert "fake-client-id" == shown["client_id"]
            else:
                second = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
                assert "client_secret=s3cret-for-tests" in second
                assert "the fake's test credentials" in second
                base_url = first.split()[-1]
                token_url, secret = f"{base_url}/oauth/token", "s3cret-for-tests"
            assert "s3cret-for-tests" == secret
            async with aiohttp.ClientSession() as http:
                for tried, status in ((secret, 400), ("wrong", 401)):
                    body = {
                        "grant_type": "authorization_code",
                        "code": "nope",
                        "client_id": "fake-client-id",
                        "client_secret": tried,
                    }
                    async with http.post(token_url, json=body) as response:
                        assert status == response.status  # 400: accepted, the code is not
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 15)
        assert 0 == process.returncode


# -- errors name flags and variables ------------------------------------------------

#: What a Python caller would read, and a CLI user must not.
PYTHON_NAMES = (
    "=True",
    "=None",
    "Config.",
    "KeyRing",
    "scopes=",
    "keys=",
    "rotate_keys",
    "allow_insecure",
    "allow_plaintext",
    "default_scopes",
    "external_id",
    "redirect_uri",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def provider(tmp_path: Path, keys: dict[str, str]) -> dict[str, str]:
    """A migrated SQLite store, keys, and client settings that reach nothing."""
    path = tmp_path / "awx.db"
    with sqlite3.connect(path):
        pass  # db migrate below fills it
    return {
        "AWX_STORE": f"sqlite:///{path}",
        **keys,
        "AWX_CLIENT_ID": "cli-test",
        "AWX_CLIENT_SECRET": "cli-test-secret",
        "AWX_REDIRECT_URI": f"http://127.0.0.1:{free_port()}/callback",
        "AWX_BASE_URL": "http://127.0.0.1:9",
    }


def cli_words(result: Result, *expected: str) -> None:
    """Exit 2 or 1, one line holding every *expected* text and no Python name."""
    line = one_line(result)
    for text in expected:
        assert text in line
    assert [] == [name for name in PYTHON_NAMES if name in line], line


async def test_errors_about_settings_name_the_flag_or_variable(provider: dict[str, str]) -> None:
    """
    No scopes, an invalid scope, an http:// AWX_BASE_URL, a malformed
    AWX_REDIRECT_URI or AWX_ENCRYPTION_KEYS, text that is not UTF-8: each
    is exit 2 with one line naming --scope, AWX_SCOPES, AWX_BASE_URL, ...,
    never Config.default_scopes, scopes= or allow_insecure=True.
    """
    assert 0 == (await awx("db", "migrate", **provider)).code
    authorize = ["authorize", "--no-browser", "--timeout", "5"]
    no_scopes = await awx(*authorize, **provider)
    assert 2 == no_scopes.code
    cli_words(no_scopes, "no scopes: pass --scope SCOPE or set AWX_SCOPES")
    bad_scope = await awx(*authorize, "--scope", "a b", **provider)
    assert 2 == bad_scope.code
    cli_words(bad_scope, "--scope: invalid scope 'a b'")
    insecure = await awx(
        "connections",
        "refresh",
        "conn_x",
        **provider | {"AWX_BASE_URL": "http://airwallex.example"},
    )
    assert 2 == insecure.code
    cli_words(insecure, "AWX_BASE_URL: authorize URL", "Use HTTPS or a loopback address.")
    redirect = await awx(
        "connections", "refresh", "conn_x", **provider | {"AWX_REDIRECT_URI": "callback"}
    )
    assert 2 == redirect.code
    cli_words(redirect, "AWX_REDIRECT_URI must be an absolute http(s) URL")
    for spec in ("no-colon", "k1:not base64!"):
        keys = await awx("connections", "list", **provider | {"AWX_ENCRYPTION_KEYS": spec})
        assert 2 == keys.code
        cli_words(keys, "awx-connection: AWX_ENCRYPTION_KEYS: ")
    text = await awx("connections", "list", "--external-id", "cust-\udcff", **provider)
    assert 2 == text.code
    cli_words(text, "awx-connection: --external-id is not valid text")


async def test_errors_about_keys_name_the_variables_and_commands(tmp_path: Path) -> None:
    """
    No keys for a durable store: AWX_ENCRYPTION_KEYS and AWX_ALLOW_PLAINTEXT=1,
    not keys=KeyRing.from_env() or allow_plaintext=True; a plaintext row
    that `keys rotate` cannot read: 'awx-connection keys seal', not
    rotate_keys(seal_plaintext=True).
    """
    url = f"sqlite:///{tmp_path / 'awx.db'}"
    no_keys = await awx("connections", "list", "--store", url)
    assert 2 == no_keys.code
    cli_words(
        no_keys, "set AWX_ENCRYPTION_KEYS", "'awx-connection keys new'", "AWX_ALLOW_PLAINTEXT=1"
    )
    await seed(url, None, ("plain", 1.0))
    rotate = await awx(
        "keys", "rotate", "--store", url, AWX_ENCRYPTION_KEYS=f"k1:{KeyRing.new_key()}"
    )
    assert 1 == rotate.code
    starting, error = rotate.err.splitlines()  # the key it writes with, then the error
    assert starting.startswith("re-encrypting every stored secret with key 'k1'")
    cli_words(
        attrs.evolve(rotate, err=error), "could not read 1", "only 'awx-connection keys seal'"
    )


# -- --version, --json, --state, disconnect, keys rotate ------------------------------


async def test_version_prints_the_installed_version() -> None:
    """`awx-connection --version` prints the package version and exits 0."""
    result = await awx("--version")
    assert (0, f"awx-connection {version('awx-connection')}\n", "") == (
        result.code,
        result.out,
        result.err,
    )


async def test_json_of_the_commands_that_had_none(tmp_path: Path) -> None:
    """diagram, keys new, db migrate, keys rotate and keys seal print one JSON object."""
    (diagram,) = (await awx("diagram", "--json")).objects()
    assert diagram["mermaid"].startswith("stateDiagram")
    new = await awx("keys", "new", "--id", "2027-01", "--json")
    (key,) = new.objects()
    assert ("2027-01", f"2027-01:{key['key']}") == (key["id"], key["entry"])
    assert KeyRing.parse(key["entry"]).primary == "2027-01"
    url = f"sqlite:///{tmp_path / 'awx.db'}"
    (migrated,) = (await awx("db", "migrate", "--store", url, "--json")).objects()
    assert {"schema_version": len(MIGRATIONS)} == migrated
    (memory,) = (await awx("db", "migrate", "--store", "memory://", "--json")).objects()
    assert {"schema_version": 0} == memory
    env = {"AWX_ENCRYPTION_KEYS": f"{key['entry']},k1:{KeyRing.new_key()}"}
    for command in ("rotate", "seal"):
        result = await awx("keys", command, "--store", url, "--json", **env)
        assert 0 == result.code, result.err
        assert [{"rewritten": 0, "key": "2027-01", "old_keys": ["k1"]}] == result.objects()


@pytest.mark.slow
async def test_demo_json_prints_the_events() -> None:
    """`demo --json` prints its lifecycle events as JSON Lines, no narrative."""
    result = await awx("demo", "--json")
    assert 0 == result.code, result.err
    events = result.objects()
    assert "pending" == events[0]["dest"]
    assert "revoked" == events[-1]["dest"]
    assert {"connection_id", "sequence", "trigger", "source", "dest"} <= set(events[0])


async def test_state_filters_in_any_case(tmp_path: Path, keys: dict[str, str]) -> None:
    """--state ACTIVE, Active and ' active ' all mean active; an unknown state is exit 2."""
    url = f"sqlite:///{tmp_path / 'awx.db'}"
    await seed(url, keys["AWX_ENCRYPTION_KEYS"], ("a", 1.0), ("b", 2.0))
    for spelling in ("ACTIVE", "Active", " active "):
        listed = await awx(
            "connections", "list", "--json", "--state", spelling, "--store", url, **keys
        )
        assert 0 == listed.code, listed.err
        assert ["a", "b"] == [c["id"] for c in listed.objects()]
    revoked = await awx("connections", "list", "--state", "REVOKED", "--store", url, **keys)
    assert (0, "") == (revoked.code, revoked.out)
    unknown = await awx("connections", "list", "--state", "Sleepy", "--store", url, **keys)
    assert 2 == unknown.code
    assert "invalid choice: 'sleepy'" in unknown.err


async def test_disconnecting_a_revoked_connection_is_a_clear_no_op(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    """
    The second disconnect exits 0, says "already revoked ... nothing changed"
    (--json: "changed": false), and writes nothing: reason and events stay.
    """
    url = f"sqlite:///{tmp_path / 'awx.db'}"
    store = ["--store", url]
    await seed(url, keys["AWX_ENCRYPTION_KEYS"], ("a", 1.0))
    first = await awx(
        "connections", "disconnect", "a", "--reason", "ticket 1", "--json", *store, **keys
    )
    assert 0 == first.code, first.err
    assert [("revoked", "ticket 1", True)] == [
        (c["state"], c["reason"], c["changed"]) for c in first.objects()
    ]
    again = await awx("connections", "disconnect", "a", "--reason", "ticket 2", *store, **keys)
    assert (0, "a: already revoked (ticket 1); nothing changed\n") == (again.code, again.out)
    quiet = await awx("connections", "disconnect", "a", "--json", *store, **keys)
    (shown,) = quiet.objects()
    assert (0, "revoked", "ticket 1", False) == (
        quiet.code,
        shown["state"],
        shown["reason"],
        shown["changed"],
    )
    events = await awx("events", "tail", "--connection", "a", "--json", *store, **keys)
    assert [1, 2] == [e["sequence"] for e in events.objects()]


async def test_keys_rotate_says_which_key_to_keep_until_it_finishes(tmp_path: Path) -> None:
    """
    `keys rotate` names the old key to keep before it starts and when it may
    go after it finished; if rows could not be read, to keep it and run again.
    """
    url = f"sqlite:///{tmp_path / 'awx.db'}"
    old, new = f"k1:{KeyRing.new_key()}", f"k2:{KeyRing.new_key()}"
    await seed(url, old, ("a", 1.0), ("b", 2.0))
    rotated = await awx("keys", "rotate", "--store", url, AWX_ENCRYPTION_KEYS=f"{new},{old}")
    assert (0, "re-encrypted 2 connection(s) with key 'k2'\n") == (rotated.code, rotated.out)
    before, after = rotated.err.splitlines()
    assert before == (
        "re-encrypting every stored secret with key 'k2'; keep 'k1' in AWX_ENCRYPTION_KEYS "
        "until this finishes"
    )
    assert after.startswith("every stored secret now uses 'k2'; 'k1' may leave AWX_ENCRYPTION_KEYS")
    await seed(url, f"lost:{KeyRing.new_key()}", ("x", 3.0))
    failed = await awx("keys", "rotate", "--store", url, AWX_ENCRYPTION_KEYS=f"{new},{old}")
    assert (1, "") == (failed.code, failed.out)
    start, error = failed.err.splitlines()
    assert "keep 'k1' in AWX_ENCRYPTION_KEYS until this finishes" in start
    assert "could not read 1, which keep their old key: 'x'" in error
    assert error.endswith("keep 'k1' in AWX_ENCRYPTION_KEYS until a run ends without this error")
    alone = await awx("keys", "rotate", "--store", url, AWX_ENCRYPTION_KEYS=new)
    assert "with key 'k2', the only key of AWX_ENCRYPTION_KEYS" in alone.err.splitlines()[0]
