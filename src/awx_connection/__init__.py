"""
awx-connection: hold OAuth partner connections to Airwallex accounts.

General layout: every implementation lives in a private module (``_x.py``)
with one job its name tells; this file pulls together the public API. Two
public sub-namespaces are toolboxes of their own: :mod:`awx_connection.stores`
(where connections live) and :mod:`awx_connection.testing` (a fake Airwallex,
a manual clock, pytest fixtures, and the store contract suite).
"""

from __future__ import annotations

import contextlib

from ._authorize import AuthorizationRequest
from ._clock import Clock, SystemClock
from ._config import Config, Endpoints, Environment, TimingPolicy
from ._connection import Connection
from ._crypto import KeyRing
from ._diagram import mermaid
from ._embedded import EmbeddedAuthorization
from ._errors import (
    AuthorizationError,
    AwxConnectionError,
    BlockingCallError,
    CallbackError,
    CallTimeoutError,
    ConfigurationError,
    ConnectionExpiredError,
    ConnectionInvalidatedError,
    ConnectionNotFoundError,
    ConnectionRevokedError,
    ConnectionUnusableError,
    DecryptionError,
    EmbeddedAuthorizationError,
    IllegalTransitionError,
    InvalidArgumentError,
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    ManagerClosedError,
    NetworkError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    RefreshTimeoutError,
    SinkError,
    StateExpiredError,
    StoreError,
    StoreNotMigratedError,
    StoreUnavailableError,
    SubscriptionOverflowError,
    UnknownStateError,
    VersionConflictError,
    WebhookError,
    WebhookPayloadError,
    WebhookSignatureError,
)
from ._events import ConnectionEvent, EventCallback, Subscription
from ._keepalive import KeepaliveReport
from ._manager import ConnectionManager
from ._outbox import EventConsumer
from ._records import ConnectionRecord, ConnectionSummary, PendingAuthorization, RotationJournal
from ._secrets import Secret
from ._states import (
    AUTHORIZING,
    HOLDS_TOKENS,
    ROTATING,
    SERVING,
    TERMINAL_STATES,
    TRANSITIONS,
    USABLE,
    Action,
    ConnectionState,
    Effect,
    Guard,
    Intent,
    Transition,
    Trigger,
)
from ._statistics import ManagerStatistics
from ._store import (
    ConnectionStore,
    EventLog,
    LeaseStore,
    Outbox,
    RelayLedger,
    Store,
    WebhookLedger,
)
from ._tokens import TokenSet
from ._webhooks import (
    WebhookCallback,
    WebhookClaim,
    WebhookEvent,
    WebhookResult,
    WebhookSubscription,
)
from .aiohttp import webhook_handler

__all__ = [
    "AUTHORIZING",
    "Action",
    "AuthorizationError",
    "AuthorizationRequest",
    "AwxConnectionError",
    "BlockingCallError",
    "CallTimeoutError",
    "CallbackError",
    "Clock",
    "Config",
    "ConfigurationError",
    "Connection",
    "ConnectionEvent",
    "ConnectionExpiredError",
    "ConnectionInvalidatedError",
    "ConnectionManager",
    "ConnectionNotFoundError",
    "ConnectionRecord",
    "ConnectionRevokedError",
    "ConnectionState",
    "ConnectionStore",
    "ConnectionSummary",
    "ConnectionUnusableError",
    "DecryptionError",
    "Effect",
    "EmbeddedAuthorization",
    "EmbeddedAuthorizationError",
    "Endpoints",
    "Environment",
    "EventCallback",
    "EventConsumer",
    "EventLog",
    "Guard",
    "HOLDS_TOKENS",
    "IllegalTransitionError",
    "Intent",
    "InvalidArgumentError",
    "InvalidClientError",
    "InvalidGrantError",
    "KeepaliveReport",
    "KeyRing",
    "LeaseStore",
    "MalformedResponseError",
    "ManagerClosedError",
    "ManagerStatistics",
    "NetworkError",
    "Outbox",
    "PendingAuthorization",
    "ProviderError",
    "ProviderUnavailableError",
    "ROTATING",
    "RateLimitedError",
    "RefreshTimeoutError",
    "RelayLedger",
    "RotationJournal",
    "SERVING",
    "Secret",
    "SinkError",
    "StateExpiredError",
    "Store",
    "StoreError",
    "StoreNotMigratedError",
    "StoreUnavailableError",
    "Subscription",
    "SubscriptionOverflowError",
    "SystemClock",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "TimingPolicy",
    "TokenSet",
    "Transition",
    "Trigger",
    "USABLE",
    "UnknownStateError",
    "VersionConflictError",
    "WebhookCallback",
    "WebhookClaim",
    "WebhookError",
    "WebhookEvent",
    "WebhookLedger",
    "WebhookPayloadError",
    "WebhookResult",
    "WebhookSignatureError",
    "WebhookSubscription",
    "mermaid",
    "webhook_handler",
]

# Show public names as awx_connection.X in reprs and docs, like httpx does.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("awx_connection._"):
        with contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = "awx_connection"
del _name, _obj


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("awx-connection")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
