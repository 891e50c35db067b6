"""
One way to try again: attempts with a bound, a deadline, backoff and jitter.

Every loop in the library that tries again (the code exchange, a
rotation's attempts, writing a pair the provider issued, API calls, a
PostgreSQL operation) takes its attempts from :class:`Retries`, in the
shape of stamina's ``retry_context``: the loop body is the attempt, the
iterator decides whether there is another and sleeps before it. What each
loop does with a failure stays in the loop, where the reader needs it
(a rotation's failure changes its journal; an API failure does not); what
is the same everywhere (how long to wait, when to stop) is here, once::

    async for attempt in Retries(timing.retry_backoff, limit=4):
        try:
            return await send()
        except ProviderUnavailableError:
            if attempt.last:
                raise

Backoff is exponential with *full jitter* (each wait uniform between 0 and
the ceiling): replicas that failed together do not retry together.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import final

import attrs

from ._clock import Clock

__all__ = ["Attempt", "Backoff", "Retries"]


@final
@attrs.frozen
class Backoff:
    """
    How long to wait before retry number *n* (1-based): a uniform draw from
    ``[0, min(cap, base * 2 ** (n - 1))]``.
    """

    base: float
    cap: float = math.inf

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number *retry*."""
        # The exponent is capped: 2 ** 1024 does not fit a float, and a large
        # number of attempts must not turn a wait into an OverflowError.
        return float(min(self.cap, self.base * 2.0 ** min(retry - 1, 1000)))

    def delay(self, retry: int) -> float:
        """One jittered wait before retry number *retry*."""
        return random.uniform(0, self.ceiling(retry))  # jitter, not crypto


@final
@attrs.define(eq=False)
class Attempt:
    """One try of a :class:`Retries` loop."""

    #: 1 for the first try.
    number: int
    _retries: Retries = attrs.field(repr=False)

    @property
    def last(self) -> bool:
        """
        Whether no try follows this one: the limit is reached, or the
        deadline passed (read now, so the time the attempt took counts).
        """
        return self._retries.exhausted(self.number)


@final
@attrs.define(eq=False)
class Retries:
    """
    An async iterator of :class:`Attempt`: the first at once, each later one
    after a :class:`Backoff` wait, until *limit* tries, or until the
    *deadline* (on *clock*, the injected one the library runs on) passed.

    With neither, it goes on until the loop stops it. *first* starts the
    count later, for a loop whose first try ran before it (a hot path that
    should not pay for an iterator unless it fails). *sleep* is
    ``asyncio.sleep``, replaceable in tests.
    """

    backoff: Backoff
    limit: int | None = None
    deadline: float | None = None
    clock: Clock | None = None
    first: int = 1
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __attrs_post_init__(self) -> None:
        if self.deadline is not None and self.clock is None:
            msg = "a deadline needs the clock it is read on"
            raise ValueError(msg)

    def exhausted(self, number: int) -> bool:
        """Whether try *number* is the last one."""
        if self.limit is not None and number >= self.limit:
            return True
        return (
            self.deadline is not None
            and self.clock is not None
            and self.clock.now() >= self.deadline
        )

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return self._attempts()

    async def _attempts(self) -> AsyncIterator[Attempt]:
        number = self.first
        if number > 1:
            await self.sleep(self.backoff.delay(number - 1))
        while True:
            attempt = Attempt(number, self)
            yield attempt
            if attempt.last:
                return
            await self.sleep(self.backoff.delay(number))
            number += 1
