"""
Implementations of the :class:`~awx_connection.Store` contract.

Stores live in their own namespace because the core never needs them: the
manager talks only to the protocol, so a backend can be swapped (or one of
your own plugged in) without touching it, and a backend's driver is imported
only by code that asks for that backend. Every store here passes the same
contract suite, ``tests/test_store_contract.py``.

:func:`open_store` picks one from a URL, for settings files and the CLI.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .._errors import ConfigurationError
from ._memory import MemoryStore
from ._sqlite import SQLiteStore

if TYPE_CHECKING:
    from .._store import Store

__all__ = ["MemoryStore", "SQLiteStore", "open_store"]

_SQLITE_PREFIX = "sqlite:///"


def open_store(url: str) -> Store:
    """
    The store a URL names; call :meth:`~awx_connection.Store.open` on it before use.

    * ``memory://``: a :class:`MemoryStore`.
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: a
      :class:`SQLiteStore` on that file (SQLAlchemy's spelling: the path is
      what follows the third slash).

    Raises:
        ConfigurationError: Any other URL. The message names the scheme only,
            since a database URL may carry a password.
    """
    if url == "memory://":
        return MemoryStore()
    if url.startswith(_SQLITE_PREFIX) and url[len(_SQLITE_PREFIX) :]:
        return SQLiteStore(url[len(_SQLITE_PREFIX) :])
    scheme, sep, _ = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        scheme = "?"
    msg = (
        f"unsupported store URL (scheme {scheme!r}); "
        "use 'memory://' or 'sqlite:///<path>' ('sqlite:////<absolute path>')"
    )
    raise ConfigurationError(msg)
