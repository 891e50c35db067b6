"""
The framework guides (docs/guide-aiohttp.md, docs/guide-fastapi.md) and the
testing page's pytest snippet run as written.

For each guide, in an empty directory holding only the guide's program
(the ``examples/`` file the page includes verbatim), the page's own shell
blocks are run by bash: "terminal 1" starts the real ``awx-connection
fake-server`` process, "terminal 2" makes a key, migrates the store and
starts the service as a real process. Only the ports change (8000 and 8765
become free ones), and the environment starts with no ``AWX_*`` variable,
so the service sees exactly what the page exports. The test is then the
browser, over real HTTP: ``/connect``, the redirect to the fake's consent
page, its Allow form, the callback, an API call, and a disconnect that
makes the fake post a signed webhook, which revokes the connection.

The pages' pytest snippets (and docs/testing.md's) run in a subprocess
pytest in a temporary project made of the page's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from awx_connection.testing import consent_form

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent

#: Each guide: its page and the example program it includes.
GUIDES = {
    "aiohttp": ("guide-aiohttp.md", "aiohttp_app.py"),
    "fastapi": ("guide-fastapi.md", "fastapi_app.py"),
}

pytestmark = pytest.mark.slow


# -- reading the pages ---------------------------------------------------------------------


def code_blocks(page: str) -> list[str]:
    """Every top-level fenced block's text, in order."""
    return re.findall(r"^```[a-z]*\n(.*?)^```$", page, re.S | re.M)


def block(page: str, first_line: str) -> str:
    """The one block whose first line is *first_line* (a ``# name`` comment)."""
    (found,) = [b for b in code_blocks(page) if b.splitlines()[0] == first_line]
    return found


def read(name: str) -> str:
    return (DOCS / name).read_text()


def test_each_guide_includes_its_program_verbatim() -> None:
    """The page's program is the examples/ file itself (snippets), so it cannot drift."""
    for page_name, program in GUIDES.values():
        assert f'--8<-- "examples/{program}"' in read(page_name)


def test_the_guides_are_linked() -> None:
    """README, the docs index, the quickstart and the nav lead to both guides."""
    for name in ("README.md", "docs/index.md", "docs/quickstart.md", "mkdocs.yml"):
        text = (ROOT / name).read_text()
        for page_name, _ in GUIDES.values():
            assert page_name in text, f"{name} does not link {page_name}"


# -- running processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment() -> dict[str, str]:
    """This process's environment without any AWX_ variable, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWX_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


@contextlib.asynccontextmanager
async def bash(script: str, cwd: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run *script* with ``bash -e`` in a session of its own; stop the whole group on exit."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-e",
            "-c",
            script,
            cwd=cwd,
            env=clean_environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def wait_until_listening(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process, log: Path
) -> None:
    """Poll *url* until anything answers; fail at once if the process ended."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.returncode is not None:
            pytest.fail(f"exited {process.returncode} before listening:\n{contents(log)}")
        try:
            async with http.get(url):
                return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    pytest.fail(f"{url} never answered:\n{contents(log)}")


def contents(log: Path) -> str:
    """A process's output so far (a few kilobytes, read when a test fails)."""
    return log.read_text()


def localized(script: str, app_port: int, fake_port: int) -> str:
    """The page's commands on free ports: 8000 (the service) and 8765 (the fake) replaced."""
    assert "8000" in script or "8765" in script
    return re.sub(r"\b8000\b", str(app_port), re.sub(r"\b8765\b", str(fake_port), script))


@pytest.mark.parametrize("framework", sorted(GUIDES))
async def test_guide_service_runs_against_the_fake(framework: str, tmp_path: Path) -> None:
    """
    The guide's commands give a running service: connect, consent, callback,
    an API call, and a signed disconnect webhook that revokes the connection.
    """
    page_name, program = GUIDES[framework]
    page = read(page_name)
    shutil.copy(ROOT / "examples" / program, tmp_path / program)
    app_port, fake_port = free_port(), free_port()
    fake_script = localized(block(page, "# terminal 1: the fake Airwallex"), app_port, fake_port)
    service_script = localized(
        block(page, "# terminal 2: the service, against the fake"), app_port, fake_port
    )
    app, fake = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{fake_port}"
    acme = {"X-Tenant": "acme"}

    async with (
        aiohttp.ClientSession() as http,
        bash(fake_script, tmp_path, tmp_path / "fake.log") as fake_process,
    ):
        await wait_until_listening(http, f"{fake}/_fake/clock", fake_process, tmp_path / "fake.log")
        async with bash(service_script, tmp_path, tmp_path / "service.log") as service:
            log = tmp_path / "service.log"
            await wait_until_listening(http, f"{app}/connection", service, log)
            assert (tmp_path / "awx.db").exists()  # made by the page's `db migrate`

            # The customer clicks "Connect Airwallex": 302 to the fake's authorize page.
            async with http.get(f"{app}/connect", headers=acme, allow_redirects=False) as response:
                assert 302 == response.status, await response.text()
                authorize = response.headers["Location"]
            assert authorize.startswith(f"{fake}/oauth/authorize?")

            # The browser follows it, and the customer clicks Allow.
            async with http.get(authorize) as response:
                assert 200 == response.status
                form = consent_form(await response.text())
            async with http.post(
                fake + form.action, data=form.fields, allow_redirects=False
            ) as response:
                assert 302 == response.status, await response.text()
                callback = response.headers["Location"]
            assert callback.startswith(f"{app}/airwallex/callback?code=")

            # Back at the service: the callback finishes the authorization.
            async with http.get(callback) as response:
                assert 200 == response.status, await response.text()
                connection: dict[str, Any] = await response.json()
            assert "active" == connection["state"]
            assert "acme" == connection["tenant"]

            # An API call with acme's token.
            async with http.get(f"{app}/account", headers=acme) as response:
                assert 200 == response.status, await response.text()
                assert connection["account_id"] == (await response.json())["id"]

            # The customer disconnects in Airwallex: the fake posts a signed webhook.
            async with http.post(
                f"{fake}/_fake/disconnect", json={"account_id": connection["account_id"]}
            ) as response:
                assert {"revoked": 1} == await response.json()
            stored = await until_revoked(http, f"{app}/connection", acme)
            # /connection reads the store only: the webhook did it, not a failed API call.
            assert "connection.disconnected" in stored["reason"]

            async with http.get(f"{app}/account", headers=acme) as response:
                assert 409 == response.status
                assert "revoked" == (await response.json())["state"]

    output = log.read_text()
    # Nothing printed the authorization code or the tokens (no access log).
    assert "code=" not in output
    assert "fake-client-secret" not in output


