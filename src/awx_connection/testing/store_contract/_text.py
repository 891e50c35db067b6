"""
The cases of promise 8: text a store cannot hold is one typed error.

Every text argument of every method, and every text field of a record or
event written, that is not a ``str`` encoding as UTF-8 is refused with
:class:`~awx_connection.InvalidArgumentError` (also a ``ValueError``)
before anything is written, naming the argument and never the value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ..._errors import InvalidArgumentError
from ..._events import ConnectionEvent
from ..._records import ConnectionRecord
from ..._secrets import Secret
from ..._store import Store
from ._data import insert_record, make_event, make_record, next_version

__all__ = ["TextCases"]


#: Values no store can hold as text: a lone surrogate (what surrogateescape
#: makes of bytes that are not UTF-8), one inside a longer string, and
#: values that are not strings at all.
BAD_TEXT = ["\ud800", "cust-\udcff", 42, b"cust-1"]


#: Every store method taking a text argument, called with a bad value there.
TEXT_ARGUMENTS: dict[str, Callable[[Store, Any], Awaitable[object]]] = {
    "get": lambda store, bad: store.get(bad),
    "find_by_state_hash": lambda store, bad: store.find_by_state_hash(bad),
    "list_connections(external_id)": lambda store, bad: store.list_connections(external_id=bad),
    "list_connections(account_id)": lambda store, bad: store.list_connections(account_id=bad),
    "list_connections(external_id, limit)": lambda store, bad: store.list_connections(
        external_id=bad, limit=2
    ),
    "read_events": lambda store, bad: store.read_events(bad),
    "acquire_lease(id)": lambda store, bad: store.acquire_lease(bad, "me", until=2.0, now=1.0),
    "acquire_lease(owner)": lambda store, bad: store.acquire_lease("c1", bad, until=2.0, now=1.0),
    "release_lease(id)": lambda store, bad: store.release_lease(bad, "me"),
    "release_lease(owner)": lambda store, bad: store.release_lease("c1", bad),
    "wait_for_update": lambda store, bad: store.wait_for_update(bad, after_version=0, timeout=0),
    "get_offset": lambda store, bad: store.get_offset(bad),
    "commit_offset": lambda store, bad: store.commit_offset(bad, 1),
    "claim_webhook(id)": lambda store, bad: store.claim_webhook(bad, owner="o", now=1, until=2),
    "claim_webhook(owner)": lambda store, bad: store.claim_webhook("e", owner=bad, now=1, until=2),
    "finish_webhook": lambda store, bad: store.finish_webhook(bad, owner="o", at=1.0),
    "release_webhook": lambda store, bad: store.release_webhook(bad, owner="o"),
}


async def _outcome(call: Awaitable[object]) -> str:
    """
    What *call* did: ``"refused"`` for an InvalidArgumentError (a ValueError
    too) whose message shows no bad value; otherwise what happened instead.
    """
    try:
        await call
    except InvalidArgumentError as exc:
        shown = [bad for bad in BAD_TEXT if repr(bad) in str(exc)]
        if shown or not isinstance(exc, ValueError):
            return f"refused, but showing {shown}"
        return "refused"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _with_bad(field: str, bad: Any) -> tuple[ConnectionRecord, ConnectionEvent]:
    """A valid record and event but for *field*, which holds *bad*."""
    record, event = make_record("c1"), make_event("c1")
    tokens, auth = record.tokens, record.authorization
    assert tokens is not None
    assert auth is not None
    if field == "id":
        return attrs.evolve(record, id=bad), attrs.evolve(event, connection_id=bad)
    if field in ("external_id", "account_id", "reason", "write_id"):
        return attrs.evolve(record, **{field: bad}), event
    if field == "scopes":
        return attrs.evolve(record, scopes=("r:awx_action:balances_view", bad)), event
    if field == "code":
        return attrs.evolve(record, code=Secret(bad)), event
    if field in ("access_token", "refresh_token"):
        changed: dict[str, Any] = {field: Secret(bad)}
        return attrs.evolve(record, tokens=attrs.evolve(tokens, **changed)), event
    if field == "token scope":
        return attrs.evolve(record, tokens=attrs.evolve(tokens, scope=(bad,))), event
    if field in ("redirect_uri", "state_hash"):
        return attrs.evolve(record, authorization=attrs.evolve(auth, **{field: bad})), event
    if field == "code_verifier":
        return attrs.evolve(
            record, authorization=attrs.evolve(auth, code_verifier=Secret(bad))
        ), event
    assert field.startswith("event ")
    return record, attrs.evolve(event, **{field.removeprefix("event "): bad})


RECORD_TEXT_FIELDS = [
    "id",
    "external_id",
    "account_id",
    "reason",
    "write_id",
    "scopes",
    "code",
    "access_token",
    "refresh_token",
    "token scope",
    "redirect_uri",
    "state_hash",
    "code_verifier",
    "event reason",
    "event external_id",
    "event account_id",
]


class TextCases:
    """Bad text: refused alike by every method, before anything is written."""

    async def test_text_arguments_that_cannot_be_stored_are_refused_alike(
        self, store: Store
    ) -> None:
        """
        Every store refuses every bad text argument of every method with the same
        typed error, also a ValueError, naming the argument but not the value;
        before, memory answered, SQLite raised UnicodeEncodeError and PostgreSQL
        a StoreError quoting the value.
        """
        record = await insert_record(store, "c1")
        outcomes = {
            (method, bad): await _outcome(call(store, bad))
            for method, call in TEXT_ARGUMENTS.items()
            for bad in BAD_TEXT
        }
        assert {"refused"} == set(outcomes.values()), outcomes
        assert [record] == await store.list_connections()

    async def test_records_with_text_that_cannot_be_stored_are_refused_alike(
        self, store: Store
    ) -> None:
        """
        insert() and update() refuse a record or event with a bad text field
        (secrets included) with InvalidArgumentError before writing anything, on
        every store; the message never holds the value. Before, memory stored it
        and the durable stores raised orjson's TypeError or UnicodeEncodeError.
        """
        stored = await insert_record(store, "stored")
        outcomes = {}
        for field in RECORD_TEXT_FIELDS:
            for bad in BAD_TEXT:
                record, event = _with_bad(field, bad)
                outcomes[field, bad, "insert"] = await _outcome(store.insert(record, event))
                if field == "id":
                    continue  # an update of a bad id has nothing to compare against
                newer = next_version(attrs.evolve(record, id="stored"))
                newer_event = attrs.evolve(event, connection_id="stored", sequence=2)
                outcomes[field, bad, "update"] = await _outcome(
                    store.update(newer, expected_version=1, event=newer_event)
                )
                if not field.startswith("event "):
                    outcomes[field, bad, "update, no event"] = await _outcome(
                        store.update(newer, expected_version=1, event=None)
                    )
        assert {"refused"} == set(outcomes.values()), outcomes
        assert [stored] == await store.list_connections()
        assert 1 == len(await store.read_outbox())
