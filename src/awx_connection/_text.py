"""
What counts as text the library can store and send.

A Python ``str`` may hold a lone surrogate (``"\\ud800"``): what a web
framework or ``sys.argv`` makes of undecodable bytes with
``surrogateescape``. It has no UTF-8 encoding, so it cannot go into a URL,
a JSON document, SQLite or PostgreSQL. Left alone, each of those fails its
own way (``UnicodeEncodeError``, orjson's ``TypeError``, a driver's error
quoting the value) and the in-memory store not at all. Checking up front
gives one typed :class:`~awx_connection.InvalidArgumentError` everywhere,
before anything is written.
"""

from __future__ import annotations

from ._errors import InvalidArgumentError

__all__ = ["check_text", "is_text"]


def is_text(value: str) -> bool:
    """Whether *value* encodes as UTF-8 (holds no lone surrogate)."""
    if value.isascii():  # nearly every value: no encoding needed to know
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(name: str, value: object, *, optional: bool = False) -> None:
    """
    Raise :class:`~awx_connection.InvalidArgumentError` unless *value* is a
    ``str`` that encodes as UTF-8 (or, if *optional*, ``None``). The message
    names *name*, never the value, which may be a secret.
    """
    if isinstance(value, str):
        if not is_text(value):
            msg = f"{name} is not valid text (it holds a lone surrogate, which has no UTF-8 form)"
            raise InvalidArgumentError(msg)
    elif value is not None or not optional:
        kind = "a string or None" if optional else "a string"
        msg = f"{name} must be {kind}, not {type(value).__name__}"
        raise InvalidArgumentError(msg)
