"""
Lifecycle events to the partner's own systems: the outbox, relayed.

A :class:`Relay` reads the store's durable outbox and hands each event to
an :class:`EventSink`: :class:`NatsSink` (JetStream) or
:class:`WebhookSink` (signed Standard Webhooks to the partner's endpoint).
Delivery is at-least-once, in order per connection, with each event's
outbox position as its stable id; several relays on one store share the
work through leases, and a relay killed mid-batch loses nothing. Events a
sink gives up on are kept as :class:`DeadLetter` records, and
:func:`replay` sends them again. As a process:
``awx-connection events relay --to nats://... | https://...``.

The sinks import their client (``nats-py``, ``standardwebhooks``) only when
opened: install the extras ``awx-connection[nats]`` or
``awx-connection[webhooks]``.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from .._clock import Clock, SystemClock
from .._delivery import DeadLetter, EventSink, OutboxItem, Refused, event_body
from .._store import RelayLedger
from ._nats import NatsSink
from ._relay import PARTITIONS, Relay, RelayStatistics, RelayStore, partition_of
from ._webhook import WebhookSink

__all__ = [
    "DeadLetter",
    "EventSink",
    "NatsSink",
    "OutboxItem",
    "PARTITIONS",
    "Refused",
    "Relay",
    "RelayStatistics",
    "RelayStore",
    "WebhookSink",
    "event_body",
    "partition_of",
    "replay",
]


async def replay(
    store: RelayLedger,
    sink: EventSink,
    *,
    relay: str = "relay",
    positions: Collection[int] | None = None,
    clock: Clock | None = None,
) -> tuple[int, int]:
    """
    Send *relay*'s dead letters (those at *positions*, or all) to the opened
    *sink* again, in position order.

    A letter the sink takes is deleted; one it refuses again stays, with
    its attempts added up and the new error. A :class:`~awx_connection.SinkError`
    (the sink is down) propagates, leaving the rest untouched.

    Returns:
        ``(replayed, still_dead)``.
    """
    now = (clock or SystemClock()).now
    wanted = None if positions is None else set(positions)
    replayed = still_dead = 0
    after = 0
    while True:
        letters = await store.dead_letters(relay, after=after, limit=500)
        if not letters:
            return replayed, still_dead
        after = letters[-1].position
        for letter in letters:
            if wanted is not None and letter.position not in wanted:
                continue
            refused = await sink.deliver([letter.item])
            if refused:
                again = refused[0]
                await store.put_dead_letter(
                    attrs.evolve(
                        letter,
                        attempts=letter.attempts + again.attempts,
                        error=again.error,
                        at=now(),
                    )
                )
                still_dead += 1
            else:
                await store.delete_dead_letter(relay, letter.position)
                replayed += 1
