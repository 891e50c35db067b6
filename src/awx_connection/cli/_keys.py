"""
``awx-connection keys new|rotate|seal``: the encryption keys of a store.

``new`` prints a key for ``AWX_ENCRYPTION_KEYS`` and touches nothing.
``rotate`` and ``seal`` are one loop, :meth:`Store.rotate_keys`. Sealing is
a command of its own rather than a flag of ``rotate``, so that accepting
plaintext (which, with keys configured, is what a tampered row looks like)
is never one habitual option away from a routine rotation.
"""

from __future__ import annotations

import argparse

from .._crypto import KeyRing
from .._errors import ConfigurationError
from ._exits import EXIT_OK
from ._output import emit
from ._stores import store_from, unreadable_rows

__all__ = ["new", "rotate", "seal"]


def new(args: argparse.Namespace) -> int:
    """``keys new``: print ``ID:BASE64``, one new key."""
    emit(f"{args.id}:{KeyRing.new_key()}")
    return EXIT_OK


async def rotate(args: argparse.Namespace) -> int:
    """``keys rotate``: re-encrypt every secret with the first key."""
    return await _reseal(args, seal_plaintext=False)


async def seal(args: argparse.Namespace) -> int:
    """``keys seal``: ``rotate``, and encrypt the secrets stored in plaintext too."""
    return await _reseal(args, seal_plaintext=True)


async def _reseal(args: argparse.Namespace, *, seal_plaintext: bool) -> int:
    store, keys = store_from(args)
    if keys is None:
        msg = "AWX_ENCRYPTION_KEYS is not set: put the new key first, then the old ones"
        raise ConfigurationError(msg)
    await store.open()
    try:
        # The error names the rows it skipped; their per-row lines are not repeated.
        with unreadable_rows("rotate_keys"):
            rewritten = await store.rotate_keys(seal_plaintext=seal_plaintext)
    finally:
        await store.aclose()
    what = "sealed or re-encrypted" if seal_plaintext else "re-encrypted"
    emit(f"{what} {rewritten} connection(s) with key {keys.primary!r}")
    return EXIT_OK
