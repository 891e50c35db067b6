"""
Configuration: where Airwallex is, who we are, and how patient to be.

Three values, composed into :class:`Config`:

* :class:`Endpoints`: the authorize, token and API URLs. The two
  :class:`Environment` presets follow Airwallex's docs; every URL can be
  overridden because Airwallex is moving sandbox hosts from ``demo`` to
  ``sandbox``, and because tests and proxies need their own.
* the client credentials and the redirect URI registered with Airwallex;
* :class:`TimingPolicy`: every duration the library uses, in one place.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, final
from urllib.parse import urlsplit

import attrs

from ._errors import ConfigurationError
from ._retry import Backoff
from ._secrets import Secret
from ._text import is_text

__all__ = ["Config", "Endpoints", "Environment", "TimingPolicy"]


class Environment(enum.Enum):
    """The two Airwallex environments."""

    PRODUCTION = "production"
    SANDBOX = "sandbox"


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _kind(owner: str, name: str, value: object, expected: type, what: str, hint: str = "") -> None:
    """
    Refuse *value* unless it is an *expected* (a bool is not a number, nor a
    number a bool), when the value is built: later it would fail as a bare
    ``AttributeError`` or ``TypeError`` far from the mistake. The message
    names the type given, never the value (it may be a secret).
    """
    wrong_bool = isinstance(value, bool) != (expected is bool)
    if not isinstance(value, expected) or wrong_bool:
        msg = f"{owner}.{name} must be {what}, not {type(value).__name__}{hint}"
        raise ConfigurationError(msg)


def _text(owner: str, name: str, value: object) -> None:
    _kind(owner, name, value, str, "a string")
    if not is_text(value):  # type: ignore[arg-type]  # a str, checked above
        msg = f"{owner}.{name} is not valid text (it holds a lone surrogate)"
        raise ConfigurationError(msg)


def _check_url(name: str, url: str, *, allow_insecure: bool) -> None:
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 host
        msg = f"{name} must be an absolute http(s) URL, got {url!r}"
        raise ConfigurationError(msg) from None
    if parts.scheme not in ("http", "https") or not hostname:
        msg = f"{name} must be an absolute http(s) URL, got {url!r}"
        raise ConfigurationError(msg)
    if parts.fragment or url.endswith("#"):
        msg = f"{name} must not have a #fragment (RFC 6749 section 3.1), got {url!r}"
        raise ConfigurationError(msg)
    if parts.scheme == "http" and not (allow_insecure or _is_loopback(hostname)):
        msg = (
            f"{name} {url!r} is not HTTPS; tokens would travel in clear text. "
            "Use HTTPS, a loopback address, or allow_insecure=True."
        )
        raise ConfigurationError(msg)


@final
@attrs.frozen
class Endpoints:
    """
    The three URLs the library talks to.

    Plain ``http://`` is refused unless the host is a loopback address (the
    fake provider) or *allow_insecure* is set.
    """

    authorize_url: str
    token_url: str
    api_base_url: str
    allow_insecure: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _kind("Endpoints", "allow_insecure", self.allow_insecure, bool, "True or False")
        for name in ("authorize_url", "token_url", "api_base_url"):
            _text("Endpoints", name, getattr(self, name))
            _check_url(name, getattr(self, name), allow_insecure=self.allow_insecure)

    @classmethod
    def for_environment(cls, environment: Environment) -> Endpoints:
        """The documented hosts of *environment*."""
        if environment is Environment.PRODUCTION:
            return cls(
                authorize_url="https://airwallex.com/oauth/authorize",
                token_url="https://api.airwallex.com/oauth/token",
                api_base_url="https://api.airwallex.com",
            )
        return cls(
            authorize_url="https://demo.airwallex.com/oauth/authorize",
            token_url="https://api-demo.airwallex.com/oauth/token",
            api_base_url="https://api-demo.airwallex.com",
        )

    @classmethod
    def from_base_url(cls, base_url: str, *, allow_insecure: bool = False) -> Endpoints:
        """
        All three URLs on one host, as the fake provider serves them.

        Raises:
            ConfigurationError: *base_url* is not an absolute http(s) URL
                (plain http only for a loopback host or with *allow_insecure*).
        """
        _text("Endpoints.from_base_url", "base_url", base_url)
        base = base_url.rstrip("/")
        return cls(
            authorize_url=f"{base}/oauth/authorize",
            token_url=f"{base}/oauth/token",
            api_base_url=base,
            allow_insecure=allow_insecure,
        )


def _number(attribute: attrs.Attribute[Any], value: object, *, whole: bool) -> None:
    # bool is an int subclass, but True seconds (or attempts) is a mistake;
    # a string or None would otherwise fail later with a bare TypeError.
    kinds: type | tuple[type, ...] = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "a whole number" if whole else "a number"
        msg = f"TimingPolicy.{attribute.name} must be {what}, got {value!r}"
        raise ConfigurationError(msg)


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _number(attribute, value, whole=False)
    if not value > 0:
        msg = f"TimingPolicy.{attribute.name} must be > 0, got {value!r}"
        raise ConfigurationError(msg)


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _number(attribute, value, whole=False)
    if not value >= 0:
        msg = f"TimingPolicy.{attribute.name} must be >= 0, got {value!r}"
        raise ConfigurationError(msg)


def _optional(
    check: Callable[[object, attrs.Attribute[Any], Any], None],
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """*check*, or ``None`` (the feature is off)."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return validate


