"""
Run the partner app: ``python -m examples.partner_app`` from the repository root.

Without credentials it is self-contained: an embedded fake Airwallex on
127.0.0.1 (system clock, webhooks posted to this app with a generated
secret) and an encrypted SQLite store in a temporary directory, so a
developer can click through connect, sign up, the embedded KYC step (the
fake serves a stand-in for Airwallex.js), disconnect, reconnect and live
events with nothing to configure. With ``AWX_CLIENT_ID`` in the environment it
talks to real Airwallex instead (see docs/partner-app.md for the variables).

It prints the URL to open once it is listening, and stops cleanly on
Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from awx_connection import (
    Config,
    ConfigurationError,
    ConnectionManager,
    Endpoints,
    KeyRing,
    Store,
)
from awx_connection.stores import SQLiteStore, open_store
from awx_connection.testing import FakeAirwallex

from .web import APP_PATHS, WEBHOOK_PATH, PathOnlyAccessLogger, build_app

CALLBACK_PATH = "/airwallex/callback"
SCOPES = ("account_details:read",)
#: Airwallex.js embedded components on Airwallex's CDN (the KYC component's docs).
AIRWALLEX_SDK_URL = "https://static.airwallex.com/components/sdk/v1/index.js"

_log = logging.getLogger("partner_app")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; every flag has a default that works out of the box."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.partner_app",
        description="A partner web app on awx-connection (fake Airwallex unless "
        "AWX_CLIENT_ID is set).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument(
        "--fake-port",
        type=int,
        default=0,
        help="port of the embedded fake Airwallex; 0 (default) picks a free one",
    )
    return parser.parse_args(argv)


def _bind(host: str, port: int) -> socket.socket:
    """
    Listen before anything else: with ``--port 0`` the port is only known
    now, and the redirect URI registered with the fake must name it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _url_host(host: str) -> str:
    """The host to put in URLs: a wildcard address is reached through loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _real_airwallex() -> tuple[Config, Store, str, str]:
    """
    Credentials, store and keys from the environment.

    Refuses to start without a store URL (connections must outlive the
    process) or, for a durable store, without encryption keys (tokens are
    never written in clear).

    Raises:
        ConfigurationError: A variable is missing or invalid.
    """
    config = Config.from_env()
    if not config.default_scopes:
        msg = "set AWX_SCOPES (space-separated), e.g. AWX_SCOPES=account_details:read"
        raise ConfigurationError(msg)
    callback_path = urlsplit(config.redirect_uri).path
    if not callback_path.startswith("/") or callback_path in APP_PATHS:
        msg = f"AWX_REDIRECT_URI needs a path of its own, e.g. {CALLBACK_PATH}"
        raise ConfigurationError(msg)
    store_url = os.environ.get("AWX_STORE")
    if not store_url:
        msg = "set AWX_STORE, e.g. AWX_STORE=sqlite:///partner_app.db"
        raise ConfigurationError(msg)
    keys = None if store_url == "memory://" else KeyRing.from_env()
    if not config.webhook_secrets:
        _log.warning("AWX_WEBHOOK_SECRETS is empty: every webhook will be refused with 401")
    host = urlsplit(config.endpoints.api_base_url).hostname
    sdk_url = os.environ.get("AWX_COMPONENTS_SDK_URL", AIRWALLEX_SDK_URL)
    return config, open_store(store_url, keys=keys), f"Talking to Airwallex at {host}.", sdk_url


async def _embedded_fake(
    stack: contextlib.AsyncExitStack, base_url: str, fake_port: int
) -> tuple[Config, Store, str, FakeAirwallex]:
    """Start the fake, point its webhooks at this app, and make a throwaway store."""
    fake = FakeAirwallex(host="127.0.0.1", port=fake_port, redirect_uris=[base_url + CALLBACK_PATH])
    await stack.enter_async_context(fake)
    webhook_secret = secrets.token_urlsafe(32)
    fake.set_webhook(base_url + WEBHOOK_PATH, webhook_secret)
    config = Config(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        redirect_uri=base_url + CALLBACK_PATH,
        endpoints=Endpoints.from_base_url(fake.base_url),
        default_scopes=SCOPES,
        webhook_secrets=(webhook_secret,),
    )
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="awx-partner-app-"))
    store = SQLiteStore(Path(directory) / "awx.db", keys=KeyRing.generate())
    mode = f"Embedded fake Airwallex at {fake.base_url}: nothing here is real."
    return config, store, mode, fake


async def serve(args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM; return the process's exit status."""
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    base_url = f"http://{_url_host(args.host)}:{sock.getsockname()[1]}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(sock.close)
        fake: FakeAirwallex | None = None
        if os.environ.get("AWX_CLIENT_ID"):
            try:
                config, store, mode, sdk_url = _real_airwallex()
            except ConfigurationError as exc:
                print(f"configuration error: {exc}", file=sys.stderr)
                return 2
        else:
            config, store, mode, fake = await _embedded_fake(stack, base_url, args.fake_port)
            sdk_url = fake.sdk_url  # the fake's stand-in for Airwallex.js

        # keepalive: idle connections get their refresh token rotated before
        # it ages out, so customers are not asked to reconnect every 90 days.
        manager = ConnectionManager(config, store=store, keepalive=True)
        await stack.enter_async_context(manager)
        app = build_app(
            manager, callback_path=urlsplit(config.redirect_uri).path, mode=mode, sdk_url=sdk_url
        )
        runner = web.AppRunner(app, access_log_class=PathOnlyAccessLogger, shutdown_timeout=2.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()

        if fake is not None:
            print(f"Fake Airwallex: {fake.base_url} (admin endpoints under /_fake/)", flush=True)
        else:
            print(f"Airwallex redirects customers to {config.redirect_uri}", flush=True)
        print(f"Partner app: open {base_url}/ in your browser (Ctrl+C stops it)", flush=True)
        await stop.wait()
        _log.info("stopping")
        if fake is not None:
            # Let webhooks already on their way reach us before the server goes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fake.flush_webhooks(), 2.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, set up logging, serve."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The state-machine library narrates every callback at INFO; our own
    # "connection X: a -> b (reason)" lines already say what happened.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
