"""
The argument parser of ``awx-connection``: every command, option and help
text, and nothing else.

Each runnable command sets ``handler`` to its name ("connections list");
:mod:`._main` dispatches on it and imports the command's module only then,
so building the parser (``--help``, a usage error, the docs test) loads no
command module.
"""

from __future__ import annotations

import argparse
import sys

from .._states import ConnectionState

__all__ = ["build_parser"]


_EPILOG = """\
environment:
  AWX_STORE            store URL when --store is not given
  AWX_ENCRYPTION_KEYS  ID:BASE64 keys sealing stored secrets (first one encrypts);
                       required for a durable store (make one: awx-connection keys new)
  AWX_ALLOW_PLAINTEXT  1: use a durable store without keys, secrets in plaintext
  AWX_CLIENT_ID, AWX_CLIENT_SECRET, AWX_REDIRECT_URI, AWX_ENVIRONMENT, AWX_BASE_URL,
  AWX_SCOPES           credentials and endpoints; read by refresh, reauthorize, authorize
  AWX_RELAY_WEBHOOK_SECRET  whsec_ secret of events relay --to https://...

exit codes:
  0 ok, 1 operation failed, 2 usage or configuration error, 3 connection not found,
  130 interrupted, 141 stdout closed early (| head)
"""


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from .. import __version__

        sys.stdout.write(f"awx-connection {__version__}\n")
        parser.exit()


def _json(*, json_help: str) -> argparse.ArgumentParser:
    """--json, which every command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help=json_help)
    return parent


def _common(*, json_help: str) -> argparse.ArgumentParser:
    """The options every command on a store takes: --store and --json."""
    common = argparse.ArgumentParser(add_help=False, parents=[_json(json_help=json_help)])
    common.add_argument("--store", help="store URL (default: $AWX_STORE)")
    return common


def _state_name(text: str) -> str:
    """A --state value in any case (``Active``, ``REVOKED``), as the state's value."""
    return text.strip().lower()


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
        type=_state_name,
        choices=[state.value for state in ConnectionState],
        metavar="STATE",
        help="only this state (repeatable: any of them; any case); one of %(choices)s",
    )
    listing.add_argument("--external-id", metavar="X", help="only this external id")
    listing.add_argument("--account-id", metavar="A", help="only this Airwallex account")
    listing.set_defaults(handler="connections list")

    show = commands.add_parser("show", parents=[one], help="one connection (needs no credentials)")
    show.add_argument("id", metavar="ID", help="connection id (conn_...)")
    show.set_defaults(handler="connections show")

    refresh = commands.add_parser(
        "refresh",
        parents=[one],
        help="rotate a connection's tokens now (reads AWX_CLIENT_* credentials)",
        description="Rotate the connection's tokens now, whatever their expiry. "
        "Single-flight with every other process on the store.",
    )
    refresh.add_argument("id", metavar="ID", help="connection id (conn_...)")
    refresh.set_defaults(handler="connections refresh")

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
    disconnect.set_defaults(handler="connections disconnect")

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
    reauthorize.set_defaults(handler="connections reauthorize")


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
    tail.set_defaults(handler="events tail")
    _add_relay(commands)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be a positive whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _sink_options() -> argparse.ArgumentParser:
    """--to and what configures each sink: for ``events relay`` and ``dead-letters replay``."""
    sink = argparse.ArgumentParser(add_help=False)
    sink.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="nats://HOST:PORT (JetStream) or http(s)://... (signed webhooks; the whsec_ "
        "secret is read from $AWX_RELAY_WEBHOOK_SECRET)",
    )
    sink.add_argument(
        "--name",
        default="relay",
        help="relay name: relays of one name share the work (default relay)",
    )
    nats = sink.add_argument_group("JetStream (--to nats://...)")
    nats.add_argument(
        "--stream", default="AWX_CONNECTION_EVENTS", help="stream name (default %(default)s)"
    )
    nats.add_argument(
        "--subject-prefix",
        default="awx.connection",
        metavar="PREFIX",
        help="events go to PREFIX.<trigger> (default %(default)s)",
    )
    nats.add_argument(
        "--no-create-stream",
        action="store_true",
        help="fail if the stream does not exist instead of creating it over PREFIX.>",
    )
    hooks = sink.add_argument_group("webhooks (--to https://...)")
    hooks.add_argument(
        "--attempts",
        type=_positive_int,
        default=5,
        help="tries per event before it becomes a dead letter (default 5)",
    )
    hooks.add_argument(
        "--retry-base",
        type=_positive_seconds,
        default=0.5,
        metavar="SECONDS",
        help="backoff ceiling before the first retry, doubling after (default 0.5)",
    )
    hooks.add_argument(
        "--retry-cap",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="longest backoff between two tries (default 30)",
    )
    hooks.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest one try may take (default 10)",
    )
    return sink


