"""
The NATS JetStream sink (``pip install 'awx-connection[nats]'``).

* **One subject per event kind**: ``<prefix>.<trigger>``, for example
  ``awx.connection.exchanged`` (a customer connected),
  ``awx.connection.revoke``, ``awx.connection.refreshed``. A consumer
  filters on the kinds it acts on (``awx.connection.>`` for all).
* **The outbox position is the message id** (``Nats-Msg-Id``), so the
  stream's duplicate window drops what a relay re-sends after a crash:
  each event is stored once. Keep the window (``duplicate_window``, 2
  minutes by default) longer than a relay takes to be restarted or taken
  over (its lease term), or a re-send after the window is stored twice;
  the headers ``Awx-Connection-Id`` and ``Awx-Sequence`` let a consumer
  dedupe regardless.
* **The stream is created if missing** (``create_stream``), over
  ``<prefix>.>``; an existing stream is used as it is.
* Publishes are pipelined (``publish_async``) and acknowledged per batch;
  a batch not acknowledged in ``ack_timeout`` raises
  :class:`~awx_connection.SinkError` and the relay sends it again, which
  the duplicate window makes safe. JetStream never refuses one event for
  good, so this sink dead-letters nothing.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, final

import attrs
import orjson

from .._delivery import OutboxItem, Refused, event_body
from .._errors import ConfigurationError, SinkError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ["NatsSink"]


def _redacted(url: str) -> str:
    """*url* without a user or password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@final
@attrs.define(eq=False)
class NatsSink:
    """Publish each event to JetStream on ``<subject_prefix>.<trigger>``."""

    #: ``nats://host:port`` (credentials in the URL are passed to nats-py, never logged).
    url: str = attrs.field(repr=_redacted)
    stream: str = "AWX_CONNECTION_EVENTS"
    subject_prefix: str = "awx.connection"
    create_stream: bool = True
    #: The window a created stream drops repeated message ids in, in seconds.
    duplicate_window: float = 120.0
    #: How long open() tries to reach the server.
    connect_timeout: float = 5.0
    #: How long a batch may wait for its acknowledgements.
    ack_timeout: float = 10.0
    #: Prepended to the position in ``Nats-Msg-Id``: for a stream that
    #: several stores publish to (their positions overlap).
    msg_id_prefix: str = ""
    _nc: Client | None = attrs.field(default=None, init=False, repr=False)
    _js: JetStreamContext | None = attrs.field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """The server URL without credentials, and the stream."""
        return f"{_redacted(self.url)} stream {self.stream}"

    def subject(self, item: OutboxItem) -> str:
        """Where *item* is published: ``<subject_prefix>.<trigger>``."""
        return f"{self.subject_prefix}.{item.event.trigger.value}"

    def headers(self, item: OutboxItem) -> dict[str, str]:
        """The message headers of *item*; ``Nats-Msg-Id`` is what JetStream dedupes on."""
        event = item.event
        return {
            "Nats-Msg-Id": f"{self.msg_id_prefix}{item.id}",
            "Awx-Connection-Id": event.connection_id,
            "Awx-Sequence": str(event.sequence),
        }

    async def open(self) -> None:
        """Connect (reconnecting forever after), and create the stream if asked and missing."""
        if self._nc is not None:
            return
        try:
            import nats
            from nats.js.errors import NotFoundError
        except ImportError:  # pragma: no cover - the extra is installed in tests
            msg = "the NATS sink needs nats-py: pip install 'awx-connection[nats]'"
            raise ConfigurationError(msg) from None
        try:
            # nats-py applies max_reconnect_attempts to the first connection
            # too: forever once connected, but a bound on the first.
            async with asyncio.timeout(self.connect_timeout):
                nc = await nats.connect(
                    self.url,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=max(1, int(self.connect_timeout)),
                )
        except Exception as exc:
            msg = f"cannot connect to {self.name}: {type(exc).__name__}"
            raise SinkError(msg) from None
        self._nc = nc
        self._js = js = nc.jetstream()
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            if not self.create_stream:
                await self.aclose()
                msg = f"JetStream stream {self.stream!r} does not exist (and create_stream is off)"
                raise ConfigurationError(msg) from None
            await js.add_stream(
                name=self.stream,
                subjects=[f"{self.subject_prefix}.>"],
                duplicate_window=self.duplicate_window,
            )

    async def deliver(self, items: Sequence[OutboxItem]) -> Sequence[Refused]:
        """Publish *items* in order, then wait for every acknowledgement."""
        js = self._js
        if js is None:
            msg = "NatsSink.deliver before open()"
            raise RuntimeError(msg)
        futures: list[asyncio.Future[Any]] = []
        try:
            for item in items:
                futures.append(  # noqa: PERF401 - kept one by one: a failure cancels those made
                    await js.publish_async(
                        self.subject(item),
                        orjson.dumps(event_body(item)),
                        headers=self.headers(item),
                    )
                )
            async with asyncio.timeout(self.ack_timeout):
                await asyncio.gather(*futures)
        except (TimeoutError, OSError) as exc:
            raise SinkError(f"{self.name}: {type(exc).__name__}") from None
        except Exception as exc:
            # nats-py's own errors (no responders, API errors, a closed connection).
            if type(exc).__module__.startswith("nats"):
                raise SinkError(f"{self.name}: {type(exc).__name__}: {exc}") from None
            raise
        finally:
            # Acks that never came must not hold nats-py's pending slots (a
            # cancelled future gives its slot back) or log "never retrieved".
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()
        return ()

    async def aclose(self) -> None:
        """Drain and close the connection. Idempotent."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()
