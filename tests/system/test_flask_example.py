"""
examples/flask_app.py as a real process, driven over real HTTP.

docs/sync.md's own commands, run by bash in an empty directory holding only
the program: "terminal 1" starts the real ``awx-connection fake-server``
process (its webhooks pointed at the app), "terminal 2" exports the
``AWX_*`` variables, makes a key with ``awx-connection keys new``, migrates
the store with ``awx-connection db migrate`` and starts ``python
flask_app.py --port 8000`` (or, in the second test, ``flask --app
flask_app:app_from_env run``). Only the ports change (8000 and 8765 become
free ones), and the environment starts with no ``AWX_*`` variable.

The test is the browser: ``/connect``, the redirect to the fake's consent
page, its Allow form, the callback, the page showing ``active``, an API
call, then a disconnect at the fake, whose signed webhook revokes the
connection, and the page showing ``revoked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
import pytest_asyncio

from awx_connection.testing import consent_form

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "flask_app.py"
PAGE = ROOT / "docs" / "sync.md"
BIN = Path(sys.executable).parent
ACME = {"X-Tenant": "acme"}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def page_state(html: str, tenant: str) -> str | None:
    """The state the page shows for *tenant*'s row."""
    found = re.search(rf'data-tenant="{re.escape(tenant)}" data-state="([a-z_]+)"', html)
    return found.group(1) if found else None


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def code_blocks(page: str) -> list[str]:
    """Every top-level fenced block's text, in order."""
    return re.findall(r"^```[a-z]*\n(.*?)^```$", page, re.S | re.M)


def block(first_line: str) -> str:
    """The one block of docs/sync.md whose first line is *first_line* (a ``# name`` comment)."""
    (found,) = [b for b in code_blocks(PAGE.read_text()) if b.splitlines()[0] == first_line]
    return found


def localized(script: str, app_port: int, fake_port: int) -> str:
    """The page's commands on free ports: 8000 (the app) and 8765 (the fake) replaced."""
    return re.sub(r"\b8000\b", str(app_port), re.sub(r"\b8765\b", str(fake_port), script))


FAKE_BLOCK = "# terminal 1: the fake Airwallex"
APP_BLOCK = "# terminal 2: the service, against the fake"
FLASK_BLOCK = "# terminal 2, or with Flask's command"


def python_script() -> str:
    """The page's setup and ``python flask_app.py``, exec'd so SIGTERM reaches the app."""
    *setup, serve = block(APP_BLOCK).strip().splitlines()
    return "\n".join([*setup, f"exec {serve}"])


def flask_script() -> str:
    """The same setup, then the page's ``flask --app ... run`` instead."""
    *setup, _ = block(APP_BLOCK).strip().splitlines()
    (command,) = block(FLASK_BLOCK).strip().splitlines()[1:]
    return "\n".join([*setup, f"exec {command}"])


