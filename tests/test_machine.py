"""
The state machine: the transition table, ``advance()`` on the shared machine,
and the ``transitions`` 0.9.3 internals our ``_Machine`` subclass relies on.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import transitions
from transitions.extensions.asyncio import AsyncMachine

from awx_connection import ConnectionState, IllegalTransitionError, Trigger, mermaid
from awx_connection._machine import MACHINE, _Machine, advance, allowed_triggers
from awx_connection._states import TERMINAL_STATES, TRANSITIONS

S = ConnectionState
T = Trigger

#: Every legal (source, trigger) -> dest, read from the table.
LEGAL: dict[tuple[ConnectionState, Trigger], ConnectionState] = {
    (source, row.trigger): row.dest for row in TRANSITIONS for source in row.sources
}
#: Every (state, trigger) combination the table does not contain.
ILLEGAL: list[tuple[ConnectionState, Trigger]] = [
    pair for pair in itertools.product(ConnectionState, Trigger) if pair not in LEGAL
]
#: The terminal states, in a stable order for parametrization.
TERMINAL: list[ConnectionState] = sorted(TERMINAL_STATES, key=lambda s: s.value)
#: Every (source, dest, trigger) edge of the table.
EDGES: set[tuple[ConnectionState, ConnectionState, Trigger]] = {
    (source, dest, trigger) for (source, trigger), dest in LEGAL.items()
}


def pair_id(pair: tuple[ConnectionState, Trigger]) -> str:
    return f"{pair[0].value}-{pair[1].value}"


# --- the table through advance() ----------------------------------------------


def test_table_has_no_duplicate_pairs() -> None:
    """No (source, trigger) pair appears in two rows, so the destination is unambiguous."""
    pairs = [(source, row.trigger) for row in TRANSITIONS for source in row.sources]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize(("pair", "dest"), list(LEGAL.items()), ids=[pair_id(p) for p in LEGAL])
async def test_legal_pair_advances_to_dest(
    pair: tuple[ConnectionState, Trigger], dest: ConnectionState
) -> None:
    """A legal trigger moves its source state to the table's destination."""
    source, trigger = pair
    assert dest == await advance("conn-1", source, trigger)


@pytest.mark.parametrize("pair", ILLEGAL, ids=[pair_id(p) for p in ILLEGAL])
async def test_illegal_pair_raises(pair: tuple[ConnectionState, Trigger]) -> None:
    """A trigger the state does not accept raises IllegalTransitionError naming all three."""
    state, trigger = pair
    with pytest.raises(IllegalTransitionError) as info:
        await advance("conn-42", state, trigger)
    err = info.value
    assert ("conn-42", trigger, state) == (err.connection_id, err.trigger, err.state)
    message = str(err)
    assert "'conn-42'" in message
    assert f"trigger {trigger.value!r}" in message
    assert f"state {state.value!r}" in message


def test_illegal_pairs_exist_for_every_state() -> None:
    """The illegal-pair parametrization is not empty for any state (begin is never legal)."""
    assert set(ConnectionState) == {state for state, _ in ILLEGAL}
    assert all((state, T.BEGIN) in ILLEGAL for state in ConnectionState)


def test_runtime_machine_matches_table() -> None:
    """The shared AsyncMachine was built with exactly the table's edges and no others."""
    built = {
        (ConnectionState[source], ConnectionState[str(transition.dest)], Trigger(name))
        for name, event in MACHINE.events.items()
        for source, rows in event.transitions.items()
        for transition in rows
    }
    assert EDGES == built
    assert S.PENDING.name == MACHINE.initial


@pytest.mark.parametrize("state", list(ConnectionState), ids=[s.value for s in ConnectionState])
def test_allowed_triggers_agrees_with_table(state: ConnectionState) -> None:
    """allowed_triggers(state) is exactly the triggers the table lists for that source."""
    expected = frozenset(trigger for (source, trigger) in LEGAL if source is state)
    assert expected == allowed_triggers(state)


@pytest.mark.parametrize("state", TERMINAL, ids=[s.value for s in TERMINAL])
def test_terminal_state_only_leaves_via_reauthorize(state: ConnectionState) -> None:
    """A terminal state accepts reauthorize (back to pending) and nothing else."""
    assert frozenset({T.REAUTHORIZE}) == allowed_triggers(state)
    assert S.PENDING == LEGAL[(state, T.REAUTHORIZE)]


