"""
Stores and managers, as the commands get them from ``--store`` and the
environment.

:func:`store_from` reads the store URL and the keys and refuses a durable
store without keys before anything is opened. Managers come in two kinds.
:func:`provider_manager` reads credentials with :meth:`Config.from_env`,
for commands that talk to Airwallex. Commands that only change the store
(``disconnect``) use :func:`offline_manager`, so an operator can act on a
connection from a box that holds the store URL and the encryption keys but
not the client secret. Commands that only read use the store directly
(:func:`opened_store`) and need neither.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator

import attrs

from .._config import Config, Endpoints
from .._connection import Connection
from .._crypto import KeyRing
from .._errors import ConfigurationError, ConnectionNotFoundError
from .._manager import ConnectionManager
from .._store import Store
from ..stores import open_store

__all__ = [
    "offline_config",
    "offline_manager",
    "one_shot_manager",
    "opened_store",
    "provider_manager",
    "read_connection",
    "store_from",
    "unreadable_rows",
]


def store_from(
    args: argparse.Namespace, *, touches_secrets: bool = True, create: bool = False
) -> tuple[Store, KeyRing | None]:
    """
    The store of ``--store``/``AWX_STORE``, unopened, and its keys.

    Only ``db migrate`` passes *create*: every other command opens the store
    as it is, so a mistyped path or database is an error (exit 2, naming
    ``db migrate``), never a new empty store, and no command but that one
    changes a schema.

    Keys come from ``AWX_ENCRYPTION_KEYS``. Without them a durable store is
    refused (exit 2, naming ``awx-connection keys new``) unless
    ``AWX_ALLOW_PLAINTEXT=1``; the check is made before anything is opened,
    so a refused command creates no file and migrates nothing. Only a
    command that reads and writes no record (*touches_secrets* false: ``db
    migrate``) goes without.
    """
    url = args.store or os.environ.get("AWX_STORE")
    if not url:
        msg = "no store: pass --store URL or set AWX_STORE"
        raise ConfigurationError(msg)
    keys = _keys()
    allow_plaintext = _allow_plaintext() or not touches_secrets
    return open_store(url, keys=keys, allow_plaintext=allow_plaintext, create=create), keys


def _keys() -> KeyRing | None:
    """``AWX_ENCRYPTION_KEYS``, parsed; ``None`` when unset or empty."""
    if not os.environ.get("AWX_ENCRYPTION_KEYS"):
        return None
    try:
        return KeyRing.from_env()
    except ConfigurationError as exc:  # KeyRing.parse names no variable
        raise ConfigurationError(f"AWX_ENCRYPTION_KEYS: {exc}") from None


def _allow_plaintext() -> bool:
    """
    ``AWX_ALLOW_PLAINTEXT``: ``1`` allows a store without keys; unset, empty or
    ``0`` refuses. Anything else is an error rather than a guess: a
    ``true`` or ``yes`` meant to allow must not silently refuse, nor a typo allow.
    """
    value = os.environ.get("AWX_ALLOW_PLAINTEXT", "")
    if value not in ("", "0", "1"):
        msg = "AWX_ALLOW_PLAINTEXT must be 1 (store secrets in plaintext) or 0 (refuse)"
        raise ConfigurationError(msg)
    return value == "1"


@contextlib.asynccontextmanager
async def opened_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    """The store named by ``--store``/``AWX_STORE``, opened, closed afterwards."""
    store, _ = store_from(args)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def read_connection(store: Store, connection_id: str) -> Connection:
    """
    The snapshot of *connection_id*, read from the store without a manager
    (so reading needs no credentials).

    Raises:
        ConnectionNotFoundError: No such connection (exit code 3).
    """
    record = await store.get(connection_id)
    if record is None:
        raise ConnectionNotFoundError(connection_id)
    return Connection.from_record(record)


@contextlib.asynccontextmanager
async def provider_manager(args: argparse.Namespace) -> AsyncIterator[ConnectionManager]:
    """
    An open manager with credentials from the environment, for commands that
    talk to Airwallex. The configuration is read before the store is opened,
    so missing credentials fail fast with exit code 2 and touch nothing.
    """
    config = Config.from_env()
    store, _ = store_from(args)
    async with one_shot_manager(config, store) as manager:
        yield manager


def offline_config() -> Config:
    """
    A placeholder :class:`Config` for manager operations that never reach
    Airwallex.

    :class:`ConnectionManager` requires a Config even for transitions that
    only write the store (``revoke``). Rather than demand the client secret
    for those, the CLI gives it this one: its endpoints are on the reserved
    ``.invalid`` domain, so if a future change ever made such an operation
    call the provider, it would fail at DNS instead of sending anything
    anywhere, and the credentials are obviously not real ones.
    """
    return Config(
        client_id="awx-connection-cli-offline",
        client_secret="placeholder-never-sent",
        redirect_uri="https://awx-connection.invalid/callback",
        endpoints=Endpoints.from_base_url("https://awx-connection.invalid"),
    )


@contextlib.asynccontextmanager
async def offline_manager(args: argparse.Namespace) -> AsyncIterator[ConnectionManager]:
    """An open manager on the store with :func:`offline_config`, for store-only writes."""
    store, _ = store_from(args)
    async with one_shot_manager(offline_config(), store) as manager:
        yield manager


def one_shot_manager(config: Config, store: Store) -> ConnectionManager:
    """
    A manager for one command: no keep-alive pass, no settling of other
    connections behind the back of the one the command is about, and no
    retention sweep (a command that reads must not delete).
    """
    quiet = attrs.evolve(config, timing=attrs.evolve(config.timing, prune_interval=None))
    return ConnectionManager(quiet, store=store, keepalive=False, settle=False)


class _RowReports(logging.Handler):
    """
    Collects the rows a store reports it could not read, and passes on the rest.

    By the Store contract a row that does not decrypt or decode is left out
    of a listing (``list_connections``) or skipped by a rotation
    (``rotate_keys``) and logged as an ERROR on ``awx_connection.stores``,
    naming it. Those reports are the exact count: the store's own filters
    (``--external-id``, ``--account-id``) decided which unreadable rows
    belonged to the listing, while a summary (``list_summaries``, which
    decrypts nothing) carries neither id, so comparing two listings could
    not tell. Only records of this thread count (``main()`` may run in
    several threads of one process). A report it collects is not printed
    (the command's one line replaces the per-row lines, and ``connections
    show ID`` says why a row fails); any other record goes to stderr as it
    would have without this handler (Python's last-resort handler), unless
    logging was configured.
    """

    def __init__(self, method: str) -> None:
        super().__init__(logging.NOTSET)
        self.pattern = re.compile(rf" {method} (?:left out|skipped) connection ('[^']*')")
        self.thread = threading.get_ident()
        self.ids: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and record.thread == self.thread:
            found = self.pattern.search(record.getMessage())
            if found:
                self.ids.append(found.group(1))
                return
        last_resort = logging.lastResort
        if (
            last_resort is not None
            and not logging.getLogger().handlers
            and record.levelno >= last_resort.level
        ):
            last_resort.handle(record)


@contextlib.contextmanager
def unreadable_rows(method: str) -> Iterator[list[str]]:
    """
    The ids (quoted) of the rows the store's *method* (``list_connections``,
    ``rotate_keys``) reports unreadable while the block runs.
    """
    logger = logging.getLogger("awx_connection.stores")
    handler = _RowReports(method)
    logger.addHandler(handler)
    try:
        yield handler.ids
    finally:
        logger.removeHandler(handler)
