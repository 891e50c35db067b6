"""
``main()``: parse, run the chosen command, and turn what it raised into one
line on stderr and an exit code.

A command's module is imported here, when that command runs, with a plain
``import`` inside :func:`_run`: ``authorize`` and ``demo`` pull in aiohttp's
server and the fake provider, which ``--help``, a usage error or ``connections
list`` have no use for. The command modules never import this one; what
they share is in the modules below them (``_stores``, ``_output``,
``_signals``, ``_exits``). Errors are printed in the CLI's words
(:mod:`._words`): flags and variables, not the Python parameters the
library's messages name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

from .._errors import (
    AwxConnectionError,
    ConfigurationError,
    ConnectionNotFoundError,
    InvalidArgumentError,
    StoreNotMigratedError,
)
from ._exits import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
)
from ._parser import build_parser
from ._words import in_cli_words

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see the package docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # --help (0) and usage errors (2) end in SystemExit; return the code
        # so that main() can also be called in-process.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except (ConfigurationError, InvalidArgumentError, StoreNotMigratedError) as exc:
        # InvalidArgumentError: an argument the store cannot hold (bytes
        # that are not UTF-8 arrive in argv as lone surrogates): a usage error.
        # StoreNotMigratedError: --store names no store (or one never
        # migrated): a configuration error, fixed by the URL or `db migrate`.
        _say(exc)
        return EXIT_USAGE
    except ConnectionNotFoundError as exc:
        _say(exc)
        return EXIT_NOT_FOUND
    except AwxConnectionError as exc:
        _say(exc)
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


def _say(exc: AwxConnectionError) -> None:
    """The one line of an error, naming flags and variables (:mod:`._words`)."""
    print(f"awx-connection: {in_cli_words(str(exc))}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    """Import the module of ``args.handler`` and run the command."""
    match args.handler:
        case "connections list":
            from ._connections import list_connections

            return asyncio.run(list_connections(args))
        case "connections show":
            from ._connections import show

            return asyncio.run(show(args))
        case "connections refresh":
            from ._connections import refresh

            return asyncio.run(refresh(args))
        case "connections disconnect":
            from ._connections import disconnect

            return asyncio.run(disconnect(args))
        case "connections reauthorize":
            from ._connections import reauthorize

            return asyncio.run(reauthorize(args))
        case "events tail":
            from ._events import tail

            return asyncio.run(tail(args))
        case "events relay":
            from ._relay import relay

            return asyncio.run(relay(args))
        case "events dead-letters list":
            from ._relay import dead_letters_list

            return asyncio.run(dead_letters_list(args))
        case "events dead-letters replay":
            from ._relay import dead_letters_replay

            return asyncio.run(dead_letters_replay(args))
        case "authorize":
            from ._authorize import authorize

            return asyncio.run(authorize(args))
        case "db migrate":
            from ._db import migrate

            return asyncio.run(migrate(args))
        case "keys new":
            from ._keys import new

            return new(args)
        case "keys rotate":
            from ._keys import rotate

            return asyncio.run(rotate(args))
        case "keys seal":
            from ._keys import seal

            return asyncio.run(seal(args))
        case "demo":
            from ._demo import demo

            return demo(args)
        case "fake-server":
            from ._fake_server import fake_server

            return fake_server(args)
        case "diagram":
            from ._diagram import diagram

            return diagram(args)
    msg = f"no command {args.handler!r}"  # a parser entry without a case here: a bug
    raise AssertionError(msg)
