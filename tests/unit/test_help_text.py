"""
``help()`` on the public classes reads as the API reference does.

attrs writes ``__init__``; a field with ``factory=`` shows there as
``store: 'Store' = NOTHING``, which reads as "required" (or as nonsense).
Optional fields take ``None`` (a converter fills in the default), so the
signature says what a caller may leave out.
"""

from __future__ import annotations

import inspect
import pydoc

import pytest

import awx_connection
import awx_connection.instrumentation
import awx_connection.stores
import awx_connection.testing

PUBLIC = sorted(
    {
        (module.__name__, name)
        for module in (
            awx_connection,
            awx_connection.stores,
            awx_connection.testing,
            awx_connection.instrumentation,
        )
        for name in module.__all__
        if inspect.isclass(getattr(module, name))
    }
)


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_no_attrs_sentinel_in_signatures(module: str, name: str) -> None:
    cls = getattr(__import__(module, fromlist=[name]), name)
    try:
        signature = str(inspect.signature(cls))
    except ValueError:  # a builtin-backed class (an enum) without one
        return
    assert "NOTHING" not in signature
    assert "Factory(" not in signature


def test_manager_help_shows_the_defaults() -> None:
    text = pydoc.render_doc(awx_connection.ConnectionManager, renderer=pydoc.plaintext)
    # The line under "class ConnectionManager": how to call it.
    call = next(line for line in text.splitlines() if "ConnectionManager(config:" in line)
    assert "NOTHING" not in call
    assert "store: 'Store | None' = None" in call
    assert "clock: 'Clock | None' = None" in call
    assert "keepalive: 'bool' = True" in call


def test_none_means_the_documented_default() -> None:
    config = awx_connection.Config(
        client_id="id", client_secret="secret", redirect_uri="https://partner.example/cb"
    )
    assert config.endpoints == awx_connection.Endpoints.for_environment(
        awx_connection.Environment.SANDBOX
    )
    assert config.timing == awx_connection.TimingPolicy()
    manager = awx_connection.ConnectionManager(config)
    assert isinstance(manager.store, awx_connection.stores.MemoryStore)
    assert isinstance(manager.clock, awx_connection.SystemClock)
    event = awx_connection.WebhookEvent("evt", "account.active", ("acct",), 0.0)
    assert event.data == {}
