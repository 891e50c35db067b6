"""
``awx-connection fake-server --webhook-url URL --webhook-secret SECRET``: the
standalone fake posts signed webhooks, as Airwallex does, to a real
receiver over real TCP; its option mistakes are one line each.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from awx_connection import Config, ConnectionManager, ConnectionState, Endpoints

AWX = (sys.executable, "-m", "awx_connection")
SECRET = "whsec_for_tests"

pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWX_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--webhook-url", "http://127.0.0.1:9/hooks"], "--webhook-url and --webhook-secret go"),
        (["--webhook-secret", SECRET], "--webhook-url and --webhook-secret go together"),
        (["--webhook-url", "http://127.0.0.1:9/h", "--webhook-secret", ""], "--webhook-url and"),
        (["--webhook-url", "/hooks", "--webhook-secret", SECRET], "--webhook-url must be an"),
    ],
    ids=["url-alone", "secret-alone", "secret-empty", "url-relative"],
)
async def test_a_bad_webhook_option_is_one_line(argv: list[str], expected: str) -> None:
    """Exit 2, one line on stderr, nothing on stdout."""
    process = await asyncio.create_subprocess_exec(
        *AWX,
        "fake-server",
        "--port",
        "0",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert (2, b"") == (process.returncode, out)
    assert 1 == len(err.splitlines()), err
    assert err.decode().startswith(f"awx-connection: {expected}")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[dict[str, str], bytes]]]]:
    """A real HTTP server that keeps each delivery (headers and raw body) and answers 200."""
    deliveries: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def keep(request: web.Request) -> web.Response:
        await deliveries.put((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", keep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hooks", deliveries
    finally:
        await runner.cleanup()


async def test_a_disconnect_posts_a_webhook_the_library_accepts(
    receiver: tuple[str, asyncio.Queue[tuple[dict[str, str], bytes]]],
) -> None:
    """
    POST /_fake/disconnect: the fake process posts a signed
    ``connection.disconnected`` that ``handle_webhook`` verifies and acts on.
    """
    url, deliveries = receiver
    process = await asyncio.create_subprocess_exec(
        *AWX,
        "fake-server",
        "--port",
        "0",
        "--json",
        "--webhook-url",
        url,
        "--webhook-secret",
        SECRET,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )
    try:
        assert process.stdout is not None
        shown = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 15))
        assert url == shown["webhook_url"]
        assert SECRET not in orjson.dumps(shown).decode()
        config = Config(
            client_id=shown["client_id"],
            client_secret=shown["client_secret"],
            redirect_uri=shown["redirect_uris"][0],
            endpoints=Endpoints.from_base_url(shown["base_url"]),
            default_scopes=("account_details:read",),
            webhook_secrets=[SECRET],
        )
        async with ConnectionManager(config) as manager, aiohttp.ClientSession() as http:
            authorization = await manager.begin_authorization()
            async with http.post(
                f"{shown['admin_url']}approve", json={"authorize_url": authorization.url}
            ) as response:
                callback = (await response.json())["redirect_url"]
            connection = await manager.complete_authorization(callback)
            async with http.post(
                f"{shown['admin_url']}disconnect", json={"account_id": connection.account_id}
            ) as response:
                assert 200 == response.status
            headers, body = await asyncio.wait_for(deliveries.get(), 15)
            event = orjson.loads(body)
            assert "connection.disconnected" == event["name"]
            assert connection.account_id == event["account_id"]
            result = await manager.handle_webhook(headers, body)
            assert 200 == result.status
            assert ConnectionState.REVOKED is (await manager.get(connection.id)).state
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    assert 0 == process.returncode
