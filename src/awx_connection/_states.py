"""
The connection state machine, defined once as data.

``TRANSITIONS`` is the single source of truth: the runtime machine
(:mod:`awx_connection._machine`), the docs diagram (:func:`mermaid`) and the
tests all read it. Each state's comment says how a connection gets there.

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
from typing import final

import attrs

__all__ = [
    "TERMINAL_STATES",
    "TRANSITIONS",
    "ConnectionState",
    "Transition",
    "Trigger",
    "mermaid",
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


@final
@attrs.frozen
class Transition:
    """One row of the table: *trigger* moves a connection from any of *sources* to *dest*."""

    trigger: Trigger
    sources: tuple[ConnectionState, ...]
    dest: ConnectionState
    #: What the row means, shown in the docs.
    doc: str


_S = ConnectionState
_T = Trigger

#: States a connection only leaves through ``reauthorize``.
TERMINAL_STATES: frozenset[ConnectionState] = frozenset(
    {_S.REVOKED, _S.INVALIDATED, _S.EXPIRED, _S.DENIED, _S.FAILED}
)

TRANSITIONS: tuple[Transition, ...] = (
    Transition(_T.CODE_RECEIVED, (_S.PENDING,), _S.AUTHORIZED, "the redirect carried a code"),
    Transition(_T.DENIED, (_S.PENDING,), _S.DENIED, "the redirect carried an error"),
    Transition(_T.EXCHANGED, (_S.AUTHORIZED,), _S.ACTIVE, "the code exchange returned tokens"),
    Transition(_T.EXCHANGE_REJECTED, (_S.AUTHORIZED,), _S.FAILED, "the provider rejected the code"),
    Transition(_T.REFRESH_STARTED, (_S.ACTIVE,), _S.REFRESHING, "journaled, about to rotate"),
    Transition(_T.REFRESHED, (_S.REFRESHING,), _S.ACTIVE, "new tokens stored"),
    Transition(
        _T.REFRESH_ABORTED,
        (_S.REFRESHING,),
        _S.ACTIVE,
        "the provider certainly did not rotate; old tokens kept",
    ),
    Transition(
        _T.REVOKE,
        (_S.ACTIVE, _S.REFRESHING),
        _S.REVOKED,
        "invalid_grant, 401 after a refresh, or a disconnect",
    ),
    Transition(_T.INVALIDATE, (_S.REFRESHING,), _S.INVALIDATED, "grace window lost; stopped"),
    Transition(_T.EXPIRE, (_S.ACTIVE, _S.REFRESHING), _S.EXPIRED, "the refresh token aged out"),
    Transition(
        _T.REAUTHORIZE,
        (_S.PENDING, _S.AUTHORIZED, *sorted(TERMINAL_STATES, key=lambda s: s.value)),
        _S.PENDING,
        "a new authorize URL for the same connection",
    ),
)


def mermaid() -> str:
    """
    Render :data:`TRANSITIONS` as a Mermaid ``stateDiagram-v2``.

    The docs embed this output and a test checks they are in sync, so the
    picture can never drift from the code.
    """
    lines = ["stateDiagram-v2", f"    [*] --> {_S.PENDING.value}: {_T.BEGIN.value}"]
    for row in TRANSITIONS:
        lines.extend(
            f"    {source.value} --> {row.dest.value}: {row.trigger.value}"
            for source in row.sources
        )
    return "\n".join(lines) + "\n"