def test_every_state_reachable_from_pending() -> None:
    """A graph search over the table from pending reaches every state."""
    seen = {S.PENDING}
    frontier = [S.PENDING]
    while frontier:
        state = frontier.pop()
        for (source, _), dest in LEGAL.items():
            if source is state and dest not in seen:
                seen.add(dest)
                frontier.append(dest)
    assert set(ConnectionState) == seen


def test_every_non_initial_state_has_an_incoming_edge() -> None:
    """Each state other than pending is the destination of an edge from another state."""
    entered = {dest for (source, dest, _) in EDGES if source is not dest}
    assert set(ConnectionState) - {S.PENDING} <= entered


# --- mermaid() ----------------------------------------------------------------


def test_mermaid_has_one_line_per_edge() -> None:
    """mermaid() is a stateDiagram-v2 with the begin arrow plus exactly one line per edge."""
    lines = mermaid().splitlines()
    assert "stateDiagram-v2" == lines[0]
    expected = {f"    [*] --> {S.PENDING.value}: {T.BEGIN.value}"} | {
        f"    {source.value} --> {dest.value}: {trigger.value}" for source, dest, trigger in EDGES
    }
    assert len(expected) == len(lines) - 1
    assert expected == set(lines[1:])


def test_mermaid_mentions_every_state() -> None:
    """Every state's value appears as a node in the diagram."""
    nodes: set[str] = set()
    for line in mermaid().splitlines()[1:]:
        arrow, _, _ = line.partition(":")
        left, _, right = arrow.partition("-->")
        nodes |= {left.strip(), right.strip()}
    assert {state.value for state in ConnectionState} <= nodes


# --- transitions internals we rely on -------------------------------------------


def test_transitions_version_is_pinned() -> None:
    """_Machine overrides 0.9.3 internals; a new version must be re-verified first."""
    assert "0.9.3" == transitions.__version__


@attrs.define(eq=False)
class _SlotModel:
    """An attrs slots object, which add_model cannot register."""

    state: Any


async def test_event_trigger_on_unregistered_slots_object() -> None:
    """MACHINE.events[name].trigger(model) moves an attrs slots object that was never added."""
    model = _SlotModel(S.PENDING.name)
    assert not hasattr(model, "__dict__")
    assert await MACHINE.events[T.CODE_RECEIVED.value].trigger(model)
    assert S.AUTHORIZED.name == model.state
    assert model not in MACHINE.models
    assert not hasattr(model, "trigger")


Callback = Callable[[Any], Awaitable[None] | None]


def scratch_machine(before: list[Callback], *, dest: str = "b") -> AsyncMachine:
    """A separate _Machine: states a, b; trigger "go" from a with *before* callbacks."""
    return _Machine(
        model=None,
        states=["a", "b"],
        transitions=[{"trigger": "go", "source": "a", "dest": dest, "before": before}],
        initial="a",
        auto_transitions=False,
        send_event=True,
    )


async def test_outer_timeout_raises_and_leaves_no_cancel_state() -> None:
    """asyncio.timeout around a slow trigger raises TimeoutError (stock 0.9.3 swallows it, #704)."""
    reached_after: list[bool] = []

    async def slow(_: object) -> None:
        await asyncio.sleep(10)

    machine = scratch_machine([slow])
    model = _SlotModel("a")
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await machine.events["go"].trigger(model)
            reached_after.append(True)
    assert [] == reached_after
    assert 0 == task.cancelling()
    assert "a" == model.state
    assert id(model) not in AsyncMachine.async_tasks
    assert task not in AsyncMachine.async_tasks.get(id(model), [])


async def test_callbacks_in_one_list_run_in_order() -> None:
    """Two before callbacks run one after the other, even when the first one yields."""
    order: list[str] = []

    async def first(_: object) -> None:
        order.append("first:start")
        for _ in range(3):
            await asyncio.sleep(0)
        order.append("first:end")

    async def second(_: object) -> None:
        order.append("second:start")
        await asyncio.sleep(0)
        order.append("second:end")

    model = _SlotModel("a")
    assert await scratch_machine([first, second]).events["go"].trigger(model)
    assert ["first:start", "first:end", "second:start", "second:end"] == order
    assert "b" == model.state


