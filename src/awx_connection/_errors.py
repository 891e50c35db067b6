"""
Every error the library raises, as one tree.

    AwxConnectionError
    ├── ConfigurationError           bad settings, at construction time
    ├── InvalidArgumentError         a call's argument the library cannot accept or store
    ├── ConnectionNotFoundError      no connection with that id
    ├── IllegalTransitionError       a trigger the current state does not allow
    ├── AuthorizationError           the redirect back could not be accepted
    │   ├── CallbackError            malformed callback (no code, no state, ...)
    │   ├── UnknownStateError        unknown or already used state
    │   └── StateExpiredError        state past its lifetime
    ├── RefreshTimeoutError          another process's rotation did not finish in time
    ├── ManagerClosedError           the manager is closing or closed (or not started)
    ├── BlockingCallError            a blocking call that cannot work from where it was made
    ├── CallTimeoutError             a blocking call outlived its timeout (also a TimeoutError)
    ├── ConnectionUnusableError      the connection holds no usable tokens
    │   ├── ConnectionRevokedError
    │   ├── ConnectionInvalidatedError
    │   └── ConnectionExpiredError
    ├── ProviderError                the token endpoint failed or said no
    │   ├── InvalidGrantError        code or refresh token rejected
    │   ├── InvalidClientError       client id/secret rejected
    │   ├── RateLimitedError         429 ("concurrent" for overlapping refreshes)
    │   ├── ProviderUnavailableError 5xx
    │   ├── MalformedResponseError   not JSON, missing fields, absurd values
    │   └── NetworkError             connection failed or response lost
    ├── EmbeddedAuthorizationError   the embedded-components authorize endpoint said no
    ├── StoreError                   the store failed
    │   ├── StoreUnavailableError    the database is unreachable (retried with backoff)
    │   ├── DecryptionError          a stored secret did not decrypt (wrong key, tampering)
    │   ├── StoreNotMigratedError    opened with create=False before db migrate
    │   └── VersionConflictError     a compare-and-swap lost to a newer write
    ├── SubscriptionOverflowError    a subscriber fell too far behind
    ├── SinkError                    a relay's sink cannot deliver now (the batch is retried)
    └── WebhookError                 a webhook delivery was refused
        ├── WebhookSignatureError    missing, stale or wrong signature
        └── WebhookPayloadError      a body that is not a webhook event

No message ever contains a token, a code, a verifier, ``state`` or the
client secret: errors carry HTTP status and provider code only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ._states import ConnectionState, Trigger

__all__ = [
    "AuthorizationError",
    "AwxConnectionError",
    "BlockingCallError",
    "CallTimeoutError",
    "CallbackError",
    "ConfigurationError",
    "ConnectionExpiredError",
    "ConnectionInvalidatedError",
    "ConnectionNotFoundError",
    "ConnectionRevokedError",
    "ConnectionUnusableError",
    "DecryptionError",
    "EmbeddedAuthorizationError",
    "IllegalTransitionError",
    "InvalidArgumentError",
    "InvalidClientError",
    "InvalidGrantError",
    "MalformedResponseError",
    "ManagerClosedError",
    "NetworkError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RefreshTimeoutError",
    "StateExpiredError",
    "StoreError",
    "SinkError",
    "StoreUnavailableError",
    "SubscriptionOverflowError",
    "UnknownStateError",
    "VersionConflictError",
    "WebhookError",
    "WebhookPayloadError",
    "WebhookSignatureError",
]


class AwxConnectionError(Exception):
    """Base class of every error raised by awx-connection."""


class ConfigurationError(AwxConnectionError, ValueError):
    """A setting is missing or invalid."""


class InvalidArgumentError(AwxConnectionError, ValueError):
    """
    An argument of a call is of the wrong type, or text the library cannot
    store or send (a lone surrogate, which has no UTF-8 encoding).

    Raised before anything is written, by the manager and by every store
    alike, so that bad input is one typed error rather than whichever
    ``TypeError`` or ``UnicodeEncodeError`` a driver happens to raise (or,
    in memory, no error at all). A ``ValueError`` too, for callers that
    catch that. Messages name the argument or field, never its value.
    """


class ConnectionNotFoundError(AwxConnectionError, LookupError):
    """No connection has this id."""

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        super().__init__(f"no connection {connection_id!r}")


class IllegalTransitionError(AwxConnectionError):
    """The connection's current state does not allow this trigger."""

    def __init__(
        self,
        connection_id: str,
        trigger: Trigger,
        state: ConnectionState,
        *,
        guard: str | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.trigger = trigger
        self.state = state
        #: The name of the row's guard that did not hold, if the state was right.
        self.guard = guard
        why = f"needs {guard}" if guard else f"is not allowed in state {state.value!r}"
        super().__init__(f"connection {connection_id!r}: trigger {trigger.value!r} {why}")


class AuthorizationError(AwxConnectionError):
    """The redirect back from Airwallex could not be accepted; nothing changed."""


class CallbackError(AuthorizationError, ValueError):
    """The callback URL or parameters are malformed."""


class UnknownStateError(AuthorizationError):
    """No pending authorization has this ``state``: it is forged, replayed or already used."""


class StateExpiredError(AuthorizationError):
    """The ``state`` belongs to an authorization that expired; begin a new one."""

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        super().__init__(
            f"connection {connection_id!r}: the authorization request expired; "
            "call reauthorize() for a new URL"
        )


class RefreshTimeoutError(AwxConnectionError):
    """
    Another process holds this connection's refresh lease and did not store
    new tokens within ``TimingPolicy.lease_wait``. Nothing was sent; retry
    later (the lease expires, and its journal is resumed by whoever takes it).
    """

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        super().__init__(
            f"connection {connection_id!r}: another process is refreshing it and did not "
            "finish in time"
        )


class ManagerClosedError(AwxConnectionError):
    """
    The :class:`~awx_connection.ConnectionManager` is closing or closed.

    Raised to callers whose call cannot finish because ``aclose()`` began,
    instead of a bare ``CancelledError``: a rotation that may already have
    reached Airwallex is let finish first; one that had not started is
    abandoned, and its journal (if any) is resumed by the next process.

    A `BlockingManager` (`awx_connection.blocking`) raises it too for a
    call before ``start()`` (the message says so) or after ``close()``.
    """

    def __init__(self, message: str = "the connection manager is closed") -> None:
        super().__init__(message)


class BlockingCallError(AwxConnectionError, RuntimeError):
    """
    A call to `awx_connection.blocking.BlockingManager` that cannot
    work from where it was made, refused at once instead of hanging.

    From the manager's own event-loop thread (a subscriber callback runs
    there), the call would wait for the thread that is waiting for it. In a
    child process forked after ``start()`` (a pre-forking server that loaded
    the app first), the loop thread did not survive the fork: start a
    manager in each worker process instead.
    """


class CallTimeoutError(AwxConnectionError, TimeoutError):
    """
    A blocking call did not finish within its ``timeout``; it was cancelled.

    Only the caller's part is cancelled: a refresh the call had joined is
    shared with other callers and goes on (it is shielded), so the next
    call finds its result. A ``TimeoutError`` too, for code that catches
    that; a request that timed out on the network raises the plain
    ``TimeoutError`` instead, so the two stay apart.
    """


class ConnectionUnusableError(AwxConnectionError):
    """The connection has no usable tokens in its current state."""

    def __init__(
        self, connection_id: str, state: ConnectionState, reason: str | None = None
    ) -> None:
        self.connection_id = connection_id
        self.state = state
        self.reason = reason
        detail = f" ({reason})" if reason else ""
        super().__init__(f"connection {connection_id!r} is {state.value}{detail}")


class ConnectionRevokedError(ConnectionUnusableError):
    """The customer disconnected or the provider revoked the tokens: ask them to reconnect."""


class ConnectionInvalidatedError(ConnectionUnusableError):
    """A rotation could not be completed safely: ask the customer to reconnect."""


class ConnectionExpiredError(ConnectionUnusableError):
    """The refresh token aged out: ask the customer to reconnect."""


class ProviderError(AwxConnectionError):
    """
    The token endpoint failed or refused.

    Attributes:
        status: The HTTP status, or ``None`` when no response arrived.
        code: The provider's error code (``invalid_grant``...), when it sent one.
        maybe_processed: Whether the provider may have acted on the request
            (for a refresh: may have rotated the token). Decides whether a
            retry must stay inside the grace window.
    """

    #: Whether a retry of the same request can succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        maybe_processed: bool = False,
    ) -> None:
        self.status = status
        self.code = code
        self.maybe_processed = maybe_processed
        super().__init__(message)


