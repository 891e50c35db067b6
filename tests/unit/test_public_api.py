"""The public surface: exactly these names, sorted, importable, typed."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import awx_connection
import awx_connection.blocking
import awx_connection.instrumentation
import awx_connection.relay
import awx_connection.stores
import awx_connection.testing
import awx_connection.testing.store_contract

EXPECTED = {
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
}


def test_all_is_exactly_the_public_api() -> None:
    """__all__ lists exactly the intended names, each importable."""
    assert EXPECTED == set(awx_connection.__all__)
    for name in awx_connection.__all__:
        assert getattr(awx_connection, name) is not None


def test_all_is_sorted() -> None:
    """Every public __all__ is in plain sorted() order, so diffs stay small."""
    for module in (
        awx_connection,
        awx_connection.blocking,
        awx_connection.instrumentation,
        awx_connection.relay,
        awx_connection.stores,
        awx_connection.testing,
        awx_connection.testing.store_contract,
    ):
        assert sorted(module.__all__) == list(module.__all__), module.__name__


def test_public_classes_show_the_public_module() -> None:
    """Reprs and docs say awx_connection.X, not the private module."""
    assert "awx_connection" == awx_connection.ConnectionManager.__module__
    assert "awx_connection" == awx_connection.ConnectionState.__module__


def test_every_error_is_an_awx_connection_error() -> None:
    """One base class catches everything the library raises."""
    errors = [getattr(awx_connection, n) for n in awx_connection.__all__ if n.endswith("Error")]
    for cls in errors:
        assert issubclass(cls, awx_connection.AwxConnectionError), cls


def test_version_matches_metadata() -> None:
    """__version__ comes from the installed metadata."""
    assert version("awx-connection") == awx_connection.__version__


def test_package_is_typed() -> None:
    """py.typed ships, so users' type checkers read our annotations."""
    assert (Path(awx_connection.__file__).parent / "py.typed").exists()


def test_import_does_not_load_the_aiohttp_server() -> None:
    """import awx_connection leaves aiohttp.web (the server half) unloaded: cold start."""
    import subprocess
    import sys

    code = "import sys, awx_connection; print('aiohttp.web' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == out.stdout.strip()


def test_the_aiohttp_integration_is_a_public_module() -> None:
    """awx_connection.aiohttp holds the aiohttp glue; the top-level name is the same function."""
    import awx_connection.aiohttp

    assert ["webhook_handler"] == awx_connection.aiohttp.__all__
    assert awx_connection.aiohttp.webhook_handler is awx_connection.webhook_handler


def test_the_blocking_facade_is_a_public_module() -> None:
    """awx_connection.blocking holds the synchronous façade, shown under its own name."""
    assert [
        "ApiResponse",
        "BlockingManager",
        "BlockingState",
        "BlockingSubscription",
        "Headers",
        "WebhookReply",
    ] == awx_connection.blocking.__all__
    for name in awx_connection.blocking.__all__:
        assert "awx_connection.blocking" == getattr(awx_connection.blocking, name).__module__
