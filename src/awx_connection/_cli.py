"""
The ``awx-connection`` command: this module is the parser and the dispatcher.

Subcommands: ``demo`` (one connection's whole life against the fake
provider), ``fake-server`` (the fake Airwallex on 127.0.0.1), ``diagram``
(the state machine as Mermaid), ``db migrate`` (create or upgrade a store's
schema), ``keys new`` / ``keys rotate`` / ``keys seal`` (encryption keys;
``seal`` is the one command that accepts secrets stored in plaintext), and
the day-two commands, implemented in ``_cli_*`` modules: ``connections
list|show|refresh|disconnect|reauthorize`` (``_cli_connections``), ``events
tail`` (``_cli_events``) and ``authorize`` (``_cli_authorize``).
docs/cli.md shows each with an example.

Stores are named by URL (``--store`` or ``AWX_STORE``): ``memory://``,
``sqlite:///path.db``, ``postgresql://user@host/db``. Encryption keys come
from ``AWX_ENCRYPTION_KEYS`` only, never from the command line (it would
land in shell history and ``ps``); so do the client credentials
(``Config.from_env()``), which only the commands that talk to Airwallex
read: ``refresh``, ``reauthorize`` and ``authorize``. Reading commands need
the store (and its keys) only. A durable store without keys is refused
unless ``AWX_ALLOW_PLAINTEXT=1`` (``db migrate`` excepted: it touches no
secret).

Output: a human view by default; ``--json`` prints one JSON object, or one
per line for lists and streams. Nothing printed ever holds a token, code,
verifier or the client secret; the authorize URLs printed by ``connections
reauthorize`` and ``authorize`` carry ``state`` because a person must open
them.

Exit codes:

* 0: success (also ``events tail --follow`` stopped by SIGINT or SIGTERM);
* 1: the operation failed: the provider refused or failed, the connection
  is revoked (or otherwise unusable) or in a state that forbids the
  command, the store failed, ``authorize`` timed out or was declined;
* 2: usage or configuration error: bad arguments (text that is not valid
  UTF-8 included), no store, a malformed store URL, missing or invalid
  ``AWX_*`` variables;
* 3: not found: no connection with that id;
* 130: interrupted: ``authorize`` by SIGINT or SIGTERM before the
  redirect, any other command by Ctrl-C;
* 141: stdout was closed early (``... | head``), as for tools killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from ._errors import (
    AwxConnectionError,
    ConfigurationError,
    ConnectionNotFoundError,
    InvalidArgumentError,
)
from ._states import ConnectionState

if TYPE_CHECKING:
    from ._crypto import KeyRing
    from ._store import Store

__all__ = ["main"]

#: Exit codes (see the module docstring).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


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


def _store_from(
    args: argparse.Namespace, *, touches_secrets: bool = True
) -> tuple[Store, KeyRing | None]:
    """
    The store of ``--store``/``AWX_STORE``, unopened, and its keys.

    Keys come from ``AWX_ENCRYPTION_KEYS``. Without them a durable store is
    refused (exit 2, naming ``awx-connection keys new``) unless
    ``AWX_ALLOW_PLAINTEXT=1``; the check is made before anything is opened,
    so a refused command creates no file and migrates nothing. Only a
    command that reads and writes no record (*touches_secrets* false: ``db
    migrate``) goes without.
    """
    from ._crypto import KeyRing
    from .stores import open_store

    url = args.store or os.environ.get("AWX_STORE")
    if not url:
        msg = "no store: pass --store URL or set AWX_STORE"
        raise ConfigurationError(msg)
    keys = KeyRing.from_env() if os.environ.get("AWX_ENCRYPTION_KEYS") else None
    allow_plaintext = _allow_plaintext() or not touches_secrets
    return open_store(url, keys=keys, allow_plaintext=allow_plaintext), keys


def _allow_plaintext() -> bool:
    """
    ``AWX_ALLOW_PLAINTEXT``: ``1`` allows a store without keys; unset, empty or
    ``0`` refuses. Anything else is an error rather than a guess: a
    ``true`` or ``yes`` meant to allow must not silently refuse, nor a typo allow.
    """
    value = os.environ.get("AWX_ALLOW_PLAINTEXT", "")
    if value not in ("", "0", "1"):
        msg = "AWX_ALLOW_PLAINTEXT must be 1 (store secrets in plaintext) or 0 (refuse)"
        raise ConfigurationError(msg)
    return value == "1"


async def _db_migrate(args: argparse.Namespace) -> int:
    # Migrations create tables and touch no record, so no keys are needed.
    store, _ = _store_from(args, touches_secrets=False)
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
    return await _reseal(args, seal_plaintext=False)


async def _keys_seal(args: argparse.Namespace) -> int:
    return await _reseal(args, seal_plaintext=True)


async def _reseal(args: argparse.Namespace, *, seal_plaintext: bool) -> int:
    """
    ``keys rotate`` and ``keys seal``: one loop, ``Store.rotate_keys``. Sealing
    is a command of its own rather than a flag of ``rotate``, so that accepting
    plaintext (which, with keys configured, is what a tampered row looks
    like) is never one habitual option away from a routine rotation.
    """
    store, keys = _store_from(args)
    if keys is None:
        msg = "AWX_ENCRYPTION_KEYS is not set: put the new key first, then the old ones"
        raise ConfigurationError(msg)
    await store.open()
    try:
        rewritten = await store.rotate_keys(seal_plaintext=seal_plaintext)
    finally:
        await store.aclose()
    what = "sealed or re-encrypted" if seal_plaintext else "re-encrypted"
    print(f"{what} {rewritten} connection(s) with key {keys.primary!r}")
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


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """
    Run ``awx_connection.<module>.<function>(args)`` under asyncio.run,
    importing the module when its command runs: the ``_cli_*`` modules import
    this one (``_store_from``, the exit codes), so importing them here at the
    top would be a cycle, and this module stays the parser and nothing else.
    """

    def run(args: argparse.Namespace) -> int:
        implementation = getattr(importlib.import_module(f".{module}", __package__), function)
        result: int = asyncio.run(implementation(args))
        return result

    return run


_EPILOG = """\
environment:
  AWX_STORE            store URL when --store is not given
  AWX_ENCRYPTION_KEYS  ID:BASE64 keys sealing stored secrets (first one encrypts);
                       required for a durable store (make one: awx-connection keys new)
  AWX_ALLOW_PLAINTEXT  1: use a durable store without keys, secrets in plaintext
  AWX_CLIENT_ID, AWX_CLIENT_SECRET, AWX_REDIRECT_URI, AWX_ENVIRONMENT, AWX_BASE_URL,
  AWX_SCOPES           credentials and endpoints; read by refresh, reauthorize, authorize

