"""
What every command prints, and where.

Results go through :func:`emit` (stdout, flushed at once so ``--follow``
streams and pipes see each line as it happens), messages for people through
:func:`note` (stderr, so stdout holds only results). Everything printed is
built from :class:`~awx_connection.Connection` and
:class:`~awx_connection.ConnectionEvent`, which hold no token, code,
verifier or secret, so no command can print one by accident; the one
deliberate exception is the authorize URL (it carries ``state``), printed
by ``connections reauthorize`` and ``authorize`` only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson

from .._connection import Connection
from .._events import ConnectionEvent

__all__ = [
    "connection_json",
    "emit",
    "emit_json",
    "event_json",
    "event_line",
    "note",
    "table",
    "when",
]


def emit(line: str) -> None:
    """Print *line* to stdout and flush, so pipes and followers see it now."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def note(line: str) -> None:
    """Print a message for people to stderr (kept out of stdout for scripts)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def emit_json(value: dict[str, Any]) -> None:
    """Print *value* as one line of JSON (JSON Lines when called repeatedly)."""
    emit(orjson.dumps(value).decode())


def when(timestamp: float | None) -> str:
    """An epoch timestamp as ISO 8601 UTC to the second, or ``-``."""
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]


def connection_json(connection: Connection) -> dict[str, Any]:
    """
    The JSON form of a connection: every field of :class:`Connection`, the
    state as its value, times as epoch seconds (as the library keeps them).
    """
    data = attrs.asdict(connection)
    data["state"] = connection.state.value
    return data


def event_json(event: ConnectionEvent) -> dict[str, Any]:
    """The JSON form of an event; trigger, intent and states as their values."""
    data = attrs.asdict(event)
    data["trigger"] = event.trigger.value
    data["intent"] = event.intent.value
    data["source"] = None if event.source is None else event.source.value
    data["dest"] = event.dest.value
    return data


def event_line(event: ConnectionEvent) -> str:
    """One human line per event, readable while following a stream."""
    source = event.source.value if event.source is not None else "-"
    return (
        f"{when(event.at)}  {event.connection_id}  #{event.sequence:<3} "
        f"{source} -> {event.dest.value}  [{event.trigger.value}]  {event.reason}"
    )
