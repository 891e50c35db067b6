"""
The fake provider's HTTP face: aiohttp handlers over a :class:`FakeState`.

Routes, grouped by who calls them:

* the user's browser: ``GET /oauth/authorize`` (consent page) and
  ``POST /oauth/authorize/decision`` (302 back to the client);
* the library: ``POST /oauth/token`` and anything under ``/api/v1/``;
* embedded components (``_fake_embedded_app``): the authorize endpoint, the
  stand-in Airwallex.js and what it calls from the browser;
* tests in another process: ``/_fake/...`` (JSON admin endpoints).

Handlers parse and serialize; the decisions are made by ``FakeState``. The
token handler is the one place with real asynchrony: it holds the
"refresh in flight" mark across an injected ``DELAY`` and releases it in a
``finally``, and it applies the scripted faults around the state's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from typing import TYPE_CHECKING, Final, NoReturn, final

import attrs
import orjson
from aiohttp import web

from ._fake_embedded_app import add_embedded_routes
from ._fake_state import AUTHORIZE_PATH, FakeState, TokenReply, error_body
from ._fake_types import GRANT_TYPES, FakeProviderError, Fault, FaultKind

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._fake_embedded import EmbeddedRules

__all__ = ["MAX_TOKEN_BODY", "build_app"]

#: Largest token-request body accepted; real ones are a few hundred bytes.
MAX_TOKEN_BODY: Final = 64 * 1024

#: Airwallex's generic rate-limit body (not "<code>: <text>", unlike the rest).
_RATE_LIMITED: Final = {"code": "too_many_requests", "message": "Rate Limit Exceeded."}

_UNAUTHORIZED: Final = {
    "code": "unauthorized",
    "source": "",
    "message": "Access token is invalid or has expired",
    "details": {},
}


def build_app(state: FakeState, embedded: EmbeddedRules) -> web.Application:
    """
    Return a new application serving *state* and *embedded*; each call is independent.
    """
    routes = _Routes(state)
    app = web.Application()
    app.router.add_get(AUTHORIZE_PATH, routes.authorize_page)
    app.router.add_post(AUTHORIZE_PATH + "/decision", routes.authorize_decision)
    app.router.add_post("/oauth/token", routes.token)
    add_embedded_routes(app, state, embedded)
    app.router.add_route("*", "/api/v1/{tail:.*}", routes.api)
    app.router.add_get("/_fake/counters", routes.admin_counters)
    app.router.add_get("/_fake/clock", routes.admin_clock)
    app.router.add_post("/_fake/clock/advance", routes.admin_advance)
    app.router.add_post("/_fake/faults", routes.admin_inject)
    app.router.add_delete("/_fake/faults", routes.admin_clear_faults)
    app.router.add_post("/_fake/accounts", routes.admin_create_account)
    app.router.add_post("/_fake/approve", routes.admin_approve)
    app.router.add_post("/_fake/deny", routes.admin_deny)
    app.router.add_post("/_fake/disconnect", routes.admin_disconnect)
    app.router.add_post("/_fake/grant_status", routes.admin_grant_status)
    app.router.add_post("/_fake/release_held", routes.admin_release_held)
    return app


def _json(payload: object, status: int = 200) -> web.Response:
    # RFC 6749 5.1: token responses must not be cached; harmless elsewhere.
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _reply(reply: TokenReply) -> web.Response:
    return _json(reply.body, reply.status)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def _bad_request(text: str) -> NoReturn:
    raise web.HTTPBadRequest(
        text=orjson.dumps(error_body("invalid_request", text)).decode(),
        content_type="application/json",
    )


def _drop_connection(request: web.Request) -> web.Response:
    """
    Close the socket with nothing written, and return a response nobody will see.

    aiohttp then fails to write the returned response to the closing
    transport, treats that as the client having gone away, and logs nothing
    above DEBUG. The client sees the connection end before any status line.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


