"""The blocking façade's pure parts: timeouts, query copies, webhook replies."""

from __future__ import annotations

import math

import pytest

from awx_connection import ConfigurationError
from awx_connection._blocking import _bound, _copy_query
from awx_connection.blocking import WebhookReply


class QueryDict(dict[str, list[str]]):
    """Django's QueryDict shape: [key] and items() give one value, getlist() all."""

    def __getitem__(self, key: str) -> str:  # type: ignore[override]
        return super().__getitem__(key)[-1]

    def getlist(self, key: str) -> list[str]:
        return list(super().__getitem__(key))


def test_bounds() -> None:
    """None and inf: no bound; a positive number of seconds: itself; anything else: refused."""
    assert _bound(None, "timeout") is None
    assert _bound(math.inf, "timeout") is None
    assert 2.0 == _bound(2, "timeout")
    for bad in (0, -1.0, math.nan, "1", True):
        with pytest.raises(ConfigurationError, match="timeout must be"):
            _bound(bad, "timeout")  # type: ignore[arg-type]


def test_a_multidict_query_keeps_every_value() -> None:
    """A repeated parameter survives the copy (so the callback check refuses it)."""
    query = QueryDict(code=["a", "b"], state=["s"])
    assert {"code": ["a", "b"], "state": "s"} == _copy_query(query)  # type: ignore[arg-type]
    assert {"code": "a", "state": ["s", "t"]} == _copy_query({"code": "a", "state": ["s", "t"]})


def test_a_webhook_reply_unpacks() -> None:
    """(status, body) for a view, JSON always."""
    status, body = WebhookReply(200, b"{}")
    assert (200, b"{}") == (status, body)
    assert "application/json" == WebhookReply(401, b"{}").content_type
