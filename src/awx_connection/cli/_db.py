"""
``awx-connection db migrate``: create or upgrade a store's schema.

The only command that creates anything in a store. Migrations create
tables and touch no record, so it needs no keys.
"""

from __future__ import annotations

import argparse

from ._exits import EXIT_OK
from ._output import emit, emit_json
from ._stores import store_from

__all__ = ["migrate"]


async def migrate(args: argparse.Namespace) -> int:
    """``db migrate``: open the store (which migrates it) and print its version."""
    store, _ = store_from(args, touches_secrets=False, create=True)
    await store.open()
    try:
        version = await store.schema_version()
    finally:
        await store.aclose()
    if args.json:
        emit_json({"schema_version": version})
    else:
        emit(f"store is at schema version {version}")
    return EXIT_OK
