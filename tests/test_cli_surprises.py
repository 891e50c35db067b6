"""
"A CLI without surprises": each behaviour of that list, run as users run
the command (a subprocess, its exit code, stdout and stderr) against real
SQLite files and the real PostgreSQL server.

* Commands other than ``db migrate`` never create a store.
* ``connections list`` exits 1 and says how many rows it left out.
* ``fake-server`` errors are one line; it prints the client secret it accepts.
* Errors name flags and environment variables, not Python parameters.
* ``--version``, ``--json`` on every command, ``--state`` in any case, an
  already revoked connection's disconnect is a no-op, ``keys rotate`` names
  the key to keep.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import orjson
import pytest
import pytest_asyncio

from awx_connection import KeyRing
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