async def test_conditions_run_in_order_in_the_callers_task() -> None:
    """Two async conditions are checked one after the other, in the caller's task."""
    order: list[tuple[str, asyncio.Task[Any] | None]] = []

    async def first(_: object) -> bool:
        order.append(("first:start", asyncio.current_task()))
        for _ in range(3):
            await asyncio.sleep(0)
        order.append(("first:end", asyncio.current_task()))
        return True

    async def second(_: object) -> bool:
        order.append(("second", asyncio.current_task()))
        return True

    machine = _Machine(
        model=None,
        states=["a", "b"],
        transitions=[{"trigger": "go", "source": "a", "dest": "b", "conditions": [first, second]}],
        initial="a",
        auto_transitions=False,
        send_event=True,
    )
    model = _SlotModel("a")
    assert await machine.events["go"].trigger(model)
    caller = asyncio.current_task()
    assert [("first:start", caller), ("first:end", caller), ("second", caller)] == order
    assert "b" == model.state


_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("_VAR", default="unset")


async def test_callbacks_run_in_the_callers_task() -> None:
    """A callback runs in the caller's task, so a contextvar it sets is visible afterwards."""
    seen_tasks: list[asyncio.Task[Any] | None] = []

    async def record(_: object) -> None:
        seen_tasks.append(asyncio.current_task())
        _VAR.set("from-callback")

    def record_sync(_: object) -> None:
        seen_tasks.append(asyncio.current_task())

    machine = scratch_machine([record, record_sync])
    await machine.events["go"].trigger(_SlotModel("a"))
    caller = asyncio.current_task()
    assert [caller, caller] == seen_tasks
    assert "from-callback" == _VAR.get()


async def test_callback_exception_propagates_and_stops_the_list() -> None:
    """A callback's exception reaches the caller; later callbacks and the state change don't run."""
    ran: list[str] = []

    async def boom(_: object) -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def later(_: object) -> None:
        ran.append("later")

    model = _SlotModel("a")
    with pytest.raises(ValueError, match="boom"):
        await scratch_machine([boom, later]).events["go"].trigger(model)
    assert [] == ran
    assert "a" == model.state


async def test_concurrent_triggers_on_one_model_do_not_cancel_each_other() -> None:
    """Overlapping triggers of one model both finish (stock 0.9.3 cancels the earlier one)."""
    finished: list[int] = []
    count = itertools.count()

    async def slow(_: object) -> None:
        n = next(count)
        await asyncio.sleep(0.01)
        finished.append(n)

    machine = scratch_machine([slow], dest="a")  # reflexive: a -> a
    model = _SlotModel("a")
    results = await asyncio.gather(*(machine.events["go"].trigger(model) for _ in range(2)))
    assert [True, True] == results
    assert [0, 1] == sorted(finished)


async def test_advance_is_safe_under_concurrency() -> None:
    """1,000 concurrent advance() calls on the shared machine each return their own dest."""
    pairs = list(itertools.islice(itertools.cycle(LEGAL), 1000))
    results = await asyncio.gather(
        *(advance(f"conn-{i}", state, trigger) for i, (state, trigger) in enumerate(pairs))
    )
    assert [LEGAL[pair] for pair in pairs] == results
    assert {} == {k: v for k, v in AsyncMachine.async_tasks.items() if v}


def test_transitions_info_noise_is_quieted_unless_configured() -> None:
    """Importing the machine sets transitions' loggers to WARNING only if unset."""
    import logging

    for name in ("transitions.core", "transitions.extensions.asyncio"):
        assert logging.WARNING == logging.getLogger(name).level


def test_model_graphs_lookup_fails_fast_and_dynamic_names_still_resolve() -> None:
    """The __getattr__ shortcut answers only "model_graphs"; the rest is transitions' own."""
    assert not hasattr(MACHINE, "model_graphs")
    assert callable(MACHINE.on_enter_PENDING)  # a dynamic callback registrar, as in stock
    with pytest.raises(AttributeError):
        MACHINE.no_such_attribute  # noqa: B018
