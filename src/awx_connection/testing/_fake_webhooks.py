"""
The fake provider's webhook sender.

Like Airwallex, it signs each event with the endpoint's secret
(``x-timestamp`` in milliseconds of the fake's clock, ``x-signature`` =
hex HMAC-SHA256 of timestamp + body), posts it, and retries anything but a
200 with exponential backoff; the same event ``id`` is kept across retries,
which is what lets receivers deduplicate. Delivery runs in background tasks;
:meth:`WebhookSender.flush` waits for them, so tests stay deterministic.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, final

import aiohttp
import attrs
import orjson

from .._webhooks import sign

if TYPE_CHECKING:
    from .._clock import Clock

__all__ = ["WebhookSender"]


@final
@attrs.define(eq=False)
class WebhookSender:
    """Posts signed events to one endpoint, with retries."""

    clock: Clock
    url: str
    secret: str
    #: Send ``partner_connection.disconnected`` (partner-level subscription)
    #: instead of ``connection.disconnected``.
    partner_events: bool = False
    attempts: int = 5
    backoff: float = 0.02
    #: Every event sent, in order (bodies as dicts), for assertions.
    sent: list[dict[str, Any]] = attrs.Factory(list)
    #: HTTP statuses received, per event id.
    answers: dict[str, list[int]] = attrs.Factory(dict)
    _tasks: set[asyncio.Task[None]] = attrs.Factory(set)

    def event(
        self,
        name: str,
        account_id: str | None,
        data: dict[str, Any] | None = None,
        *,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """Build an event envelope the way Airwallex does."""
        when = self.clock.now() if created_at is None else created_at
        return {
            "id": "evt_" + secrets.token_hex(12),
            "name": name,
            "account_id": account_id,
            "org_id": None,
            "data": data or {},
            # Airwallex's own form: to the second, "+0000" (2025-07-24T07:16:00+0000).
            "created_at": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000"),
            "version": "2025-02-14",
        }

    def connection_lost(self, account_id: str, reason: str) -> None:
        """Announce that *account_id*'s connection died (hooked to the provider's state)."""
        if self.partner_events:
            payload = self.event(
                "partner_connection.disconnected",
                None,
                {"account_ids": [account_id], "reason": reason},
            )
            payload["app_id"] = "app_fake"
        else:
            payload = self.event("connection.disconnected", account_id, {"reason": reason})
        self.post(payload)

    def account_event(self, name: str, account_id: str, data: dict[str, Any]) -> None:
        """Announce an account event such as ``account.active`` (hooked to the provider)."""
        self.post(self.event(name, account_id, data))

    def post(self, payload: dict[str, Any]) -> None:
        """Deliver *payload* in the background (needs a running event loop)."""
        self.sent.append(payload)
        task = asyncio.get_running_loop().create_task(self._deliver(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        answers = self.answers.setdefault(payload["id"], [])
        async with aiohttp.ClientSession() as http:
            for attempt in range(self.attempts):
                timestamp = str(int(self.clock.now() * 1000))
                headers = {
                    "content-type": "application/json",
                    "x-timestamp": timestamp,
                    "x-signature": sign(self.secret, timestamp, body),
                }
                try:
                    async with http.post(self.url, data=body, headers=headers) as response:
                        answers.append(response.status)
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    answers.append(0)
                await asyncio.sleep(self.backoff * 2**attempt)

    async def flush(self) -> None:
        """Wait until every delivery started so far succeeded or gave up."""
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks))
