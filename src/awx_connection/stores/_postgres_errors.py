"""
What the PostgreSQL store says when something fails: typed errors that
quote no row value and no password.

One job: turning what asyncpg would say into the library's errors.
Connection-level failures (connection refused or lost, server shutting
down, timeouts) become :class:`~awx_connection.StoreUnavailableError`, which
the store retries where that is safe; other database errors become
:class:`~awx_connection.StoreError`. Messages name the operation and the
connection, plus the server's primary message, never its ``DETAIL`` (which
quotes row values). A malformed database URL is described the same way
(:func:`dsn_problem`), without quoting any part of it, since it may hold a
password. Importing this module imports asyncpg: only the store does.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from typing import Any, Final

import asyncpg

from .._errors import StoreError, StoreUnavailableError

__all__ = ["dsn_problem", "translate"]

#: Errors meaning "the database could not be reached or dropped us".
#: ``TimeoutError`` is ``asyncio.TimeoutError`` and, like ``ConnectionError``,
#: an ``OSError``; they are listed for the reader.
_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # What asyncpg raises when a query is started on a connection whose
    # server just sent FATAL (killed while idle) but whose socket is not yet
    # seen closed: "cannot switch to state ...; another operation is in progress".
    asyncpg.exceptions.InternalClientError,
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
)

#: A bracketed IPv6 host and its optional port, as asyncpg reads one.
_IPV6_HOST_RE: Final = re.compile(r"\[[^\]]+\](?::([^,]*))?")


def dsn_problem(dsn: object) -> str | None:
    """
    What is wrong with *dsn* as asyncpg would parse it, or ``None``.

    asyncpg parses the URL only when it connects, in :meth:`PostgresStore.open`,
    and a port that is not a number or an unclosed IPv6 bracket is then a bare
    ``ValueError`` whose message quotes the offending text, which can be part
    of a password that was not percent-encoded (``u:pa@ss:wd@h`` reads as
    host ``ss``, port ``wd@h``). This follows asyncpg's reading (the user
    part ends at the *first* ``@``; hosts are comma-separated, each with an
    optional port) so that those mistakes are found at construction, and
    describes each without quoting any part of the URL.
    """
    if not isinstance(dsn, str):
        return f"the DSN must be a string, not {type(dsn).__name__}"
    try:
        parts = urllib.parse.urlsplit(dsn)
        urllib.parse.parse_qs(parts.query, strict_parsing=bool(parts.query))
    except ValueError as exc:
        unclosed = "IPv6" in str(exc)
        return (
            "an IPv6 host's '[' is not closed by ']'"
            if unclosed
            else "it is not a parsable URL (its query string is malformed)"
        )
    if parts.scheme not in ("postgresql", "postgres"):
        return "the scheme must be 'postgresql://' or 'postgres://'"
    _, at, hosts = parts.netloc.partition("@")
    hostlist = hosts if at else parts.netloc
    if not hostlist:
        return None  # no host: libpq's defaults (a local socket, or ?host=)
    for number, host in enumerate(hostlist.split(","), start=1):
        if not host:
            return f"host {number} of the host list is empty"
        if host.startswith("["):
            matched = _IPV6_HOST_RE.match(host)
            if matched is None:
                return f"host {number} is not a valid bracketed IPv6 address"
            port = matched.group(1) or ""
        else:
            port = host.partition(":")[2]
        port = urllib.parse.unquote(port)
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return (
                f"the port of host {number} is not a number from 1 to 65535 (if the "
                "password holds '@', ':' or '/', percent-encode it: '@' is %40)"
            )
    return None


def translate(action: str, exc: Exception, *, write: bool) -> StoreError | None:
    """The StoreError for a driver or OS error; ``None`` for anything else (re-raise it)."""
    if isinstance(exc, StoreError):
        return None
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and isinstance(exc, ValueError):
        # An argument the driver could not encode: a bug; its message quotes the value.
        return StoreError(f"postgres store: {action} failed ({type(exc).__name__})")
    if isinstance(exc, _UNAVAILABLE):
        if isinstance(exc, asyncpg.exceptions.PostgresError):
            detail = f"{type(exc).__name__}: {_primary_message(exc)}"
        else:
            detail = f"{type(exc).__name__}: {exc}"[:300]
        msg = f"postgres store: {action} failed: the database is unavailable ({detail})"
        if write:
            msg += "; the write may or may not have committed: re-read before deciding"
        return StoreUnavailableError(msg)
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return StoreError(f"postgres store: {action} failed ({_describe_server_error(exc)})")
    return None


def _primary_message(exc: Any) -> str:
    """The server's primary message: never its DETAIL, which may quote row values."""
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else "")
    return str(message)[:300]


def _describe_server_error(exc: Any) -> str:
    constraint = getattr(exc, "constraint_name", None)
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError) and constraint:
        if constraint == "connections_pkey":
            return "the id exists"
        if constraint == "connections_state_hash_key":
            return "its state hash belongs to another connection"
        if constraint == "events_connection_id_sequence_key":
            return "the event sequence exists"
    name, sqlstate = type(exc).__name__, getattr(exc, "sqlstate", "?")
    if isinstance(exc, asyncpg.exceptions.DataError):
        # Class 22 (data exceptions): the primary message itself quotes the
        # value that did not fit ('invalid input syntax for type json: "..."').
        return f"{name} {sqlstate}: a value the database refused"
    return f"{name} {sqlstate}: {_primary_message(exc)}"
