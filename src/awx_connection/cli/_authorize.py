"""
``awx-connection authorize``: connect an Airwallex account from a developer's
machine, with no web service of your own.

The command plays the partner platform for one connection: it listens on
the loopback address of ``AWX_REDIRECT_URI`` (which must therefore be an
``http://127.0.0.1:PORT/path`` or ``localhost`` URI registered with
Airwallex), begins an authorization, prints the authorize URL and opens it
in a browser, waits for Airwallex to redirect back, completes the exchange
through :class:`ConnectionManager` (so the connection is stored, encrypted,
with its events, exactly as a service would store it), prints the result and
exits.

The authorize URL carries the one-time ``state``; it is printed because the
person running the command is the one who must open it. The redirect back
carries the authorization code: it is handed to the manager and never
printed or logged (the callback server has no access log).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import webbrowser
from urllib.parse import urlsplit

from aiohttp import web

from .._authorize import AuthorizationRequest
from .._config import Config, _is_loopback
from .._connection import Connection
from .._errors import AwxConnectionError, CallbackError, ConfigurationError, UnknownStateError
from .._manager import ConnectionManager
from .._states import SERVING
from ._exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ._output import connection_json, emit, emit_json, note, when
from ._signals import race, stop_on_signals
from ._stores import one_shot_manager, store_from

__all__ = ["authorize", "callback_address"]

#: Seconds the callback server gives the browser to receive its page on shutdown.
_SHUTDOWN_TIMEOUT = 1.0


def callback_address(redirect_uri: str, port: int | None) -> tuple[str, int, str]:
    """
    Where to listen so that Airwallex's redirect to *redirect_uri* arrives:
    ``(host, port, path)``.

    Airwallex compares redirect URIs exactly, so the server cannot pick its
    own port: ``--port``, when given, must be the port of the registered URI.

    Raises:
        ConfigurationError: The URI is not plain HTTP on a loopback host, or
            *port* differs from its port.
    """
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or not _is_loopback(parts.hostname):
        msg = (
            "authorize receives the redirect itself, on this machine: AWX_REDIRECT_URI must be "
            f"http://127.0.0.1:PORT/PATH (or localhost) and registered with Airwallex, "
            f"got {redirect_uri!r}"
        )
        raise ConfigurationError(msg)
    assert parts.hostname is not None  # _is_loopback(None) is False
    expected = parts.port or 80
    if port is not None and port != expected:
        msg = (
            f"--port {port} does not match AWX_REDIRECT_URI ({redirect_uri}): the redirect "
            "must reach this command at exactly the registered URI"
        )
        raise ConfigurationError(msg)
    return parts.hostname, expected, parts.path or "/"


def _page(status: int, message: str) -> web.Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>awx-connection</title>"
        f"<p>{html.escape(message)}</p>"
    )
    return web.Response(status=status, text=body, content_type="text/html")


class _Callback:
    """The redirect handler: completes the first genuine callback and reports it."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.outcome: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()

    async def handle(self, request: web.Request) -> web.Response:
        if self.outcome.done():
            return _page(410, "This authorization is finished; you can close this tab.")
        try:
            connection = await self.manager.complete_authorization(request.query)
        except (CallbackError, UnknownStateError):
            # A stray, replayed or hand-made request: not the redirect we
            # wait for, and no reason to give up on the one that is coming.
            return _page(400, "This is not the redirect awx-connection is waiting for.")
        except AwxConnectionError as exc:
            # Library messages never carry a code, token or state.
            if not self.outcome.done():
                self.outcome.set_exception(exc)
            return _page(502, f"Connecting failed: {exc}")
        if not self.outcome.done():
            self.outcome.set_result(connection)
        if connection.state in SERVING:
            return _page(200, f"Connected ({connection.id}). You can close this tab.")
        return _page(200, f"Not connected: {connection.state.value} ({connection.reason}).")


async def _open_browser(url: str) -> None:
    # webbrowser.open may block (a console browser, a slow launcher): off the loop.
    if not await asyncio.to_thread(webbrowser.open, url):
        note("could not open a browser; open the URL above yourself")


async def authorize(args: argparse.Namespace) -> int:
    """``authorize``: one connection, from the authorize URL to ``active``."""
    config = Config.from_env()
    host, port, path = callback_address(config.redirect_uri, args.port)
    store, _ = store_from(args)
    async with one_shot_manager(config, store) as manager:
        callback = _Callback(manager)
        app = web.Application()
        app.router.add_get(path, callback.handle)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                note(f"awx-connection: cannot listen on {host}:{port}: {exc.strerror or exc}")
                return EXIT_FAILED
            request = await manager.begin_authorization(
                scopes=args.scope or None, sign_up=args.sign_up, external_id=args.external_id
            )
            _announce(request, config.redirect_uri, args.timeout)
            if not args.no_browser:
                await _open_browser(request.url)
            with stop_on_signals() as stop:
                waited = await race(
                    stop, asyncio.wait_for(asyncio.shield(callback.outcome), args.timeout)
                )
        finally:
            await runner.cleanup()
    if waited is None:
        note(f"interrupted; {request.connection_id} stays pending and is never completed")
        return EXIT_INTERRUPTED
    try:
        connection = waited.result()
    except TimeoutError:
        note(
            f"awx-connection: no redirect arrived within {args.timeout:g} s; "
            f"{request.connection_id} stays pending and is never completed"
        )
        return EXIT_FAILED
    if args.json:
        emit_json(connection_json(connection))
    else:
        account = f", account {connection.account_id}" if connection.account_id else ""
        emit(f"{connection.id} {connection.state.value}{account}")
    if connection.state not in SERVING:
        note(f"awx-connection: not connected: {connection.reason}")
        return EXIT_FAILED
    return EXIT_OK


def _announce(request: AuthorizationRequest, redirect_uri: str, timeout: float) -> None:
    """Tell the developer what to open and what is waited for (stderr: stdout is the result)."""
    note("Open this URL in a browser and approve the connection:")
    note("")
    note(f"    {request.url}")
    note("")
    note(
        f"Waiting up to {timeout:g} s for the redirect to {redirect_uri} "
        f"(authorization valid until {when(request.expires_at)}) ..."
    )
