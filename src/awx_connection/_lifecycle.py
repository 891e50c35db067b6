"""
A manager's life: the background loops it starts, and a graceful close.

Closing is the one place where the order of things decides whether a
connection survives: a rotation whose refresh token may already be on its
way must finish and store its answer before the store closes (cancelling
it would leave the provider's new tokens unknown, and the connection to be
rescued by the next process inside the grace window); flights that sent
nothing are abandoned, their callers told ``ManagerClosedError``;
subscribers get a bounded time to drain; the store closes last, whatever
failed before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, final

import attrs

from ._core import Core
from ._live import Flights, Live

__all__ = ["Lifecycle"]


@final
@attrs.define(eq=False)
class Lifecycle:
    """The background loops of one manager, by name, and its close."""

    core: Core
    flights: Flights
    #: The live cache's holders, emptied on close (they hold revealed tokens).
    holders: dict[str, Live]
    loops: dict[str, asyncio.Task[None]] = attrs.field(factory=dict)
    _closed: asyncio.Event | None = None

    def start(self, name: str, loop: Coroutine[Any, Any, None]) -> None:
        """Run *loop* in the background as *name*, unless it runs already."""
        if name in self.loops:
            loop.close()
            return
        task = asyncio.get_running_loop().create_task(loop, name=f"awx-connection-{name}")
        self.loops[name] = task

    async def close(self) -> None:
        """Stop the loops, let what may have been sent finish, close it all; idempotent."""
        if self._closed is not None:
            await self._closed.wait()
            return
        core = self.core
        core.closing = True
        self._closed = asyncio.Event()
        wait = core.config.timing.close_wait
        try:
            for task in self.loops.values():
                task.cancel()
            await asyncio.gather(*self.loops.values(), return_exceptions=True)
            await self.flights.drain(wait)
            await core.bus.aclose(timeout=wait)
            await core.transport.aclose()
        finally:
            self.holders.clear()
            try:
                await core.store.aclose()
            finally:
                self._closed.set()
