"""
Intents, read off the transition table: every row's event has the intent
the state groups say it should, and the filters that use them.
"""

from __future__ import annotations

import pytest

from awx_connection import (
    TERMINAL_STATES,
    TRANSITIONS,
    USABLE,
    ConnectionEvent,
    ConnectionState,
    Intent,
    InvalidArgumentError,
    Transition,
    Trigger,
)
from awx_connection._events import EventBus, event_filter

#: The state ``begin`` enters: where a connection waits for its customer.
WAITING = TRANSITIONS[0].dest


def expected_intent(source: ConnectionState | None, dest: ConnectionState) -> Intent:
    """What the state groups say a move from *source* to *dest* means, independently of the rows."""
    if dest in USABLE and source not in USABLE:
        return Intent.CONNECTED
    if dest in TERMINAL_STATES:
        return Intent.NEEDS_CUSTOMER
    if dest is WAITING:
        return Intent.AWAITING_CUSTOMER
    return Intent.ROUTINE


def moves() -> list[tuple[Transition, ConnectionState | None]]:
    """Every (row, source) pair of the table; ``begin`` has the one source ``None``."""
    return [(row, source) for row in TRANSITIONS for source in (row.sources or (None,))]


def event_of(row: Transition, source: ConnectionState | None) -> ConnectionEvent:
    return ConnectionEvent(
        connection_id="conn_1",
        sequence=1,
        trigger=row.trigger,
        source=source,
        dest=row.dest,
        reason="test",
        at=0.0,
    )


@pytest.mark.parametrize(
    ("row", "source"),
    moves(),
    ids=lambda v: v.trigger.value if isinstance(v, Transition) else str(v),
)
def test_every_move_has_the_intent_the_state_groups_give(
    row: Transition, source: ConnectionState | None
) -> None:
    """Each row, from each of its sources: the event's intent is the row's, and the groups agree."""
    event = event_of(row, source)
    assert event.intent is row.intent
    assert expected_intent(source, row.dest) is row.intent


def test_a_refresh_is_never_connected() -> None:
    """Every row that enters a usable state from a usable one (a refresh's end) is ROUTINE."""
    refresh_ends = [row for row in TRANSITIONS if row.dest in USABLE and set(row.sources) <= USABLE]
    assert {Trigger.REFRESH_STARTED, Trigger.REFRESHED, Trigger.REFRESH_ABORTED} == {
        row.trigger for row in refresh_ends
    }
    assert all(row.intent is Intent.ROUTINE for row in refresh_ends)


def test_connected_and_needs_customer_rows() -> None:
    """CONNECTED is the exchange alone; NEEDS_CUSTOMER is every row into a terminal state."""
    by_intent: dict[Intent, set[Trigger]] = {}
    for row in TRANSITIONS:
        by_intent.setdefault(row.intent, set()).add(row.trigger)
    assert {Trigger.EXCHANGED} == by_intent[Intent.CONNECTED]
    assert {row.trigger for row in TRANSITIONS if row.dest in TERMINAL_STATES} == by_intent[
        Intent.NEEDS_CUSTOMER
    ]
    assert {Trigger.BEGIN, Trigger.REAUTHORIZE} == by_intent[Intent.AWAITING_CUSTOMER]
    assert set(Intent) == set(by_intent)


def test_intent_prints_as_its_value() -> None:
    """In f-strings and logs an intent reads as its value."""
    assert "connected" == f"{Intent.CONNECTED}"


@pytest.mark.parametrize(("row", "source"), moves(), ids=lambda v: getattr(v, "value", v))
def test_subscription_by_intent_gets_exactly_its_rows(
    row: Transition, source: ConnectionState | None
) -> None:
    """A subscriber per intent: the event reaches exactly the one of its row's intent."""
    bus = EventBus()
    got: dict[Intent, list[ConnectionEvent]] = {intent: [] for intent in Intent}
    for intent in Intent:
        bus.subscribe(got[intent].append, intents=[intent])
    bus.publish(event_of(row, source))
    assert {intent: (1 if intent is row.intent else 0) for intent in Intent} == {
        intent: len(events) for intent, events in got.items()
    }


def test_states_filter_still_matches_refreshes() -> None:
    """states=[ACTIVE] keeps its meaning (entered active, refreshes included); intents combine."""
    refreshed = next(row for row in TRANSITIONS if row.trigger is Trigger.REFRESHED)
    exchanged = next(row for row in TRANSITIONS if row.trigger is Trigger.EXCHANGED)
    by_state = event_filter(states=[ConnectionState.ACTIVE])
    both = event_filter(states=[ConnectionState.ACTIVE], intents=[Intent.CONNECTED])
    refresh = event_of(refreshed, refreshed.sources[0])
    exchange = event_of(exchanged, exchanged.sources[0])
    assert by_state(refresh) and by_state(exchange)
    assert not both(refresh) and both(exchange)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"intents": Intent.CONNECTED},
        {"intents": "connected"},
        {"intents": ["connected"]},
        {"states": ConnectionState.ACTIVE},
        {"states": [Intent.CONNECTED]},
        {"triggers": 3},
    ],
    ids=str,
)
def test_a_filter_that_is_not_a_collection_of_members_is_refused(kwargs: dict[str, object]) -> None:
    """intents=Intent.CONNECTED (no list) or a string is a typed error at subscribe time."""
    bus = EventBus()
    with pytest.raises(InvalidArgumentError):
        bus.subscribe(lambda _: None, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        bus.stream(**kwargs)  # type: ignore[arg-type]