def clean_environment() -> dict[str, str]:
    """This process's environment without AWX_ or FLASK_ variables, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWX_", "FLASK_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


class Process:
    """A page's commands, run by bash in the test's directory, in a session of its own."""

    def __init__(self, directory: Path, script: str, log: Path) -> None:
        self.log = log
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-e", "-c", script],
                cwd=directory,
                env=clean_environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_until_answering(self, http: aiohttp.ClientSession, url: str) -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"exited {self.process.returncode} before listening:\n{self.output()}")
            try:
                async with http.get(url):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        pytest.fail(f"{url} never answered:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                pytest.fail(f"did not stop on SIGTERM:\n{self.output()}")
        return self.process.returncode


class App(Process):
    """The app: terminal 2's commands, next to a copy of the program."""

    def __init__(self, directory: Path, port: int, script: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        shutil.copy(EXAMPLE, directory / EXAMPLE.name)
        super().__init__(directory, script, directory / "app.log")


class Fake:
    """The fake-server process's address (it holds no state here: ask it over HTTP)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.authorize_url = f"{url}/oauth/authorize"


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, script: str, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[App, Fake]]:
    """Terminal 1's fake and the app from *script*, both listening; both stopped after."""
    app_port, fake_port = free_port(), free_port()
    fake = Fake(f"http://127.0.0.1:{fake_port}")
    fake_process = Process(
        tmp_path, localized(block(FAKE_BLOCK), app_port, fake_port), tmp_path / "fake.log"
    )
    try:
        await fake_process.wait_until_answering(http, f"{fake.url}/_fake/clock")
        app = App(tmp_path, app_port, localized(script, app_port, fake_port))
        try:
            await app.wait_until_answering(http, f"{app.url}/")
            yield app, fake
        finally:
            app.stop()
    finally:
        fake_process.stop()


async def connect(app: App, fake: Fake, http: aiohttp.ClientSession) -> dict[str, Any]:
    """The browser's trip: /connect, the fake's consent page and its Allow form, the callback."""
    async with http.get(f"{app.url}/connect", headers=ACME, allow_redirects=False) as response:
        assert 302 == response.status, await response.text()
        authorize_url = response.headers["Location"]
    assert authorize_url.startswith(fake.authorize_url)
    async with http.get(authorize_url) as response:
        assert 200 == response.status
        form = consent_form(await response.text())
    async with http.post(
        urljoin(authorize_url, form.action), data=form.fields, allow_redirects=False
    ) as response:
        assert 302 == response.status
        callback_url = response.headers["Location"]
    assert callback_url.startswith(f"{app.url}/airwallex/callback?code=")
    async with http.get(callback_url) as response:
        assert 200 == response.status, await response.text()
        body: dict[str, Any] = await response.json()
    return body


async def disconnect(fake: Fake, account_id: str, http: aiohttp.ClientSession) -> None:
    """The customer unlinks the app in Airwallex: the fake revokes the grant and posts a webhook."""
    async with http.post(
        f"{fake.url}/_fake/disconnect", json={"account_id": account_id}
    ) as response:
        assert {"revoked": 1} == await response.json()


async def until_revoked(app: App, http: aiohttp.ClientSession) -> str:
    """The page once the webhook (delivered in the background) revoked acme's connection."""
    deadline = time.monotonic() + 10
    while True:
        html = await page(app, http)
        if page_state(html, "acme") == "revoked" or time.monotonic() > deadline:
            assert "revoked" == page_state(html, "acme"), html
            return html
        await asyncio.sleep(0.05)


def assert_no_secret_in(log: str) -> None:
    """No code, ``state`` or client secret in what the app printed (the callback is logged)."""
    assert "GET /airwallex/callback HTTP/1.1" in log
    for leak in ("code=", "state=", "fake-client-secret", "fake-webhook-secret"):
        assert leak not in log


async def page(app: App, http: aiohttp.ClientSession) -> str:
    async with http.get(f"{app.url}/") as response:
        assert 200 == response.status
        return await response.text()


async def test_the_flask_app_connects_calls_and_is_revoked_by_a_webhook(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """
    ``python flask_app.py``: connect, consent, callback, the page shows
    active, an API call, then a disconnect at Airwallex: its signed webhook
    revokes the connection and the page shows it. SIGTERM stops it (exit
    0), and its log holds no code, token or ``state``.
    """
    async with running(tmp_path, python_script(), http) as (app, fake):
        assert "No connection yet" in await page(app, http)

        connection = await connect(app, fake, http)
        assert ("active", "acme") == (connection["state"], connection["tenant"])
        assert "active" == page_state(await page(app, http), "acme")

        async with http.get(f"{app.url}/account", headers=ACME) as response:
            assert 200 == response.status
            assert connection["account_id"] == (await response.json())["id"]
        async with http.get(f"{app.url}/connect", headers=ACME, allow_redirects=False) as response:
            assert 409 == response.status  # already connected

        async with http.post(f"{app.url}/airwallex/webhooks", data=b"{}") as response:
            assert 401 == response.status  # unsigned

        await disconnect(fake, connection["account_id"], http)
        await until_revoked(app, http)
        async with http.get(f"{app.url}/connection", headers=ACME) as response:
            stored = await response.json()
        assert "revoked" == stored["state"]
        # /connection reads the store only: the webhook did it, not a failed API call.
        assert "connection.disconnected" in stored["reason"]
        async with http.get(f"{app.url}/account", headers=ACME) as response:
            assert 409 == response.status
            assert "revoked" == (await response.json())["state"]
        async with http.get(f"{app.url}/connect", headers=ACME, allow_redirects=False) as response:
            assert 302 == response.status  # reconnect: the same connection, reauthorized

        assert 0 == app.stop(), app.output()
    assert_no_secret_in(app.output())


async def test_flask_run_serves_the_factory(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """The page's ``flask --app flask_app:app_from_env run``: the same app, from Flask's command."""
    async with running(tmp_path, flask_script(), http) as (app, fake):
        connection = await connect(app, fake, http)
        assert "active" == connection["state"]
        assert "active" == page_state(await page(app, http), "acme")
        await disconnect(fake, connection["account_id"], http)
        await until_revoked(app, http)
    assert_no_secret_in(app.output())
