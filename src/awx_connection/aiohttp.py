"""
The aiohttp integration: a ready-made route handler for Airwallex webhooks.

A public namespace of its own (``awx_connection.aiohttp``, as
``svcs.aiohttp`` does it), so that an aiohttp service finds its glue in one
place and a service on another framework never loads it. Other frameworks
call :meth:`~awx_connection.ConnectionManager.handle_webhook` with the
request headers and raw body themselves; this is the same thing for
aiohttp, including the body-size limit (read before buffering, so a huge
body costs nothing). ``awx_connection.webhook_handler`` is the same
function, for code written before this module existed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._webhooks import MAX_BODY_BYTES

if TYPE_CHECKING:
    from aiohttp import web

    from ._manager import ConnectionManager

__all__ = ["webhook_handler"]


def webhook_handler(
    manager: ConnectionManager,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """
    An aiohttp handler for the webhook endpoint::

        app.router.add_post("/airwallex/webhooks", webhook_handler(manager))

    It answers 200 once the delivery is handled (also for a duplicate), 401
    for a bad or stale signature, 400 for a body that is not a JSON webhook,
    413 for an oversized body.
    """
    # Imported here: aiohttp.web (the server half) costs ~16 ms at import,
    # and most users of the library only need the client half.
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return web.json_response({"error": "body too large"}, status=413)
        body = await _read_body(request)
        if body is None:
            return web.json_response({"error": "body too large"}, status=413)
        result = await manager.handle_webhook(request.headers, body)
        payload: dict[str, object] = {"result": result.detail}
        if result.duplicate:
            payload["duplicate"] = True
        return web.json_response(payload, status=result.status)

    return handle


async def _read_body(request: web.Request) -> bytes | None:
    """
    The whole body, or None once it grows past ``MAX_BODY_BYTES``.

    ``content.read(n)`` returns what has arrived so far, not *n* bytes: a body
    sent in two TCP writes, or chunked, must be read until EOF, or the
    signature is checked over a prefix and refused. Chunked bodies carry no
    Content-Length, so the limit is enforced while reading.
    """
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY_BYTES + 1 - size):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
