"""
``awx-connection fake-server``: the fake Airwallex of
:mod:`awx_connection.testing`, on 127.0.0.1, until SIGINT or SIGTERM.

For trying the library (or another client) against a provider that needs
no account: point ``AWX_BASE_URL`` at it. It prints the client id *and the
client secret* it accepts: they are the fake's test credentials (given by
``--client-id`` and ``--client-secret``), which open nothing but this
process, and whoever starts it needs them. This is the one command that
prints a client secret, and never a real one.

With ``--webhook-url`` and ``--webhook-secret`` it posts signed webhooks
there, as Airwallex does: ``connection.disconnected`` when an account is
disconnected (``POST /_fake/disconnect``), so a service's webhook route can
be tried end to end.

Its mistakes are one line each, like every other command's: a ``--port``
that is not a TCP port or is taken (exit 2 and 1), a ``--redirect-uri``
that OAuth forbids, a ``--webhook-url`` without its secret (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
from urllib.parse import urlsplit

from .._clock import ManualClock, SystemClock
from .._errors import ConfigurationError
from ..testing import FakeAirwallex
from ._exits import EXIT_FAILED, EXIT_OK
from ._output import emit, emit_json, note

__all__ = ["fake_server"]

#: Redirect URI registered when no --redirect-uri is given.
_DEFAULT_REDIRECT_URI = "http://127.0.0.1/callback"


def fake_server(args: argparse.Namespace) -> int:
    """Serve until stopped: exit 0; 1 if the port cannot be listened on."""
    fake = _build(args)
    return asyncio.run(_serve(args, fake))


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        msg = f"--port must be a TCP port, 0 to 65535 (0: any free port), got {text!r}"
        raise ConfigurationError(msg)
    return port


def _build(args: argparse.Namespace) -> FakeAirwallex:
    """The fake the options describe; ConfigurationError (exit 2) for a bad option."""
    port = _port(args.port)
    fake = FakeAirwallex(
        clock=ManualClock() if args.manual_clock else SystemClock(),
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=(),
        port=port,
    )
    for uri in args.redirect_uri or [_DEFAULT_REDIRECT_URI]:
        try:
            fake.register_redirect_uri(uri)
        except ValueError as exc:  # what OAuth forbids: not absolute http(s), a #fragment
            raise ConfigurationError(f"--redirect-uri: {exc}") from None
    _set_webhook(args, fake)
    return fake


def _set_webhook(args: argparse.Namespace, fake: FakeAirwallex) -> None:
    """``--webhook-url`` and ``--webhook-secret``, both or neither."""
    url, secret = args.webhook_url, args.webhook_secret
    if url is None and secret is None:
        return
    if url is None or not secret:
        msg = "--webhook-url and --webhook-secret go together: give both, the secret not empty"
        raise ConfigurationError(msg)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"--webhook-url must be an absolute http(s) URL, got {url!r}"
        raise ConfigurationError(msg)
    fake.set_webhook(url, secret)


async def _serve(args: argparse.Namespace, fake: FakeAirwallex) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await fake.start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = "; --port 0 picks a free one" if exc.errno == errno.EADDRINUSE else ""
        note(f"awx-connection: cannot listen on 127.0.0.1:{args.port}: {reason.lower()}{hint}")
        return EXIT_FAILED
    try:
        _announce(args, fake)
        await stop.wait()
    finally:
        await fake.aclose()
    return EXIT_OK


def _announce(args: argparse.Namespace, fake: FakeAirwallex) -> None:
    redirect_uris = args.redirect_uri or [_DEFAULT_REDIRECT_URI]
    if args.json:
        emit_json(
            {
                "base_url": fake.base_url,
                "authorize_url": fake.authorize_url,
                "token_url": fake.token_url,
                "admin_url": f"{fake.base_url}/_fake/",
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "redirect_uris": redirect_uris,
                "webhook_url": args.webhook_url,
                "manual_clock": args.manual_clock,
            }
        )
        return
    emit(f"fake Airwallex listening on {fake.base_url}")
    emit(
        f"  client_id={fake.client_id}  client_secret={fake.client_secret}  "
        "(the fake's test credentials: it accepts only these)"
    )
    emit(f"  token endpoint {fake.token_url}; admin under {fake.base_url}/_fake/")
    emit(f"  redirect URIs: {' '.join(redirect_uris)}")
    if args.webhook_url is not None:
        emit(f"  webhooks to {args.webhook_url}, signed with --webhook-secret")
    emit(
        f"  use it: AWX_BASE_URL={fake.base_url} AWX_CLIENT_ID={fake.client_id} "
        f"AWX_CLIENT_SECRET={fake.client_secret}"
    )
