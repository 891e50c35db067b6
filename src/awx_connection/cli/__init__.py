"""
The ``awx-connection`` command line.

Subcommands: ``demo`` (one connection's whole life against the fake
provider), ``fake-server`` (the fake Airwallex on 127.0.0.1), ``diagram``
(the state machine as Mermaid), ``db migrate`` (create or upgrade a store's
schema), ``keys new`` / ``keys rotate`` / ``keys seal`` (encryption keys;
``seal`` is the one command that accepts secrets stored in plaintext), and
the day-two commands: ``connections list|show|refresh|disconnect|reauthorize``,
``events tail`` and ``authorize``. docs/cli.md shows each with an example.

Stores are named by URL (``--store`` or ``AWX_STORE``): ``memory://``,
``sqlite:///path.db``, ``postgresql://user@host/db``. Encryption keys come
from ``AWX_ENCRYPTION_KEYS`` only, never from the command line (it would
land in shell history and ``ps``); so do the client credentials
(``Config.from_env()``), which only the commands that talk to Airwallex
read: ``refresh``, ``reauthorize`` and ``authorize``. Reading commands need
the store (and its keys) only. A durable store without keys is refused
unless ``AWX_ALLOW_PLAINTEXT=1`` (``db migrate`` excepted: it touches no
secret).

Output: a human view by default; ``--json`` (every command takes it) prints
one JSON object, or one per line for lists and streams; errors are one
line on stderr in both modes, naming flags and variables (:mod:`._words`).
Nothing printed ever holds a token, code, verifier or the client secret;
the authorize URLs printed by ``connections reauthorize`` and ``authorize``
carry ``state`` because a person must open them, and ``fake-server`` prints
the fake's own test secret, which opens nothing else.

Exit codes (:mod:`._exits`):

* 0: success (also ``events tail --follow`` stopped by SIGINT or SIGTERM);
* 1: the operation failed: ``connections list`` could not read some rows,
  the provider refused or failed, the connection
  is revoked (or otherwise unusable) or in a state that forbids the
  command, the store failed, ``authorize`` timed out or was declined;
* 2: usage or configuration error: bad arguments (text that is not valid
  UTF-8 included), no store, a malformed store URL, a store that does not
  exist or is not migrated (only ``db migrate`` creates or upgrades one),
  missing or invalid ``AWX_*`` variables;
* 3: not found: no connection with that id;
* 130: interrupted: ``authorize`` by SIGINT or SIGTERM before the
  redirect, any other command by Ctrl-C;
* 141: stdout was closed early (``... | head``), as for tools killed by SIGPIPE.

How the package is cut, and why: :mod:`._main` parses (with the tree of
:mod:`._parser`) and dispatches, importing a command's module only when that
command runs, so ``--help`` and a usage error load neither aiohttp's server
nor the fake provider; each command group has a module of its own
(``_connections``, ``_events``, ``_keys``, ``_db``, ``_authorize``,
``_demo``, ``_fake_server``, ``_diagram``); what they share is below them
(``_stores``: stores and managers from the environment; ``_output``:
printing; ``_signals``: stopping on a signal; ``_exits``: the codes).
Imports only go down that list, so there is no cycle to hide.
"""

from __future__ import annotations

from ._main import main
from ._parser import build_parser

__all__ = ["build_parser", "main"]
