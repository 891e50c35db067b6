"""The EventBus on its own: delivery order, filtering, isolation, streams, overflow, close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import pytest

from awx_connection import (
    ConnectionEvent,
    ConnectionState,
    Subscription,
    SubscriptionOverflowError,
    Trigger,
)
from awx_connection._events import EventBus

S = ConnectionState
T = Trigger


def event(
    sequence: int,
    trigger: Trigger = T.REFRESHED,
    dest: ConnectionState = S.ACTIVE,
    *,
    connection_id: str = "conn-1",
) -> ConnectionEvent:
    """A ConnectionEvent with only the fields a test cares about."""
    return ConnectionEvent(
        connection_id=connection_id,
        sequence=sequence,
        trigger=trigger,
        source=S.REFRESHING,
        dest=dest,
        reason="test",
        at=1000.0 + sequence,
    )


def publish_all(bus: EventBus, events: Iterable[ConnectionEvent]) -> None:
    for e in events:
        bus.publish(e)


async def settle() -> None:
    """Let worker tasks run everything they can without waiting on a timer."""
    for _ in range(20):
        await asyncio.sleep(0)


def sequences(events: Iterable[ConnectionEvent]) -> list[int]:
    return [e.sequence for e in events]


# --- callbacks ------------------------------------------------------------------


def test_sync_callback_receives_events_inline_in_order() -> None:
    """A sync callback is called during publish(), once per event, in publication order."""
    bus = EventBus()
    got: list[ConnectionEvent] = []
    bus.subscribe(got.append)
    publish_all(bus, (event(n) for n in range(1, 6)))
    assert [1, 2, 3, 4, 5] == sequences(got)


async def test_slow_async_callback_gets_all_events_in_order_without_blocking_publish() -> None:
    """A slow async callback runs in its own worker: publish returns at once, order is kept."""
    bus = EventBus()
    got: list[int] = []
    done = asyncio.Event()

    async def slow(e: ConnectionEvent) -> None:
        await asyncio.sleep(0.001 * (6 - e.sequence))  # earlier events take longer
        got.append(e.sequence)
        if e.sequence == 5:
            done.set()

    bus.subscribe(slow)
    publish_all(bus, (event(n) for n in range(1, 6)))
    assert [] == got  # nothing ran inside publish()
    await asyncio.wait_for(done.wait(), 1)
    assert [1, 2, 3, 4, 5] == got


async def test_async_callable_object_is_treated_as_async() -> None:
    """An object whose __call__ is a coroutine function is awaited, not called inline."""
    bus = EventBus()
    got: list[int] = []

    class Recorder:
        async def __call__(self, e: ConnectionEvent) -> None:
            await asyncio.sleep(0)
            got.append(e.sequence)

    bus.subscribe(Recorder())
    publish_all(bus, (event(n) for n in (1, 2)))
    await bus.aclose()
    assert [1, 2] == got


def test_filter_by_triggers() -> None:
    """triggers= keeps only events of those triggers."""
    bus = EventBus()
    got: list[ConnectionEvent] = []
    bus.subscribe(got.append, triggers=[T.REVOKE, T.EXPIRE])
    bus.publish(event(1, T.REFRESHED, S.ACTIVE))
    bus.publish(event(2, T.REVOKE, S.REVOKED))
    bus.publish(event(3, T.EXPIRE, S.EXPIRED))
    assert [2, 3] == sequences(got)


def test_filter_by_states() -> None:
    """states= keeps only events that enter those states."""
    bus = EventBus()
    got: list[ConnectionEvent] = []
    bus.subscribe(got.append, states={S.ACTIVE})
    bus.publish(event(1, T.REFRESH_STARTED, S.REFRESHING))
    bus.publish(event(2, T.REFRESHED, S.ACTIVE))
    bus.publish(event(3, T.REVOKE, S.REVOKED))
    assert [2] == sequences(got)


def test_filter_by_triggers_and_states() -> None:
    """Both filters together require both to match."""
    bus = EventBus()
    got: list[ConnectionEvent] = []
    bus.subscribe(got.append, triggers=[T.REVOKE], states=[S.REVOKED])
    bus.publish(event(1, T.REVOKE, S.REVOKED))
    bus.publish(event(2, T.EXPIRE, S.REVOKED))
    bus.publish(event(3, T.REVOKE, S.ACTIVE))
    assert [1] == sequences(got)


def test_empty_filter_matches_nothing() -> None:
    """An empty triggers collection means no trigger, not every trigger."""
    bus = EventBus()
    got: list[ConnectionEvent] = []
    bus.subscribe(got.append, triggers=())
    bus.publish(event(1))
    assert [] == got


# --- unsubscribe ----------------------------------------------------------------


def test_unsubscribe_stops_sync_delivery() -> None:
    """After unsubscribe() a sync callback receives nothing more; a second call is a no-op."""
    bus = EventBus()
    got: list[ConnectionEvent] = []
    sub = bus.subscribe(got.append)
    bus.publish(event(1))
    sub.unsubscribe()
    sub.unsubscribe()
    bus.publish(event(2))
    assert [1] == sequences(got)
    assert False is sub.active


async def test_unsubscribe_stops_async_delivery_after_queued_events() -> None:
    """An async callback still gets events queued before unsubscribe(), and none after."""
    bus = EventBus()
    got: list[int] = []

    async def record(e: ConnectionEvent) -> None:
        got.append(e.sequence)

    sub = bus.subscribe(record)
    publish_all(bus, (event(n) for n in (1, 2)))
    sub.unsubscribe()
    bus.publish(event(3))
    await settle()
    assert [1, 2] == got


def test_context_manager_unsubscribes() -> None:
    """Leaving the with block ends the subscription."""
    bus = EventBus()
    got: list[ConnectionEvent] = []
    with bus.subscribe(got.append) as sub:
        bus.publish(event(1))
        assert sub.active
    bus.publish(event(2))
    assert [1] == sequences(got)
    assert False is sub.active


def test_unsubscribed_during_publish_gets_no_more_events() -> None:
    """A subscription unsubscribed by an earlier subscriber during publish() misses that event."""
    bus = EventBus()
    got: list[ConnectionEvent] = []

    def stop_the_other(_: ConnectionEvent) -> None:
        other.unsubscribe()

    bus.subscribe(stop_the_other)
    other = bus.subscribe(got.append)
    bus.publish(event(1))
    assert [] == got


# --- isolation ------------------------------------------------------------------


async def test_raising_subscribers_are_logged_and_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising sync and a raising async subscriber are logged; the others get every event."""
    bus = EventBus()
    sync_got: list[int] = []
    async_got: list[int] = []

    def bad_sync(_: ConnectionEvent) -> None:
        raise RuntimeError("sync boom")

    async def bad_async(_: ConnectionEvent) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async boom")

    async def good_async(e: ConnectionEvent) -> None:
        async_got.append(e.sequence)

    bus.subscribe(bad_sync)
    bus.subscribe(bad_async)
    bus.subscribe(lambda e: sync_got.append(e.sequence))
    bus.subscribe(good_async)
    with caplog.at_level(logging.ERROR, logger="awx_connection.events"):
        publish_all(bus, (event(n) for n in (1, 2, 3)))
        await bus.aclose()
    assert [1, 2, 3] == sync_got
    assert [1, 2, 3] == async_got
    failures = [r for r in caplog.records if r.name == "awx_connection.events"]
    assert 6 == len(failures)
    assert {"sync boom", "async boom"} == {str(r.exc_info[1]) for r in failures if r.exc_info}
    assert {"conn-1"} == {r.connection_id for r in failures}  # type: ignore[attr-defined]
    assert 3 == bus.published