exit codes:
  0 ok, 1 operation failed, 2 usage or configuration error, 3 connection not found,
  130 interrupted, 141 stdout closed early (| head)
"""


def _common(*, json_help: str) -> argparse.ArgumentParser:
    """The options every day-two command takes: --store and --json."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store URL (default: $AWX_STORE)")
    common.add_argument("--json", action="store_true", help=json_help)
    return common


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        msg = f"must be a positive number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _add_connections(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    one = _common(json_help="print one JSON object")
    many = _common(json_help="print one JSON object per line")
    connections = sub.add_parser("connections", help="list, inspect and act on stored connections")
    commands = connections.add_subparsers(
        dest="connections_command", required=True, metavar="COMMAND"
    )

    listing = commands.add_parser(
        "list",
        parents=[many],
        help="stored connections, oldest first (needs no credentials)",
        description="List stored connections matching every filter, oldest first.",
    )
    listing.add_argument(
        "--state",
        action="append",
        choices=[state.value for state in ConnectionState],
        metavar="STATE",
        help="only this state (repeatable: any of them); one of %(choices)s",
    )
    listing.add_argument("--external-id", metavar="X", help="only this external id")
    listing.add_argument("--account-id", metavar="A", help="only this Airwallex account")
    listing.set_defaults(func=_lazy("_cli_connections", "list_connections"))

    show = commands.add_parser("show", parents=[one], help="one connection (needs no credentials)")
    show.add_argument("id", metavar="ID", help="connection id (conn_...)")
    show.set_defaults(func=_lazy("_cli_connections", "show"))

    refresh = commands.add_parser(
        "refresh",
        parents=[one],
        help="rotate a connection's tokens now (reads AWX_CLIENT_* credentials)",
        description="Rotate the connection's tokens now, whatever their expiry. "
        "Single-flight with every other process on the store.",
    )
    refresh.add_argument("id", metavar="ID", help="connection id (conn_...)")
    refresh.set_defaults(func=_lazy("_cli_connections", "refresh"))

    disconnect = commands.add_parser(
        "disconnect",
        parents=[one],
        help="mark a connection revoked",
        description="Mark an active connection revoked (ConnectionManager.revoke). Only the "
        "store changes: Airwallex is not called, so no credentials are needed.",
    )
    disconnect.add_argument("id", metavar="ID", help="connection id (conn_...)")
    disconnect.add_argument(
        "--reason",
        default="disconnected by an operator (awx-connection CLI)",
        metavar="TEXT",
        help="why, stored with the revoked event",
    )
    disconnect.set_defaults(func=_lazy("_cli_connections", "disconnect"))

    reauthorize = commands.add_parser(
        "reauthorize",
        parents=[one],
        help="put a finished connection back to pending and print a new authorize URL",
        description="Move a revoked, invalidated, expired, denied, failed or pending connection "
        "back to pending and print a new authorize URL (reads AWX_CLIENT_* credentials). "
        "This is the one command that prints a URL carrying the one-time OAuth 'state': "
        "the operator must hand it to the customer, so treat it like a password reset "
        "link and send it to that customer only. Its redirect must reach the service "
        "that handles AWX_REDIRECT_URI with this store.",
    )
    reauthorize.add_argument("id", metavar="ID", help="connection id (conn_...)")
    reauthorize.add_argument(
        "--sign-up",
        action="store_true",
        help="let a customer without an Airwallex account create one first",
    )
    reauthorize.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="scope to request (repeatable; default: the connection's scopes)",
    )
    reauthorize.set_defaults(func=_lazy("_cli_connections", "reauthorize"))


