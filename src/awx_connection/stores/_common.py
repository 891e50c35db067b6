"""
What every store does the same way, whatever database holds its data.

One job: the steps of the :class:`~awx_connection.Store` contract that do not
depend on the database, written once, so each store module is left with its
own database (SQL, transactions, errors, retries). That is the argument
checks every store makes; waiting for its own (or, polling, other
processes') writes; and, for the durable stores, decoding stored rows,
leaving unreadable ones out of a listing, and the rotate_keys loop. What
differs is passed in: a store's name for messages and log lines (*store*:
``"sqlite"``, ``"postgres"``) and its database operations. No driver is
imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from .._crypto import KeyRing
from .._errors import ConfigurationError, StoreError
from .._records import dump_record, load_event, load_record, load_summary
from .._text import check_text

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence

    from .._events import ConnectionEvent
    from .._records import ConnectionRecord, ConnectionSummary

__all__ = [
    "ListedRow",
    "StoredRow",
    "check_event",
    "check_filters",
    "check_keys",
    "check_limit",
    "check_record",
    "check_text",
    "check_version",
    "load_listed",
    "load_page",
    "load_stored_event",
    "load_stored_record",
    "load_stored_summary",
    "load_summaries",
    "rotate_keys",
    "wait_until",
    "wake",
]

_log = logging.getLogger("awx_connection.stores")

_T = TypeVar("_T")

#: A stored connection row as rotate_keys reads it: ``(id, version, data)``.
StoredRow = tuple[str, int, object]

#: How many unreadable connection ids rotate_keys names in its error.
_SHOWN_UNREADABLE = 10


# --- argument checks ---------------------------------------------------------------------


def check_version(record: ConnectionRecord, expected_version: int) -> None:
    """Raise ``ValueError`` unless *record* is the version after *expected_version*."""
    if record.version != expected_version + 1:
        msg = (
            f"connection {record.id!r}: the new record's version must be "
            f"{expected_version + 1}, not {record.version}"
        )
        raise ValueError(msg)


def check_limit(limit: int) -> None:
    """Raise ``ValueError`` unless *limit* (of ``read_outbox``) is at least 1."""
    if limit < 1:
        msg = f"limit must be at least 1, not {limit}"
        raise ValueError(msg)


def check_event(record: ConnectionRecord, event: ConnectionEvent) -> None:
    """
    Raise ``ValueError`` unless *event* belongs to *record*'s connection, and
    :class:`~awx_connection.InvalidArgumentError` unless its text can be stored.
    """
    if event.connection_id != record.id:
        msg = f"connection {record.id!r}: the event belongs to {event.connection_id!r}"
        raise ValueError(msg)
    check_text("event reason", event.reason)
    check_text("event external_id", event.external_id, optional=True)
    check_text("event account_id", event.account_id, optional=True)


def check_record(record: ConnectionRecord) -> None:
    """
    Raise :class:`~awx_connection.InvalidArgumentError` unless every text
    field of *record*, its secrets included, is a string that encodes as
    UTF-8 (``None`` where the field is optional).

    Every store runs it before writing, so a bad value is the same typed
    error in memory (which would keep it), in SQLite (``UnicodeEncodeError``
    from the driver, ``TypeError`` from orjson) and in PostgreSQL. Messages
    name the field, never its value. Mirrors the fields of
    :func:`~awx_connection._records.dump_record`.
    """
    check_text("connection id", record.id)
    where = f"connection {record.id!r}: "
    check_text(where + "reason", record.reason)
    check_text(where + "external_id", record.external_id, optional=True)
    check_text(where + "account_id", record.account_id, optional=True)
    check_text(where + "write_id", record.write_id)
    for scope in record.scopes:
        check_text(where + "a scope", scope)
    if record.code is not None:
        check_text(where + "code", record.code.reveal())
    auth = record.authorization
    if auth is not None:
        check_text(where + "state_hash", auth.state_hash, optional=True)
        check_text(where + "redirect_uri", auth.redirect_uri)
        if auth.code_verifier is not None:
            check_text(where + "code_verifier", auth.code_verifier.reveal())
    tokens = record.tokens
    if tokens is not None:
        check_text(where + "access_token", tokens.access_token.reveal())
        check_text(where + "refresh_token", tokens.refresh_token.reveal())
        for scope in tokens.scope:
            check_text(where + "a token scope", scope)


def check_filters(*, external_id: str | None, account_id: str | None) -> None:
    """
    Raise :class:`~awx_connection.InvalidArgumentError` unless the filters of
    ``list_connections`` are ``None`` or text: a lone surrogate matches no
    stored row, and only memory could even look for it.
    """
    check_text("external_id", external_id, optional=True)
    check_text("account_id", account_id, optional=True)


def check_keys(store: str, keys: KeyRing | None, *, allow_plaintext: bool) -> None:
    """
    Raise :class:`~awx_connection.ConfigurationError` unless a durable store
    has *keys* or was told *allow_plaintext*.

    Without keys, access and refresh tokens, codes and verifiers are written
    in the clear to the database, its logs and every backup. That must be a
    visible decision, never what a forgotten ``keys=`` (or an unset
    ``AWX_ENCRYPTION_KEYS``) does silently; the message says how to get a key.
    """
    if keys is None and not allow_plaintext:
        msg = (
            f"{store} store: no encryption keys, so tokens would be stored in plaintext; "
            "generate a key with 'awx-connection keys new' and pass keys=KeyRing.from_env() "
            "(it reads AWX_ENCRYPTION_KEYS), or accept plaintext explicitly with "
            "allow_plaintext=True (AWX_ALLOW_PLAINTEXT=1 for the CLI)"
        )
        raise ConfigurationError(msg)


# --- waiting -----------------------------------------------------------------------------


def wake(waiters: set[asyncio.Future[None]]) -> None:
    """Resolve and forget every future in *waiters*; each waiter re-checks its own condition."""
    pending = list(waiters)
    waiters.clear()
    for waiter in pending:
        if not waiter.done():
            waiter.set_result(None)


async def wait_until(
    check: Callable[[], Awaitable[_T | None]],
    seconds: float,
    waiters: set[asyncio.Future[None]],
    *,
    poll: tuple[float, float] | None = None,
) -> _T | None:
    """
    Run *check* until it returns a value or *seconds* pass; the value, or ``None``.

    *check* always runs at least once. In between, the caller sleeps on a
    future in *waiters*, which :func:`wake` resolves after each write made
    through the same store object. Without *poll* that is the only way to
    be woken early (every write happens in this process). With
    ``poll=(first, longest)`` the sleep is also cut to a pause of *first*
    seconds, doubling up to *longest* while nothing wakes it and starting
    again from *first* after a wake: for a database that other processes
    write, which nothing in this one would notice.
    """
    first, longest = (math.inf, math.inf) if poll is None else poll
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pause = first
    while True:
        found = await check()
        remaining = deadline - loop.time()
        if found is not None or remaining <= 0:
            return found
        waiter: asyncio.Future[None] = loop.create_future()
        waiters.add(waiter)
        try:
            woken, _ = await asyncio.wait({waiter}, timeout=min(pause, remaining))
        finally:
            waiters.discard(waiter)
            waiter.cancel()
        pause = first if woken else min(pause * 2, longest)


# --- stored rows -------------------------------------------------------------------------


def _decode(connection_id: str, what: str, data: object) -> dict[str, Any]:
    """The stored JSON object *data* (a *what* of *connection_id*), or ``StoreError``."""
    try:
        value = orjson.loads(data)  # type: ignore[arg-type]  # checked by orjson
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        msg = f"connection {connection_id!r}: stored {what} is corrupt (not a JSON object)"
        raise StoreError(msg)
    return value


def _fields_of(connection_id: str, data: object) -> dict[str, Any]:
    """The decoded record JSON *data* of *connection_id*'s row, checked to be its own."""
    return _own(connection_id, _decode(connection_id, "record", data))


