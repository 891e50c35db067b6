"""
The connection state machine, defined once as data.

:data:`TRANSITIONS` is the single source of truth. Every row, ``begin``
included, names its trigger, the states it leaves, the state it enters, the
*guard* (a named condition on the record, checked by the machine), the
*effects* (the record fields it sets or clears) and the *action* that runs
once the row is written (the code exchange, the rotation). The runtime
machine (:mod:`awx_connection._machine`) is built from it and is the only
thing that applies it; the docs draw it (:func:`~awx_connection.mermaid` on
docs/state-machine.md, the table on docs/architecture.md); the tests read
it. The state groups below are the only place a set of states is written
down: code elsewhere asks "is the state *usable*", never "is it active or
refreshing".

Each row also names its :class:`Intent`: what the event it produces means
to the application (the connection became usable; the customer must
reconnect; a link is out; nothing to act on). Subscribers filter on it
instead of on states, because a state alone cannot say it: ``active`` is
entered both by a first connection and by every refresh.

    pending --code_received--> authorized --exchanged--> active <--> refreshing
       |                           |                        |           |
       +--denied--> denied         +--exchange_rejected--> failed       |
    active/refreshing --revoke--> revoked
    refreshing --invalidate--> invalidated
    active/refreshing --expire--> expired
    revoked | invalidated | expired | denied | failed | pending | authorized
        --reauthorize--> pending
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import attrs

from ._errors import (
    ConnectionExpiredError,
    ConnectionInvalidatedError,
    ConnectionRevokedError,
    ConnectionUnusableError,
)

if TYPE_CHECKING:
    from ._records import ConnectionRecord

__all__ = [
    "AUTHORIZING",
    "HOLDS_TOKENS",
    "INTENTS",
    "ROTATING",
    "SERVING",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "USABLE",
    "Action",
    "ConnectionState",
    "Effect",
    "Guard",
    "Intent",
    "Transition",
    "Trigger",
    "unusable",
]


class ConnectionState(enum.Enum):
    """Where one partner connection is in its life."""

    #: ``begin_authorization()`` created the connection and its authorize URL;
    #: we wait for the customer to come back through the redirect.
    PENDING = "pending"
    #: The redirect carried a code; the code exchange is the action of this
    #: state. A connection stays here when the exchange failed transiently.
    AUTHORIZED = "authorized"
    #: Tokens are held; ``access_token()`` hands out valid access tokens.
    ACTIVE = "active"
    #: A refresh-token rotation is in flight, or its outcome is unknown (a
    #: lost response). The journal (which refresh token, since when) is
    #: persisted with this state so any process can finish or abandon it.
    REFRESHING = "refreshing"
    #: The customer disconnected, or the provider rejected the refresh token
    #: (``invalid_grant``), or the API answered 401 right after a refresh.
    REVOKED = "revoked"
    #: The rotation could not be completed inside the provider's grace
    #: window; presenting the old refresh token again could burn the
    #: connection, so the library stopped instead of gambling.
    INVALIDATED = "invalidated"
    #: The refresh token aged out (``refresh_token_expires_in``).
    EXPIRED = "expired"
    #: The customer declined, or the provider redirected back with an error.
    DENIED = "denied"
    #: The provider rejected the code exchange.
    FAILED = "failed"

    def __str__(self) -> str:
        # In f-strings and messages: "active", not "ConnectionState.ACTIVE".
        return self.value


class Trigger(enum.Enum):
    """The named events that move a connection between states."""

    BEGIN = "begin"
    CODE_RECEIVED = "code_received"
    DENIED = "denied"
    EXCHANGED = "exchanged"
    EXCHANGE_REJECTED = "exchange_rejected"
    REFRESH_STARTED = "refresh_started"
    REFRESHED = "refreshed"
    REFRESH_ABORTED = "refresh_aborted"
    REVOKE = "revoke"
    INVALIDATE = "invalidate"
    EXPIRE = "expire"
    REAUTHORIZE = "reauthorize"

    def __str__(self) -> str:
        return self.value


class Intent(enum.Enum):
    """
    What an event means to the application: the name to subscribe to.

    Each row of :data:`TRANSITIONS` names one, so every event has exactly
    one (``event.intent``). ``states=[ConnectionState.ACTIVE]`` would also
    match every ``refreshing -> active``; ``intents=[Intent.CONNECTED]``
    matches only the moments worth acting on.
    """

    #: The connection became usable from a state that was not: the code
    #: exchange of a first authorization or of a reauthorization returned
    #: tokens. Never a refresh. Start onboarding here.
    CONNECTED = "connected"
    #: The connection ended in a state only the customer can fix, by
    #: authorizing again (``reauthorize()``): revoked, invalidated, expired
    #: (it was usable and is gone), denied or failed (the attempt did not
    #: work). Stop using it; ask the customer to reconnect.
    NEEDS_CUSTOMER = "needs_customer"
    #: An authorize link is out (``begin_authorization()`` or
    #: ``reauthorize()``): the connection waits for the customer's redirect.
    AWAITING_CUSTOMER = "awaiting_customer"
    #: Bookkeeping with nothing to act on: a code arrived, a refresh started,
    #: finished or was abandoned. The connection's usability did not change.
    ROUTINE = "routine"

    def __str__(self) -> str:
        return self.value


_S = ConnectionState
_T = Trigger
_I = Intent

# --- the state groups: every set of states the library reasons about, once ------------

# Spelled ConnectionState.X, not _S.X: the API reference shows these values.
#: A caller can get tokens: at once, or after the rotation in progress.
USABLE: frozenset[ConnectionState] = frozenset({ConnectionState.ACTIVE, ConnectionState.REFRESHING})
#: The stored tokens are current: no rotation is journaled.
SERVING: frozenset[ConnectionState] = frozenset({ConnectionState.ACTIVE})
#: A rotation is journaled and not yet finished (in flight, or its outcome unknown).
ROTATING: frozenset[ConnectionState] = frozenset({ConnectionState.REFRESHING})
#: The record may hold tokens (usable ones, or the last ones of a connection that ended).
HOLDS_TOKENS: frozenset[ConnectionState] = frozenset(
    {
        ConnectionState.ACTIVE,
        ConnectionState.REFRESHING,
        ConnectionState.REVOKED,
        ConnectionState.INVALIDATED,
        ConnectionState.EXPIRED,
    }
)
#: The customer is on their way: an authorize URL is out, or its code is being exchanged.
AUTHORIZING: frozenset[ConnectionState] = frozenset(
    {ConnectionState.PENDING, ConnectionState.AUTHORIZED}
)
#: States a connection only leaves through ``reauthorize``: the customer must act.
TERMINAL_STATES: frozenset[ConnectionState] = frozenset(
    {
        ConnectionState.REVOKED,
        ConnectionState.INVALIDATED,
        ConnectionState.EXPIRED,
        ConnectionState.DENIED,
        ConnectionState.FAILED,
    }
)


#: The error a caller gets for a connection in a state without usable tokens.
_UNUSABLE: dict[ConnectionState, type[ConnectionUnusableError]] = {
    _S.REVOKED: ConnectionRevokedError,
    _S.INVALIDATED: ConnectionInvalidatedError,
    _S.EXPIRED: ConnectionExpiredError,
}


def unusable(record: ConnectionRecord) -> ConnectionUnusableError:
    """The error for *record* having no usable tokens, by its state (and with its reason)."""
    cls = _UNUSABLE.get(record.state, ConnectionUnusableError)
    return cls(record.id, record.state, record.reason)


# --- guards, effects, actions ------------------------------------------------------------


@final
@attrs.frozen
class Guard:
    """
    A named condition a row needs, on the record it fires from and the
    injected clock's *now*; the machine checks it before it moves.
    """

    name: str
    #: What it checks, for the docs.
    doc: str
    check: Callable[[ConnectionRecord, float], bool] = attrs.field(repr=False, eq=False)

    def __call__(self, record: ConnectionRecord, now: float) -> bool:
        """Whether *record* meets the condition at *now*."""
        return self.check(record, now)


def _awaiting_callback(record: ConnectionRecord, now: float) -> bool:
    auth = record.authorization
    return auth is not None and auth.state_hash is not None and now < auth.expires_at


def _code_held(record: ConnectionRecord, now: float) -> bool:
    return record.code is not None and record.authorization is not None


def _refresh_token_alive(record: ConnectionRecord, now: float) -> bool:
    tokens = record.tokens
    return tokens is not None and now < tokens.refresh_expires_at


def _refresh_token_aged_out(record: ConnectionRecord, now: float) -> bool:
    tokens = record.tokens
    return tokens is not None and now >= tokens.refresh_expires_at


def _journaled(record: ConnectionRecord, now: float) -> bool:
    return record.journal is not None


#: The authorize URL's ``state`` is unused and has not expired.
AWAITING_CALLBACK = Guard(
    "awaiting_callback", "the authorize URL's state is unused and unexpired", _awaiting_callback
)
#: An authorization code waits to be exchanged.
CODE_HELD = Guard("code_held", "an authorization code waits to be exchanged", _code_held)
#: The refresh token has not aged out.
REFRESH_TOKEN_ALIVE = Guard(
    "refresh_token_alive", "the refresh token has not aged out", _refresh_token_alive
)
#: The refresh token aged out.
REFRESH_TOKEN_AGED_OUT = Guard(
    "refresh_token_aged_out", "the refresh token aged out", _refresh_token_aged_out
)
#: A rotation journal is stored with the record.
JOURNALED = Guard("journaled", "a rotation journal is stored with the record", _journaled)


class Effect(enum.Enum):
    """What a row does to one record field."""

    #: The row needs a new value (``fire()`` refuses to fire without it).
    SET = "set"
    #: The row may be given a new value; otherwise the field keeps its own.
    MAY_SET = "may set"
    #: The row sets the field to ``None``.
    CLEAR = "clear"


class Action(enum.Enum):
    """What runs once a row is written: the I/O of the state it enters."""

    NONE = "none"
    #: Exchange the authorization code for tokens (the action of ``authorized``).
    EXCHANGE = "exchange"
    #: Present the refresh token until the rotation settles (the action of ``refreshing``).
    ROTATE = "rotate"


#: One field's effect; a row's effects are a tuple of them.
FieldEffect = tuple[str, Effect]


@final
@attrs.frozen
class Transition:
    """
    One row of the table: *trigger* moves a connection from any of
    *sources* (none for ``begin``, which creates it) to *dest*, if *guard*
    holds; *effects* says which record fields the row sets or clears (every
    field not named keeps its value); *action* runs once the row is written.
    """

    trigger: Trigger
    sources: tuple[ConnectionState, ...]
    dest: ConnectionState
    #: What the row means, shown in the docs.
    doc: str
    #: What the row's event means to the application (``event.intent``).
    intent: Intent = Intent.ROUTINE
    guard: Guard | None = None
    effects: tuple[FieldEffect, ...] = ()
    action: Action = Action.NONE


def _sorted(states: frozenset[ConnectionState]) -> tuple[ConnectionState, ...]:
    return tuple(sorted(states, key=lambda s: s.value))


_SET, _MAY, _CLEAR = Effect.SET, Effect.MAY_SET, Effect.CLEAR

#: The machine: one row per trigger and destination, ``begin`` first. The
#: runtime machine is built from it; :func:`~awx_connection.mermaid` draws it.
TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        _T.BEGIN,
        (),
        _S.PENDING,
        "begin_authorization() created the connection",
        intent=_I.AWAITING_CUSTOMER,
        effects=(
            ("id", _SET),
            ("authorization", _SET),
            ("scopes", _SET),
            ("external_id", _MAY),
        ),
    ),
    Transition(
        _T.CODE_RECEIVED,
        (_S.PENDING,),
        _S.AUTHORIZED,
        "the redirect carried a code",
        intent=_I.ROUTINE,
        guard=AWAITING_CALLBACK,
        effects=(("authorization", _SET), ("code", _SET)),
        action=Action.EXCHANGE,
    ),
    Transition(
        _T.DENIED,
        (_S.PENDING,),
        _S.DENIED,
        "the redirect carried an error",
        intent=_I.NEEDS_CUSTOMER,
        guard=AWAITING_CALLBACK,
        effects=(("authorization", _CLEAR),),
    ),
    Transition(
        _T.EXCHANGED,
        (_S.AUTHORIZED,),
        _S.ACTIVE,
        "the code exchange returned tokens",
        intent=_I.CONNECTED,
        guard=CODE_HELD,
        effects=(
            ("tokens", _SET),
            ("activated_at", _SET),
            ("account_id", _MAY),
            ("code", _CLEAR),
            ("authorization", _CLEAR),
        ),
    ),
    Transition(
        _T.EXCHANGE_REJECTED,
        (_S.AUTHORIZED,),
        _S.FAILED,
        "the provider rejected the code",
        intent=_I.NEEDS_CUSTOMER,
        guard=CODE_HELD,
        effects=(("code", _CLEAR), ("authorization", _CLEAR)),
    ),
    Transition(
        _T.REFRESH_STARTED,
        _sorted(SERVING),
        _S.REFRESHING,
        "journaled, about to rotate",
        intent=_I.ROUTINE,
        guard=REFRESH_TOKEN_ALIVE,
        effects=(("journal", _SET),),
        action=Action.ROTATE,
    ),
    Transition(
        _T.REFRESHED,
        _sorted(ROTATING),
        _S.ACTIVE,
        "new tokens stored",
        intent=_I.ROUTINE,
        guard=JOURNALED,
        effects=(("tokens", _SET), ("account_id", _MAY), ("journal", _CLEAR)),
    ),
    Transition(
        _T.REFRESH_ABORTED,
        _sorted(ROTATING),
        _S.ACTIVE,
        "the provider certainly did not rotate; old tokens kept",
        intent=_I.ROUTINE,
        guard=JOURNALED,
        effects=(("journal", _CLEAR),),
    ),
    Transition(
        _T.REVOKE,
        _sorted(USABLE),
        _S.REVOKED,
        "invalid_grant, 401 after a refresh, or a disconnect",
        intent=_I.NEEDS_CUSTOMER,
        effects=(("journal", _CLEAR),),
    ),
    Transition(
        _T.INVALIDATE,
        _sorted(ROTATING),
        _S.INVALIDATED,
        "grace window lost; stopped",
        intent=_I.NEEDS_CUSTOMER,
        guard=JOURNALED,
        effects=(("journal", _CLEAR),),
    ),
    Transition(
        _T.EXPIRE,
        _sorted(USABLE),
        _S.EXPIRED,
        "the refresh token aged out",
        intent=_I.NEEDS_CUSTOMER,
        guard=REFRESH_TOKEN_AGED_OUT,
        effects=(("journal", _CLEAR),),
    ),
    Transition(
        _T.REAUTHORIZE,
        (*_sorted(AUTHORIZING), *_sorted(TERMINAL_STATES)),
        _S.PENDING,
        "a new authorize URL for the same connection",
        intent=_I.AWAITING_CUSTOMER,
        effects=(
            ("authorization", _SET),
            ("scopes", _SET),
            ("tokens", _CLEAR),
            ("code", _CLEAR),
            ("journal", _CLEAR),
        ),
    ),
)


#: The intent of each trigger's event, read off :data:`TRANSITIONS` (one row per trigger).
INTENTS: dict[Trigger, Intent] = {row.trigger: row.intent for row in TRANSITIONS}
