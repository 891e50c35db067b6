"""
Implementations of the :class:`~awx_connection.Store` contract.

Stores live in their own namespace because the core never needs them: the
manager talks only to the protocol, so a backend can be swapped (or one of
your own plugged in) without touching it, and a backend's driver is imported
only by code that asks for that backend. That is why :class:`PostgresStore`
and :class:`SQLiteStore` are resolved lazily (module ``__getattr__``):
importing this package never imports ``asyncpg``, nor ``sqlite3`` and the
SQLite store (5 ms of a cold import) for a process that uses PostgreSQL.
Every store here passes the same contract suite,
:mod:`awx_connection.testing.store_contract`, which checks a store of your
own too.

:func:`open_store` picks one from a URL, for settings files and the CLI.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .._errors import ConfigurationError
from ._memory import MemoryStore

if TYPE_CHECKING:
    from .._crypto import KeyRing
    from .._store import Store
    from ._postgres import PostgresStore
    from ._sqlite import SQLiteStore

__all__ = ["MemoryStore", "PostgresStore", "SQLiteStore", "open_store"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")

#: How to get asyncpg: it is an extra, so that a service on SQLite installs no
#: PostgreSQL driver (and its compiled wheel).
_POSTGRES_INSTALL = "install it with: pip install 'awx-connection[postgres]'"


def __getattr__(name: str) -> object:
    """Import :class:`PostgresStore` and :class:`SQLiteStore` (and their drivers) on first use."""
    if name == "PostgresStore":
        try:
            from ._postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            # Still an ImportError (``from ... import PostgresStore`` fails as
            # usual), with the extra to install in its message.
            msg = f"PostgresStore needs the asyncpg driver; {_POSTGRES_INSTALL}"
            raise ModuleNotFoundError(msg, name="asyncpg") from exc
        return PostgresStore
    if name == "SQLiteStore":
        from ._sqlite import SQLiteStore

        return SQLiteStore
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def open_store(
    url: str, *, keys: KeyRing | None = None, allow_plaintext: bool = False, create: bool = True
) -> Store:
    """
    The store a URL names; call :meth:`~awx_connection.Store.open` on it before use.

    * ``memory://``: a :class:`MemoryStore` (*keys* is not used: nothing
      leaves the process).
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: a
      :class:`SQLiteStore` on that file (SQLAlchemy's spelling: the path is
      what follows the third slash).
    * ``postgresql://...`` or ``postgres://...``: a :class:`PostgresStore`
      on that DSN (needs the ``postgres`` extra,
      ``pip install 'awx-connection[postgres]'``, which brings ``asyncpg``).

    Durable stores seal secrets with *keys*. Without keys they refuse to
    open unless *allow_plaintext* (tokens would be written in plaintext; see
    :class:`SQLiteStore`); the memory store takes neither.

    With ``create=False`` a durable store's :meth:`~awx_connection.Store.open`
    creates no file, schema or table and migrates nothing: a store that does
    not exist or is not at this library's schema raises
    :class:`~awx_connection.StoreNotMigratedError`, naming the path or the
    schema (never the URL's password) and ``awx-connection db migrate``.

    Raises:
        ConfigurationError: Any other URL, a malformed PostgreSQL URL, a
            PostgreSQL URL without ``asyncpg`` (the message names the
            extra to install), or a durable store without
            *keys* or *allow_plaintext*. The message never shows the URL
            beyond its scheme, since a database URL may carry a password.
    """
    if url == "memory://":
        return MemoryStore()
    if url.startswith(_SQLITE_PREFIX) and url[len(_SQLITE_PREFIX) :]:
        from ._sqlite import SQLiteStore

        path = url[len(_SQLITE_PREFIX) :]
        return SQLiteStore(path, keys=keys, allow_plaintext=allow_plaintext, create=create)
    if url.startswith(_POSTGRES_SCHEMES):
        try:
            from ._postgres import PostgresStore
        except ImportError as exc:
            msg = (
                "a PostgreSQL store URL needs the asyncpg driver "
                f"({type(exc).__name__}); {_POSTGRES_INSTALL}"
            )
            raise ConfigurationError(msg) from exc
        return PostgresStore(url, keys=keys, allow_plaintext=allow_plaintext, create=create)
    scheme, sep, _ = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        scheme = "?"
    msg = (
        f"unsupported store URL (scheme {scheme!r}); use 'memory://', "
        "'sqlite:///<path>' ('sqlite:////<absolute path>') or 'postgresql://...'"
    )
    raise ConfigurationError(msg)
