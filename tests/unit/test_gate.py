"""
The token-endpoint gate: bounded slots, urgent waiters first, no slot lost to
a cancellation.
"""

from __future__ import annotations

import asyncio

from awx_connection._gate import RefreshGate


async def test_never_more_holders_than_slots() -> None:
    gate = RefreshGate(2)
    inside = peak = 0

    async def work() -> None:
        nonlocal inside, peak
        async with gate.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(10)))
    assert 2 == peak
    assert 0 == gate.waiting


async def test_urgent_waiters_go_first_and_each_kind_in_arrival_order() -> None:
    gate = RefreshGate(1)
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.slot():
            await release.wait()

    async def waiter(name: str, urgent: bool) -> None:
        async with gate.slot(urgent=urgent):
            order.append(name)

    first = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    tasks = [
        asyncio.ensure_future(waiter(name, urgent))
        for name, urgent in (
            ("fresh-1", False),
            ("retry-1", True),
            ("fresh-2", False),
            ("retry-2", True),
        )
    ]
    await asyncio.sleep(0)
    assert 4 == gate.waiting
    release.set()
    await asyncio.gather(first, *tasks)
    assert ["retry-1", "retry-2", "fresh-1", "fresh-2"] == order


async def test_a_waiter_cancelled_in_the_queue_costs_no_slot() -> None:
    gate = RefreshGate(1)
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.slot():
            await release.wait()

    held = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    queued = asyncio.ensure_future(gate.slot().__aenter__())
    await asyncio.sleep(0)
    queued.cancel()
    await asyncio.sleep(0)
    assert 0 == gate.waiting
    release.set()
    await held
    async with asyncio.timeout(1):
        async with gate.slot():  # the slot came back
            pass


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    gate = RefreshGate(1)
    release = asyncio.Event()
    got: list[str] = []
    tasks: dict[str, asyncio.Future[None]] = {}

    async def holder() -> None:
        async with gate.slot():
            await release.wait()
        # The release just handed the slot to "doomed"; cancel it in the same step.
        tasks["doomed"].cancel()

    async def waiter(name: str) -> None:
        async with gate.slot():
            got.append(name)

    held = asyncio.ensure_future(holder())
    await asyncio.sleep(0)
    tasks["doomed"] = asyncio.ensure_future(waiter("doomed"))
    heir = asyncio.ensure_future(waiter("heir"))
    await asyncio.sleep(0)
    release.set()
    await held
    async with asyncio.timeout(1):
        await heir
    assert ["heir"] == got
    assert tasks["doomed"].cancelled()
    assert 0 == gate.waiting
