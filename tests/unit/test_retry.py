"""
The one retry loop (awx_connection._retry): how many tries, when it stops,
how long it waits. No sockets, no sleeping: the waits are recorded.
"""

from __future__ import annotations

import pytest

from awx_connection._retry import Backoff, Retries
from awx_connection.testing import ManualClock


class Recorder:
    """An ``asyncio.sleep`` stand-in that records the waits and advances a clock."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.waits: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)


async def test_a_limit_gives_that_many_tries_and_the_last_says_so() -> None:
    """limit=4: tries 1..4, a wait between two, the fourth is last."""
    sleep = Recorder()
    tries = [
        (attempt.number, attempt.last)
        async for attempt in Retries(Backoff(0.1, 1.0), limit=4, sleep=sleep)
    ]
    assert [(1, False), (2, False), (3, False), (4, True)] == tries
    assert 3 == len(sleep.waits)


async def test_waits_are_jittered_below_a_doubling_ceiling_with_a_cap() -> None:
    """Full jitter: each wait is in [0, min(cap, base * 2 ** (n - 1))]."""
    backoff = Backoff(0.1, 0.35)
    assert [0.1, 0.2, 0.35, 0.35] == [backoff.ceiling(n) for n in range(1, 5)]
    for n in range(1, 50):
        assert 0 <= backoff.delay(n) <= backoff.ceiling(n)
    assert 1e300 < Backoff(1.0).ceiling(2000) < float("inf")  # no OverflowError


async def test_a_deadline_on_the_injected_clock_ends_the_tries() -> None:
    """Without a limit it goes on until the clock passes the deadline."""
    clock = ManualClock()
    sleep = Recorder(clock)
    deadline = clock.now() + 10
    numbers = []
    async for attempt in Retries(Backoff(1.0, 4.0), deadline=deadline, clock=clock, sleep=sleep):
        numbers.append(attempt.number)
        if attempt.last:
            break
    assert clock.now() >= deadline
    assert numbers == list(range(1, len(numbers) + 1))
    assert sum(sleep.waits) == pytest.approx(clock.now() - (deadline - 10))


async def test_time_an_attempt_takes_counts_towards_the_deadline() -> None:
    """last is read when asked: an attempt that ran past the deadline is the last."""
    clock = ManualClock()
    retries = Retries(Backoff(1.0), deadline=clock.now() + 5, clock=clock, sleep=Recorder())
    async for attempt in retries:
        assert not attempt.last
        clock.advance(6)  # the attempt itself took six seconds
        assert attempt.last
        break


async def test_first_starts_later_and_waits_before_it() -> None:
    """first=2: the caller made try 1 itself; the loop waits, then tries 2 and 3."""
    sleep = Recorder()
    numbers = [a.number async for a in Retries(Backoff(0.1), limit=3, first=2, sleep=sleep)]
    assert [2, 3] == numbers
    assert 2 == len(sleep.waits)


def test_a_deadline_needs_a_clock() -> None:
    with pytest.raises(ValueError, match="clock"):
        Retries(Backoff(0.1), deadline=1.0)
