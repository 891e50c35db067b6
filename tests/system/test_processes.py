"""
Real separate processes: a connection created by one process is used by a
later one through the same SQLite file, against the fake over HTTP, with the
fake's clock read through its admin endpoint.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

from awx_connection import KeyRing
from awx_connection.testing import FakeAirwallex

pytestmark = pytest.mark.slow

REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
KEYS = "k1:" + KeyRing.new_key()

# Runs in a child process: argv = base_url, client_secret, db path, command, redirect, keys.
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import aiohttp
    from awx_connection import Config, ConnectionManager, Endpoints, KeyRing
    from awx_connection.stores import SQLiteStore
    from awx_connection.testing import ManualClock

    base, secret, db, command, redirect, keys = sys.argv[1:7]

    async def main():
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/_fake/clock") as r:
                clock = ManualClock((await r.json())["now"])
            config = Config(
                client_id="fake-client-id", client_secret=secret,
                redirect_uri=redirect, endpoints=Endpoints.from_base_url(base),
                default_scopes=("account_details:read",),
            )
            store = SQLiteStore(db, keys=KeyRing.parse(keys))
            async with ConnectionManager(config, store=store, clock=clock) as awx:
                if command == "connect":
                    request = await awx.begin_authorization()
                    async with http.post(
                        base + "/_fake/approve", json={"authorize_url": request.url}
                    ) as r:
                        callback = (await r.json())["redirect_url"]
                    connection = await awx.complete_authorization(callback)
                    print(connection.id, connection.state.value)
                else:
                    token = await awx.access_token(command)
                    connection = await awx.get(command)
                    print(connection.state.value, connection.token_generation, len(token) > 0)

    asyncio.run(main())
    """
)


async def child(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        *args,
        REDIRECT,
        KEYS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert 0 == process.returncode, err.decode()
    return out.decode().strip()


async def test_connection_created_in_one_process_is_used_by_the_next(
    awx_fake: FakeAirwallex, tmp_path: Path
) -> None:
    """Process A authorizes; process B, started later, refreshes and uses the connection."""
    awx_fake.register_redirect_uri(REDIRECT)
    db = str(tmp_path / "shared.db")
    connection_id, state = (
        await child(awx_fake.base_url, awx_fake.client_secret, db, "connect")
    ).split()
    assert "active" == state
    awx_fake.clock.advance(301)  # type: ignore[attr-defined]  # a ManualClock here
    out = await child(awx_fake.base_url, awx_fake.client_secret, db, connection_id)
    assert "active 1 True" == out
    assert 1 == awx_fake.counters.exchanges
    assert 1 == awx_fake.counters.refreshes
    assert 0 == awx_fake.counters.reuse_violations
