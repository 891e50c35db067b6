"""
Keep-alive: when an idle connection's refresh token must be rotated.

A connection nobody uses never refreshes on its own, and its refresh token
ages out after 60-90 days (``refresh_token_expires_in``). Refreshing every
five minutes "to be safe" would cost 288 rotations a day per connection and
multiply the chances of a burnt token. Instead a pass rotates a connection
once less than ``keepalive_remaining`` of its refresh token's lifetime is
left, minus a per-connection jitter (stable: a hash of the id), so a fleet
authorized on the same day does not rotate in the same minute. A 90-day
token is thus rotated about every 40-45 days: a handful of rotations per
lifetime.
"""

from __future__ import annotations

import hashlib
from typing import final

import attrs

from ._config import TimingPolicy
from ._records import ConnectionSummary

__all__ = ["KeepaliveReport", "due_at"]


def _jitter(connection_id: str) -> float:
    """A stable number in [0, 1) for *connection_id*."""
    digest = hashlib.blake2b(connection_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def due_at(summary: ConnectionSummary, timing: TimingPolicy) -> float | None:
    """When keep-alive should rotate the connection's refresh token, if it has one."""
    expires_at, issued_at = summary.refresh_expires_at, summary.issued_at
    if expires_at is None or issued_at is None:
        return None
    lifetime = expires_at - issued_at
    slack = lifetime * (timing.keepalive_remaining + timing.keepalive_jitter * _jitter(summary.id))
    return expires_at - slack


@final
@attrs.frozen
class KeepaliveReport:
    """What one keep-alive pass did."""

    #: Active connections looked at.
    checked: int
    #: Refresh tokens rotated (by this process or, meanwhile, another one).
    rotated: int
    #: Connections whose refresh token had run out: moved to ``expired``.
    expired: int
    #: Rotations that failed (logged; retried on the next pass).
    failed: int
