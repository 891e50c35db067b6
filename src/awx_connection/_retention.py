"""
Event retention: the bound on what the event log and the outbox hold.

Every transition stores an event, and a connection in constant use
refreshes about every five minutes (two events each, ``refresh_started``
and ``refreshed``): some 600 events a day, for ever, unless something
deletes them. The manager's retention sweep does, in the background like
keep-alive and settling: every ``TimingPolicy.prune_interval`` real seconds
it deletes the events (and handled webhook ids) older than
``TimingPolicy.event_retention`` on the injected clock.

The rule, and why it is age alone:

* An event older than the retention is deleted whether or not every named
  durable consumer has read it. A consumer needs no registration, so a name
  used once (``awx-connection events tail --consumer NAME`` on a laptop,
  a decommissioned worker) would otherwise pin every later event for ever,
  and the store would be unbounded again. A consumer more than the
  retention behind (30 days by default) misses the deleted events: size the
  retention to the longest outage a consumer may have.
* Nothing else is deleted: the connection record (state, reason, times,
  tokens) is the truth and is never pruned, so a connection whose history
  was pruned is exactly as usable; its next event continues its sequence.
* The stores delete in bounded batches (``prune_batch`` rows per
  transaction, 5,000 by default; SQLite also pauses between batches at
  least as long as a batch held the lock), so a sweep never holds a long
  write lock, whatever the backlog.
* Replicas may all sweep: deleting what is old is idempotent, and the first
  sweep's jitter spreads them out.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import final

import attrs

from ._core import Core
from ._keepalive import background

__all__ = ["Retention"]

_log = logging.getLogger("awx_connection")


@final
@attrs.define(eq=False)
class Retention:
    """The retention sweep of one manager: one prune on demand, or a loop of them."""

    core: Core

    @property
    def on(self) -> bool:
        """Whether the manager sweeps in the background (retention and interval both set)."""
        timing = self.core.config.timing
        return timing.event_retention is not None and timing.prune_interval is not None

    async def prune(self) -> int:
        """Delete what is older than the retention now; how many events went (0 when off)."""
        self.core.check_open()
        retention = self.core.config.timing.event_retention
        if retention is None:
            return 0
        return await self.core.store.prune_events(before=self.core.clock.now() - retention)

    async def loop(self) -> None:
        """Sweeps for ever: at a random moment of the first interval, then every interval."""
        interval = self.core.config.timing.prune_interval
        assert interval is not None  # only started when on
        delay = interval * random.random()  # jitter, not crypto
        while True:
            await asyncio.sleep(delay)
            delay = interval
            pruned = await background("retention sweep", self.prune)
            if pruned:
                _log.info("retention: %d events older than the retention deleted", pruned)
