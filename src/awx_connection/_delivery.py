"""
What a relay hands a sink, and what it keeps when a sink gives up.

The outbox gives every event a global position; a relay
(:mod:`awx_connection.relay`) reads it and hands the events to an
:class:`EventSink`: a broker, a partner's webhook endpoint. Three values
cross that boundary, kept apart from both sides so that the store (which
keeps dead letters) needs neither the relay nor any sink:

* :class:`OutboxItem`: one event with its position. The position is the
  event's stable id everywhere it goes (``Nats-Msg-Id``, ``webhook-id``),
  so a re-send after a crash carries the same id and the other side can
  drop it.
* :class:`DeadLetter`: an event a sink refused for good (every attempt
  failed); stored so that nothing is lost silently, and replayed later.
* :class:`EventSink`: the protocol a sink implements.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, final

import attrs

from ._events import ConnectionEvent
from ._records import dump_event

__all__ = ["DeadLetter", "EventSink", "OutboxItem", "Refused", "event_body"]


@final
@attrs.frozen
class OutboxItem:
    """One event of the outbox, with the position that identifies it."""

    position: int
    event: ConnectionEvent

    @property
    def id(self) -> str:
        """
        The stable id of the event: its outbox position, in decimal.

        Positions are never reused (not even after pruning), and a re-send
        of the same event carries the same id.
        """
        return str(self.position)


def event_body(item: OutboxItem) -> dict[str, Any]:
    """
    The JSON body every sink sends for *item*, in the Standard Webhooks
    shape: ``{"id", "type", "timestamp", "data"}``, where ``type`` is
    ``connection.<trigger>`` and ``data`` the event's fields (no secret).
    """
    event = item.event
    return {
        "id": item.id,
        "type": f"connection.{event.trigger.value}",
        "timestamp": datetime.fromtimestamp(event.at, UTC).isoformat().replace("+00:00", "Z"),
        "data": dump_event(event),
    }


@final
@attrs.frozen
class Refused:
    """An item a sink gave up on: after how many attempts, and why."""

    item: OutboxItem
    #: A status or exception class; never a body or a secret.
    error: str
    attempts: int


@final
@attrs.frozen
class DeadLetter:
    """
    An event a relay's sink gave up on after its last attempt.

    Kept in the store (:class:`~awx_connection.RelayLedger`) under the
    relay's name and the event's position until it is replayed
    (``awx-connection events dead-letters replay``).
    """

    relay: str
    position: int
    event: ConnectionEvent
    #: How many attempts were made, in all (replays included).
    attempts: int
    #: Why the last attempt failed (a status or exception class; no body, no secret).
    error: str
    #: When it was dead-lettered, on the relay's clock.
    at: float

    @property
    def item(self) -> OutboxItem:
        """The event as a sink takes it."""
        return OutboxItem(self.position, self.event)


class EventSink(Protocol):
    """
    **Protocol:** where a relay delivers events: a broker, a webhook endpoint.

    A relay calls :meth:`open` once, then :meth:`deliver` with batches in
    outbox order, then :meth:`aclose`. :meth:`deliver` must keep the order
    of each connection's events, and may be called again with events it
    delivered already (after a crash, the relay re-sends from its last
    committed position): ids are stable for that reason.
    """

    @property
    def name(self) -> str:
        """What the sink is, for logs and messages (an URL without credentials)."""
        ...

    async def open(self) -> None:
        """Connect (and create what is missing, such as a stream)."""
        ...

    async def deliver(self, items: Sequence[OutboxItem]) -> Sequence[Refused]:
        """
        Deliver *items*, each connection's in the order given.

        Returns:
            The items given up on (the relay stores them as
            :class:`DeadLetter` records and moves on); empty when all were
            delivered.

        Raises:
            SinkError: Nothing can be delivered now (the broker is
                unreachable): the relay keeps its position and tries the
                batch again later, so nothing is lost or dead-lettered.
        """
        ...

    async def aclose(self) -> None:
        """Flush and disconnect. Idempotent."""
        ...
