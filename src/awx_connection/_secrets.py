"""
A string that refuses to be printed.

Tokens, codes, PKCE verifiers, ``state`` values and the client secret travel
through the library as :class:`Secret`. Its ``repr`` and ``str`` are masked,
so a secret that ends up in an f-string, a log record, an exception message,
an attrs repr or an event is harmless. The one way out is :meth:`reveal`,
called only where the raw value goes on the wire or into the store.

Revealed values are kept out of frame locals too: a traceback rendered with
its locals (``traceback.TracebackException(..., capture_locals=True)``, error
trackers) shows each by ``repr``. Request headers that must carry a revealed
token are an :class:`AuthHeaders`, whose ``repr`` masks it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import final

import attrs

__all__ = ["AuthHeaders", "Secret", "bearer_headers"]


@final
@attrs.frozen(repr=False)
class Secret:
    """
    A secret string, masked in every ``repr`` and ``str``.

    Equality compares in constant time. ``fingerprint`` gives a short,
    non-reversible tag that is safe to log for correlating two log lines about
    the same token.
    """

    _value: str = attrs.field(alias="value")

    def reveal(self) -> str:
        """Return the raw value. Call this only to send or store it."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """The first 10 hex digits of the value's SHA-256, safe to log."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:10]

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@final
class AuthHeaders(dict[str, str]):
    """
    Request headers whose ``repr`` masks ``Authorization``.

    aiohttp needs the bearer token as a plain string; holding the headers in
    one of these keeps it out of any traceback rendered with locals.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        shown = {k: "********" if k.lower() == "authorization" else v for k, v in self.items()}
        return f"AuthHeaders({shown!r})"


def bearer_headers(
    token: str, extra: Mapping[str, str] | Iterable[tuple[str, str]] | None = None
) -> AuthHeaders:
    """
    *extra* (a mapping or ``(name, value)`` pairs, as aiohttp takes) plus
    ``Authorization: Bearer <token>``.

    Pass the revealed token straight in (``bearer_headers(secret.reveal())``):
    the caller's frame then never holds it in a local.
    """
    headers = AuthHeaders(extra or ())
    headers["Authorization"] = "Bearer " + token
    return headers
