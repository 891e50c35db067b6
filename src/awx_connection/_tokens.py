"""
Token sets, and turning a token-endpoint response into one.

The response is untrusted input: :func:`parse_token_response` checks every
field it uses and raises :class:`~awx_connection.MalformedResponseError`
(never ``KeyError``/``TypeError``) for anything off-protocol. Lifetimes come
from ``expires_in`` and ``refresh_token_expires_in``; the timing policy's
defaults apply only when a field is absent (or null), never when it is wrong.
"""

from __future__ import annotations

from typing import final

import attrs

from ._config import TimingPolicy
from ._errors import MalformedResponseError
from ._secrets import Secret

__all__ = ["TokenSet", "parse_token_response"]

#: Longest access-token lifetime we believe (Airwallex's is 5 minutes).
_MAX_ACCESS_TTL = 24 * 3600.0
#: Longest refresh-token lifetime we believe (Airwallex documents 60-90 days).
_MAX_REFRESH_TTL = 400 * 86400.0
#: Longest token string we accept; real ones are well under 4 KiB.
_MAX_TOKEN_CHARS = 16 * 1024


@final
@attrs.frozen
class TokenSet:
    """
    One access/refresh token pair and when each stops working.

    ``generation`` counts rotations: 0 for the pair from the code exchange,
    +1 per refresh. The rotation journal and compare-and-swap writes name
    refresh tokens by generation, never by value.
    """

    access_token: Secret
    refresh_token: Secret
    access_expires_at: float
    refresh_expires_at: float
    issued_at: float
    generation: int
    scope: tuple[str, ...] = ()

    @property
    def access_lifetime(self) -> float:
        """Seconds the access token was issued for."""
        return self.access_expires_at - self.issued_at


def _token(payload: dict[str, object], name: str) -> Secret:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        msg = f"token response: {name!r} is missing or not a non-empty string"
        raise MalformedResponseError(msg, status=200, maybe_processed=True)
    if len(value) > _MAX_TOKEN_CHARS:
        msg = f"token response: {name!r} is longer than {_MAX_TOKEN_CHARS} characters"
        raise MalformedResponseError(msg, status=200, maybe_processed=True)
    return Secret(value)


def _lifetime(payload: dict[str, object], name: str, default: float, maximum: float) -> float:
    value = payload.get(name)
    if value is None:
        return default
    # bool is an int subclass; True seconds is not a lifetime.
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"token response: {name!r} is not a number"
        raise MalformedResponseError(msg, status=200, maybe_processed=True)
    if not 0 < value <= maximum:
        msg = f"token response: {name!r}={value!r} is outside (0, {maximum:.0f}]"
        raise MalformedResponseError(msg, status=200, maybe_processed=True)
    return float(value)


def parse_token_response(
    payload: object, *, now: float, timing: TimingPolicy, generation: int
) -> TokenSet:
    """
    Validate a decoded token response and build a :class:`TokenSet`.

    Raises:
        MalformedResponseError: A field is missing, mistyped or absurd. Its
            ``maybe_processed`` is true: the provider answered 200, so a
            refresh was committed on its side even though we cannot use it.
    """
    if not isinstance(payload, dict):
        msg = "token response is not a JSON object"
        raise MalformedResponseError(msg, status=200, maybe_processed=True)
    # null counts as absent, as for the lifetimes: refusing a committed
    # rotation over an optional field we do not need would burn it.
    token_type = payload.get("token_type")
    if token_type is None:
        token_type = "Bearer"
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        msg = "token response: token_type is not 'Bearer'"
        raise MalformedResponseError(msg, status=200, maybe_processed=True)
    scope = payload.get("scope")
    if scope is None:
        scope = ""
    if not isinstance(scope, str):
        msg = "token response: scope is not a string"
        raise MalformedResponseError(msg, status=200, maybe_processed=True)
    access = _token(payload, "access_token")
    refresh = _token(payload, "refresh_token")
    access_ttl = _lifetime(payload, "expires_in", timing.default_access_ttl, _MAX_ACCESS_TTL)
    refresh_ttl = _lifetime(
        payload, "refresh_token_expires_in", timing.default_refresh_ttl, _MAX_REFRESH_TTL
    )
    return TokenSet(
        access_token=access,
        refresh_token=refresh,
        access_expires_at=now + access_ttl,
        refresh_expires_at=now + refresh_ttl,
        issued_at=now,
        generation=generation,
        scope=tuple(scope.split()),
    )
