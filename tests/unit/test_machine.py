"""
The state machine: the table is what runs. Every row fires through
``fire()`` (pure: record in, record and event out), guards and effects are
applied by the ``transitions`` machine built from the table, and what the
table does not allow raises. No store, no sockets.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest

from awx_connection import (
    HOLDS_TOKENS,
    TERMINAL_STATES,
    TRANSITIONS,
    USABLE,
    ConnectionRecord,
    ConnectionState,
    IllegalTransitionError,
    PendingAuthorization,
    RotationJournal,
    Secret,
    TokenSet,
    Trigger,
    mermaid,
)
from awx_connection._machine import ROWS, allowed_triggers, allows, fire

S = ConnectionState
T = Trigger
NOW = 1_000.0


def tokens(generation: int = 0, *, refresh_expires_at: float = NOW + 86400) -> TokenSet:
    return TokenSet(
        access_token=Secret(f"access-{generation}"),
        refresh_token=Secret(f"refresh-{generation}"),
        access_expires_at=NOW + 300,
        refresh_expires_at=refresh_expires_at,
        issued_at=NOW,
        generation=generation,
    )


def authorization(state_hash: str | None = "h") -> PendingAuthorization:
    return PendingAuthorization(state_hash, NOW + 600, "http://127.0.0.1/cb")


def record_in(state: ConnectionState) -> ConnectionRecord:
    """A record in *state* that meets every guard a row from it has."""
    holds = state in HOLDS_TOKENS
    return ConnectionRecord(
        id="c1",
        state=state,
        version=3,
        sequence=3,
        created_at=NOW - 10,
        updated_at=NOW - 10,
        reason="set up",
        authorization=authorization() if state in (S.PENDING, S.AUTHORIZED) else None,
        code=Secret("code") if state is S.AUTHORIZED else None,
        tokens=tokens() if holds else None,
        journal=RotationJournal(0, NOW - 5, 1, NOW - 5) if state is S.REFRESHING else None,
    )


#: What each row needs in *changes* (its SET effects), by trigger.
CHANGES: dict[Trigger, dict[str, Any]] = {
    T.BEGIN: {"id": "c1", "authorization": authorization(), "scopes": ("a",)},
    T.CODE_RECEIVED: {"authorization": authorization(None), "code": Secret("code")},
    T.DENIED: {},
    T.EXCHANGED: {"tokens": tokens(), "activated_at": NOW},
    T.EXCHANGE_REJECTED: {},
    T.REFRESH_STARTED: {"journal": RotationJournal(0, NOW, 1, NOW)},
    T.REFRESHED: {"tokens": tokens(1)},
    T.REFRESH_ABORTED: {},
    T.REVOKE: {},
    T.INVALIDATE: {},
    T.EXPIRE: {},
    T.REAUTHORIZE: {"authorization": authorization(), "scopes": ("a",)},
}

#: Rows whose guard the default record of a source fails, and the record that meets it.
MEETS_GUARD = {
    T.EXPIRE: lambda r: attrs.evolve(r, tokens=tokens(refresh_expires_at=NOW - 1)),
}

PAIRS = [(source, row.trigger) for row in TRANSITIONS for source in row.sources]


def fire_from(state: ConnectionState, trigger: Trigger) -> tuple[ConnectionRecord, Any]:
    record = MEETS_GUARD.get(trigger, lambda r: r)(record_in(state))
    return fire(record, trigger, "why", CHANGES[trigger], now=NOW, write_id="w")


def test_every_trigger_has_one_row_and_changes_for_it() -> None:
    assert len(TRANSITIONS) == len(ROWS) == len(Trigger) == len(CHANGES)


@pytest.mark.parametrize(("source", "trigger"), PAIRS, ids=lambda v: getattr(v, "value", v))
def test_every_row_fires_from_every_source(source: ConnectionState, trigger: Trigger) -> None:
    """Each (source, trigger) of the table reaches the row's dest, one version and event on."""
    before = MEETS_GUARD.get(trigger, lambda r: r)(record_in(source))
    new, event = fire(before, trigger, "why", CHANGES[trigger], now=NOW, write_id="w")
    row = ROWS[trigger]
    assert (row.dest, before.version + 1, before.sequence + 1) == (
        new.state,
        new.version,
        new.sequence,
    )
    assert (event.trigger, event.source, event.dest, event.sequence) == (
        trigger,
        source,
        row.dest,
        new.sequence,
    )
    assert ("why", NOW, "w") == (new.reason, new.updated_at, new.write_id)
    for name, effect in row.effects:
        if effect.value == "clear":
            assert getattr(new, name) is None, name
        elif name in CHANGES[trigger]:
            assert CHANGES[trigger][name] == getattr(new, name), name


def test_begin_creates_the_first_version() -> None:
    new, event = fire(None, T.BEGIN, "started", CHANGES[T.BEGIN], now=NOW, write_id="w")
    assert (S.PENDING, 1, 1, NOW, "c1") == (
        new.state,
        new.version,
        new.sequence,
        new.created_at,
        new.id,
    )
    assert (None, S.PENDING, 1) == (event.source, event.dest, event.sequence)


ILLEGAL = [
    (state, trigger)
    for state, trigger in itertools.product(ConnectionState, Trigger)
    if trigger is not T.BEGIN and (state, trigger) not in PAIRS
]


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL, ids=lambda v: getattr(v, "value", v))
def test_what_the_table_does_not_allow_raises_naming_the_state(
    state: ConnectionState, trigger: Trigger
) -> None:
    before = record_in(state)
    with pytest.raises(IllegalTransitionError, match=state.value) as caught:
        fire(before, trigger, "why", CHANGES[trigger], now=NOW, write_id="w")
    assert (state, trigger, None) == (caught.value.state, caught.value.trigger, caught.value.guard)


