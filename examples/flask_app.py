"""
awx-connection in a Flask app: the program of docs/sync.md.

Flask views are plain functions on a pool of threads, so the app uses
``awx_connection.blocking.BlockingManager``: one real
``ConnectionManager`` per process, on an event-loop thread of its own, that
every view calls as if it were synchronous. Threads asking at once still
share one token cache and one refresh in flight per connection.

Configured from the environment only (``Config.from_env``,
``KeyRing.from_env`` and ``AWX_STORE``), so the same file runs against the
fake Airwallex and against Airwallex::

    python flask_app.py --port 8000

or with Flask's own command (the factory starts the manager, which closes
itself at exit)::

    flask --app flask_app:app_from_env run --port 8000

Routes:

* ``GET /``: a page with every connection and its state;
* ``GET /connect``: send the tenant to Airwallex (a dead connection is
  reauthorized, keeping its id and history);
* ``GET`` at the path of ``AWX_REDIRECT_URI``: the callback that finishes it;
* ``POST /airwallex/webhooks``: verified, deduplicated webhooks; a
  disconnect revokes the connection at once;
* ``GET /connection``: the tenant's connection as stored (no Airwallex call);
* ``GET /account``: the tenant's Airwallex account, fetched with its token.

The tenant comes from an ``X-Tenant`` header to keep the example short. A
real app takes it from its own authentication (a session, a verified JWT),
never from a header the client can set.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, abort, jsonify, redirect, render_template_string, request
from werkzeug.serving import make_server

from awx_connection import (
    USABLE,
    AuthorizationError,
    Config,
    Connection,
    ConnectionUnusableError,
    KeyRing,
)
from awx_connection.blocking import BlockingManager
from awx_connection.stores import open_store

#: The largest webhook body read (Airwallex events are a few kilobytes).
MAX_WEBHOOK_BYTES = 256 * 1024

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Airwallex connections</title>
<h1>Airwallex connections</h1>
{% if connections %}
<table>
  <tr><th>tenant</th><th>state</th><th>account</th><th>reason</th></tr>
  {% for c in connections %}
  <tr id="{{ c.id }}" data-tenant="{{ c.external_id or '' }}" data-state="{{ c.state.value }}">
    <td>{{ c.external_id or "-" }}</td><td>{{ c.state.value }}</td>
    <td>{{ c.account_id or "-" }}</td><td>{{ c.reason }}</td>
  </tr>
  {% endfor %}
</table>
{% else %}
<p>No connection yet: a tenant connects at <code>/connect</code>.</p>
{% endif %}
"""


def tenant_of() -> str:
    """The requesting tenant; 401 without one (see the module docstring)."""
    tenant = request.headers.get("X-Tenant")
    if not tenant:
        abort(401, "no tenant: send X-Tenant")
    return tenant


def newest(awx: BlockingManager, tenant: str) -> Connection:
    """The tenant's newest connection; 404 if it never connected."""
    connections = awx.connections(external_id=tenant)
    if not connections:
        abort(404, "this tenant has no Airwallex connection; connect at /connect")
    return max(connections, key=lambda c: c.updated_at)


def describe(connection: Connection) -> dict[str, str | None]:
    """What a front end needs to know about a connection (never a token)."""
    return {
        "connection_id": connection.id,
        "state": connection.state.value,
        "reason": connection.reason,
        "account_id": connection.account_id,
        "tenant": connection.external_id,
    }


