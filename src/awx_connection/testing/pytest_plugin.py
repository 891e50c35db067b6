"""
pytest fixtures for testing an integration against the fake provider.

Enable them in your ``conftest.py``::

    pytest_plugins = ["awx_connection.testing.pytest_plugin"]

They need pytest-asyncio (``pip install 'awx-connection[testing]'``). The
asynchronous ones are ``pytest_asyncio`` fixtures, so they work in its
default strict mode (mark each test ``@pytest.mark.asyncio``) and in auto
mode alike; set ``asyncio_default_fixture_loop_scope = "function"``, or
pytest-asyncio warns (the testing docs page shows the whole configuration,
and a test runs it). Opt-in rather than an entry point, so installing
awx-connection never changes someone else's test session.

Fixtures:

* ``awx_clock``: a :class:`~awx_connection.testing.ManualClock`;
* ``awx_fake``: a running :class:`~awx_connection.testing.FakeAirwallex`
  on 127.0.0.1 sharing that clock;
* ``awx_config``: a :class:`~awx_connection.Config` pointing at the fake,
  with tiny backoffs;
* ``awx_manager``: an open :class:`~awx_connection.ConnectionManager`
  (in-memory store) on that config and clock;
* ``awx_connect``: an async function that runs the whole authorize flow and
  returns an ``active`` :class:`~awx_connection.Connection`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from .._config import Config, Endpoints, TimingPolicy
from .._connection import Connection
from .._manager import ConnectionManager
from . import FakeAirwallex, ManualClock

__all__ = ["awx_clock", "awx_config", "awx_connect", "awx_fake", "awx_manager"]

#: The redirect URI the fixtures register with the fake.
REDIRECT_URI = "http://127.0.0.1:8000/airwallex/callback"


@pytest.fixture
def awx_clock() -> ManualClock:
    """A manual clock shared by the fake and the library."""
    return ManualClock()


@pytest_asyncio.fixture
async def awx_fake(awx_clock: ManualClock) -> AsyncIterator[FakeAirwallex]:
    """A fake Airwallex listening on 127.0.0.1."""
    async with FakeAirwallex(clock=awx_clock, redirect_uris=[REDIRECT_URI]) as fake:
        yield fake


@pytest.fixture
def awx_config(awx_fake: FakeAirwallex) -> Config:
    """Configuration pointing at ``awx_fake``, backoffs and resume delay shrunk for tests."""
    return Config(
        client_id=awx_fake.client_id,
        client_secret=awx_fake.client_secret,
        redirect_uri=REDIRECT_URI,
        endpoints=Endpoints.from_base_url(awx_fake.base_url),
        timing=TimingPolicy(backoff_base=0.001, backoff_max=0.01, resume_delay=0.01),
        default_scopes=("account_details:read",),
    )


@pytest_asyncio.fixture
async def awx_manager(
    awx_config: Config, awx_clock: ManualClock
) -> AsyncIterator[ConnectionManager]:
    """An open manager on an in-memory store."""
    async with ConnectionManager(awx_config, clock=awx_clock) as manager:
        yield manager


@pytest.fixture
def awx_connect(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> Callable[..., Awaitable[Connection]]:
    """Run begin, simulated consent and complete; return the active connection."""

    async def connect(**kwargs: object) -> Connection:
        request = await awx_manager.begin_authorization(**kwargs)  # type: ignore[arg-type]
        return await awx_manager.complete_authorization(awx_fake.approve(request.url))

    return connect
