"""
Signed webhooks to the partner's own endpoint (``pip install 'awx-connection[webhooks]'``).

Each event is one ``POST`` of its JSON body (:func:`~awx_connection.relay.event_body`)
in the `Standard Webhooks <https://www.standardwebhooks.com/>`_ form:

* ``webhook-id``: the event's outbox position; the same on every retry and
  re-send, so the receiver dedupes on it;
* ``webhook-timestamp``: when this attempt was signed (Unix seconds);
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
  ``id.timestamp.body`` with the endpoint's ``whsec_`` secret, made by the
  ``standardwebhooks`` package (the receiver verifies it with the same
  package, in any of its languages).

A 2xx answer delivers the event. Anything else, a timeout or a connection
error is tried again with exponential backoff and full jitter
(:class:`~awx_connection._retry.Retries`), up to ``attempts`` tries; after
the last, the event is handed back to the relay, which stores it as a
dead letter and moves on (``awx-connection events dead-letters replay``
sends it again). One connection's events are sent one after another, in
order; different connections' concurrently, up to ``concurrency``.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, final

import aiohttp
import attrs
import orjson

from .._clock import Clock, SystemClock
from .._delivery import OutboxItem, Refused, event_body
from .._errors import ConfigurationError
from .._retry import Backoff, Retries
from .._secrets import Secret

if TYPE_CHECKING:
    from standardwebhooks import Webhook

__all__ = ["WebhookSink"]


def _redacted(url: str) -> str:
    """*url* without credentials, query or fragment (which may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@final
@attrs.define(eq=False)
class WebhookSink:
    """POST each event, signed, to *url*; retry; give up after *attempts*."""

    url: str = attrs.field(repr=_redacted)
    #: The endpoint's signing secret, ``whsec_<base64>`` (as Standard Webhooks issues them).
    secret: Secret = attrs.field(repr=False)
    attempts: int = 5
    backoff: Backoff = attrs.field(factory=lambda: Backoff(0.5, 30.0))
    #: Seconds one attempt may take, connecting included.
    timeout: float = 10.0
    #: Connections whose events are sent at once.
    concurrency: int = 16
    clock: Clock = attrs.field(factory=SystemClock)
    #: The backoff's sleep (``asyncio.sleep``; replaceable in tests).
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _signer: Webhook | None = attrs.field(default=None, init=False, repr=False)
    _session: aiohttp.ClientSession | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.attempts < 1:
            msg = f"attempts must be at least 1, got {self.attempts}"
            raise ConfigurationError(msg)
        if urllib.parse.urlsplit(self.url).scheme not in {"http", "https"}:
            msg = f"a webhook URL must be http(s)://..., got {_redacted(self.url)!r}"
            raise ConfigurationError(msg)

    @property
    def name(self) -> str:
        """The endpoint URL without credentials or query."""
        return _redacted(self.url)

    async def open(self) -> None:
        """Check the secret and open the HTTP session."""
        if self._session is not None:
            return
        try:
            from standardwebhooks import Webhook
        except ImportError:  # pragma: no cover - the extra is installed in tests
            msg = "the webhook sink needs standardwebhooks: pip install 'awx-connection[webhooks]'"
            raise ConfigurationError(msg) from None
        try:
            self._signer = Webhook(self.secret.reveal())
        except Exception:
            msg = "the webhook signing secret is not a whsec_<base64> secret"
            raise ConfigurationError(msg) from None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.concurrency),
        )

    def signed_headers(self, item: OutboxItem, body: bytes) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt to send *body*, signed now."""
        assert self._signer is not None
        now = datetime.fromtimestamp(int(self.clock.now()), UTC)
        return {
            "content-type": "application/json",
            "webhook-id": item.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(item.id, now, body.decode()),
        }

    async def deliver(self, items: Sequence[OutboxItem]) -> Sequence[Refused]:
        """Send *items*, each connection's in order; return those given up on."""
        if self._session is None:
            msg = "WebhookSink.deliver before open()"
            raise RuntimeError(msg)
        chains: dict[str, list[OutboxItem]] = {}
        for item in items:
            chains.setdefault(item.event.connection_id, []).append(item)
        refused: list[Refused] = []
        gate = asyncio.Semaphore(self.concurrency)

        async def chain(todo: list[OutboxItem]) -> None:
            async with gate:
                for item in todo:
                    failure = await self.send(item)
                    if failure is not None:
                        refused.append(failure)

        await asyncio.gather(*(chain(todo) for todo in chains.values()))
        refused.sort(key=lambda failure: failure.item.position)
        return refused

    async def send(self, item: OutboxItem) -> Refused | None:
        """Send one event, retrying; ``None`` once delivered, else why it was given up."""
        assert self._session is not None
        body = orjson.dumps(event_body(item))
        error = "not sent"
        tries = 0
        async for attempt in Retries(self.backoff, limit=self.attempts, sleep=self.sleep):
            tries = attempt.number
            try:
                async with self._session.post(
                    self.url, data=body, headers=self.signed_headers(item, body)
                ) as response:
                    if 200 <= response.status < 300:
                        return None
                    error = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = type(exc).__name__
        return Refused(item, error, tries)

    async def aclose(self) -> None:
        """Close the HTTP session. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
