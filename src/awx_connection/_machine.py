"""
The runtime state machine: :data:`~awx_connection._states.TRANSITIONS`, run
by ``transitions``.

The machine is built once from the table: every row becomes a transition
whose *condition* is the row's guard and whose ``before`` callback applies
the row's effects, so the table is not a description of what the code does
but what it runs. :func:`fire` is the one way a record changes state: a
pure function from ``(record, trigger, reason, changes)`` to the new record
and its event, with the time and the write id given, no I/O, nothing
written. The writer (:mod:`awx_connection._writer`) stores what it returns
by compare-and-swap and publishes the event only once stored; network I/O
(the row's *action*) runs outside, after.

Why ``transitions``' plain (synchronous) :class:`~transitions.Machine`, one
for all connections, fired on a scratch model: guards and effects are pure
and quick, so nothing needs awaiting (the asyncio machine turned every
callback into a task, and its cancellation handling swallowed
``CancelledError``); registering 100,000 models (``add_model``) is a list
scan each; and a scratch object per firing leaves the machine holding no
reference to any connection. The one non-README API relied on,
``Event.trigger(model, **kwargs)`` on an unregistered model, is guarded by
tests (tests/unit/test_machine.py) and the pin is a version range.
"""

from __future__ import annotations

import linecache
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, final

import attrs
from transitions import EventData, Machine

from ._errors import IllegalTransitionError
from ._events import ConnectionEvent
from ._records import ConnectionRecord
from ._states import HOLDS_TOKENS, TRANSITIONS, USABLE, ConnectionState, Effect, Transition, Trigger

if TYPE_CHECKING:
    from ._states import Guard

__all__ = ["ROWS", "allowed_triggers", "allows", "fire"]

# transitions logs an INFO line for every stage of every trigger; through
# this machine that is bookkeeping, not news for the application's logs.
# Quiet it unless the application set a level itself.
_logger = logging.getLogger("transitions.core")
if _logger.level == logging.NOTSET:
    _logger.setLevel(logging.WARNING)

#: The pseudo-state ``begin`` leaves: a connection that does not exist yet.
_NEW: Final = "NEW"

#: The table by trigger.
ROWS: Final[Mapping[Trigger, Transition]] = {row.trigger: row for row in TRANSITIONS}


@final
class _Firing:
    """The scratch model one firing moves: the state's name, and what the callbacks need."""

    __slots__ = ("changes", "fields", "now", "record", "state")

    def __init__(
        self, record: ConnectionRecord | None, changes: Mapping[str, Any], now: float
    ) -> None:
        self.state = _NEW if record is None else record.state.name
        self.record = record
        self.changes = changes
        self.now = now
        self.fields: dict[str, Any] = {}


def _guarded(guard: Guard) -> Any:
    def condition(event: EventData) -> bool:
        firing: _Firing = event.model  # type: ignore[assignment]  # the model we passed in
        assert firing.record is not None  # begin has no guard
        return guard(firing.record, firing.now)

    condition.__name__ = guard.name
    return condition


def _effects_of(row: Transition) -> Any:
    named = {name for name, _ in row.effects}

    def apply(event: EventData) -> None:
        firing: _Firing = event.model  # type: ignore[assignment]  # the model we passed in
        changes = firing.changes
        extra = changes.keys() - named
        if extra:
            msg = f"{row.trigger.value} does not change {', '.join(sorted(extra))}"
            raise ValueError(msg)
        fields = firing.fields
        for name, effect in row.effects:
            if effect is Effect.CLEAR:
                fields[name] = None
            elif name in changes:
                fields[name] = changes[name]
            elif effect is Effect.SET:
                msg = f"{row.trigger.value} needs a new {name}"
                raise ValueError(msg)

    return apply


def _build() -> tuple[Machine, dict[Trigger, Any]]:
    transitions = []
    for row in TRANSITIONS:
        spec: dict[str, Any] = {
            "trigger": row.trigger.value,
            "source": [s.name for s in row.sources] or [_NEW],
            "dest": row.dest.name,
            "before": [_effects_of(row)],
        }
        if row.guard is not None:
            spec["conditions"] = [_guarded(row.guard)]
        transitions.append(spec)
    machine = Machine(
        model=None,
        states=[_NEW, *(state.name for state in ConnectionState)],
        transitions=transitions,
        initial=_NEW,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=True,
    )
    return machine, {trigger: machine.events[trigger.value] for trigger in ROWS}