GUARDED = [
    (T.CODE_RECEIVED, S.PENDING, lambda r: attrs.evolve(r, authorization=authorization(None))),
    (T.CODE_RECEIVED, S.PENDING, lambda r: attrs.evolve(r, authorization=None)),
    (T.DENIED, S.PENDING, lambda r: attrs.evolve(r, authorization=authorization(None))),
    (T.EXCHANGED, S.AUTHORIZED, lambda r: attrs.evolve(r, code=None)),
    (T.REFRESH_STARTED, S.ACTIVE, lambda r: attrs.evolve(r, tokens=tokens(refresh_expires_at=NOW))),
    (T.EXPIRE, S.ACTIVE, lambda r: r),  # the refresh token is still alive
    (T.REFRESHED, S.REFRESHING, lambda r: attrs.evolve(r, journal=None)),
    (T.INVALIDATE, S.REFRESHING, lambda r: attrs.evolve(r, journal=None)),
]


@pytest.mark.parametrize(
    ("trigger", "state", "breaks"), GUARDED, ids=lambda v: getattr(v, "value", "")
)
def test_a_guard_that_does_not_hold_stops_the_row_and_says_which(
    trigger: Trigger, state: ConnectionState, breaks: Any
) -> None:
    before = breaks(record_in(state))
    row = ROWS[trigger]
    assert row.guard is not None
    assert not allows(before, trigger, NOW)
    with pytest.raises(IllegalTransitionError, match=row.guard.name) as caught:
        fire(before, trigger, "why", CHANGES[trigger], now=NOW, write_id="w")
    assert row.guard.name == caught.value.guard


def test_a_pending_authorization_expires_by_the_injected_clock() -> None:
    before = record_in(S.PENDING)
    assert allows(before, T.CODE_RECEIVED, NOW)
    assert not allows(before, T.CODE_RECEIVED, NOW + 600)


def test_a_row_refuses_changes_it_does_not_declare_and_needs_those_it_sets() -> None:
    before = record_in(S.ACTIVE)
    with pytest.raises(ValueError, match="does not change tokens"):
        fire(before, T.REVOKE, "why", {"tokens": None}, now=NOW, write_id="w")
    with pytest.raises(ValueError, match="needs a new journal"):
        fire(before, T.REFRESH_STARTED, "why", {}, now=NOW, write_id="w")


def test_fire_is_pure() -> None:
    """The input record is untouched; the same inputs give the same outputs."""
    before = record_in(S.ACTIVE)
    copy = attrs.evolve(before)
    first = fire(before, T.REVOKE, "why", {}, now=NOW, write_id="w")
    assert before == copy
    assert first == fire(before, T.REVOKE, "why", {}, now=NOW, write_id="w")


def test_usable_states_hold_tokens_after_every_row() -> None:
    """The machine refuses a row whose effects would leave a usable state without tokens."""
    for source, trigger in PAIRS:
        new, _ = fire_from(source, trigger)
        assert (new.tokens is not None) == (new.state in USABLE) or new.state in HOLDS_TOKENS


def test_terminal_states_leave_only_through_reauthorize() -> None:
    for state in TERMINAL_STATES:
        assert {T.REAUTHORIZE} == allowed_triggers(state)


def test_every_state_is_reachable_from_begin() -> None:
    reached = {S.PENDING}
    while True:
        more = {ROWS[t].dest for s in reached for t in allowed_triggers(s)} - reached
        if not more:
            break
        reached |= more
    assert set(ConnectionState) == reached


def test_the_diagram_draws_every_row_and_reauthorize_once() -> None:
    text = mermaid()
    for row in TRANSITIONS:
        # A label, alone or after another trigger sharing the arrow (test_diagram reads it back).
        assert f": {row.trigger.value}" in text or f", {row.trigger.value}" in text
    assert 1 == text.count(": reauthorize")
    for state in ConnectionState:
        assert state.value in text


# --- what ``transitions`` is relied on for (the version range's guard) -------------------


def test_the_machine_evaluates_the_rows_guards_and_effects() -> None:
    """The guard and the effects are the machine's conditions and before-callbacks."""
    from awx_connection import _machine

    event = _machine._EVENTS[T.REFRESH_STARTED]
    [transition] = event.transitions[S.ACTIVE.name]
    assert ["refresh_token_alive"] == [c.func.__name__ for c in transition.conditions]
    assert 1 == len(transition.before)


def test_an_unregistered_scratch_model_is_moved_and_nothing_is_kept() -> None:
    """Event.trigger on a model never added: it moves, and the machine keeps no model."""
    from awx_connection import _machine

    fire_from(S.ACTIVE, T.REVOKE)
    assert [] == [m for m in _machine._MACHINE.models if m is not _machine._MACHINE]


def test_the_transitions_version_is_a_range_the_tests_cover() -> None:
    from importlib.metadata import requires, version

    spec = next(r for r in requires("awx-connection") or [] if r.startswith("transitions"))
    assert "==" not in spec and ">=" in spec and "<" in spec
    major, minor = (int(p) for p in version("transitions").split(".")[:2])
    assert (0, 9) <= (major, minor) < (0, 10)
