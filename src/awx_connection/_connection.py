"""
One connection as users see it: :class:`Connection`, a frozen view of a
record without any secret (the manager's live holder is ``_live.Live``).
"""

from __future__ import annotations

from typing import final

import attrs

from ._records import ConnectionRecord
from ._states import ConnectionState

__all__ = ["Connection"]


@final
@attrs.frozen
class Connection:
    """
    A snapshot of one partner connection, safe to log and to show.

    It holds no token; use :meth:`ConnectionManager.access_token` or
    :meth:`ConnectionManager.request` for those.
    """

    id: str
    state: ConnectionState
    #: Why the connection is in this state (the last transition's reason).
    reason: str
    #: The Airwallex account, known once the connection was activated.
    account_id: str | None
    #: Your own key for this connection (for example your customer's id).
    external_id: str | None
    scopes: tuple[str, ...]
    access_expires_at: float | None
    refresh_expires_at: float | None
    #: Rotations so far (0 right after the code exchange).
    token_generation: int | None
    version: int
    #: Sequence number of the latest event.
    sequence: int
    created_at: float
    updated_at: float

    @classmethod
    def from_record(cls, record: ConnectionRecord) -> Connection:
        """The public view of *record*."""
        tokens = record.tokens
        return cls(
            id=record.id,
            state=record.state,
            reason=record.reason,
            account_id=record.account_id,
            external_id=record.external_id,
            scopes=record.scopes,
            access_expires_at=None if tokens is None else tokens.access_expires_at,
            refresh_expires_at=None if tokens is None else tokens.refresh_expires_at,
            token_generation=None if tokens is None else tokens.generation,
            version=record.version,
            sequence=record.sequence,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )
