"""
What both exporters measure, decided once from a manager's events.

The Prometheus and OpenTelemetry classes differ only in the library they
write to, so the reading of the event stream lives here and each exporter is
a small :class:`Sink`. The rules, and why:

* **Transitions**: every event counts once, by trigger. Triggers are a
  closed set, so the label can never explode.
* **Refreshes**: an event *leaving* ``refreshing`` ends a refresh. ``refreshed``
  is a success; any other trigger from ``refreshing`` (``refresh_aborted``,
  ``revoke``, ``invalidate``, ``expire``) is a failure labelled by that
  trigger. The failure triggers are read from
  :data:`~awx_connection.TRANSITIONS`, so a new row shows up by itself.
* **Latency**: ``time.perf_counter()`` at ``refresh_started`` and at the
  next event of the same connection. The subscriber is synchronous and runs
  inline at publish time, so the interval is the refresh itself (POSTs,
  retries, store writes), not queueing behind other subscribers. A refresh
  this process did not start (resumed from another process's journal)
  counts as an outcome but has no latency to report.
* **Connections by state**: exact, not estimated. We keep the last
  ``(sequence, state)`` seen per connection and apply an update only if its
  sequence is newer. Events and store snapshots can then arrive in any
  order (an event published while :meth:`EventMetrics.resync` awaits the
  store, or just after it) and the counts still equal the store's. The map
  holds connection ids in memory only; no id ever becomes a label value.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Protocol, final

from .._states import ROTATING, TRANSITIONS, ConnectionState, Trigger

if TYPE_CHECKING:
    from .._events import ConnectionEvent, Subscription
    from .._manager import ConnectionManager

__all__ = [
    "FAILED",
    "REFRESH_BUCKETS",
    "REFRESH_FAILURE_TRIGGERS",
    "SUCCEEDED",
    "EventMetrics",
    "Sink",
]

SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"

#: Triggers that end a refresh without new tokens: every row of the table
#: leaving ``refreshing`` except ``refreshed``.
REFRESH_FAILURE_TRIGGERS: tuple[Trigger, ...] = tuple(
    row.trigger
    for row in TRANSITIONS
    if ROTATING & set(row.sources) and row.trigger is not Trigger.REFRESHED
)

#: Histogram buckets in seconds: one POST takes tens of milliseconds to a
#: second; retries of a lost response can last up to the 60-second grace.
REFRESH_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Sink(Protocol):
    """Where one exporter writes what :class:`EventMetrics` decided."""

    def transition(self, trigger: Trigger) -> None:
        """One transition happened."""

    def refresh(self, outcome: str, trigger: Trigger, seconds: float | None) -> None:
        """A refresh ended; *seconds* is ``None`` when its start was not seen."""

    def connections(
        self, counts: dict[ConnectionState, int], changed: Iterable[ConnectionState]
    ) -> None:
        """The count of connections in each of *changed* is now ``counts[state]``."""


@final
class EventMetrics:
    """Turns one manager's events into metric updates for one :class:`Sink`."""

    def __init__(self, manager: ConnectionManager, sink: Sink) -> None:
        self._manager = manager
        self._sink = sink
        #: Connections per state, every state present (so readers from
        #: another thread never see the dict change size).
        self.counts: dict[ConnectionState, int] = dict.fromkeys(ConnectionState, 0)
        self._known: dict[str, tuple[int, ConnectionState]] = {}
        self._refresh_started: dict[str, float] = {}
        self._subscription: Subscription | None = None
        self._closed = False
        #: Whether a snapshot of the store was applied (the counts are exact).
        self.seeded = False

    async def start(self) -> None:
        """Subscribe (once), then seed the counts from the store."""
        if self._closed:
            msg = "this instrumentation was closed; create a new one"
            raise RuntimeError(msg)
        if self._subscription is None:
            # Subscribe before reading the store: an event published while
            # we await the snapshot is then seen too, and sequences sort out
            # which of the two is newer.
            self._subscription = self._manager.subscribe(self._on_event)
        await self.resync()

    async def resync(self) -> None:
        """
        Re-read every connection from the store and adopt newer states.

        Needed once at start; later only with replicas, whose transitions
        this process's subscriber never sees.
        """
        for connection in await self._manager.connections():
            self._apply(connection.id, connection.sequence, connection.state)
        self.seeded = True
        self._sink.connections(self.counts, ConnectionState)

    def close(self) -> None:
        """Unsubscribe. Idempotent."""
        self._closed = True
        if self._subscription is not None:
            self._subscription.unsubscribe()
        self._refresh_started.clear()

    def _on_event(self, event: ConnectionEvent) -> None:
        now = time.perf_counter()
        self._sink.transition(event.trigger)
        started = self._refresh_started.pop(event.connection_id, None)
        if event.trigger is Trigger.REFRESH_STARTED:
            self._refresh_started[event.connection_id] = now
        elif event.source in ROTATING:
            outcome = SUCCEEDED if event.trigger is Trigger.REFRESHED else FAILED
            self._sink.refresh(outcome, event.trigger, None if started is None else now - started)
        changed = self._apply(event.connection_id, event.sequence, event.dest)
        if changed:
            self._sink.connections(self.counts, changed)

    def _apply(
        self, connection_id: str, sequence: int, state: ConnectionState
    ) -> tuple[ConnectionState, ...]:
        """Adopt *state* if *sequence* is newer than the known one; return changed states."""
        known = self._known.get(connection_id)
        if known is not None and known[0] >= sequence:
            return ()
        self._known[connection_id] = (sequence, state)
        if known is None:
            self.counts[state] += 1
            return (state,)
        previous = known[1]
        if previous is state:
            return ()
        self.counts[previous] -= 1
        self.counts[state] += 1
        return (previous, state)
