"""The ``awx-connection`` command, run as users run it: in a subprocess."""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from awx_connection import ConnectionState, KeyRing, mermaid
from awx_connection.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_diagram_prints_every_state() -> None:
    """`awx-connection diagram` prints the generated Mermaid diagram."""
    code, out, _ = await run(sys.executable, "-m", "awx_connection", "diagram")
    assert 0 == code
    assert mermaid() == out
    for state in ConnectionState:
        assert state.value in out


async def test_help_lists_commands() -> None:
    """--help names every command and the exit codes."""
    code, out, _ = await run(sys.executable, "-m", "awx_connection", "--help")
    assert 0 == code
    for command in (
        "demo",
        "fake-server",
        "diagram",
        "db",
        "keys",
        "connections",
        "events",
        "authorize",
    ):
        assert f"\n    {command}" in out
    assert "3 connection not found" in out


async def test_unknown_command_is_a_usage_error() -> None:
    """An unknown command exits 2, argparse's usage error."""
    code, _, err = await run(sys.executable, "-m", "awx_connection", "frobnicate")
    assert 2 == code
    assert "invalid choice" in err


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:hunter2@h:notaport/db", "postgresql://u:hunter2@[::1/db"],
    ids=["port-not-a-number", "unclosed-ipv6-bracket"],
)
async def test_a_malformed_postgres_url_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """
    A PostgreSQL URL asyncpg cannot parse is a configuration error: exit 2
    and one line naming the problem, never the password (it was a 61-line
    ValueError traceback).
    """
    monkeypatch.setenv("AWX_ENCRYPTION_KEYS", f"k1:{KeyRing.new_key()}")
    for argv in (["connections", "list", "--store", url], ["db", "migrate", "--store", url]):
        code, out, err = await run(sys.executable, "-m", "awx_connection", *argv)
        assert (2, "") == (code, out)
        assert err.startswith("awx-connection: postgres store: malformed database URL: ")
        assert 1 == len(err.splitlines())
        assert "hunter2" not in err


async def test_a_durable_store_without_keys_is_refused_unless_plaintext_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Without AWX_ENCRYPTION_KEYS a command on a durable store exits 2 with one
    line naming 'awx-connection keys new', before opening (no file appears);
    AWX_ALLOW_PLAINTEXT=1 allows it, any value but 1 or 0 is an error.
    `db migrate` touches no secret and needs neither.
    """
    path = tmp_path / "awx.db"
    store = ["--store", f"sqlite:///{path}"]
    awx = [sys.executable, "-m", "awx_connection"]
    monkeypatch.delenv("AWX_ENCRYPTION_KEYS", raising=False)
    monkeypatch.delenv("AWX_ALLOW_PLAINTEXT", raising=False)
    for argv in (["connections", "list"], ["events", "tail"], ["connections", "show", "conn_x"]):
        code, out, err = await run(*awx, *argv, *store)
        assert (2, "") == (code, out), argv
        assert 1 == len(err.splitlines()), err
        assert "'awx-connection keys new'" in err
        assert "AWX_ALLOW_PLAINTEXT=1" in err
    assert not path.exists()
    monkeypatch.setenv("AWX_ALLOW_PLAINTEXT", "yes")
    code, _, err = await run(*awx, "connections", "list", *store)
    assert 2 == code
    assert err.startswith("awx-connection: AWX_ALLOW_PLAINTEXT must be 1")
    assert not path.exists()
    monkeypatch.setenv("AWX_ALLOW_PLAINTEXT", "0")
    assert 2 == (await run(*awx, "connections", "list", *store))[0]
    monkeypatch.delenv("AWX_ALLOW_PLAINTEXT")
    assert 0 == (await run(*awx, "db", "migrate", *store))[0]
    monkeypatch.setenv("AWX_ALLOW_PLAINTEXT", "1")
    code, out, err = await run(*awx, "connections", "list", *store)
    assert (0, "", "no connections match\n") == (code, out, err)


@pytest.mark.slow
async def test_demo_prints_the_lifecycle_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The demo walks pending..revoked, recovers a lost response, exits 0 in
    < 10 s, with no AWX_* environment (it makes a key for its own file).
    """
    for name in [name for name in os.environ if name.startswith("AWX_")]:
        monkeypatch.delenv(name)
    started = time.monotonic()
    code, out, err = await run(sys.executable, "-m", "awx_connection", "demo")
    elapsed = time.monotonic() - started
    assert 0 == code, err
    assert elapsed < 10
    arrivals = [line.split("-> ")[1].split()[0] for line in out.splitlines() if "event #" in line]
    assert [
        "pending",
        "authorized",
        "active",
        "refreshing",
        "active",
        "refreshing",
        "active",
        "refreshing",
        "revoked",
    ] == arrivals
    assert "reuse violations=0" in out
    assert "grace re-issues=1" in out
    assert "state=********" in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