class InvalidGrantError(ProviderError):
    """The code or refresh token was rejected (``invalid_grant``)."""


class InvalidClientError(ProviderError):
    """The client id or secret was rejected (``invalid_client``)."""


class RateLimitedError(ProviderError):
    """HTTP 429. ``concurrent`` is true for "Concurrent token refresh is not allowed"."""

    retryable = True

    def __init__(
        self, message: str, *, status: int = 429, code: str | None, concurrent: bool
    ) -> None:
        self.concurrent = concurrent
        super().__init__(message, status=status, code=code, maybe_processed=False)


class ProviderUnavailableError(ProviderError):
    """HTTP 5xx. Only 503 is taken as "certainly not processed"."""

    retryable = True


class MalformedResponseError(ProviderError):
    """The response is not what the protocol promises (body, fields or size)."""

    retryable = True


class NetworkError(ProviderError):
    """The request failed on the network, or its response was lost or timed out."""

    retryable = True


class EmbeddedAuthorizationError(AwxConnectionError):
    """
    ``POST /api/v1/authentication/authorize`` refused to issue an embedded
    components code (a scope not supported or not enabled, a bad
    ``x-on-behalf-of``, a 5xx after retries, a body that is not JSON).

    ``status`` is the HTTP status (``None`` when the body was malformed);
    ``code`` and ``source`` are Airwallex's error fields when it sent them.
    A 401 that a refresh does not fix is not this error: the connection is
    revoked and `ConnectionRevokedError` is raised, as for any call.
    """

    def __init__(
        self, message: str, *, status: int | None, code: str | None, source: str | None
    ) -> None:
        self.status = status
        self.code = code
        self.source = source
        super().__init__(message)


