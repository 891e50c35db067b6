"""
The HTTP face of the fake's embedded components (rules in ``_fake_embedded``).

* ``POST /api/v1/authentication/authorize``: the partner's server, bearer
  token, JSON body; Airwallex's error shape;
* ``GET /components/sdk/v1/index.js``: the stand-in for Airwallex.js
  (``_components_sdk.js``), at the path of Airwallex's CDN;
* ``POST /components/v1/token`` and ``POST /components/v1/kyc``: what the
  stand-in calls from the customer's browser, on another origin than the
  partner's page, so they answer CORS (any origin: a fake has no list of
  partner sites) and its preflight.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import web

from ._fake_embedded import api_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._fake_embedded import EmbeddedRules
    from ._fake_state import FakeState, TokenReply

__all__ = ["SDK_PATH", "add_embedded_routes"]

#: Where the stand-in script is served (Airwallex's CDN path).
SDK_PATH: Final = "/components/sdk/v1/index.js"
AUTHORIZE_PATH: Final = "/api/v1/authentication/authorize"
_MAX_BODY: Final = 64 * 1024
_UNAUTHORIZED: Final = {
    "code": "unauthorized",
    "source": "",
    "message": "Access token is invalid or has expired",
    "details": {},
}


def _reply(reply: TokenReply, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(reply.body),
        status=reply.status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _cors(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if origin is None:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


async def _json_object(request: web.Request) -> dict[str, object] | str:
    """The request's JSON object, or why it is not one."""
    if request.content_type != "application/json":
        return f"the body must be application/json, got {request.content_type!r}"
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        return "the body exceeds 64 KiB"
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "the body is not valid JSON"
    return body if isinstance(body, dict) else "the body must be a JSON object"


def add_embedded_routes(app: web.Application, state: FakeState, rules: EmbeddedRules) -> None:
    """Register the embedded-components routes (before the ``/api/v1/`` catch-all)."""
    script = (resources.files(__package__) / "_components_sdk.js").read_bytes()

    async def authorize(request: web.Request) -> web.Response:
        grant = state.bearer_grant(request.headers.get("Authorization"))
        if grant is None:
            return web.json_response(_UNAUTHORIZED, status=401)
        body = await _json_object(request)
        if isinstance(body, str):
            return _reply(api_error(400, "invalid_argument", "", body))
        return _reply(rules.issue(grant, request.headers.get("x-on-behalf-of"), body))

    async def sdk(request: web.Request) -> web.Response:
        return web.Response(
            body=script,
            content_type="text/javascript",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    def browser(
        decide: Callable[[dict[str, object]], TokenReply],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            cors = _cors(request)
            body = await _json_object(request)
            if isinstance(body, str):
                return web.json_response(
                    {"code": "INIT_ERROR", "message": body}, status=400, headers=cors
                )
            return _reply(decide(body), cors)

        return handler

    async def preflight(request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_cors(request))

    app.router.add_post(AUTHORIZE_PATH, authorize)
    app.router.add_get(SDK_PATH, sdk)
    for path, decide in (
        ("/components/v1/token", rules.redeem),
        ("/components/v1/kyc", rules.submit_kyc),
    ):
        app.router.add_post(path, browser(decide))
        app.router.add_route("OPTIONS", path, preflight)