async def test_fake_server_serves_until_terminated() -> None:
    """`awx-connection fake-server --port N` answers on 127.0.0.1 and stops on SIGTERM."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "awx_connection",
        "fake-server",
        "--port",
        str(port),
        "--manual-clock",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        assert f"http://127.0.0.1:{port}" in line.decode()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{port}/_fake/clock/advance", json={"seconds": 5}
            ) as response:
                assert 200 == response.status
            async with http.get(f"http://127.0.0.1:{port}/_fake/counters") as response:
                assert 0 == (await response.json())["token_requests"]
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
    assert 0 == process.returncode


# -- the package's shape ----------------------------------------------------------

CLI_PACKAGE = ROOT / "src" / "awx_connection" / "cli"


def cli_imports() -> dict[str, set[str]]:
    """Each module of awx_connection.cli -> the modules of the package it imports, anywhere."""
    graph: dict[str, set[str]] = {}
    for path in sorted(CLI_PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module)
                else:
                    found.update(alias.name for alias in node.names)
        graph[path.stem] = found
    return graph


def test_the_cli_package_has_no_import_cycle_and_no_importlib() -> None:
    """
    Imports inside awx_connection.cli flow one way (lazy ones inside functions
    included), nothing uses importlib, every module says why it exists and
    none is over 800 lines.
    """
    graph = cli_imports()
    assert {"__init__", "_main", "_parser", "_connections", "_events", "_keys", "_db"} <= set(graph)
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph.get(module, set()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    for path in CLI_PACKAGE.glob("*.py"):
        text = path.read_text()
        assert "importlib" not in text, path.name
        assert ast.get_docstring(ast.parse(text)), path.name
        assert len(text.splitlines()) <= 800, path.name


def leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of every runnable command below *parser*."""
    children = [
        child
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for child in action.choices.values()
    ]
    return [leaf for child in children for leaf in leaves(child)] if children else [parser]


def test_every_command_of_the_parser_is_dispatched() -> None:
    """Each runnable command names a handler that main() has a case for."""
    main_source = (CLI_PACKAGE / "_main.py").read_text()
    handlers = [leaf.get_default("handler") for leaf in leaves(build_parser())]
    assert len(handlers) >= 14
    assert [] == [h for h in handlers if h is None or f'case "{h}":' not in main_source]


def test_every_command_takes_json() -> None:
    """Every runnable command has --json (what each prints: tests/system/test_cli_surprises.py)."""
    missing = [
        leaf.prog
        for leaf in leaves(build_parser())
        if not any("--json" in action.option_strings for action in leaf._actions)
    ]
    assert [] == missing


def test_help_and_reading_commands_load_no_server() -> None:
    """
    Building the parser, --help and `connections list` import no command
    module they do not run: not aiohttp's server, not the fake provider.
    """
    code = (
        "import sys, contextlib, io\n"
        "from awx_connection.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "    main(['connections', 'list', '--store', 'memory://'])\n"
        "print(sorted(m for m in sys.modules if m == 'aiohttp.web' or m.startswith("
        "('awx_connection.testing', 'awx_connection.cli._authorize', 'awx_connection.cli._demo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()
