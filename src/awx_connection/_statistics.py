"""
A point-in-time snapshot of what a manager has done.

Cheap counters kept by the manager, returned frozen by
:meth:`ConnectionManager.statistics` (the trio/anyio ``statistics()``
convention): good for a health endpoint, a periodic log line or a metrics
exporter, with no dependency on any metrics library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

import attrs

__all__ = ["ManagerStatistics"]


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