@pytest.mark.parametrize("framework", sorted(GUIDES))
async def test_guide_service_refuses_a_store_not_migrated(framework: str, tmp_path: Path) -> None:
    """The page's service block without its `db migrate` line: the service stops, saying so."""
    page_name, program = GUIDES[framework]
    shutil.copy(ROOT / "examples" / program, tmp_path / program)
    script = block(read(page_name), "# terminal 2: the service, against the fake")
    migrate = 'awx-connection db migrate --store "$AWX_STORE"\n'
    assert migrate in script
    script = localized(script.replace(migrate, ""), free_port(), free_port())
    log = tmp_path / "service.log"
    async with bash(script, tmp_path, log) as service:
        await asyncio.wait_for(service.wait(), 60)
    assert 0 != service.returncode
    assert "awx-connection db migrate" in contents(log)
    assert not (tmp_path / "awx.db").exists()  # and nothing was created


def test_every_variable_the_guides_set_is_read_by_the_library() -> None:
    """A misspelt AWX_* name in a page would be ignored silently: each is one the code reads."""
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "awx_connection").rglob("*.py"))
    for page_name, program in GUIDES.values():
        program_text = (ROOT / "examples" / program).read_text()
        for name in set(re.findall(r"\bAWX_[A-Z_]+\b", read(page_name))):
            assert f'"{name}"' in source or f'"{name}"' in program_text, (page_name, name)


async def until_revoked(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> dict[str, Any]:
    """The stored connection once the webhook (delivered in the background) revoked it."""
    deadline = time.monotonic() + 10
    while True:
        async with http.get(url, headers=headers) as response:
            body: dict[str, Any] = await response.json()
        if body["state"] == "revoked" or time.monotonic() > deadline:
            assert "revoked" == body["state"], body
            return body
        await asyncio.sleep(0.05)


# -- the pages' pytest snippets ------------------------------------------------------------


def write_testing_project(path: Path, *, mode: str | None) -> None:
    """docs/testing.md's conftest.py and pyproject.toml in *path*, in *mode* if given."""
    page = read("testing.md")
    (path / "conftest.py").write_text(block(page, "# conftest.py"))
    pyproject = block(page, "# pyproject.toml")
    if mode is not None:
        pyproject += f'asyncio_mode = "{mode}"\n'
    (path / "pyproject.toml").write_text(pyproject)


async def run_pytest(path: Path) -> str:
    """pytest in *path*, warnings as errors; its output, after asserting it passed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
        cwd=path,
        env={k: v for k, v in clean_environment().items() if not k.startswith("PYTEST_")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    text = out.decode()
    assert 0 == process.returncode, text
    return text


@pytest.mark.parametrize("mode", [None, "strict", "auto"])
async def test_testing_page_snippet_runs(mode: str | None, tmp_path: Path) -> None:
    """
    The testing page's three files pass as written (strict, pytest-asyncio's
    default), with strict said explicitly, and in auto mode without the marker.
    """
    write_testing_project(tmp_path, mode=mode)
    test = block(read("testing.md"), "# test_onboarding.py")
    if mode == "auto":
        test = test.replace("@pytest.mark.asyncio\n", "")
        assert "mark.asyncio" not in test
    (tmp_path / "test_onboarding.py").write_text(test)
    assert "1 passed" in await run_pytest(tmp_path)


@pytest.mark.parametrize("framework", sorted(GUIDES))
async def test_guide_tests_run(framework: str, tmp_path: Path) -> None:
    """Each guide's test file passes next to its program, with the testing page's config."""
    page_name, program = GUIDES[framework]
    write_testing_project(tmp_path, mode=None)
    shutil.copy(ROOT / "examples" / program, tmp_path / program)
    name = f"test_{program}"
    (tmp_path / name).write_text(block(read(page_name), f"# {name}"))
    assert "1 passed" in await run_pytest(tmp_path)
