"""
Airwallex webhooks: signature check, parsing, and what they mean for connections.

Airwallex signs each delivery with the endpoint's secret::

    x-timestamp: 1357872222592                      (milliseconds)
    x-signature: hex(HMAC-SHA256(secret, x-timestamp + raw body))

:func:`verify_signature` checks it in constant time against every
configured secret (several during a secret rotation) and refuses
timestamps outside a tolerance window (replays). :func:`parse_webhook`
reads the envelope ``{id, name, account_id, data, created_at, ...}``
defensively. The manager (:meth:`ConnectionManager.handle_webhook`) then:

* revokes every matching connection on ``connection.disconnected`` and
  ``partner_connection.disconnected`` (whose ``account_ids`` may list
  several accounts), unless the event predates the connection's current
  authorization: deliveries are unordered, and an old disconnect must not
  undo a newer reconnect;
* hands every event (``account.*`` and unknown names too: never dropped) to
  webhook subscribers as a :class:`WebhookEvent`;
* remembers the event ``id`` in the store once handled, so Airwallex's
  at-least-once retries are answered 200 without acting twice.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import hashlib
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, final

import attrs
import orjson

from ._errors import WebhookPayloadError, WebhookSignatureError
from ._secrets import Secret

__all__ = [
    "DISCONNECT_EVENTS",
    "WebhookCallback",
    "WebhookClaim",
    "WebhookEvent",
    "WebhookResult",
    "WebhookSubscription",
    "parse_webhook",
    "sign",
    "verify_signature",
]

_log = logging.getLogger("awx_connection.webhooks")

#: Event names that mean "this account's connection to your app is gone".
DISCONNECT_EVENTS = frozenset({"connection.disconnected", "partner_connection.disconnected"})
#: Largest webhook body accepted, in bytes (real ones are a few KiB).
MAX_BODY_BYTES = 256 * 1024


class WebhookClaim(enum.Enum):
    """
    What :meth:`~awx_connection.Store.claim_webhook` found for an event id.

    Claiming before acting is what makes "act once" hold for concurrent
    deliveries of one event (Airwallex retries while an earlier attempt is
    still being handled; replicas receive them in parallel): only the
    delivery that claimed the id acts.
    """

    #: Ours now: handle it, then :meth:`~awx_connection.Store.finish_webhook`
    #: (or :meth:`~awx_connection.Store.release_webhook` if handling failed).
    CLAIMED = "claimed"
    #: Handled already (answer 200: a duplicate).
    HANDLED = "handled"
    #: Another delivery holds the claim right now (answer 409: retry later).
    BUSY = "busy"


def _empty_if_none(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # Not factory=dict: help() would show attrs' "data = NOTHING".
    return {} if data is None else data


@final
@attrs.frozen
class WebhookEvent:
    """
    One webhook delivery, tied to the connections it concerns.

    ``data`` is the event's payload as Airwallex sent it (treat it as
    read-only). ``connection_ids`` lists the connections in the store whose
    account the event names, whatever their state.
    """

    id: str
    name: str
    account_ids: tuple[str, ...]
    created_at: float
    connection_ids: tuple[str, ...] = ()
    data: Mapping[str, Any] = attrs.field(default=None, converter=_empty_if_none, repr=False)


@final
@attrs.frozen
class WebhookResult:
    """What :meth:`ConnectionManager.handle_webhook` did, and what to answer."""

    status: int
    detail: str
    event: WebhookEvent | None = None
    duplicate: bool = False
    #: Connections moved to ``revoked`` by this delivery.
    revoked: tuple[str, ...] = ()


def sign(secret: Secret | str, timestamp_ms: int | str, body: bytes) -> str:
    """The ``x-signature`` Airwallex sends for *body* at *timestamp_ms*."""
    key = secret.reveal() if isinstance(secret, Secret) else secret
    message = str(timestamp_ms).encode() + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # Plain dicts are case-sensitive; HTTP headers are not.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def verify_signature(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Sequence[Secret],
    now: float,
    tolerance: float,
) -> None:
    """
    Check ``x-timestamp`` and ``x-signature`` against every secret.

    Raises:
        WebhookSignatureError: A header is missing or malformed, the
            timestamp is further than *tolerance* seconds from *now*, or no
            secret produces the signature.
    """
    if not secrets:
        msg = "no webhook secret configured"
        raise WebhookSignatureError(msg)
    timestamp = _header(headers, "x-timestamp")
    signature = _header(headers, "x-signature")
    if not timestamp or not signature:
        msg = "missing x-timestamp or x-signature header"
        raise WebhookSignatureError(msg)
    # isascii(): str.isdigit() also accepts '²' and other digits int() refuses.
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16:
        msg = "x-timestamp is not a millisecond timestamp"
        raise WebhookSignatureError(msg)
    if abs(now - int(timestamp) / 1000) > tolerance:
        msg = "x-timestamp is outside the tolerance window (stale or replayed)"
        raise WebhookSignatureError(msg)
    given = signature.strip().lower().encode()
    # Compare against every secret, without stopping early, in constant time.
    matched = False
    for secret in secrets:
        expected = sign(secret, timestamp, body).encode()
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        msg = "signature does not match any configured secret"
        raise WebhookSignatureError(msg)


def _created_at(value: object) -> float:
    """Airwallex sends ISO 8601 strings; accept epoch seconds or ms too."""
    if isinstance(value, bool):
        msg = "created_at is not a time"
        raise WebhookPayloadError(msg)
    if isinstance(value, int | float):
        return float(value) / (1000 if value > 1e12 else 1)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    msg = "created_at is missing or not a time"
    raise WebhookPayloadError(msg)


def _account_ids(payload: Mapping[str, Any]) -> tuple[str, ...]:
    data = payload.get("data")
    candidates: list[object] = []
    for source in (payload, data if isinstance(data, Mapping) else {}):
        for key in ("account_ids", "accountIds"):
            value = source.get(key)
            if isinstance(value, list):
                candidates.extend(value)
        candidates.extend(source.get(key) for key in ("account_id", "accountId"))
    ids = tuple(dict.fromkeys(c for c in candidates if isinstance(c, str) and c))
    return ids


def parse_webhook(body: bytes) -> WebhookEvent:
    """
    Parse a webhook envelope.

    Raises:
        WebhookPayloadError: Oversized, not JSON, not an object, or without
            a string ``id`` and ``name`` and a readable ``created_at``.
    """
    if len(body) > MAX_BODY_BYTES:
        msg = f"webhook body is larger than {MAX_BODY_BYTES} bytes"
        raise WebhookPayloadError(msg)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        msg = "webhook body is not valid JSON"
        raise WebhookPayloadError(msg) from None
    if not isinstance(payload, dict):
        msg = "webhook body is not a JSON object"
        raise WebhookPayloadError(msg)
    event_id = payload.get("id")
    name = payload.get("name")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 200:
        msg = "webhook has no usable 'id'"
        raise WebhookPayloadError(msg)
    if not isinstance(name, str) or not name or len(name) > 200:
        msg = "webhook has no usable 'name'"
        raise WebhookPayloadError(msg)
    data = payload.get("data")
    return WebhookEvent(
        id=event_id,
        name=name,
        account_ids=_account_ids(payload),
        created_at=_created_at(payload.get("created_at")),
        data=data if isinstance(data, dict) else {},
    )


#: A webhook subscriber: plain function or coroutine function.
WebhookCallback = Callable[[WebhookEvent], Awaitable[None] | None]


@final
@attrs.define(eq=False)
class WebhookSubscription:
    """A webhook subscriber; :meth:`unsubscribe` stops it (idempotent)."""

    _registry: list[WebhookSubscription]
    callback: WebhookCallback
    names: tuple[str, ...] | None

    def matches(self, event: WebhookEvent) -> bool:
        """Whether *event*'s name matches one of ``names`` (``fnmatch`` patterns)."""
        return self.names is None or any(fnmatch.fnmatchcase(event.name, p) for p in self.names)

    def unsubscribe(self) -> None:
        """Stop receiving webhook events."""
        with contextlib.suppress(ValueError):
            self._registry.remove(self)

    async def deliver(self, event: WebhookEvent) -> None:
        """Call the subscriber; a failure is logged and does not propagate."""
        try:
            result = self.callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            _log.exception(
                "webhook subscriber %r raised; other subscribers are unaffected",
                self.callback,
                extra={"webhook_id": event.id, "webhook_name": event.name},
            )
