"""
``awx-connection connections ...``: look at and act on stored connections.

``list`` and ``show`` read the store directly and need no credentials: an
operator answering "is customer X connected?" should not need the client
secret. ``list`` exits 1 when the store left rows out because they do not
read (wrong or missing keys): a short answer must never look complete.
``disconnect`` writes the store only (see
:func:`~awx_connection.cli._stores.offline_config`). ``refresh`` and
``reauthorize`` need the provider, so they read ``Config.from_env()``.

Each command prints a human view by default and, with ``--json``, one JSON
object (one per line for ``list``) built from :class:`Connection`, which
holds no secret. ``reauthorize`` is the exception that proves the rule: its
result *is* an authorize URL carrying ``state``, to be handed to the
customer.
"""

from __future__ import annotations

import argparse

from .._connection import Connection
from .._errors import IllegalTransitionError, VersionConflictError
from .._manager import ConnectionManager
from .._states import TERMINAL_STATES, ConnectionState
from ._exits import EXIT_FAILED, EXIT_OK
from ._output import connection_json, emit, emit_json, note, table, when
from ._stores import (
    offline_manager,
    opened_store,
    provider_manager,
    read_connection,
    unreadable_rows,
)

__all__ = ["disconnect", "list_connections", "reauthorize", "refresh", "show"]

#: Compare-and-swap losses ``disconnect`` retries: another process (a
#: replica refreshing the connection) may write between our read and ours.
_DISCONNECT_ATTEMPTS = 3

#: Unreadable connections named in ``list``'s message; the rest are counted.
_SHOWN_UNREADABLE = 5


def _unreadable_message(ids: list[str], shown: int) -> str:
    named = ", ".join(ids[:_SHOWN_UNREADABLE])
    more = f" and {len(ids) - _SHOWN_UNREADABLE} more" if len(ids) > _SHOWN_UNREADABLE else ""
    return (
        f"awx-connection: {len(ids)} connection(s) could not be read and are not shown "
        "(wrong or missing AWX_ENCRYPTION_KEYS, or secrets stored in plaintext: see "
        f"'awx-connection keys seal'): {named}{more}; shown: {shown}"
    )


def _generation(connection: Connection) -> str:
    return "-" if connection.token_generation is None else str(connection.token_generation)


async def list_connections(args: argparse.Namespace) -> int:
    """
    ``connections list``: every stored connection matching all filters,
    oldest first; exit 1 if the store left some out as unreadable.
    """
    states = [ConnectionState(value) for value in args.state] if args.state else None
    async with opened_store(args) as store:
        with unreadable_rows("list_connections") as left_out:
            records = await store.list_connections(
                states=states, external_id=args.external_id, account_id=args.account_id
            )
    connections = [Connection.from_record(record) for record in records]
    _print_listing(args, connections)
    if left_out:
        note(_unreadable_message(left_out, len(connections)))
        return EXIT_FAILED
    if not connections:
        # stderr: a script counting stdout lines must see zero rows.
        note("no connections match")
    return EXIT_OK


def _print_listing(args: argparse.Namespace, connections: list[Connection]) -> None:
    """The rows of ``list``: JSON Lines, or a table (nothing at all for no rows)."""
    if args.json:
        for connection in connections:
            emit_json(connection_json(connection))
        return
    if not connections:
        return
    rows = [
        [
            c.id,
            c.state.value,
            c.account_id or "-",
            c.external_id or "-",
            _generation(c),
            when(c.updated_at),
            c.reason,
        ]
        for c in connections
    ]
    headers = ["ID", "STATE", "ACCOUNT", "EXTERNAL ID", "GEN", "UPDATED", "REASON"]
    for line in table(headers, rows):
        emit(line)


def _details(connection: Connection) -> list[str]:
    """The ``show`` view: one field per line, labels aligned."""
    fields = [
        ("id", connection.id),
        ("state", connection.state.value),
        ("reason", connection.reason),
        ("account", connection.account_id or "-"),
        ("external id", connection.external_id or "-"),
        ("scopes", " ".join(connection.scopes) or "-"),
        ("token generation", _generation(connection)),
        ("access expires", when(connection.access_expires_at)),
        ("refresh expires", when(connection.refresh_expires_at)),
        ("created", when(connection.created_at)),
        ("updated", when(connection.updated_at)),
        ("version", str(connection.version)),
        ("events", str(connection.sequence)),
    ]
    width = max(len(label) for label, _ in fields)
    return [f"{label.ljust(width)}  {value}" for label, value in fields]