def _count(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    _number(attribute, value, whole=True)
    if not value > 0:
        msg = f"TimingPolicy.{attribute.name} must be > 0, got {value!r}"
        raise ConfigurationError(msg)


def _count_or_zero(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    _number(attribute, value, whole=True)
    if not value >= 0:
        msg = f"TimingPolicy.{attribute.name} must be >= 0, got {value!r}"
        raise ConfigurationError(msg)


@final
@attrs.frozen(kw_only=True)
class TimingPolicy:
    """
    Every duration and limit the library uses, in seconds unless named otherwise.

    The refresh skew is relative to the token's lifetime,
    ``min(skew_max, skew_ratio * lifetime)``: 60 s for Airwallex's 5-minute
    tokens, and never larger than the token itself (a fixed 15-minute margin
    would refresh on every call for tokens that live 5 minutes).
    """

    #: Upper bound of the refresh skew.
    skew_max: float = attrs.field(default=60.0, validator=_non_negative)
    #: Fraction of the access token's lifetime used as skew.
    skew_ratio: float = attrs.field(default=0.2, validator=_non_negative)
    #: How long an authorize URL's ``state`` stays usable.
    state_ttl: float = attrs.field(default=600.0, validator=_positive)
    #: Total timeout of one HTTP request to Airwallex.
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Attempts per token-endpoint operation (first try included).
    max_attempts: int = attrs.field(default=4, validator=_count)
    #: First backoff delay; doubles per attempt, full jitter.
    backoff_base: float = attrs.field(default=0.25, validator=_non_negative)
    #: Largest backoff delay.
    backoff_max: float = attrs.field(default=5.0, validator=_non_negative)
    #: How long the provider keeps the previous refresh token valid.
    grace: float = attrs.field(default=60.0, validator=_positive)
    #: Safety margin: retries of an unanswered rotation stop this long before
    #: the grace window closes, to absorb clock skew and request latency.
    grace_margin: float = attrs.field(default=15.0, validator=_non_negative)
    #: Access-token lifetime assumed when the response has no ``expires_in``.
    default_access_ttl: float = attrs.field(default=300.0, validator=_positive)
    #: Refresh-token lifetime assumed when the response has no
    #: ``refresh_token_expires_in`` (the shorter of the documented 60/90 days).
    default_refresh_ttl: float = attrs.field(default=60 * 86400.0, validator=_positive)
    #: Largest token-endpoint response body read, in bytes.
    max_response_bytes: int = attrs.field(default=64 * 1024, validator=_count)
    #: How long a refresh lease lasts. Renewed before an attempt unless it was
    #: taken within ``(lease_ttl - request_timeout) / 2``, so a POST is always
    #: over before the lease can lapse. Shorter than ``grace - grace_margin``,
    #: so when a holder dies mid-rotation the next process can take over
    #: while the old token is still usable.
    lease_ttl: float = attrs.field(default=20.0, validator=_positive)
    #: Real seconds a process waits for another process's rotation before
    #: giving up with RefreshTimeoutError.
    lease_wait: float = attrs.field(default=45.0, validator=_positive)
    #: Real seconds (this process's monotonic clock) another process's
    #: unfinished rotation must have been seen unchanged before it is
    #: resumed; ``None`` means ``1.2 * request_timeout``. The lease says when
    #: the other process's turn is over by the replicas' clocks, which may
    #: disagree; this says its last request is over, whatever the clocks say.
    #: Shrink it in tests only.
    resume_delay: float | None = attrs.field(default=None)
    #: Real seconds after a rotation's retries ran out with its token maybe
    #: sent before the manager tries it again by itself (and again after
    #: each such failure), so that it settles inside the grace window even
    #: when no caller asks (ConnectionManager(settle=False) turns this off).
    settle_delay: float = attrs.field(default=5.0, validator=_non_negative)
    #: How long stored events (and handled webhook ids) are kept, on the
    #: injected clock: older ones are deleted by the manager's retention
    #: sweep every ``prune_interval`` and by ``ConnectionManager.prune_events()``.
    #: ``None`` keeps them for ever (no sweep; ``prune_events()`` deletes
    #: nothing). A durable consumer further behind than this misses what was
    #: deleted: age decides, not consumers' offsets.
    event_retention: float | None = attrs.field(
        default=30 * 86400.0, validator=_optional(_positive)
    )
    #: Real seconds between the manager's retention sweeps; the first runs
    #: at a random moment of the first interval (replicas started together
    #: spread out, and a service restarted more often than the interval
    #: still prunes). ``None``: no sweep (``prune_events()`` still works).
    prune_interval: float | None = attrs.field(default=3600.0, validator=_optional(_positive))
    #: After a refresh failed for good (attempts used up, or a rejection such
    #: as ``invalid_client``), callers get the same error without a new
    #: request for this long (injected clock): no storm against a provider
    #: that is down or refusing us.
    failure_cooldown: float = attrs.field(default=5.0, validator=_non_negative)
    #: The same, after ``invalid_client`` (a configuration problem).
    invalid_client_cooldown: float = attrs.field(default=60.0, validator=_non_negative)
    #: Token-endpoint requests in flight at once, across all connections: when
    #: an outage ends, queued refreshes go out a few at a time.
    max_concurrent_refreshes: int = attrs.field(default=32, validator=_count)
    #: Extra attempts for API calls through ``request()`` on 502/503/504 or a
    #: network error, for idempotent methods only unless ``retry=True``.
    api_retries: int = attrs.field(default=2, validator=_count_or_zero)
    #: Largest accepted distance between a webhook's ``x-timestamp`` and now.
    webhook_tolerance: float = attrs.field(default=300.0, validator=_positive)
    #: How long (injected clock) a webhook delivery's claim on its event id
    #: lasts: another delivery of the same event meanwhile is answered 409
    #: (retry later); a claim whose holder died is taken over after it.
    webhook_claim_ttl: float = attrs.field(default=60.0, validator=_positive)
    #: How far Airwallex's clock and ours may disagree. A disconnect webhook
    #: whose ``created_at`` (to the second) is within this (plus that
    #: second) of the connection's activation has no certain order with it:
    #: the provider is asked instead (an API call with the current token).
    webhook_clock_skew: float = attrs.field(default=2.0, validator=_non_negative)
    #: Keep-alive: an idle connection's refresh token is rotated once less
    #: than this fraction of its lifetime is left (minus per-connection
    #: jitter), so a 90-day token is rotated about every 45 days, not every
    #: 5 minutes.
    keepalive_remaining: float = attrs.field(default=0.5, validator=_positive)
    #: Keep-alive jitter, as a fraction of the refresh token's lifetime,
    #: spreading rotations of connections created together.
    keepalive_jitter: float = attrs.field(default=0.1, validator=_non_negative)
    #: Real seconds between keep-alive passes when the manager runs them.
    keepalive_interval: float = attrs.field(default=3600.0, validator=_positive)
    #: Keep-alive rotations running at once (no herd after an outage).
    keepalive_concurrency: int = attrs.field(default=8, validator=_count)
    #: Real seconds from ``open()`` to the first keep-alive pass (times a
    #: random 0.5-1.5, so replicas started together spread out). Soon, not
    #: one interval later: a service redeployed more often than
    #: ``keepalive_interval`` would otherwise never run a pass.
    keepalive_first_delay: float = attrs.field(default=30.0, validator=_non_negative)
    #: Real seconds between scans for rotations left unfinished
    #: (``refreshing``) by any process, which are settled without waiting
    #: for a caller. Small next to the grace window (60 s), so an orphaned
    #: rotation is found while its token can still be presented again.
    settle_interval: float = attrs.field(default=5.0, validator=_positive)
    #: Real seconds ``aclose()`` waits for rotations that may have reached
    #: the provider to finish, and then for subscribers to drain; ``None``
    #: means ``request_timeout + 5``: one request and its write.
    close_timeout: float | None = attrs.field(default=None)

    @property
    def resume_wait(self) -> float:
        """``resume_delay``, or its default: 1.2 x ``request_timeout``."""
        return 1.2 * self.request_timeout if self.resume_delay is None else self.resume_delay

    @property
    def close_wait(self) -> float:
        """``close_timeout``, or its default: ``request_timeout + 5``."""
        return self.request_timeout + 5.0 if self.close_timeout is None else self.close_timeout

    def __attrs_post_init__(self) -> None:
        if self.resume_delay is not None:
            _non_negative(self, attrs.fields(TimingPolicy).resume_delay, self.resume_delay)
        if self.close_timeout is not None:
            _non_negative(self, attrs.fields(TimingPolicy).close_timeout, self.close_timeout)
        if self.lease_ttl >= self.grace - self.grace_margin:
            msg = "TimingPolicy.lease_ttl must be shorter than grace - grace_margin"
            raise ConfigurationError(msg)
        if self.request_timeout >= self.lease_ttl:
            msg = "TimingPolicy.request_timeout must be shorter than lease_ttl"
            raise ConfigurationError(msg)
        if self.lease_ttl + self.resume_wait >= self.grace - self.grace_margin:
            # A crashed holder's journal must still be resumable once its
            # lease has expired and the resume delay has passed.
            msg = "TimingPolicy.lease_ttl + resume_wait must be shorter than grace - grace_margin"
            raise ConfigurationError(msg)
        if self.grace_margin >= self.grace:
            msg = "TimingPolicy.grace_margin must be smaller than grace"
            raise ConfigurationError(msg)
        if self.keepalive_remaining + self.keepalive_jitter >= 1:
            msg = "TimingPolicy.keepalive_remaining + keepalive_jitter must be below 1"
            raise ConfigurationError(msg)
        if self.skew_ratio >= 1:
            msg = "TimingPolicy.skew_ratio must be below 1"
            raise ConfigurationError(msg)

    def skew(self, lifetime: float) -> float:
        """The refresh skew for a token that lives *lifetime* seconds."""
        return min(self.skew_max, self.skew_ratio * lifetime)

    @property
    def retry_backoff(self) -> Backoff:
        """The backoff of every retry loop: ``backoff_base`` doubling up to ``backoff_max``."""
        return Backoff(self.backoff_base, self.backoff_max)

    def backoff(self, attempt: int) -> float:
        """Upper bound of the delay before retry number *attempt* (1-based)."""
        return self.retry_backoff.ceiling(attempt)


def _scopes(value: Iterable[str]) -> tuple[str, ...]:
    # tuple("a b") would be ('a', ' ', 'b'): one string is a mistake here.
    if isinstance(value, str):
        msg = "default_scopes must be a sequence of scope names, not one string"
        raise ConfigurationError(msg)
    try:
        scopes = tuple(value)
    except TypeError:
        msg = f"default_scopes must be a sequence of scope names, got {value!r}"
        raise ConfigurationError(msg) from None
    # The names begin_authorization() would refuse are refused here, when
    # the configuration is built, rather than at the first customer's click.
    for scope in scopes:
        if not isinstance(scope, str) or not scope or any(c.isspace() for c in scope):
            msg = f"default_scopes: invalid scope {scope!r}"
            raise ConfigurationError(msg)
    return scopes


def _secrets(values: Iterable[str | Secret]) -> tuple[Secret, ...]:
    if isinstance(values, str | Secret):
        msg = "webhook_secrets must be a sequence of secrets, not one string"
        raise ConfigurationError(msg)
    try:
        items = tuple(values)
    except TypeError:
        msg = f"Config.webhook_secrets must be a sequence of secrets, not {type(values).__name__}"
        raise ConfigurationError(msg) from None
    return tuple(_secret("webhook_secrets", v) for v in items)


def _secret(name: str, value: str | Secret) -> Secret:
    if isinstance(value, Secret):
        return value
    _text("Config", name, value)
    return Secret(value)


def _to_secret(value: str | Secret) -> Secret:
    return _secret("client_secret", value)


# None defaults with converters rather than factories, so that help() reads
# "timing: TimingPolicy | None = None" instead of attrs' "timing = NOTHING".
def _sandbox_if_none(endpoints: Endpoints | None) -> Endpoints:
    return Endpoints.for_environment(Environment.SANDBOX) if endpoints is None else endpoints


def _default_timing_if_none(timing: TimingPolicy | None) -> TimingPolicy:
    return TimingPolicy() if timing is None else timing


@final
@attrs.frozen(kw_only=True)
class Config:
    """
    What a :class:`~awx_connection.ConnectionManager` needs to know.

    ``client_secret`` may be given as a plain string; it is wrapped in a
    :class:`~awx_connection.Secret` at once, so it never shows in a repr.
    """

    #: The partner app's OAuth client id.
    client_id: str
    #: The OAuth client secret (a plain string is wrapped at once).
    client_secret: Secret = attrs.field(converter=_to_secret)
    #: The redirect URI registered for the client; the callback lands there.
    redirect_uri: str
    #: Where Airwallex is; ``None`` (the default) means the sandbox.
    endpoints: Endpoints = attrs.field(default=None, converter=_sandbox_if_none)
    #: Every duration and limit; ``None`` (the default) means ``TimingPolicy()``.
    timing: TimingPolicy = attrs.field(default=None, converter=_default_timing_if_none)
    #: Scopes requested when ``begin_authorization()`` is given none.
    default_scopes: tuple[str, ...] = attrs.field(default=(), converter=_scopes)
    #: Use PKCE (S256) unless ``begin_authorization(pkce=...)`` says otherwise.
    pkce: bool = True
    #: Webhook signing secrets: all are accepted (several during a secret
    #: rotation). Empty means webhooks are refused with 401.
    webhook_secrets: tuple[Secret, ...] = attrs.field(default=(), converter=_secrets)

    def __attrs_post_init__(self) -> None:
        # Every field's type, here rather than at first use: Config(endpoints=
        # "https://...") used to be accepted and fail later with AttributeError.
        _text("Config", "client_id", self.client_id)
        _text("Config", "redirect_uri", self.redirect_uri)
        _kind(
            "Config",
            "endpoints",
            self.endpoints,
            Endpoints,
            "an Endpoints",
            "; for one base URL use Endpoints.from_base_url(url), for Airwallex's "
            "hosts Endpoints.for_environment(Environment.SANDBOX)",
        )
        _kind("Config", "timing", self.timing, TimingPolicy, "a TimingPolicy")
        _kind("Config", "pkce", self.pkce, bool, "True or False")
        if not self.client_id:
            msg = "client_id is empty"
            raise ConfigurationError(msg)
        if not self.client_secret:
            msg = "client_secret is empty"
            raise ConfigurationError(msg)
        _check_url("redirect_uri", self.redirect_uri, allow_insecure=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """
        Read ``AWX_CLIENT_ID``, ``AWX_CLIENT_SECRET``, ``AWX_REDIRECT_URI``,
        ``AWX_ENVIRONMENT`` (``production`` or ``sandbox``, the default), an
        optional ``AWX_BASE_URL`` that puts every endpoint on one host, and
        optional space-separated ``AWX_SCOPES`` and optional comma-separated
        ``AWX_WEBHOOK_SECRETS``.

        Raises:
            ConfigurationError: A variable is missing or invalid.
        """
        env = os.environ if environ is None else environ
        missing = [
            name
            for name in ("AWX_CLIENT_ID", "AWX_CLIENT_SECRET", "AWX_REDIRECT_URI")
            if not env.get(name)
        ]
        if missing:
            msg = f"missing environment variables: {', '.join(missing)}"
            raise ConfigurationError(msg)
        try:
            environment = Environment(env.get("AWX_ENVIRONMENT", "sandbox"))
        except ValueError:
            msg = "AWX_ENVIRONMENT must be 'production' or 'sandbox'"
            raise ConfigurationError(msg) from None
        base = env.get("AWX_BASE_URL")
        endpoints = (
            Endpoints.from_base_url(base) if base else Endpoints.for_environment(environment)
        )
        return cls(
            client_id=env["AWX_CLIENT_ID"],
            client_secret=env["AWX_CLIENT_SECRET"],
            redirect_uri=env["AWX_REDIRECT_URI"],
            endpoints=endpoints,
            default_scopes=tuple(env.get("AWX_SCOPES", "").split()),
            webhook_secrets=tuple(s for s in env.get("AWX_WEBHOOK_SECRETS", "").split(",") if s),
        )