def test_sync_callback_returning_an_awaitable_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain function that returns a coroutine is reported, and the coroutine is closed."""
    bus = EventBus()

    async def work(_: ConnectionEvent) -> None:  # pragma: no cover - must never run
        raise AssertionError

    bus.subscribe(lambda e: work(e))
    with caplog.at_level(logging.ERROR, logger="awx_connection.events"):
        bus.publish(event(1))
    assert 1 == len([r for r in caplog.records if "returned an awaitable" in r.getMessage()])


# --- streams --------------------------------------------------------------------


async def test_stream_yields_in_order_and_ends_after_unsubscribe() -> None:
    """async for over stream() yields published events in order and stops once unsubscribed."""
    bus = EventBus()
    stream = bus.stream()
    publish_all(bus, (event(n) for n in (1, 2, 3)))
    stream.unsubscribe()
    bus.publish(event(4))
    got = [e async for e in stream]
    assert [1, 2, 3] == sequences(got)


async def test_stream_consumer_running_concurrently() -> None:
    """A consumer waiting in async for receives events as they are published."""
    bus = EventBus()
    stream = bus.stream(states=[S.REVOKED])

    async def consume() -> list[int]:
        return [e.sequence async for e in stream]

    consumer = asyncio.create_task(consume())
    await settle()
    bus.publish(event(1, T.REVOKE, S.REVOKED))
    await settle()
    bus.publish(event(2, T.REFRESHED, S.ACTIVE))
    bus.publish(event(3, T.REVOKE, S.REVOKED))
    await settle()
    stream.unsubscribe()
    assert [1, 3] == await asyncio.wait_for(consumer, 1)


async def test_stream_iterated_again_after_it_ended_does_not_hang() -> None:
    """A second async for over an ended stream finishes at once instead of waiting forever."""
    bus = EventBus()
    stream = bus.stream()
    bus.publish(event(1))
    stream.unsubscribe()
    assert [1] == sequences([e async for e in stream])
    assert [] == await asyncio.wait_for(_collect(stream), 0.5)


async def _collect(stream: Subscription) -> list[ConnectionEvent]:
    return [e async for e in stream]


async def test_stream_overflow_ends_with_error_after_kept_events() -> None:
    """An unread stream with maxsize=3 yields its 3 kept events, then SubscriptionOverflowError."""
    bus = EventBus()
    stream = bus.stream(maxsize=3)
    publish_all(bus, (event(n) for n in range(1, 11)))
    assert False is stream.active
    got: list[int] = []
    with pytest.raises(SubscriptionOverflowError):
        async for e in stream:
            got.append(e.sequence)  # noqa: PERF401 - the loop must run until the error
    assert [1, 2, 3] == got
    assert 10 == bus.published


async def test_stream_within_maxsize_does_not_overflow() -> None:
    """Exactly maxsize pending events are kept without closing the stream."""
    bus = EventBus()
    stream = bus.stream(maxsize=3)
    publish_all(bus, (event(n) for n in (1, 2, 3)))
    assert stream.active
    stream.unsubscribe()
    assert [1, 2, 3] == sequences([e async for e in stream])


async def test_async_callback_overflow_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An async callback that falls more than maxsize behind is closed and the loss is logged."""
    bus = EventBus()
    got: list[int] = []

    async def record(e: ConnectionEvent) -> None:
        got.append(e.sequence)

    sub = bus.subscribe(record, maxsize=3)
    with caplog.at_level(logging.ERROR, logger="awx_connection.events"):
        publish_all(bus, (event(n) for n in range(1, 11)))
        await bus.aclose()
    assert False is sub.active
    assert [1, 2, 3] == got
    assert 1 == len(
        [r for r in caplog.records if "fell more than 3 events behind" in r.getMessage()]
    )


