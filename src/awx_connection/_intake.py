"""
Webhook intake: what a verified delivery does to the connections it names.

Verifying and parsing are :mod:`awx_connection._webhooks` (pure). Here a
delivery is acted on: its event id is claimed in the store first, so that
deliveries of one event (Airwallex retries while an earlier attempt is still
being handled; replicas receive them in parallel) act once; a disconnect
revokes the connections of its accounts, unless it belongs to an earlier
authorization (deliveries are unordered); where the order is uncertain
(``created_at`` is to the second) Airwallex is asked with the connection's
own token; then every webhook subscriber runs; then the id is marked
handled, or, if handling failed, released so a retry can succeed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Literal, final

import attrs

from ._config import TimingPolicy
from ._core import Core
from ._errors import (
    AwxConnectionError,
    ConnectionRevokedError,
    ConnectionUnusableError,
    ProviderError,
    StoreError,
    WebhookError,
)
from ._live import Live, LiveCache
from ._records import ConnectionRecord
from ._secrets import Secret
from ._states import USABLE, Trigger
from ._webhooks import (
    DISCONNECT_EVENTS,
    WebhookCallback,
    WebhookClaim,
    WebhookEvent,
    WebhookResult,
    WebhookSubscription,
    parse_webhook,
    verify_signature,
)
from ._writer import Writer

__all__ = ["WebhookIntake", "order_of"]

_log = logging.getLogger("awx_connection")


def order_of(
    created_at: float, activated_at: float | None, timing: TimingPolicy
) -> Literal["before", "after", "unknown"]:
    """
    Whether a webhook created at *created_at* (Airwallex renders it to the
    second: the event happened within the second after it) surely came
    before or after the activation at *activated_at*, allowing
    ``webhook_clock_skew`` between the two clocks; else ``"unknown"``.
    """
    if activated_at is None:
        return "after"
    skew = timing.webhook_clock_skew
    if created_at + 1.0 + skew <= activated_at:
        return "before"
    if created_at - skew > activated_at:
        return "after"
    return "unknown"


@final
@attrs.define(eq=False)
class WebhookIntake:
    """Claims, acts on and records webhook deliveries (see the module docstring)."""

    core: Core
    cache: LiveCache
    writer: Writer
    #: ``access_token()`` of the manager: a valid token, refreshing if needed.
    access_token: Callable[[str], Awaitable[str]]
    subscribers: list[WebhookSubscription] = attrs.field(factory=list)

    def subscribe(
        self, callback: WebhookCallback, names: Collection[str] | None
    ) -> WebhookSubscription:
        """Add a webhook subscriber for the event names matching *names* (all when ``None``)."""
        sub = WebhookSubscription(
            self.subscribers, callback, None if names is None else tuple(names)
        )
        self.subscribers.append(sub)
        return sub

    async def handle(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        """Verify, claim, act, record (``ConnectionManager.handle_webhook`` documents it)."""
        core = self.core
        core.check_open()
        timing = core.config.timing
        try:
            verify_signature(
                headers,
                body,
                secrets=core.config.webhook_secrets,
                now=core.clock.now(),
                tolerance=timing.webhook_tolerance,
            )
            event = parse_webhook(body)
        except WebhookError as exc:
            _log.warning("webhook refused (%s): %s", exc.status, exc)
            core.counts["webhooks_refused"] += 1
            return WebhookResult(exc.status, str(exc))
        owner = secrets.token_hex(8)
        now = core.clock.now()
        claim = await core.store.claim_webhook(
            event.id, owner=owner, now=now, until=now + timing.webhook_claim_ttl
        )
        if claim is WebhookClaim.HANDLED:
            core.counts["webhooks_handled"] += 1
            return WebhookResult(200, "duplicate", event, duplicate=True)
        if claim is WebhookClaim.BUSY:
            return WebhookResult(409, "being handled by another delivery; retry later", event)
        try:
            event, revoked = await self._act(event)
            await core.store.finish_webhook(event.id, owner=owner, at=core.clock.now())
        except AwxConnectionError as exc:
            _log.warning(
                "webhook %s %s could not be handled now (%s); answering 503 so it is retried",
                event.name,
                event.id,
                exc,
            )
            await self._release(event.id, owner)
            return WebhookResult(503, f"could not be handled now: {exc}", event)
        except BaseException:
            await self._release(event.id, owner)
            raise
        core.counts["webhooks_handled"] += 1
        return WebhookResult(200, "handled", event, revoked=revoked)

    async def _act(self, event: WebhookEvent) -> tuple[WebhookEvent, tuple[str, ...]]:
        """Tie *event* to its connections, revoke them on a disconnect, run the subscribers."""
        records: dict[str, ConnectionRecord] = {}
        for account_id in event.account_ids:
            for record in await self.core.store.list_connections(account_id=account_id):
                records[record.id] = record
        event = attrs.evolve(event, connection_ids=tuple(records))
        revoked: list[str] = []
        if event.name in DISCONNECT_EVENTS:
            revoked = [
                record.id
                for record in records.values()
                if await self._disconnect(self.cache.adopt(record), event)
            ]
        for sub in [s for s in self.subscribers if s.matches(event)]:
            await sub.deliver(event)
        return event, tuple(revoked)

    async def _release(self, event_id: str, owner: str) -> None:
        try:
            await asyncio.shield(self.core.store.release_webhook(event_id, owner=owner))
        except StoreError as exc:
            # Harmless: the claim runs out by itself (webhook_claim_ttl).
            _log.warning("webhook %s: could not release its claim: %s", event_id, exc)

    async def _disconnect(self, live: Live, event: WebhookEvent) -> bool:
        """
        Revoke the connection for a disconnect webhook, unless the event
        belongs to an earlier authorization; where the order is uncertain,
        the provider is asked. Whether it was revoked.
        """
        async with live.lock:
            await self.cache.reload(live)
            record = live.record
            if record.state not in USABLE:
                return False
            order = order_of(event.created_at, record.activated_at, self.core.config.timing)
            if order == "before":
                _log.info(
                    "connection %s: ignoring %s %s older than the current authorization",
                    record.id,
                    event.name,
                    event.id,
                    extra={"connection_id": record.id},
                )
                return False
            if order == "after":
                await self.writer.transition(
                    live, Trigger.REVOKE, f"webhook {event.name} ({event.id})"
                )
                return True
        return await self._ask_the_provider(live, event)

    async def _ask_the_provider(self, live: Live, event: WebhookEvent) -> bool:
        """
        A disconnect whose order with the activation is uncertain: ask
        Airwallex with the connection's own token (``GET /api/v1/account/``).
        Refused (401), or its refresh refused (``invalid_grant``): the grant
        is gone, so the connection is revoked. Any other answer but a 5xx:
        the current authorization stands, and the event was an earlier one's.

        Raises:
            ProviderError: Airwallex could not be asked (a 5xx, the network);
                the webhook is answered 503 and retried later.
        """
        connection_id = live.record.id
        try:
            token = await self.access_token(connection_id)
            await self.core.transport.fetch_account(Secret(token))
        except ConnectionRevokedError:
            return True  # the refresh was refused: revoked, as it says
        except ConnectionUnusableError:
            return False
        except ProviderError as exc:
            if exc.status != 401:
                if exc.status is None or exc.status >= 500:
                    raise
                status: int | None = exc.status  # 403, 404: the token works
            else:
                async with live.lock:
                    if live.record.state not in USABLE:
                        return False
                    await self.writer.transition(
                        live,
                        Trigger.REVOKE,
                        f"webhook {event.name} ({event.id}); the provider refused the token",
                    )
                return True
        else:
            status = 200
        _log.info(
            "connection %s: ignoring %s %s from about when it was activated; the provider "
            "still accepts its token (%s)",
            connection_id,
            event.name,
            event.id,
            status,
            extra={"connection_id": connection_id},
        )
        return False