def create_app(awx: BlockingManager) -> Flask:
    """The app around *awx*, a started ``BlockingManager`` shared by every request."""
    app = Flask(__name__)
    # Bodies over this are refused with 413 before they are read (webhooks
    # are the only route with a body).
    app.config["MAX_CONTENT_LENGTH"] = MAX_WEBHOOK_BYTES

    @app.errorhandler(ConnectionUnusableError)
    def connection_unusable(exc: ConnectionUnusableError) -> tuple[Response, int]:
        # The connection stopped working (revoked, expired, ...): offer to reconnect.
        return jsonify(detail=str(exc), state=exc.state.value, reconnect="/connect"), 409

    @app.get("/")
    def page() -> str:
        """Every connection, newest first, with its state."""
        connections = sorted(awx.connections(), key=lambda c: c.updated_at, reverse=True)
        return render_template_string(PAGE, connections=connections)

    @app.get("/connect")
    def connect() -> Any:
        """302 to Airwallex's authorize page; 409 if the tenant is connected already."""
        tenant = tenant_of()
        current = awx.connections(external_id=tenant)
        if any(c.state in USABLE for c in current):
            abort(409, "this tenant is already connected")
        if current:
            authorization = awx.reauthorize(max(current, key=lambda c: c.updated_at).id)
        else:
            authorization = awx.begin_authorization(external_id=tenant)
        return redirect(authorization.url, code=302)

    # The callback lives at the path of the registered redirect URI.
    @app.get(urlsplit(awx.config.redirect_uri).path)
    def callback() -> Any:
        """Airwallex redirects the customer here with ``?code=&state=`` (or ``?error=``)."""
        try:
            connection = awx.complete_authorization(request.args)
        except AuthorizationError as exc:  # forged, replayed or expired state; bad callback
            abort(400, str(exc))
        return jsonify(describe(connection))

    @app.post("/airwallex/webhooks")
    def webhooks() -> Any:
        """Verified, deduplicated webhooks; a disconnect revokes the connection at once."""
        # The raw bytes: the signature covers them (MAX_CONTENT_LENGTH bounds them).
        body = request.get_data(cache=False)
        status, answer = awx.answer_webhook(request.headers, body)
        return Response(answer, status=status, content_type="application/json")

    @app.get("/connection")
    def show_connection() -> Any:
        """The tenant's connection as the store has it."""
        return jsonify(describe(newest(awx, tenant_of())))

    @app.get("/account")
    def account() -> Any:
        """One Airwallex API call, read whole; 409 once the connection stopped working."""
        response = awx.request(newest(awx, tenant_of()).id, "GET", "/api/v1/account/")
        if not response.ok:
            abort(502, f"Airwallex answered {response.status}")
        return jsonify(response.json())

    return app


class PathOnlyFilter(logging.Filter):
    """
    Drop the query string from werkzeug's request lines: the callback's
    carries the authorization code and ``state``, which a log must not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            record.args = (re.sub(r"\?\S*", "", args[0]), *args[1:])
        return True


def manager_from_env() -> BlockingManager:
    """
    The manager configured from the environment, started.

    A durable store (``sqlite:///...``, ``postgresql://...``) is opened with
    ``create=False``: its schema is made by ``awx-connection db migrate``, a
    deploy step, and an app started before it fails at once, saying so.
    """
    url = os.environ.get("AWX_STORE", "memory://")
    # A durable store keeps tokens encrypted; memory:// never writes them anywhere.
    keys = None if url == "memory://" else KeyRing.from_env()
    store = open_store(url, keys=keys, create=False)
    return BlockingManager(Config.from_env(), store=store).start()


def app_from_env() -> Flask:
    """The app configured from the environment, for ``flask --app flask_app:app_from_env``."""
    logging.getLogger("werkzeug").addFilter(PathOnlyFilter())
    # Flask has no shutdown hook: the manager closes itself when the process exits.
    return create_app(manager_from_env())


def main(argv: Sequence[str] | None = None) -> int:
    """Serve on a threaded WSGI server until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description="awx-connection with Flask")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").addFilter(PathOnlyFilter())

    awx = manager_from_env()
    try:
        # threaded: one thread per request, as a WSGI server in production
        # runs views; they all share the one manager.
        server = make_server(args.host, args.port, create_app(awx), threaded=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"Flask app: listening on http://{args.host}:{server.server_port}", flush=True)
        try:
            server.serve_forever()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            server.server_close()
    finally:
        awx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
