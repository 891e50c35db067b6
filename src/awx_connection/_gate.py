"""
The token-endpoint gate: a bounded number of refresh requests in flight per
process, with retries of an already-sent refresh token served first.

Why not an ``asyncio.Semaphore``: it serves waiters in arrival order. When an
outage ends with hundreds of refreshes queued, a retry whose first request
may have reached Airwallex has a deadline (the provider's grace window for
the old refresh token); a fresh refresh has none. Behind a long queue of
fresh ones, the retry would pass its deadline and its connection would end
``invalidated``. Here it waits only for the urgent requests ahead of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import final

import attrs

__all__ = ["RefreshGate"]


@final
@attrs.define(eq=False)
class RefreshGate:
    """*slots* holders at a time; urgent waiters before the others, FIFO within each."""

    slots: int
    _free: int = attrs.field(init=False)
    _urgent: collections.deque[asyncio.Future[None]] = attrs.field(
        factory=collections.deque, init=False, repr=False
    )
    _normal: collections.deque[asyncio.Future[None]] = attrs.field(
        factory=collections.deque, init=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        self._free = self.slots

    @property
    def waiting(self) -> int:
        """Coroutines queued for a slot."""
        return len(self._urgent) + len(self._normal)

    @contextlib.asynccontextmanager
    async def slot(self, *, urgent: bool = False) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``."""
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if self._free > 0 and not self._urgent and not self._normal:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot in the same step as the cancellation: pass it on.
                self._release()
            else:
                # Cancelled while queued (a release may already have skipped it).
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        """Hand the slot to the next waiter, urgent ones first, or free it."""
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