class StoreError(AwxConnectionError):
    """The store failed to read or write."""


class StoreUnavailableError(StoreError):
    """
    The database could not be reached or dropped the connection.

    Stores retry idempotent operations with backoff before raising this. A
    write that raised it may or may not have committed: re-read before
    deciding anything.
    """


class StoreNotMigratedError(StoreError):
    """
    The store does not exist yet, or its schema is older than this
    library's, and it was opened with ``create=False``, which never creates
    a file, schema or table and never migrates. Run ``awx-connection db
    migrate`` on it (or open it once with ``create=True``, the default).
    """


class VersionConflictError(StoreError):
    """A compare-and-swap write lost: another writer stored a newer version first."""

    def __init__(self, connection_id: str, expected: int, actual: int | None) -> None:
        self.connection_id = connection_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"connection {connection_id!r}: expected version {expected}, store has {actual}"
        )


class DecryptionError(StoreError):
    """A stored secret did not decrypt: wrong or missing key, or a tampered row."""

    def __init__(self, connection_id: str, detail: str) -> None:
        self.connection_id = connection_id
        super().__init__(f"connection {connection_id!r}: cannot decrypt stored secrets ({detail})")


class SubscriptionOverflowError(AwxConnectionError):
    """A subscriber fell too far behind; its subscription was closed."""


class SinkError(AwxConnectionError):
    """
    A relay's sink cannot deliver anything now (the broker is unreachable,
    a publish was not acknowledged in time). The relay keeps its position
    and tries the batch again after a backoff: nothing is dead-lettered for
    an outage of the sink itself.
    """


class WebhookError(AwxConnectionError):
    """A webhook delivery was refused; nothing changed."""

    #: The HTTP status to answer with.
    status: int = 400


class WebhookSignatureError(WebhookError):
    """Missing, malformed, wrong or stale signature (answer 401)."""

    status = 401


class WebhookPayloadError(WebhookError):
    """The body is not a JSON webhook envelope (answer 400)."""

    status = 400


_E = TypeVar("_E", bound=BaseException)


def fresh(error: _E) -> _E:
    """
    A copy of *error*: same type, message and attributes, no traceback, no chain.

    One failure is often handed to many callers (every caller joined to a
    failed refresh, every caller during a failure cooldown). Raising the one
    object again and again grows its traceback by a few frames each time
    (tens of megabytes over a cooldown) and lets one caller's frames show up
    in another's traceback; each caller gets its own copy instead.
    ``__init__`` is not called again: the copy takes the original's
    attributes as they are.
    """
    copy = type(error).__new__(type(error), *error.args)
    copy.__dict__.update(error.__dict__)
    copy.__suppress_context__ = True
    return copy
