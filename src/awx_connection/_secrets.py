"""
A string that refuses to be printed.

Tokens, codes, PKCE verifiers, ``state`` values and the client secret travel
through the library as :class:`Secret`. Its ``repr`` and ``str`` are masked,
so a secret that ends up in an f-string, a log record, an exception message,
an attrs repr or an event is harmless. The one way out is :meth:`reveal`,
called only where the raw value goes on the wire or into the store.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import final

import attrs

__all__ = ["Secret"]


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