def test_callback_subscription_is_not_iterable() -> None:
    """async for over a callback subscription raises TypeError."""
    bus = EventBus()
    sub = bus.subscribe(lambda e: None)
    with pytest.raises(TypeError, match="not iterable"):
        sub.__aiter__()


# --- close and statistics ---------------------------------------------------------


async def test_aclose_drains_async_callbacks() -> None:
    """Events published before aclose() all reach a slow async callback before it returns."""
    bus = EventBus()
    got: list[int] = []

    async def slow(e: ConnectionEvent) -> None:
        await asyncio.sleep(0.001)
        got.append(e.sequence)

    sub = bus.subscribe(slow)
    publish_all(bus, (event(n) for n in range(1, 6)))
    await bus.aclose()
    assert [1, 2, 3, 4, 5] == got
    assert False is sub.active


async def test_aclose_waits_for_workers_of_earlier_unsubscribed_subscriptions() -> None:
    """aclose() also drains an async callback unsubscribed before it, whose queue is not empty."""
    bus = EventBus()
    got: list[int] = []

    async def slow(e: ConnectionEvent) -> None:
        await asyncio.sleep(0.001)
        got.append(e.sequence)

    sub = bus.subscribe(slow)
    publish_all(bus, (event(n) for n in range(1, 6)))
    sub.unsubscribe()
    await bus.aclose()
    assert [1, 2, 3, 4, 5] == got


async def test_aclose_ends_streams() -> None:
    """aclose() ends every stream after the events already queued."""
    bus = EventBus()
    stream = bus.stream()
    bus.publish(event(1))
    await bus.aclose()
    assert [1] == sequences([e async for e in stream])


def test_published_counts_every_event() -> None:
    """published counts events even when nobody is subscribed or nothing matches."""
    bus = EventBus()
    bus.subscribe(lambda e: None, triggers=[T.REVOKE])
    assert 0 == bus.published
    publish_all(bus, (event(n) for n in range(1, 8)))
    assert 7 == bus.published


def test_maxsize_below_one_is_refused() -> None:
    """A zero or negative queue bound is a ValueError, not an instant overflow."""
    bus = EventBus()
    with pytest.raises(ValueError, match="maxsize"):
        bus.stream(maxsize=0)
    with pytest.raises(ValueError, match="maxsize"):

        async def callback(event: ConnectionEvent) -> None:
            return None

        bus.subscribe(callback, maxsize=-1)
