"""
``awx-connection keys new|rotate|seal``: the encryption keys of a store.

``new`` prints a key for ``AWX_ENCRYPTION_KEYS`` and touches nothing.
``rotate`` and ``seal`` are one loop, :meth:`Store.rotate_keys`. Sealing is
a command of its own rather than a flag of ``rotate``, so that accepting
plaintext (which, with keys configured, is what a tampered row looks like)
is never one habitual option away from a routine rotation.

Both say which keys to keep: before they start, every key after the first
(rows not yet rewritten still need them, and a rotation may be interrupted);
when they finish, that those keys may go once every process writes with the
first; when rows could not be read, to keep them and run again.
"""

from __future__ import annotations

import argparse

from .._crypto import KeyRing
from .._errors import ConfigurationError, StoreError
from ._exits import EXIT_OK
from ._output import emit, emit_json, note
from ._stores import store_from, unreadable_rows

__all__ = ["new", "rotate", "seal"]


def new(args: argparse.Namespace) -> int:
    """``keys new``: print ``ID:BASE64``, one new key."""
    key = KeyRing.new_key()
    if args.json:
        emit_json({"id": args.id, "key": key, "entry": f"{args.id}:{key}"})
    else:
        emit(f"{args.id}:{key}")
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
    primary, old = keys.primary, ", ".join(repr(key_id) for key_id in keys.key_ids[1:])
    await store.open()
    try:
        _starting(primary, old)
        # The error names the rows it skipped; their per-row lines are not repeated.
        with unreadable_rows("rotate_keys"):
            rewritten = await store.rotate_keys(seal_plaintext=seal_plaintext)
    except StoreError as exc:
        if not old or type(exc) is not StoreError:  # the rows it could not read, only
            raise
        msg = f"{exc}; keep {old} in AWX_ENCRYPTION_KEYS until a run ends without this error"
        raise StoreError(msg) from None
    finally:
        await store.aclose()
    if args.json:
        emit_json({"rewritten": rewritten, "key": primary, "old_keys": list(keys.key_ids[1:])})
    else:
        what = "sealed or re-encrypted" if seal_plaintext else "re-encrypted"
        emit(f"{what} {rewritten} connection(s) with key {primary!r}")
    if old:
        note(
            f"every stored secret now uses {primary!r}; {old} may leave AWX_ENCRYPTION_KEYS "
            f"once every process runs with {primary!r} first (rows written meanwhile with an "
            "old key need another run)"
        )
    return EXIT_OK


def _starting(primary: str, old: str) -> None:
    """Before the first row: the key written, and the keys to keep meanwhile (stderr)."""
    if old:
        note(
            f"re-encrypting every stored secret with key {primary!r}; keep {old} in "
            "AWX_ENCRYPTION_KEYS until this finishes"
        )
    else:
        note(
            f"re-encrypting every stored secret with key {primary!r}, "
            "the only key of AWX_ENCRYPTION_KEYS"
        )