def _add_relay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    relay = commands.add_parser(
        "relay",
        parents=[
            _common(json_help="print the start and stop lines as JSON objects"),
            _sink_options(),
        ],
        help="deliver every event to JetStream or a webhook endpoint until stopped",
        description="Read the store's outbox and deliver each event, in order per "
        "connection, at least once, to --to, until SIGINT or SIGTERM (exit 0). Relays "
        "of one --name share the work through leases; a relay killed mid-batch loses "
        "nothing (the batch is sent again, with the same ids). Needs no credentials "
        "and decrypts nothing.",
    )
    relay.add_argument(
        "--batch", type=_positive_int, default=500, help="events per batch (default 500)"
    )
    relay.add_argument(
        "--lease-term",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a dead relay's partitions stay held before others take them (default 10)",
    )
    relay.add_argument(
        "--poll-interval",
        type=_positive_seconds,
        default=0.5,
        metavar="SECONDS",
        help="longest wait between checks for new events when idle (default 0.5)",
    )
    relay.add_argument(
        "--owner", metavar="ID", help="this relay's id in the leases (default host-pid-random)"
    )
    relay.set_defaults(handler="events relay")

    dead = commands.add_parser("dead-letters", help="events a webhook relay gave up on")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="COMMAND")
    listing = dead_commands.add_parser(
        "list",
        parents=[_common(json_help="print one JSON object per dead letter")],
        help="the dead letters of relay --name, by position",
    )
    listing.add_argument("--name", default="relay", help="relay name (default relay)")
    listing.set_defaults(handler="events dead-letters list")
    replay = dead_commands.add_parser(
        "replay",
        parents=[
            _common(json_help='print {"replayed": N, "still_dead": M}'),
            _sink_options(),
        ],
        help="send dead letters to --to again; delivered ones are forgotten",
        description="Send the dead letters of relay --name (all, or those at POSITION) "
        "to --to again, in position order, with their original ids. Delivered ones are "
        "deleted; the others stay, their attempts added up (exit 1 if any stay).",
    )
    replay.add_argument(
        "positions", nargs="*", type=_positive_int, metavar="POSITION", help="only these"
    )
    replay.set_defaults(handler="events dead-letters replay")


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
    authorize.set_defaults(handler="authorize")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs and the tests)."""
    parser = argparse.ArgumentParser(
        prog="awx-connection",
        description="Hold OAuth partner connections to Airwallex accounts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        parents=[_json(json_help="print each lifecycle event as one JSON object per line")],
        help="run one connection's whole life against the fake",
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="also print log lines")
    demo.set_defaults(handler="demo")

    fake = sub.add_parser(
        "fake-server",
        parents=[_json(json_help="print the endpoints and credentials as one JSON object")],
        help="run the fake Airwallex provider on 127.0.0.1",
        description="Run the fake Airwallex on 127.0.0.1 until SIGINT or SIGTERM. It prints "
        "the client id and client secret it accepts: test credentials of the fake, which "
        "open nothing else.",
    )
    # A string checked by the command: a bad port is one line, like every other error.
    fake.add_argument(
        "--port", default="8765", metavar="PORT", help="TCP port (default 8765; 0 = any free one)"
    )
    fake.add_argument("--client-id", default="fake-client-id", help="the client id it accepts")
    fake.add_argument(
        "--client-secret",
        default="fake-client-secret",
        help="the client secret it accepts (a test credential; printed at start)",
    )
    fake.add_argument(
        "--redirect-uri", action="append", help="a registered redirect URI (repeatable)"
    )
    fake.add_argument(
        "--webhook-url",
        metavar="URL",
        help="post signed webhooks here (connection.disconnected when an account disconnects)",
    )
    fake.add_argument(
        "--webhook-secret",
        metavar="SECRET",
        help="the secret the webhooks are signed with (a test secret; needs --webhook-url)",
    )
    fake.add_argument(
        "--manual-clock",
        action="store_true",
        help="simulated time, moved by POST /_fake/clock/advance",
    )
    fake.set_defaults(handler="fake-server")

    diagram = sub.add_parser(
        "diagram",
        parents=[_json(json_help='print {"mermaid": TEXT}')],
        help="print the state machine as Mermaid",
    )
    diagram.set_defaults(handler="diagram")

    db = sub.add_parser("db", help="store administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    migrate = db_sub.add_parser(
        "migrate",
        parents=[_common(json_help='print {"schema_version": N}')],
        help="create or upgrade the store's schema (the only command that does)",
    )
    migrate.set_defaults(handler="db migrate")

    keys = sub.add_parser("keys", help="encryption keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    new = keys_sub.add_parser(
        "new",
        parents=[_json(json_help='print {"id": ID, "key": BASE64, "entry": "ID:BASE64"}')],
        help="print a new key as ID:BASE64 for AWX_ENCRYPTION_KEYS",
    )
    new.add_argument("--id", default="k1", help="the key id (default k1)")
    new.set_defaults(handler="keys new")
    rekeyed = _common(json_help='print {"rewritten": N, "key": ID, "old_keys": [ID, ...]}')
    rotate = keys_sub.add_parser(
        "rotate",
        parents=[rekeyed],
        help="re-encrypt every stored secret with the first key of AWX_ENCRYPTION_KEYS",
        description="Re-encrypt every stored secret with the first key of AWX_ENCRYPTION_KEYS. "
        "Keep the other keys in AWX_ENCRYPTION_KEYS until it finishes without an error.",
    )
    rotate.set_defaults(handler="keys rotate")
    seal = keys_sub.add_parser(
        "seal",
        parents=[rekeyed],
        help="encrypt secrets stored in plaintext (rows written without keys), then rotate",
        description="Encrypt every secret stored in plaintext with the first key of "
        "AWX_ENCRYPTION_KEYS, and re-encrypt the other rows to it as 'keys rotate' does. "
        "With keys configured, a plaintext secret is otherwise refused as tampering "
        "(DecryptionError): run this only for a store known to hold rows written before "
        "encryption was turned on. Each row sealed is logged (WARNING) by id.",
    )
    seal.set_defaults(handler="keys seal")

    _add_connections(sub)
    _add_events(sub)
    _add_authorize(sub)
    return parser
