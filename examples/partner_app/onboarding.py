"""
Where each customer is in onboarding, after the connection: the partner's
own state, which the library does not keep.

A connection being ``active`` means Airwallex lets us in; it says nothing
about the customer's KYC. That moves on two signals: the customer opens the
"Continue onboarding" step (the embedded KYC component starts: *started*),
and Airwallex announces ``account.active`` for the connection's account
(*onboarded*). Both are kept here, in memory, and pushed to the dashboards
that listen. A real platform keeps them in its own customer table, next to
the customer; this example's store is a throwaway file anyway.
"""

from __future__ import annotations

import asyncio
from typing import Final

import attrs

__all__ = ["ONBOARDED", "STARTED", "Onboarding"]

STARTED: Final = "started"
ONBOARDED: Final = "onboarded"


@attrs.define(eq=False)
class Onboarding:
    """Onboarding status by connection id, and the queues of those who watch it."""

    _status: dict[str, str] = attrs.Factory(dict)
    _watchers: set[asyncio.Queue[tuple[str, str]]] = attrs.Factory(set)

    def status(self, connection_id: str) -> str | None:
        """``"started"``, ``"onboarded"``, or ``None`` (not started)."""
        return self._status.get(connection_id)

    def started(self, connection_id: str) -> None:
        """The embedded KYC component was started (a code was issued for it)."""
        if self._status.get(connection_id) != ONBOARDED:
            self._set(connection_id, STARTED)

    def onboarded(self, connection_id: str) -> None:
        """Airwallex said the account is active: onboarding is done (it stays done)."""
        self._set(connection_id, ONBOARDED)

    def watch(self) -> asyncio.Queue[tuple[str, str]]:
        """A queue receiving ``(connection_id, status)`` for every change from now on."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=1000)
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[tuple[str, str]]) -> None:
        """Stop feeding *queue*."""
        self._watchers.discard(queue)

    def _set(self, connection_id: str, status: str) -> None:
        if self._status.get(connection_id) == status:
            return
        self._status[connection_id] = status
        for queue in tuple(self._watchers):
            if queue.full():  # a dashboard that stopped reading; it resyncs on reconnect
                self._watchers.discard(queue)
            else:
                queue.put_nowait((connection_id, status))