def _own(connection_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Decoded record *fields*, checked to be those of *connection_id*'s row."""
    if fields.get("id") != connection_id:
        msg = f"connection {connection_id!r}: stored record is corrupt (id mismatch)"
        raise StoreError(msg)
    return fields


def load_stored_record(connection_id: str, data: object, keys: KeyRing | None) -> ConnectionRecord:
    """
    The record stored as JSON *data* in the row of *connection_id*.

    Raises:
        DecryptionError: A secret does not decrypt with *keys*.
        StoreError: *data* does not decode, or is another connection's record.
    """
    return load_record(_fields_of(connection_id, data), keys)


def load_stored_summary(connection_id: str, data: object) -> ConnectionSummary:
    """
    The summary of the record stored as JSON *data* in the row of
    *connection_id*, decrypting nothing.

    Raises:
        StoreError: *data* does not decode, or is another connection's record.
    """
    return load_summary(_fields_of(connection_id, data))


def load_stored_event(connection_id: str, data: object) -> ConnectionEvent:
    """
    The event stored as JSON *data* for *connection_id*.

    Raises:
        StoreError: *data* does not decode (the message names the connection).
    """
    fields = _decode(connection_id, "event", data)
    try:
        return load_event(fields)
    except StoreError as exc:
        raise StoreError(f"connection {connection_id!r}: {exc}") from None


def load_listed(
    store: str, rows: Iterable[tuple[str, object]], keys: KeyRing | None
) -> list[ConnectionRecord]:
    """
    The records of ``(id, data)`` *rows*, in order, for ``list_connections``.

    A row that does not decrypt or decode is logged as an error (logger
    ``awx_connection.stores``, naming the connection) and left out, so one
    bad row cannot take the whole listing down; the row itself is untouched.
    """
    return _each_readable(
        store, "list_connections", rows, lambda i, data: load_stored_record(i, data, keys)
    )


def load_summaries(store: str, rows: Iterable[tuple[str, object]]) -> list[ConnectionSummary]:
    """The summaries of ``(id, data)`` *rows*, for ``list_summaries`` (bad rows: load_listed)."""
    return _each_readable(store, "list_summaries", rows, load_stored_summary)


def _each_readable(
    store: str,
    method: str,
    rows: Iterable[tuple[str, object]],
    load: Callable[[str, object], _T],
) -> list[_T]:
    loaded = []
    for connection_id, data in rows:
        try:
            loaded.append(load(connection_id, data))
        except StoreError as exc:  # DecryptionError included
            _log.error("%s store: %s left out connection %r: %s", store, method, connection_id, exc)
    return loaded


#: A listed row as ``load_page`` takes it: ``(id, data, created_at)``.
ListedRow = tuple[str, object, float]


async def load_page(
    fetch: Callable[[tuple[float, str] | None, int | None], Awaitable[Sequence[ListedRow]]],
    load: Callable[[Iterable[tuple[str, object]]], list[_T]],
    *,
    after: tuple[float, str] | None,
    limit: int | None,
) -> list[_T]:
    """
    One keyset page of ``list_connections`` or ``list_summaries``: what
    *load* (:func:`load_listed`, :func:`load_summaries`) makes of the rows.

    *fetch(after, wanted)* returns the rows keyed above *after* in
    ``(created_at, id)`` order, at most *wanted* (all when ``None``). A row
    left out because it does not decrypt does not count towards *limit*:
    the page is filled from the rows after the last one read, so only the
    last page of a walk is short, and each bad row is logged once per walk.
    """
    loaded: list[_T] = []
    while True:
        wanted = None if limit is None else limit - len(loaded)
        rows = await fetch(after, wanted)
        loaded.extend(load((row[0], row[1]) for row in rows))
        if limit is None or wanted is None or len(rows) < wanted or len(loaded) >= limit:
            return loaded
        last_id, _, last_created = rows[-1]
        after = (last_created, last_id)


# --- key rotation ------------------------------------------------------------------------


class _UnreadableRowError(Exception):
    """A row rotate_keys cannot decode or decrypt; the cause says why."""

    def __init__(self, *, plaintext: bool) -> None:
        super().__init__()
        #: Whether the row holds plaintext secrets (which only seal_plaintext accepts).
        self.plaintext = plaintext


def _stored_secrets(fields: dict[str, Any]) -> list[object]:
    """
    Every secret in stored *fields*, as stored (``None`` where absent).
    Mirrors where :func:`~awx_connection._records.dump_record` puts secrets.
    """
    secrets: list[object] = [fields.get("code")]
    auth = fields.get("authorization")
    if isinstance(auth, dict):
        secrets.append(auth.get("code_verifier"))
    tokens = fields.get("tokens")
    if isinstance(tokens, dict):
        secrets.extend([tokens.get("access_token"), tokens.get("refresh_token")])
    return secrets


def _sealed_with_primary(secrets: list[object], keys: KeyRing) -> bool:
    """Whether every one of *secrets* is an envelope of the primary key (or absent)."""
    return all(
        value is None or (isinstance(value, str) and keys.key_of(value) == keys.primary)
        for value in secrets
    )


def _holds_plaintext(secrets: list[object]) -> bool:
    """Whether one of *secrets* is a string that is not an envelope: plaintext."""
    return any(isinstance(value, str) and not KeyRing.is_envelope(value) for value in secrets)


async def rotate_keys(
    store: str,
    keys: KeyRing | None,
    *,
    rows: Callable[[], AsyncGenerator[StoredRow, None]],
    write: Callable[[str, int, bytes], Awaitable[bool]],
    reread: Callable[[str], Awaitable[tuple[int, object] | None]],
    decrypt_sealed: bool,
    seal_plaintext: bool,
) -> int:
    """
    Reseal every row of *rows* not sealed with the primary key; return how many changed.

    The store supplies its database's part:

    * *rows*: every connection row, ``(id, version, data)``, a page at a time;
    * *write*: ``(id, version, sealed JSON)``, the compare-and-swap that
      replaces the row's data if its version is still *version* (leaving the
      version alone); whether it did;
    * *reread*: the row's current ``(version, data)``, ``None`` once deleted.

    A row whose write loses to a concurrent one is re-read and tried again,
    so a concurrent write is never undone. *decrypt_sealed*: whether a row
    already sealed with the primary key is still decrypted (and reported if
    it does not open) rather than skipped unread.

    A row holding a plaintext secret is unreadable, as it is to every read
    with keys (a token swapped in by someone who can write the database
    looks exactly like one written before encryption), unless
    *seal_plaintext*: the operator's explicit word that such rows predate
    encryption. Each one sealed is then logged (WARNING, naming the
    connection), so what was accepted can be reviewed.

    Raises:
        StoreError: *keys* is ``None``; or some rows could not be read (each
            logged with its id; every other row was rotated and stays
            rotated, so the call can simply be repeated).
    """
    if keys is None:
        msg = f"{store} store: rotate_keys needs keys; this store was opened with keys=None"
        raise StoreError(msg)
    rewritten = 0
    unreadable: list[str] = []
    plaintext = 0
    async with contextlib.aclosing(rows()) as stored:
        async for connection_id, version, data in stored:
            try:
                if await _rotate_row(
                    store,
                    keys,
                    (connection_id, version, data),
                    write,
                    reread,
                    decrypt_sealed=decrypt_sealed,
                    seal_plaintext=seal_plaintext,
                ):
                    rewritten += 1
            except _UnreadableRowError as exc:
                _log.error("%s store: rotate_keys skipped %s", store, exc.__cause__)
                unreadable.append(connection_id)
                plaintext += exc.plaintext
    if unreadable:
        shown = ", ".join(repr(connection_id) for connection_id in unreadable[:_SHOWN_UNREADABLE])
        extra = len(unreadable) - _SHOWN_UNREADABLE
        more = f" and {extra} more" if extra > 0 else ""
        msg = (
            f"{store} store: rotate_keys re-encrypted {rewritten} connection(s) but could "
            f"not read {len(unreadable)}, which keep their old key: {shown}{more}"
        )
        if plaintext:
            msg += (
                f"; {plaintext} of them hold plaintext secrets, which only "
                "rotate_keys(seal_plaintext=True) ('awx-connection keys seal') encrypts"
            )
        raise StoreError(msg)
    return rewritten


async def _rotate_row(
    store: str,
    keys: KeyRing,
    row: StoredRow,
    write: Callable[[str, int, bytes], Awaitable[bool]],
    reread: Callable[[str], Awaitable[tuple[int, object] | None]],
    *,
    decrypt_sealed: bool,
    seal_plaintext: bool,
) -> bool:
    """Reseal one row with the primary key unless it is already; retry if it moves."""
    connection_id, version, data = row
    while True:
        plaintext = False
        try:
            fields = _decode(connection_id, "record", data)
            secrets = _stored_secrets(fields)
            sealed = _sealed_with_primary(secrets, keys)
            if sealed and not decrypt_sealed:
                return False
            plaintext = _holds_plaintext(secrets)
            record = load_record(_own(connection_id, fields), keys, accept_plaintext=seal_plaintext)
        except StoreError as exc:
            raise _UnreadableRowError(plaintext=plaintext) from exc
        if sealed:
            return False
        if await write(connection_id, version, orjson.dumps(dump_record(record, keys))):
            if plaintext:
                _log.warning(
                    "%s store: rotate_keys sealed plaintext secrets of connection %r",
                    store,
                    connection_id,
                )
            return True
        current = await reread(connection_id)
        if current is None:
            return False
        version, data = current
