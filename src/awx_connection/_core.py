"""
What every job of the manager shares, held in one place.

:class:`~awx_connection.ConnectionManager` is a façade over modules with one
job each: authorization (``_authorize``), the write spine (``_writer``), the
live cache and single-flight (``_live``), rotation (``_rotator``, deciding
through ``_rotation``), keep-alive and settling (``_keepalive``), webhook
intake (``_intake``) and the API helper (``_api``). They all need the same
few things, and only these: the configuration, the injected clock, the
store, the transport, the event bus, this process's identity as a lease
owner, the counters, and whether the manager is closing. :class:`Core`
holds them, and each module takes it instead of the manager, so no module
reaches back into the façade and the imports flow one way.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, final

import attrs

from ._clock import Clock
from ._config import Config
from ._errors import ManagerClosedError
from ._events import EventBus
from ._store import Store
from ._transport import Transport

__all__ = ["Core"]


@final
@attrs.define(eq=False, repr=False)
class Core:
    """The parts every job of one manager shares (see the module docstring)."""

    config: Config
    clock: Clock
    store: Store
    transport: Transport
    bus: EventBus
    #: This manager's identity as a lease owner: host, process, random.
    owner: str
    #: Counters behind ``ConnectionManager.statistics()``, by name.
    counts: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Set when ``aclose()`` begins: new work is refused from then on.
    closing: bool = False
    #: Refresh flights between sending a refresh token and storing what came
    #: of it: a closing manager lets these finish and abandons the others.
    sending: set[asyncio.Task[Any]] = attrs.field(factory=set)

    def check_open(self) -> None:
        """
        Raises:
            ManagerClosedError: ``aclose()`` has begun.
        """
        if self.closing:
            raise ManagerClosedError