_MACHINE, _EVENTS = _build()


def _make_successor() -> Any:
    """
    ``successor(record, fields, state, reason, now, write_id)``: the next
    version of *record* with *fields* applied, as one constructor call.

    Generated from the record's attrs fields (as attrs generates
    ``__init__``), so it cannot drift from the class: ``attrs.evolve``
    walks the fields in Python on every call, a sixth of a transition.
    """
    fixed = {
        "state": "state",
        "version": "r.version + 1",
        "sequence": "r.sequence + 1",
        "updated_at": "now",
        "reason": "reason",
        "write_id": "write_id",
    }
    arguments = ", ".join(
        f"{field.alias}={fixed.get(field.name) or f'f.get({field.name!r}, r.{field.name})'}"
        for field in attrs.fields(ConnectionRecord)
    )
    source = (
        f"def successor(r, f, state, reason, now, write_id):\n"
        f"    return ConnectionRecord({arguments})\n"
    )
    # Registered with linecache, as attrs does for its generated methods, so
    # a traceback through it (and pytest's report of one) can show the line.
    filename = "<awx_connection generated successor>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"ConnectionRecord": ConnectionRecord}
    exec(compile(source, filename, "exec"), namespace)  # generated from our own field names
    return namespace["successor"]


_successor = _make_successor()
#: ``ConnectionState[name]`` without the enum's lookup.
_BY_NAME: Final = {state.name: state for state in ConnectionState}


def allows(record: ConnectionRecord, trigger: Trigger, now: float) -> bool:
    """Whether *record* may fire *trigger* at *now*: a source of its row, and its guard holds."""
    row = ROWS[trigger]
    if record.state not in row.sources:
        return False
    return row.guard is None or row.guard(record, now)


def allowed_triggers(state: ConnectionState) -> frozenset[Trigger]:
    """The triggers whose rows leave *state* (guards aside)."""
    return frozenset(row.trigger for row in TRANSITIONS if state in row.sources)


def fire(
    record: ConnectionRecord | None,
    trigger: Trigger,
    reason: str,
    changes: Mapping[str, Any],
    *,
    now: float,
    write_id: str,
) -> tuple[ConnectionRecord, ConnectionEvent]:
    """
    Fire *trigger* on *record* (``None`` for ``begin``, which creates one):
    the next record (``version`` and ``sequence`` plus one, the row's
    effects applied from *changes*) and its event. Pure: nothing is written.

    Raises:
        IllegalTransitionError: The record's state is not a source of the
            row, or the row's guard does not hold (the error names it).
        ValueError: *changes* names a field the row does not set, or leaves
            out one it must (a bug of the caller, not of the data).
    """
    row = ROWS[trigger]
    firing = _Firing(record, changes, now)
    if not _EVENTS[trigger].trigger(firing):
        if record is None:
            msg = f"{trigger.value} needs an existing connection"
            raise ValueError(msg)
        guard = row.guard.name if row.guard and record.state in row.sources else None
        raise IllegalTransitionError(record.id, trigger, record.state, guard=guard)
    dest = _BY_NAME[firing.state]
    fields = firing.fields
    if record is None:
        new = ConnectionRecord(
            state=dest,
            version=1,
            sequence=1,
            created_at=now,
            updated_at=now,
            reason=reason,
            write_id=write_id,
            **fields,
        )
    else:
        new = _successor(record, fields, dest, reason, now, write_id)
    if (new.tokens is not None and dest not in HOLDS_TOKENS) or (
        new.tokens is None and dest in USABLE
    ):
        held = "with" if new.tokens is not None else "without"
        msg = f"{trigger.value} would leave a {dest.value} connection {held} tokens"
        raise ValueError(msg)
    event = ConnectionEvent(
        connection_id=new.id,
        sequence=new.sequence,
        trigger=trigger,
        source=None if record is None else record.state,
        dest=dest,
        reason=reason,
        at=now,
        account_id=new.account_id,
        external_id=new.external_id,
    )
    return new, event