def _add_events(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = sub.add_parser("events", help="stored lifecycle events")
    commands = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    tail = commands.add_parser(
        "tail",
        parents=[_common(json_help="print one JSON object per event, one per line")],
        help="print stored events; --follow for new ones (needs no credentials)",
        description="Print stored events in commit order. --follow keeps printing new ones "
        "until SIGINT or SIGTERM (exit 0). With --consumer NAME, start after what NAME "
        "last committed and commit what was printed (at-least-once across runs).",
    )
    tail.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until stopped"
    )
    which = tail.add_mutually_exclusive_group()
    which.add_argument(
        "--consumer",
        metavar="NAME",
        help="read as the durable consumer NAME, committing its position",
    )
    which.add_argument("--connection", metavar="ID", help="only this connection's events")
    tail.add_argument(
        "--poll-interval",
        type=_positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="with --follow, longest wait between checks for new events (default 1)",
    )
    tail.set_defaults(func=_lazy("_cli_events", "tail"))


def _add_authorize(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    authorize = sub.add_parser(
        "authorize",
        parents=[_common(json_help="print the resulting connection as one JSON object")],
        help="connect an account from this machine: browser, callback server, exchange",
        description="Developer flow: listen on AWX_REDIRECT_URI (an http://127.0.0.1:PORT/... "
        "URI registered with Airwallex), print and open the authorize URL (it carries the "
        "one-time 'state': open it yourself, do not share it), wait for the redirect, "
        "complete the exchange, store the connection, print its id and state, exit. "
        "Reads AWX_CLIENT_* credentials.",
    )
    authorize.add_argument(
        "--port",
        type=int,
        help="port to listen on; must be the port of AWX_REDIRECT_URI (default: that port)",
    )
    authorize.add_argument(
        "--no-browser", action="store_true", help="only print the URL; do not open a browser"
    )
    authorize.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="give up after this long without a redirect (default 300; exit 1)",
    )
    authorize.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="scope to request (repeatable; default: $AWX_SCOPES)",
    )
    authorize.add_argument(
        "--sign-up",
        action="store_true",
        help="let a customer without an Airwallex account create one first",
    )
    authorize.add_argument("--external-id", metavar="X", help="your key for this connection")
    authorize.set_defaults(func=_lazy("_cli_authorize", "authorize"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs and the tests)."""
    parser = argparse.ArgumentParser(
        prog="awx-connection",
        description="Hold OAuth partner connections to Airwallex accounts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    seal = keys_sub.add_parser(
        "seal",
        help="encrypt secrets stored in plaintext (rows written without keys), then rotate",
        description="Encrypt every secret stored in plaintext with the first key of "
        "AWX_ENCRYPTION_KEYS, and re-encrypt the other rows to it as 'keys rotate' does. "
        "With keys configured, a plaintext secret is otherwise refused as tampering "
        "(DecryptionError): run this only for a store known to hold rows written before "
        "encryption was turned on. Each row sealed is logged (WARNING) by id.",
    )
    seal.add_argument("--store", help="store URL (default: $AWX_STORE)")
    seal.set_defaults(func=_run_async(_keys_seal))

    _add_connections(sub)
    _add_events(sub)
    _add_authorize(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # --help (0) and usage errors (2) end in SystemExit; return the code
        # so that main() can also be called in-process.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        result: int = args.func(args)
    except (ConfigurationError, InvalidArgumentError) as exc:
        # InvalidArgumentError: an argument the store cannot hold (bytes
        # that are not UTF-8 arrive in argv as lone surrogates): a usage error.
        print(f"awx-connection: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionNotFoundError as exc:
        print(f"awx-connection: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except AwxConnectionError as exc:
        print(f"awx-connection: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # A Ctrl-C outside the waits that handle it themselves: no traceback.
        print("awx-connection: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, like tools that
        # die of SIGPIPE, but only after the stack unwound (a consumer did
        # not commit the event it could not print). Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return result
