"""
The ``awx-connection`` command.

Subcommands: ``demo`` (one connection's whole life against the fake
provider), ``fake-server`` (the fake Airwallex on 127.0.0.1), ``diagram``
(the state machine as Mermaid), ``db migrate`` (create or upgrade a store's
schema), ``keys new`` / ``keys rotate`` (encryption keys).

Stores are named by URL (``--store`` or ``AWX_STORE``): ``memory://``,
``sqlite:///path.db``, ``postgresql://user@host/db``. Encryption keys come
from ``AWX_ENCRYPTION_KEYS`` only, never from the command line (it would
land in shell history and ``ps``). Exit codes: 0 success, 1 failure,
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from ._errors import AwxConnectionError, ConfigurationError

if TYPE_CHECKING:
    from ._crypto import KeyRing
    from ._store import Store

__all__ = ["main"]


def _cmd_diagram(_args: argparse.Namespace) -> int:
    from ._states import mermaid

    print(mermaid(), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._cli_demo import main as demo_main

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="  log %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    return demo_main()


async def _serve_fake(args: argparse.Namespace) -> None:
    from ._clock import ManualClock, SystemClock
    from .testing import FakeAirwallex

    clock = ManualClock() if args.manual_clock else SystemClock()
    fake = FakeAirwallex(
        clock=clock,
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=args.redirect_uri or ["http://127.0.0.1/callback"],
        port=args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(f"fake Airwallex listening on {fake.base_url}", flush=True)
        print(f"  client_id={fake.client_id}  (client secret as given by --client-secret)")
        print(f"  token endpoint {fake.token_url}; admin under {fake.base_url}/_fake/")
        await stop.wait()


def _cmd_fake_server(args: argparse.Namespace) -> int:
    asyncio.run(_serve_fake(args))
    return 0


def _store_from(args: argparse.Namespace) -> tuple[Store, KeyRing | None]:
    from ._crypto import KeyRing
    from .stores import open_store

    url = args.store or os.environ.get("AWX_STORE")
    if not url:
        msg = "no store: pass --store URL or set AWX_STORE"
        raise ConfigurationError(msg)
    keys = KeyRing.from_env() if os.environ.get("AWX_ENCRYPTION_KEYS") else None
    return open_store(url, keys=keys), keys


async def _db_migrate(args: argparse.Namespace) -> int:
    store, _ = _store_from(args)
    await store.open()
    try:
        version = await getattr(store, "schema_version", _no_version)()
    finally:
        await store.aclose()
    print(f"store is at schema version {version}")
    return 0


async def _no_version() -> str:
    return "n/a (memory)"


async def _keys_rotate(args: argparse.Namespace) -> int:
    store, keys = _store_from(args)
    if keys is None:
        msg = "AWX_ENCRYPTION_KEYS is not set: put the new key first, then the old ones"
        raise ConfigurationError(msg)
    await store.open()
    try:
        rewritten = await store.rotate_keys()
    finally:
        await store.aclose()
    print(f"re-encrypted {rewritten} connection(s) with key {keys.primary!r}")
    return 0


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from ._crypto import KeyRing

    print(f"{args.id}:{KeyRing.new_key()}")
    return 0


def _run_async(
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(func(args))

    return run


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs and the tests)."""
    parser = argparse.ArgumentParser(
        prog="awx-connection",
        description="Hold OAuth partner connections to Airwallex accounts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run one connection's whole life against the fake")
    demo.add_argument("-v", "--verbose", action="store_true", help="also print log lines")
    demo.set_defaults(func=_cmd_demo)

    fake = sub.add_parser("fake-server", help="run the fake Airwallex provider on 127.0.0.1")
    fake.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 = any)")
    fake.add_argument("--client-id", default="fake-client-id")
    fake.add_argument("--client-secret", default="fake-client-secret")
    fake.add_argument(
        "--redirect-uri", action="append", help="a registered redirect URI (repeatable)"
    )
    fake.add_argument(
        "--manual-clock",
        action="store_true",
        help="simulated time, moved by POST /_fake/clock/advance",
    )
    fake.set_defaults(func=_cmd_fake_server)

    diagram = sub.add_parser("diagram", help="print the state machine as Mermaid")
    diagram.set_defaults(func=_cmd_diagram)

    db = sub.add_parser("db", help="store administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    migrate = db_sub.add_parser("migrate", help="create or upgrade the store's schema")
    migrate.add_argument("--store", help="store URL (default: $AWX_STORE)")
    migrate.set_defaults(func=_run_async(_db_migrate))

    keys = sub.add_parser("keys", help="encryption keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    new = keys_sub.add_parser("new", help="print a new key as ID:BASE64 for AWX_ENCRYPTION_KEYS")
    new.add_argument("--id", default="k1", help="the key id (default k1)")
    new.set_defaults(func=_cmd_keys_new)
    rotate = keys_sub.add_parser(
        "rotate", help="re-encrypt every stored secret with the first key of AWX_ENCRYPTION_KEYS"
    )
    rotate.add_argument("--store", help="store URL (default: $AWX_STORE)")
    rotate.set_defaults(func=_run_async(_keys_rotate))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigurationError as exc:
        print(f"awx-connection: {exc}", file=sys.stderr)
        return 2
    except AwxConnectionError as exc:
        print(f"awx-connection: {exc}", file=sys.stderr)
        return 1
    return result
