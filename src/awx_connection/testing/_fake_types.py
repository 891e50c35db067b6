"""
The values a test hands to, or reads from, the fake provider.

They live apart from the rules (``_fake_state``) and the HTTP layer
(``_fake_app``) because both of those, and the users' tests, import them:
this module depends on nothing else in the package.
"""

from __future__ import annotations

import enum
from typing import Final, final

import attrs

__all__ = ["FakeCounters", "FakeProviderError", "Fault", "FaultKind"]

#: The grant types a :class:`Fault` can be restricted to.
GRANT_TYPES: Final = frozenset({"authorization_code", "refresh_token"})


class FakeProviderError(ValueError):
    """
    A call on the fake that the real provider would refuse outright.

    Raised by :meth:`~awx_connection.testing.FakeAirwallex.approve` and
    :meth:`~awx_connection.testing.FakeAirwallex.deny` for an authorize URL
    that Airwallex would not even show a consent screen for (wrong
    ``client_id``, unregistered ``redirect_uri``, ...), and for an account id
    the fake has never heard of. Over HTTP the same checks answer 400.
    """


@final
class FaultKind(enum.Enum):
    """
    What an injected :class:`Fault` does to a token request.

    The ``*_AFTER_COMMIT`` kinds are the dangerous ones for a client: the
    provider HAS rotated the refresh token, but the client never learns the
    new one. Only the rotation grace window saves the connection.
    """

    #: Commit, then close the TCP connection without sending a byte.
    DROP_AFTER_COMMIT = "drop_after_commit"
    #: Answer ``Fault.status`` (default 503) and commit nothing.
    SERVER_ERROR = "server_error"
    #: Commit, then answer 500.
    SERVER_ERROR_AFTER_COMMIT = "server_error_after_commit"
    #: Answer 429 ``Rate Limit Exceeded.`` and commit nothing.
    RATE_LIMIT = "rate_limit"
    #: Sleep ``Fault.delay`` seconds of REAL time first, then behave normally.
    DELAY = "delay"
    #: Commit, then answer 200 with an HTML body instead of JSON.
    MALFORMED_AFTER_COMMIT = "malformed_after_commit"
    #: Commit, then hold the response until :meth:`FakeAirwallex.release_held`
    #: (or ``Fault.delay`` real seconds, 60 when 0), then drop the connection.
    #: Lets a test kill the client while the provider has rotated and the
    #: client has not yet stored the new tokens.
    HOLD_AFTER_COMMIT = "hold_after_commit"


def _check_grant_type(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in GRANT_TYPES:
        msg = f"{attribute.name} must be None or one of {sorted(GRANT_TYPES)}, got {value!r}"
        raise ValueError(msg)


@final
@attrs.frozen
class Fault:
    """
    One scripted misbehaviour of the token endpoint.

    Faults queue up in FIFO order. A token request consumes the first queued
    fault whose ``grant_type`` matches its own (``None`` matches both), once
    per request, until ``times`` requests have had it. Only requests that got
    past client authentication with a supported ``grant_type`` consume
    faults, so a deliberately broken request never burns one by accident.
    """

    kind: FaultKind = attrs.field(validator=attrs.validators.instance_of(FaultKind))
    grant_type: str | None = attrs.field(default=None, validator=_check_grant_type)
    status: int = attrs.field(
        default=503,
        validator=[
            attrs.validators.instance_of(int),
            attrs.validators.ge(100),
            attrs.validators.le(599),
        ],
    )
    delay: float = attrs.field(
        default=0.0,
        converter=float,
        validator=attrs.validators.ge(0.0),
    )
    times: int = attrs.field(
        default=1,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)],
    )


@final
@attrs.define
class FakeCounters:
    """
    What the fake has seen and done, for assertions.

    It is live: the fake increments the fields in place, so a test can keep
    a reference and read it after each step. :meth:`as_dict` takes a copy.

    Attributes:
        token_requests: Every ``POST /oauth/token``, however it ended.
        exchanges: Successful authorization-code exchanges.
        refreshes: Successful rotations, grace-window re-issues included.
        grace_reissues: Successful refreshes that presented the *previous*
            refresh token inside the grace window (lost-response recovery).
        reuse_violations: Stale refresh tokens presented (each one
            invalidates its connection).
        invalidations: Connections invalidated because of reuse.
        concurrent_rejections: 429s for a second refresh of a token that
            was still being refreshed.
        invalid_grant_responses: Every ``invalid_grant`` decided, whether or
            not a fault then swallowed the response.
        invalid_client_responses: 401s for bad client credentials.
        faults_applied: Injected faults that took effect (one per request).
        dropped_responses: Connections closed by ``DROP_AFTER_COMMIT`` (and
            by ``HOLD_AFTER_COMMIT`` once released).
        held_responses: Responses held by ``HOLD_AFTER_COMMIT`` so far.
        api_calls: Every request under ``/api/v1/``.
        api_unauthorized: API requests answered 401.
        disconnects: Calls to ``disconnect()`` (the user unlinking the app).
        embedded_codes_issued: Embedded-components codes issued
            (``POST /api/v1/authentication/authorize``).
        embedded_codes_redeemed: Codes the browser's exchange accepted.
        embedded_codes_refused: Exchanges refused (reused, expired, wrong
            verifier, revoked connection...).
    """

    token_requests: int = 0
    exchanges: int = 0
    refreshes: int = 0
    grace_reissues: int = 0
    reuse_violations: int = 0
    invalidations: int = 0
    concurrent_rejections: int = 0
    invalid_grant_responses: int = 0
    invalid_client_responses: int = 0
    faults_applied: int = 0
    dropped_responses: int = 0
    held_responses: int = 0
    api_calls: int = 0
    api_unauthorized: int = 0
    disconnects: int = 0
    embedded_codes_issued: int = 0
    embedded_codes_redeemed: int = 0
    embedded_codes_refused: int = 0

    def as_dict(self) -> dict[str, int]:
        """
        Return a snapshot, so later requests cannot change what was asserted.
        """
        return attrs.asdict(self)