def _print_connection(args: argparse.Namespace, connection: Connection) -> None:
    if args.json:
        emit_json(connection_json(connection))
    else:
        for line in _details(connection):
            emit(line)


async def show(args: argparse.Namespace) -> int:
    """``connections show ID``: one connection's snapshot."""
    async with opened_store(args) as store:
        connection = await read_connection(store, args.id)
    _print_connection(args, connection)
    return EXIT_OK


async def refresh(args: argparse.Namespace) -> int:
    """
    ``connections refresh ID``: rotate the tokens now, through the manager, so
    the rotation is single-flight across processes and journaled like any
    other (a replica refreshing at the same moment is joined, not raced).
    """
    async with provider_manager(args) as manager:
        before = await manager.get(args.id)
        after = await manager.refresh(args.id)
    if args.json:
        emit_json(connection_json(after))
    else:
        emit(
            f"{after.id}: {after.state.value}, token generation "
            f"{_generation(before)} -> {_generation(after)}, "
            f"access token valid until {when(after.access_expires_at)}"
        )
    return EXIT_OK


async def disconnect(args: argparse.Namespace) -> int:
    """
    ``connections disconnect ID``: mark an active (or refreshing) connection
    ``revoked`` with :meth:`ConnectionManager.revoke`. Only the store changes;
    Airwallex is not called. A connection that ended already (revoked by
    an earlier run, a webhook, another operator; or invalidated, expired)
    is left as it is: exit 0, saying so, its reason and events unchanged.
    """
    async with offline_manager(args) as manager:
        connection, changed = await _revoke_unless_revoked(manager, args)
    if args.json:
        emit_json(connection_json(connection) | {"changed": changed})
    elif changed:
        emit(f"{connection.id}: {connection.state.value} ({connection.reason})")
    else:
        emit(f"{connection.id}: already {connection.state} ({connection.reason}); nothing changed")
    return EXIT_OK


async def _revoke_unless_revoked(
    manager: ConnectionManager, args: argparse.Namespace
) -> tuple[Connection, bool]:
    """The connection after ``disconnect``, and whether this run revoked it."""
    for attempt in range(1, _DISCONNECT_ATTEMPTS + 1):
        current = await manager.get(args.id)
        if current.state in TERMINAL_STATES:
            return current, False  # ended already: nothing to disconnect
        try:
            return await manager.revoke(args.id, reason=args.reason), True
        except IllegalTransitionError as exc:
            if exc.state not in TERMINAL_STATES:
                raise
            return await manager.get(args.id), False  # revoked by someone else meanwhile
        except VersionConflictError:
            # The manager reloaded the newer record; try again on it.
            if attempt == _DISCONNECT_ATTEMPTS:
                raise
    raise AssertionError  # pragma: no cover - the loop returns or raises


async def reauthorize(args: argparse.Namespace) -> int:
    """
    ``connections reauthorize ID``: back to ``pending`` with a new authorize
    URL, printed for the operator to hand to the customer. The URL is the
    result, so it goes to stdout alone (``url=$(awx-connection ...)`` works);
    the explanation goes to stderr.
    """
    async with provider_manager(args) as manager:
        before = await manager.get(args.id)
        request = await manager.reauthorize(
            args.id, scopes=args.scope or None, sign_up=args.sign_up
        )
        after = await manager.get(args.id)
    if args.json:
        emit_json(
            connection_json(after)
            | {"authorize_url": request.url, "authorize_url_expires_at": request.expires_at}
        )
        return EXIT_OK
    note(
        f"{after.id} is {after.state.value} again (was {before.state.value}). "
        f"Send the customer this URL; it works once, until {when(request.expires_at)}, "
        "and the redirect must reach the service that handles AWX_REDIRECT_URI on this store:"
    )
    emit(request.url)
    return EXIT_OK