@final
@attrs.frozen
class _Routes:
    state: FakeState

    # -- browser ---------------------------------------------------------------

    async def authorize_page(self, request: web.Request) -> web.Response:
        query = request.query_string
        try:
            parsed = self.state.parse_authorize_query(query)
        except FakeProviderError as exc:
            return _html(_error_page(str(exc)), status=400)
        return _html(
            _consent_page(
                query=query,
                client_id=parsed.client_id,
                scopes=parsed.scopes,
                redirect_uri=parsed.redirect_uri,
                account=self.state.account_label(parsed),
            )
        )

    async def authorize_decision(self, request: web.Request) -> web.Response:
        form = await request.post()
        query, decision = form.get("query"), form.get("decision")
        try:
            if not isinstance(query, str):
                msg = "the form lost the authorize query"
                raise FakeProviderError(msg)
            parsed = self.state.parse_authorize_query(query)
            if decision == "allow":
                location = self.state.approve(parsed, None)
            elif decision == "deny":
                location = self.state.deny(parsed, "access_denied", "The user denied the request")
            else:
                msg = f"decision must be 'allow' or 'deny', got {decision!r}"
                raise FakeProviderError(msg)
        except FakeProviderError as exc:
            return _html(_error_page(str(exc)), status=400)
        raise web.HTTPFound(location)

    # -- token endpoint --------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        state = self.state
        state.counters.token_requests += 1
        body = await _read_json_body(request)
        if isinstance(body, web.Response):
            return body
        rejected = state.authenticate_client(body)
        if rejected is not None:
            return _reply(rejected)
        grant_type = body.get("grant_type")
        if not isinstance(grant_type, str) or grant_type not in GRANT_TYPES:
            text = f"grant_type {grant_type!r} is not supported"
            return _json(error_body("unsupported_grant_type", text), 400)

        refresh_token = body.get("refresh_token")
        if grant_type != "refresh_token" or not isinstance(refresh_token, str):
            return await self._process(request, grant_type, body)
        if not state.begin_refresh(refresh_token):
            text = "Concurrent token refresh is not allowed."
            return _json(error_body("too_many_requests", text), 429)
        try:
            return await self._process(request, grant_type, body)
        finally:
            state.end_refresh(refresh_token)

    async def _process(
        self, request: web.Request, grant_type: str, body: Mapping[str, object]
    ) -> web.Response:
        """
        Apply the next matching fault around the state's decision.
        """
        fault = self.state.take_fault(grant_type)
        if fault is not None:
            match fault.kind:
                case FaultKind.DELAY:
                    await asyncio.sleep(fault.delay)
                case FaultKind.SERVER_ERROR:
                    return _server_error(fault.status)
                case FaultKind.RATE_LIMIT:
                    return _json(_RATE_LIMITED, 429)
                case _:
                    pass

        # Synchronous from here to the commit: nothing can interleave.
        if grant_type == "authorization_code":
            reply = self.state.exchange_code(body)
        else:
            reply = self.state.refresh(body)

        # An after-commit fault replaces whatever was decided, success or
        # not: it models a response lost on the way back.
        match None if fault is None else fault.kind:
            case FaultKind.DROP_AFTER_COMMIT:
                self.state.counters.dropped_responses += 1
                return _drop_connection(request)
            case FaultKind.SERVER_ERROR_AFTER_COMMIT:
                return _server_error(500)
            case FaultKind.MALFORMED_AFTER_COMMIT:
                return web.Response(body=b"<html>not json", content_type="text/html")
            case FaultKind.HOLD_AFTER_COMMIT:
                assert fault is not None
                self.state.counters.held_responses += 1
                gate = self.state.hold_gate
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gate.wait(), fault.delay or 60.0)
                self.state.counters.dropped_responses += 1
                return _drop_connection(request)
            case _:
                return _reply(reply)

    # -- resource server -------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        caller = self.state.authorize_api_call(request.headers.get("Authorization"))
        if caller is None:
            return _json(_UNAUTHORIZED, 401)
        account_id, business_name = caller
        if request.method == "GET" and request.match_info["tail"] in ("account", "account/"):
            return _json(
                {
                    "id": account_id,
                    "nickname": business_name,
                    "status": "ACTIVE",
                    "account_details": {"business_details": {"business_name": business_name}},
                }
            )
        return _json(
            {"ok": True, "method": request.method, "path": request.path, "account_id": account_id}
        )

    # -- admin -----------------------------------------------------------------

    async def admin_release_held(self, request: web.Request) -> web.Response:
        self.state.hold_gate.set()
        self.state.hold_gate = asyncio.Event()
        return _json({"released": True})

    async def admin_counters(self, request: web.Request) -> web.Response:
        return _json(self.state.counters.as_dict())

    async def admin_clock(self, request: web.Request) -> web.Response:
        return _json({"now": self.state.clock.now()})

    async def admin_advance(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        seconds = body.get("seconds")
        advance = getattr(self.state.clock, "advance", None)
        if advance is None:
            _bad_request("the fake's clock cannot be advanced (it is not a ManualClock)")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            _bad_request("seconds must be a number")
        try:
            advance(seconds)
        except ValueError as exc:
            _bad_request(str(exc))
        return _json({"now": self.state.clock.now()})

    async def admin_inject(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            fault = Fault(
                kind=FaultKind(body.get("kind")),
                grant_type=_optional_str(body, "grant_type"),
                status=_whole_number(body, "status", 503),
                delay=_number(body, "delay", 0.0),
                times=_whole_number(body, "times", 1),
            )
        except (TypeError, ValueError) as exc:
            _bad_request(f"not a valid fault: {exc}")
        self.state.inject(fault)
        return _json(
            {
                "kind": fault.kind.value,
                "grant_type": fault.grant_type,
                "status": fault.status,
                "delay": fault.delay,
                "times": fault.times,
            }
        )

    async def admin_clear_faults(self, request: web.Request) -> web.Response:
        self.state.clear_faults()
        return _json({"ok": True})

    async def admin_create_account(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        business_name = _optional_str(body, "business_name") or "Fake Pty Ltd"
        try:
            account_id = self.state.create_account(_optional_str(body, "account_id"), business_name)
        except ValueError as exc:
            _bad_request(str(exc))
        return _json({"account_id": account_id})

    async def admin_approve(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            parsed = self.state.parse_authorize_url(_required_str(body, "authorize_url"))
            location = self.state.approve(parsed, _optional_str(body, "account_id"))
        except ValueError as exc:
            _bad_request(str(exc))
        return _json({"redirect_url": location})

    async def admin_deny(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            parsed = self.state.parse_authorize_url(_required_str(body, "authorize_url"))
            location = self.state.deny(
                parsed,
                _optional_str(body, "error") or "access_denied",
                _optional_str(body, "description") or "The user denied the request",
            )
        except ValueError as exc:
            _bad_request(str(exc))
        return _json({"redirect_url": location})

    async def admin_disconnect(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            revoked = self.state.disconnect(_required_str(body, "account_id"))
        except ValueError as exc:
            _bad_request(str(exc))
        return _json({"revoked": revoked})

    async def admin_grant_status(self, request: web.Request) -> web.Response:
        # POST, not GET: tokens do not belong in URLs, even a fake's.
        body = await _admin_body(request)
        try:
            status = self.state.grant_status(_required_str(body, "token"))
        except ValueError as exc:
            _bad_request(str(exc))
        return _json({"status": status})


async def _read_json_body(request: web.Request) -> dict[str, object] | web.Response:
    """
    Read a token request's JSON object, or the error response to send instead.
    """
    too_large = _json(error_body("invalid_request", "request body exceeds 64 KiB"), 413)
    if request.content_length is not None and request.content_length > MAX_TOKEN_BODY:
        return too_large
    if request.content_type != "application/json":
        text = f"the body must be JSON (application/json), got {request.content_type!r}"
        return _json(error_body("invalid_request", text), 400)
    # Read by hand rather than request.read(): chunked bodies carry no length.
    raw = bytearray()
    while chunk := await request.content.read(MAX_TOKEN_BODY + 1 - len(raw)):
        raw += chunk
        if len(raw) > MAX_TOKEN_BODY:
            return too_large
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json(error_body("invalid_request", "the body is not valid JSON"), 400)
    if not isinstance(body, dict):
        return _json(error_body("invalid_request", "the body must be a JSON object"), 400)
    return body


async def _admin_body(request: web.Request) -> dict[str, object]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        _bad_request("the body is not valid JSON")
    if not isinstance(body, dict):
        _bad_request("the body must be a JSON object")
    return body


def _server_error(status: int) -> web.Response:
    return _json(error_body("server_error", "the fake provider failed on purpose"), status)


def _required_str(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        msg = f"{name} must be a string"
        raise FakeProviderError(msg)
    return value


def _optional_str(body: Mapping[str, object], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        msg = f"{name} must be a string or null"
        raise FakeProviderError(msg)
    return value


def _number(body: Mapping[str, object], name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number"
        raise TypeError(msg)
    return value


def _whole_number(body: Mapping[str, object], name: str, default: int) -> int:
    value = _number(body, name, default)
    if not float(value).is_integer():
        msg = f"{name} must be a whole number"
        raise TypeError(msg)
    return int(value)


def _error_page(reason: str) -> str:
    return (
        "<!doctype html>\n<html><head><title>Authorization error</title></head><body>\n"
        "<h1>This authorization request is invalid</h1>\n"
        f"<p>{html.escape(reason)}</p>\n</body></html>\n"
    )


def _consent_page(
    *, query: str, client_id: str, scopes: tuple[str, ...], redirect_uri: str, account: str
) -> str:
    items = "".join(f"<li>{html.escape(scope)}</li>" for scope in scopes)
    hidden = f'<input type="hidden" name="query" value="{html.escape(query)}">'

    def form(decision: str, label: str) -> str:
        return (
            f'<form method="post" action="{AUTHORIZE_PATH}/decision">{hidden}'
            f'<button type="submit" name="decision" value="{decision}">{label}</button></form>\n'
        )

    return (
        "<!doctype html>\n<html><head><title>Authorize access</title></head><body>\n"
        f"<h1>{html.escape(client_id)} wants to access {html.escape(account)}</h1>\n"
        f"<ul>{items}</ul>\n"
        f"<p>You will be sent back to {html.escape(redirect_uri)}</p>\n"
        + form("allow", "Allow")
        + form("deny", "Deny")
        + "</body></html>\n"
    )
