"""
A point-in-time snapshot of what a manager has done.

Cheap counters kept by the manager, returned frozen by
:meth:`ConnectionManager.statistics` (the trio/anyio ``statistics()``
convention): good for a health endpoint, a periodic log line or a metrics
exporter, with no dependency on any metrics library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, final

import attrs

if TYPE_CHECKING:
    import collections

    from ._live import Live

__all__ = ["ManagerStatistics", "snapshot"]


@final
@attrs.frozen
class ManagerStatistics:
    """Counters since the manager was created, and the current cache size."""

    #: Connections held in this process's cache.
    connections_cached: int
    #: Refreshes running in this process right now.
    refreshes_in_flight: int
    #: Transitions this process wrote, by trigger value.
    transitions: Mapping[str, int]
    #: Refresh POSTs sent (attempts, including retries).
    refresh_requests: int
    #: Refresh attempts that failed, by error class name.
    refresh_failures: Mapping[str, int]
    #: Webhook deliveries handled (200), including duplicates.
    webhooks_handled: int
    #: Webhook deliveries refused (400/401).
    webhooks_refused: int
    #: Refreshes the provider answered whose new tokens could not be stored,
    #: because the connection changed in the store meanwhile: another process
    #: revoked it (a customer's disconnect landing mid-rotation), or another
    #: replica presented the same refresh token (a lease overlap, see
    #: docs/replicas.md), in which case one of the two new pairs is already
    #: dead and the connection's next rotation may invalidate it.
    rotations_discarded: int = 0


def snapshot(counts: collections.Counter[str], held: Iterable[Live]) -> ManagerStatistics:
    """The statistics of a manager whose counters are *counts* and whose holders are *held*."""
    holders = list(held)
    return ManagerStatistics(
        connections_cached=len(holders),
        refreshes_in_flight=sum(1 for live in holders if live.refresh_task),
        transitions={
            k.removeprefix("transition:"): v
            for k, v in counts.items()
            if k.startswith("transition:")
        },
        refresh_requests=counts["refresh_requests"],
        refresh_failures={
            k.removeprefix("refresh_failure:"): v
            for k, v in counts.items()
            if k.startswith("refresh_failure:")
        },
        webhooks_handled=counts["webhooks_handled"],
        webhooks_refused=counts["webhooks_refused"],
        rotations_discarded=counts["rotations_discarded"],
    )
