"""
examples/flask_app.py as a real process, driven over real HTTP.

The app runs as docs/sync.md says, in an empty directory: a key from
``awx-connection keys new``, the store made by ``awx-connection db
migrate``, then ``python flask_app.py --port N`` (and, in the second test,
``flask --app flask_app:app_from_env run``), configured from ``AWX_*``
variables only. The fake Airwallex runs in this test's process on a real
socket, with its webhooks pointed at the app, so a disconnect at the fake
reaches the app as a signed HTTP delivery, as Airwallex's would.

The test is the browser: ``/connect``, the redirect to the fake's consent
page, its Allow form, the callback, the page showing ``active``, an API
call, then the disconnect and its webhook, and the page showing
``revoked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
import pytest_asyncio

from awx_connection.testing import FakeAirwallex

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "flask_app.py"
BIN = Path(sys.executable).parent
ACME = {"X-Tenant": "acme"}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ConsentForm(HTMLParser):
    """The fake's consent page, read as a browser reads it: the Allow form."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._form: str | None = None
        self._hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form, self._hidden = values["action"], {}
        elif tag == "input" and values.get("type") == "hidden":
            self._hidden[values["name"]] = values["value"]
        elif tag == "button" and values.get("value") == "allow":
            self.action = self._form
            self.fields = {**self._hidden, values["name"]: "allow"}


def page_state(html: str, tenant: str) -> str | None:
    """The state the page shows for *tenant*'s row."""
    found = re.search(rf'data-tenant="{re.escape(tenant)}" data-state="([a-z_]+)"', html)
    return found.group(1) if found else None


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class App:
    """The example's directory, environment and process."""

    def __init__(self, directory: Path, port: int, fake: FakeAirwallex, secret: str) -> None:
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = directory / "app.log"
        self.process: subprocess.Popen[bytes] | None = None
        shutil.copy(EXAMPLE, directory / EXAMPLE.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWX_", "FLASK_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        env.update(
            AWX_CLIENT_ID=fake.client_id,
            AWX_CLIENT_SECRET=fake.client_secret,
            AWX_REDIRECT_URI=f"{self.url}/airwallex/callback",
            AWX_BASE_URL=fake.base_url,
            AWX_SCOPES="account_details:read",
            AWX_WEBHOOK_SECRETS=secret,
            AWX_STORE="sqlite:///flask_app.db",
        )
        # The docs' two setup steps, with the real CLI.
        env["AWX_ENCRYPTION_KEYS"] = self.run_cli(["keys", "new"], env).strip().splitlines()[-1]
        self.run_cli(["db", "migrate"], env)
        self.env = env

    def run_cli(self, args: list[str], env: dict[str, str]) -> str:
        result = subprocess.run(
            [str(BIN / "awx-connection"), *args],
            cwd=self.directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 0 == result.returncode, result.stderr
        return result.stdout

    def start(self, command: Sequence[str]) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                list(command),
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_until_listening(self, http: aiohttp.ClientSession) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"exited {self.process.returncode} before listening:\n{self.output()}")
            try:
                async with http.get(f"{self.url}/"):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        pytest.fail(f"{self.url} never answered:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                pytest.fail(f"did not stop on SIGTERM:\n{self.output()}")
        return self.process.returncode


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, command: Sequence[str], http: aiohttp.ClientSession
) -> AsyncIterator[tuple[App, FakeAirwallex]]:
    """The fake (webhooks to the app) and the app, both listening; both stopped after."""
    port = free_port()
    secret = "whsec_" + secrets.token_urlsafe(16)
    async with FakeAirwallex(redirect_uris=[f"http://127.0.0.1:{port}/airwallex/callback"]) as fake:
        fake.set_webhook(f"http://127.0.0.1:{port}/airwallex/webhooks", secret)
        app = App(tmp_path, port, fake, secret)
        app.start([arg.replace("{port}", str(port)) for arg in command])
        try:
            await app.wait_until_listening(http)
            yield app, fake
        finally:
            app.stop()


async def connect(app: App, fake: FakeAirwallex, http: aiohttp.ClientSession) -> dict[str, Any]:
    """The browser's trip: /connect, the fake's consent page and its Allow form, the callback."""
    async with http.get(f"{app.url}/connect", headers=ACME, allow_redirects=False) as response:
        assert 302 == response.status, await response.text()
        authorize_url = response.headers["Location"]
    assert authorize_url.startswith(fake.authorize_url)
    async with http.get(authorize_url) as response:
        assert 200 == response.status
        form = ConsentForm()
        form.feed(await response.text())
    assert form.action is not None
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
    command = [sys.executable, EXAMPLE.name, "--port", "{port}"]
    async with running(tmp_path, command, http) as (app, fake):
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

        assert 1 == fake.disconnect(connection["account_id"])  # the customer unlinks the app
        await asyncio.wait_for(fake.flush_webhooks(), 30)
        (answers,) = fake.webhooks.answers.values()
        assert [200] == answers

        assert "revoked" == page_state(await page(app, http), "acme")
        async with http.get(f"{app.url}/connection", headers=ACME) as response:
            assert "revoked" == (await response.json())["state"]
        async with http.get(f"{app.url}/account", headers=ACME) as response:
            assert 409 == response.status
            assert "revoked" == (await response.json())["state"]
        async with http.get(f"{app.url}/connect", headers=ACME, allow_redirects=False) as response:
            assert 302 == response.status  # reconnect: the same connection, reauthorized
        secrets_issued = fake.issued_secrets()

        assert 0 == app.stop(), app.output()
    log = app.output()
    assert "GET /airwallex/callback HTTP/1.1" in log
    for secret in secrets_issued:
        assert secret not in log
    assert "state=" not in log


async def test_flask_run_serves_the_factory(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """``flask --app flask_app:app_from_env run``: the same app, started by Flask's command."""
    command = [str(BIN / "flask"), "--app", "flask_app:app_from_env", "run", "--port", "{port}"]
    async with running(tmp_path, command, http) as (app, fake):
        connection = await connect(app, fake, http)
        assert "active" == connection["state"]
        assert "active" == page_state(await page(app, http), "acme")
        fake.disconnect(connection["account_id"])
        await asyncio.wait_for(fake.flush_webhooks(), 30)
        assert "revoked" == page_state(await page(app, http), "acme")
        secrets_issued = fake.issued_secrets()
    log = app.output()
    assert "GET /airwallex/callback HTTP/1.1" in log
    for secret in secrets_issued:
        assert secret not in log
