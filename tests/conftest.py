"""
Shared fixtures: the library's own pytest plugin (used as our users would),
and access to the real PostgreSQL server.

PostgreSQL tests need a server at ``AWX_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Where none is reachable they
skip with the reason, except under ``CI=true``, where they fail: CI must
never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import settings

pytest_plugins = ["awx_connection.testing.pytest_plugin"]

# Hypothesis budgets for tests/integration/test_stateful.py and
# tests/integration/test_fuzz.py: CI is fixed and derandomized;
# HYPOTHESIS_PROFILE=hunt searches much longer, with a timeout of its own (HUNT_TIMEOUT below).
settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=25,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
)
settings.register_profile(
    "dev", max_examples=60, stateful_step_count=25, deadline=None, database=None, print_blob=True
)
settings.register_profile(
    "hunt", max_examples=2000, stateful_step_count=60, deadline=None, database=None, print_blob=True
)
PROFILE = "ci" if os.environ.get("CI") == "true" else os.environ.get("HYPOTHESIS_PROFILE", "dev")
settings.load_profile(PROFILE)

#: The pytest-timeout of each Hypothesis test under the hunt profile, which
#: the suite's 60 s cannot hold: 2,000 stateful examples took about 6
#: minutes, and five times that leaves room for a slower machine.
HUNT_TIMEOUT = 30 * 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under the hunt profile, give every Hypothesis test the hunt's timeout."""
    if PROFILE != "hunt":
        return
    for item in items:
        # @given functions and a state machine's TestCase.runTest carry the
        # flag; a bound method passes it through from its function.
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.timeout(HUNT_TIMEOUT))


POSTGRES_DSN = os.environ.get("AWX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _unreachable_reason() -> str | None:
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - asyncpg is a test dependency
        return f"asyncpg is not installed ({exc})"

    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL is not reachable at {POSTGRES_DSN}: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The DSN of a reachable PostgreSQL; skips (fails under CI=true) otherwise."""
    reason = _unreachable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {reason}")
        # Outside CI a developer without PostgreSQL still gets a useful run;
        # the reason names the DSN and the error, so the skip is never silent.
        pytest.skip(reason)
    return POSTGRES_DSN


@pytest_asyncio.fixture
async def postgres_schema(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty schema name for one test; dropped afterwards."""
    import asyncpg

    name = "awx_test_" + secrets.token_hex(6)
    yield name
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await connection.close()


NATS_URL = os.environ.get("AWX_TEST_NATS", "nats://127.0.0.1:4222")


def _nats_unreachable_reason() -> str | None:
    try:
        import nats
    except ImportError as exc:  # pragma: no cover - nats-py is a test dependency
        return f"nats-py is not installed ({exc})"

    async def probe() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"NATS JetStream is not reachable at {NATS_URL}: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The URL of a reachable NATS server with JetStream; skips (fails under CI=true) otherwise."""
    reason = _nats_unreachable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires NATS JetStream: {reason}")
        pytest.skip(reason)
    return NATS_URL


@pytest_asyncio.fixture
async def jetstream_stream(nats_url: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh ``(stream name, subject prefix)`` for one test; the stream is deleted afterwards."""
    import nats

    token = secrets.token_hex(6)
    yield f"AWX_TEST_{token}", f"awx_test_{token}"
    nc = await nats.connect(nats_url)
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(f"AWX_TEST_{token}")
    finally:
        await nc.close()
