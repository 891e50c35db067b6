"""Transport: one HTTP request per call, every outcome mapped to a value or a typed error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import attrs
import orjson
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from yarl import URL

from awx_connection import (
    Config,
    ConnectionManager,
    Endpoints,
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    NetworkError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    Secret,
    TimingPolicy,
    TokenSet,
)
from awx_connection._transport import Transport
from awx_connection.testing import FakeAirwallex, Fault, FaultKind, ManualClock

CLIENT_ID = "client_Id42"
CLIENT_SECRET = "cs_Wm5clientsecret"
CODE = "code_Xy7authcode"
VERIFIER = "verifier_Pk3pkceverifier"
REFRESH = "rt_Zq81refreshtoken"
ACCESS = "at_Qq9accesstoken"
ALL_SECRETS = (CLIENT_SECRET, CODE, VERIFIER, REFRESH, ACCESS)

BASE = "https://awx.test"
TOKEN_URL = f"{BASE}/oauth/token"
ACCOUNT_URL = f"{BASE}/api/v1/account/"
REDIRECT_URI = "https://platform.example/awx/callback"
NOW = 1_700_000_000.0
LIMIT = 2048
TIMING = TimingPolicy(
    max_response_bytes=LIMIT, default_access_ttl=123.0, default_refresh_ttl=4567.0
)
CONFIG = Config(
    client_id=CLIENT_ID,
    client_secret=CLIENT_SECRET,
    redirect_uri=REDIRECT_URI,
    endpoints=Endpoints.from_base_url(BASE),
    timing=TIMING,
)
NEW_ACCESS = "at_new_access"
NEW_REFRESH = "rt_new_refresh"
GOOD: dict[str, object] = {
    "access_token": NEW_ACCESS,
    "refresh_token": NEW_REFRESH,
    "token_type": "Bearer",
    "expires_in": 300,
    "refresh_token_expires_in": 90 * 86400,
    "scope": "r:awx_action:balances_view  w:awx_action:transfers_edit",
}


@attrs.frozen
class Op:
    """One token-endpoint operation and the secrets it puts on the wire."""

    name: str
    call: Callable[[Transport], Awaitable[TokenSet]]
    sent: tuple[str, ...]
    generation: int


async def _exchange(transport: Transport) -> TokenSet:
    return await transport.exchange_code(
        Secret(CODE), redirect_uri=REDIRECT_URI, code_verifier=Secret(VERIFIER), now=NOW
    )


async def _refresh(transport: Transport) -> TokenSet:
    return await transport.refresh(Secret(REFRESH), generation=7, now=NOW)


EXCHANGE = Op("exchange", _exchange, (CODE, VERIFIER, CLIENT_SECRET), 0)
REFRESH_OP = Op("refresh", _refresh, (REFRESH, CLIENT_SECRET), 7)


@pytest.fixture(params=[EXCHANGE, REFRESH_OP], ids=lambda op: op.name)
def op(request: pytest.FixtureRequest) -> Op:
    return request.param  # type: ignore[no-any-return]


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 omits ``stream_writer``, which aiohttp 3.14 requires
    (pnuckowski/aioresponses#289); the request is already sent, so a stub does."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Mock(aioresponses):
    """aioresponses whose every mock builds a :class:`_CompatResponse`."""

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs["response_class"] = kwargs.get("response_class") or _CompatResponse
        super().add(url, method, *args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with _Mock() as mock:
        yield mock


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    transport = Transport(CONFIG)
    yield transport
    await transport.aclose()


def assert_scrubbed(exc: BaseException) -> None:
    for raw in ALL_SECRETS:
        assert raw not in str(exc)
        assert raw not in repr(exc)
        assert raw not in repr(vars(exc))


def sent_json(mocked: aioresponses, method: str = "POST", url: str = TOKEN_URL) -> Any:
    (call,) = mocked.requests[(method, URL(url))]
    return call.kwargs


async def fail(op: Op, transport: Transport) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await op.call(transport)
    assert_scrubbed(info.value)
    return info.value


def connector_error(cls: type[aiohttp.ClientConnectorError]) -> aiohttp.ClientConnectorError:
    key = ConnectionKey("awx.test", 443, True, True, None, None, None)
    return cls(key, ConnectionRefusedError(111, "Connection refused"))


# -- 200 with a valid body ------------------------------------------------------


async def test_valid_body_gives_token_set(
    op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """A 200 with a valid body becomes a TokenSet with lifetimes counted from `now`."""
    mocked.post(TOKEN_URL, payload=GOOD)

    tokens = await op.call(transport)

    assert (
        TokenSet(
            access_token=Secret(NEW_ACCESS),
            refresh_token=Secret(NEW_REFRESH),
            access_expires_at=NOW + 300,
            refresh_expires_at=NOW + 90 * 86400,
            issued_at=NOW,
            generation=op.generation,
            scope=("r:awx_action:balances_view", "w:awx_action:transfers_edit"),
        )
        == tokens
    )


async def test_absent_lifetimes_use_timing_defaults(
    op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """Without expires_in / refresh_token_expires_in the TimingPolicy defaults apply."""
    body = {"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH}
    mocked.post(TOKEN_URL, payload=body)

    tokens = await op.call(transport)

    assert (NOW + 123.0, NOW + 4567.0, ()) == (
        tokens.access_expires_at,
        tokens.refresh_expires_at,
        tokens.scope,
    )


async def test_body_at_exactly_the_size_limit_is_read(
    op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """A body of exactly max_response_bytes is still accepted."""
    raw = orjson.dumps({**GOOD, "pad": ""})
    body = orjson.dumps({**GOOD, "pad": "x" * (LIMIT - len(raw))})
    assert LIMIT == len(body)
    mocked.post(TOKEN_URL, body=body)

    tokens = await op.call(transport)

    assert Secret(NEW_REFRESH) == tokens.refresh_token


# -- what goes on the wire --------------------------------------------------------


@pytest.mark.parametrize("verifier", [VERIFIER, None], ids=["pkce", "no-pkce"])
async def test_exchange_sends_json_body(
    verifier: str | None, mocked: aioresponses, transport: Transport
) -> None:
    """The code exchange POSTs a JSON body with the documented fields (and the verifier)."""
    mocked.post(TOKEN_URL, payload=GOOD)

    await transport.exchange_code(
        Secret(CODE),
        redirect_uri=REDIRECT_URI,
        code_verifier=None if verifier is None else Secret(verifier),
        now=NOW,
    )

    kwargs = sent_json(mocked)
    expected = {
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": CODE,
        "redirect_uri": REDIRECT_URI,
    }
    if verifier is not None:
        expected["code_verifier"] = verifier
    assert expected == orjson.loads(kwargs["data"])
    assert "application/json" == kwargs["headers"]["Content-Type"]


async def test_refresh_sends_json_body(mocked: aioresponses, transport: Transport) -> None:
    """A refresh POSTs grant_type=refresh_token with the client credentials and the token."""
    mocked.post(TOKEN_URL, payload=GOOD)

    await transport.refresh(Secret(REFRESH), generation=1, now=NOW)

    kwargs = sent_json(mocked)
    assert {
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH,
    } == orjson.loads(kwargs["data"])
    assert "application/json" == kwargs["headers"]["Content-Type"]


# -- 200 with a bad body ------------------------------------------------------------


_DROP = object()


def _with(**changes: object) -> bytes:
    body = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not _DROP})


MALFORMED = {
    "not-json": b"<html>not json</html>",
    "empty-body": b"",
    "json-array": b"[]",
    "json-string": b'"access_token"',
    "no-access-token": _with(access_token=_DROP),
    "no-refresh-token": _with(refresh_token=_DROP),
    "empty-access-token": _with(access_token=""),
    "blank-refresh-token": _with(refresh_token="   "),
    "null-refresh-token": _with(refresh_token=None),
    "int-access-token": _with(access_token=12345),
    "list-refresh-token": _with(refresh_token=[NEW_REFRESH]),
    "huge-access-token": _with(access_token="a" * (16 * 1024 + 1)),
    "negative-expires-in": _with(expires_in=-1),
    "zero-expires-in": _with(expires_in=0),
    "bool-expires-in": _with(expires_in=True),
    "string-expires-in": _with(expires_in="300"),
    "absurd-expires-in": _with(expires_in=86400 + 1),
    "negative-refresh-expires-in": _with(refresh_token_expires_in=-5),
    "zero-refresh-expires-in": _with(refresh_token_expires_in=0),
    "bool-refresh-expires-in": _with(refresh_token_expires_in=False),
    "string-refresh-expires-in": _with(refresh_token_expires_in="90d"),
    "absurd-refresh-expires-in": _with(refresh_token_expires_in=400 * 86400 + 1),
    "token-type-mac": _with(token_type="mac"),
    "token-type-number": _with(token_type=1),
    "scope-list": _with(scope=["a", "b"]),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_bad_200_body_is_malformed_and_maybe_processed(
    body: bytes, op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """A 200 whose body is unusable is MalformedResponseError, and the grant may be spent."""
    mocked.post(TOKEN_URL, status=200, body=body)

    exc = await fail(op, transport)

    assert (MalformedResponseError, 200, True) == (type(exc), exc.status, exc.maybe_processed)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({"Content-Length": str(10 * LIMIT)}, orjson.dumps(GOOD), id="content-length"),
        pytest.param(None, _with(pad="x" * LIMIT), id="no-content-length"),
    ],
)
async def test_oversized_200_body_is_malformed(
    headers: dict[str, str] | None,
    body: bytes,
    op: Op,
    mocked: aioresponses,
    transport: Transport,
) -> None:
    """A 200 body over max_response_bytes (declared or streamed) is refused, maybe processed."""
    mocked.post(TOKEN_URL, status=200, body=body, headers=headers)

    exc = await fail(op, transport)

    assert (MalformedResponseError, True) == (type(exc), exc.maybe_processed)


@pytest.mark.parametrize(
    ("status", "maybe_processed"),
    [(400, False), (429, False), (503, False), (500, True), (502, True)],
)
async def test_oversized_error_body_keeps_its_status_classification(
    status: int, maybe_processed: bool, op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """An oversized error body is malformed; maybe_processed follows the status (5xx but 503)."""
    mocked.post(TOKEN_URL, status=status, body=b"<html>" + b"x" * LIMIT)

    exc = await fail(op, transport)

    assert (MalformedResponseError, status, maybe_processed) == (
        type(exc),
        exc.status,
        exc.maybe_processed,
    )


# -- error statuses ---------------------------------------------------------------

GRANT_MESSAGE = "invalid_grant: OAuth 2.0 Parameter: refresh_token"
ERRORS = [
    pytest.param(
        400,
        {"code": "invalid_grant", "message": "invalid_grant: expired refresh token"},
        InvalidGrantError,
        "invalid_grant",
        False,
        id="400-invalid_grant-airwallex",
    ),
    pytest.param(
        400,
        {"error": "invalid_grant", "error_description": "invalid or expired refresh token"},
        InvalidGrantError,
        "invalid_grant",
        False,
        id="400-invalid_grant-rfc",
    ),
    pytest.param(
        400,
        {"message": GRANT_MESSAGE},
        InvalidGrantError,
        "invalid_grant",
        False,
        id="400-invalid_grant-message-only",
    ),
    pytest.param(
        400,
        GRANT_MESSAGE.encode(),
        InvalidGrantError,
        "invalid_grant",
        False,
        id="400-invalid_grant-plain-text",
    ),
    pytest.param(
        401,
        {"error": "invalid_client", "error_description": "bad client"},
        InvalidClientError,
        "invalid_client",
        False,
        id="401-invalid_client",
    ),
    pytest.param(
        400,
        {"code": "invalid_client", "message": "unknown client"},
        InvalidClientError,
        "invalid_client",
        False,
        id="400-invalid_client",
    ),
    pytest.param(401, b"", InvalidClientError, None, False, id="401-no-body"),
    pytest.param(
        429,
        {"code": "too_many_requests", "message": "Concurrent token refresh is not allowed."},
        RateLimitedError,
        "too_many_requests",
        False,
        id="429-concurrent",
    ),
    pytest.param(
        429,
        {"code": "too_many_requests", "message": "Rate Limit Exceeded."},
        RateLimitedError,
        "too_many_requests",
        False,
        id="429-rate-limit",
    ),
    pytest.param(
        503,
        {"code": "service_unavailable", "message": "try later"},
        ProviderUnavailableError,
        "service_unavailable",
        False,
        id="503",
    ),
    pytest.param(
        500,
        {"error": "server_error"},
        ProviderUnavailableError,
        "server_error",
        True,
        id="500",
    ),
    pytest.param(
        502, b"<html>Bad Gateway</html>", ProviderUnavailableError, None, True, id="502-html"
    ),
    pytest.param(504, b"", ProviderUnavailableError, None, True, id="504-empty"),
    pytest.param(
        400,
        {"error": "invalid_request", "error_description": "redirect_uri mismatch"},
        ProviderError,
        "invalid_request",
        False,
        id="400-invalid_request",
    ),
    pytest.param(403, [1, 2], ProviderError, None, False, id="403-json-array"),
]


@pytest.mark.parametrize(("status", "body", "expected", "code", "maybe_processed"), ERRORS)
async def test_error_status_maps_to_typed_error(
    status: int,
    body: object,
    expected: type[ProviderError],
    code: str | None,
    maybe_processed: bool,
    op: Op,
    mocked: aioresponses,
    transport: Transport,
) -> None:
    """Each error status/body maps to its typed error with status, code and maybe_processed."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    mocked.post(TOKEN_URL, status=status, body=raw)

    exc = await fail(op, transport)

    assert (expected, status, code, maybe_processed) == (
        type(exc),
        exc.status,
        exc.code,
        exc.maybe_processed,
    )


@pytest.mark.parametrize(
    ("message", "concurrent"),
    [
        ("Concurrent token refresh is not allowed.", True),
        ("too_many_requests: Concurrent token refresh is not allowed.", True),
        ("Rate Limit Exceeded.", False),
    ],
)
async def test_429_tells_concurrent_refresh_from_rate_limit(
    message: str, concurrent: bool, op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """RateLimitedError.concurrent is set only for the concurrent-refresh 429."""
    mocked.post(TOKEN_URL, status=429, payload={"message": message})

    exc = await fail(op, transport)

    assert isinstance(exc, RateLimitedError)
    assert (concurrent, False) == (exc.concurrent, exc.maybe_processed)


# -- secrets never leak ---------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 429, 500, 503])
@pytest.mark.parametrize("style", ["airwallex", "rfc", "plain-text"])
async def test_echoed_secrets_are_scrubbed(
    status: int, style: str, op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """A provider message that echoes what we sent is kept, but with every secret masked."""
    echo = " ".join(f"token {raw} is bad" for raw in op.sent)
    message = f"invalid_grant: {echo}"
    bodies = {
        "airwallex": orjson.dumps({"code": "invalid_grant", "message": message}),
        "rfc": orjson.dumps({"error": "invalid_grant", "error_description": message}),
        "plain-text": message.encode(),
    }
    mocked.post(TOKEN_URL, status=status, body=bodies[style])

    exc = await fail(op, transport)

    assert "invalid_grant: token ******** is bad" in str(exc)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda raw: {"code": raw, "message": "nope"}, id="code-field"),
        pytest.param(lambda raw: {"message": f"{raw}: revoked"}, id="message-prefix"),
        pytest.param(lambda raw: f"{raw}: revoked", id="plain-text-prefix"),
    ],
)
async def test_secret_echoed_as_the_code_is_scrubbed(
    body: Callable[[str], object], op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """A secret sent back in the code position does not survive into the message or exc.code."""
    payload = body(op.sent[0])
    raw = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    mocked.post(TOKEN_URL, status=400, body=raw)

    exc = await fail(op, transport)

    assert "********" == exc.code


async def test_secret_containing_another_is_fully_scrubbed(
    mocked: aioresponses, transport: Transport
) -> None:
    """A verifier that contains the code is masked whole, not left with a readable tail."""
    verifier = f"{CODE}-verifier-tail"
    mocked.post(TOKEN_URL, status=400, payload={"message": f"invalid_grant: {verifier}"})

    with pytest.raises(InvalidGrantError) as info:
        await transport.exchange_code(
            Secret(CODE), redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier), now=NOW
        )

    assert "verifier-tail" not in str(info.value)
    assert_scrubbed(info.value)


async def test_provider_message_is_bounded_and_printable(
    op: Op, mocked: aioresponses, transport: Transport
) -> None:
    """The provider's message is cut to a bounded length and cannot inject line breaks."""
    message = "invalid_grant: line one\nFAKE LOG LINE\r\n" + "x" * 5000
    mocked.post(TOKEN_URL, status=400, payload={"message": message})

    exc = await fail(op, transport)

    assert "\n" not in str(exc)
    assert "\r" not in str(exc)
    assert len(str(exc)) < 400


# -- network failures -------------------------------------------------------------------

NETWORK = [
    pytest.param(connector_error(aiohttp.ClientConnectorError), False, id="connection-refused"),
    pytest.param(connector_error(aiohttp.ClientConnectorDNSError), False, id="dns-failure"),
    pytest.param(aiohttp.ConnectionTimeoutError(), False, id="connect-timeout"),
    pytest.param(TimeoutError(), True, id="timeout"),
    pytest.param(aiohttp.SocketTimeoutError(), True, id="read-timeout"),
    pytest.param(aiohttp.ServerDisconnectedError(), True, id="server-disconnected"),
    pytest.param(aiohttp.ClientPayloadError("broken"), True, id="payload-error"),
    pytest.param(aiohttp.ClientOSError(104, "Connection reset by peer"), True, id="reset"),
]


@pytest.mark.parametrize(("error", "maybe_processed"), NETWORK)
async def test_network_failure_is_network_error(
    error: Exception,
    maybe_processed: bool,
    op: Op,
    mocked: aioresponses,
    transport: Transport,
) -> None:
    """Failures before connecting are not processed; lost requests or responses may be."""
    mocked.post(TOKEN_URL, exception=error)

    exc = await fail(op, transport)

    assert (NetworkError, None, maybe_processed) == (type(exc), exc.status, exc.maybe_processed)


# -- the account call -------------------------------------------------------------------


async def test_fetch_account_returns_the_object(mocked: aioresponses, transport: Transport) -> None:
    """A 200 JSON object with a string id is returned, fetched with the Bearer access token."""
    account = {"id": "acct_123", "nickname": "Shop"}
    mocked.get(ACCOUNT_URL, payload=account)

    assert account == await transport.fetch_account(Secret(ACCESS))
    kwargs = sent_json(mocked, "GET", ACCOUNT_URL)
    assert f"Bearer {ACCESS}" == kwargs["headers"]["Authorization"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b"{}", b'{"id": 123}', b'{"id": null}'],
    ids=["not-json", "array", "no-id", "int-id", "null-id"],
)
async def test_fetch_account_bad_body_is_malformed(
    body: bytes, mocked: aioresponses, transport: Transport
) -> None:
    """A 200 without an object holding a string id is MalformedResponseError."""
    mocked.get(ACCOUNT_URL, body=body)

    with pytest.raises(MalformedResponseError) as info:
        await transport.fetch_account(Secret(ACCESS))

    assert 200 == info.value.status
    assert_scrubbed(info.value)


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (401, {"code": "unauthorized", "message": f"token {ACCESS} expired"}, "unauthorized"),
        (403, {"code": ACCESS, "message": "echo"}, "********"),
        (401, f"{ACCESS}: expired".encode(), "********"),
        (500, b"", None),
        (503, {"error": "unavailable"}, "unavailable"),
    ],
    ids=["401", "403-echoed-code", "401-plain-text-echo", "500", "503"],
)
async def test_fetch_account_error_status_is_provider_error(
    status: int, body: object, code: str | None, mocked: aioresponses, transport: Transport
) -> None:
    """A non-200 answer is a ProviderError carrying status and (scrubbed) code only."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    mocked.get(ACCOUNT_URL, status=status, body=raw)

    with pytest.raises(ProviderError) as info:
        await transport.fetch_account(Secret(ACCESS))

    assert (ProviderError, status, code) == (type(info.value), info.value.status, info.value.code)
    assert_scrubbed(info.value)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({"Content-Length": str(10 * LIMIT)}, b'{"id": "a"}', id="content-length"),
        pytest.param(None, orjson.dumps({"id": "a", "pad": "x" * LIMIT}), id="streamed"),
    ],
)
async def test_fetch_account_oversized_body_is_malformed(
    headers: dict[str, str] | None, body: bytes, mocked: aioresponses, transport: Transport
) -> None:
    """An account body over max_response_bytes is refused."""
    mocked.get(ACCOUNT_URL, body=body, headers=headers)

    with pytest.raises(MalformedResponseError):
        await transport.fetch_account(Secret(ACCESS))


@pytest.mark.parametrize(
    "error",
    [connector_error(aiohttp.ClientConnectorError), TimeoutError(), aiohttp.ClientPayloadError()],
    ids=["refused", "timeout", "payload"],
)
async def test_fetch_account_network_failure_is_network_error(
    error: Exception, mocked: aioresponses, transport: Transport
) -> None:
    """A failed account request is a NetworkError without a status."""
    mocked.get(ACCOUNT_URL, exception=error)

    with pytest.raises(NetworkError) as info:
        await transport.fetch_account(Secret(ACCESS))

    assert info.value.status is None
    assert_scrubbed(info.value)


# -- session ownership ---------------------------------------------------------------


async def test_aclose_closes_the_session_it_created() -> None:
    """aclose() closes a session the transport created itself, and is idempotent."""
    transport = Transport(CONFIG)
    session = transport.session

    await transport.aclose()
    await transport.aclose()

    assert session.closed


async def test_aclose_leaves_a_passed_session_open() -> None:
    """aclose() does not close a session the caller passed in."""
    async with aiohttp.ClientSession() as session:
        transport = Transport(CONFIG, session=session)
        assert session is transport.session

        await transport.aclose()

        assert not session.closed


async def test_session_uses_the_request_timeout() -> None:
    """The created session's total timeout is TimingPolicy.request_timeout."""
    transport = Transport(attrs.evolve(CONFIG, timing=TimingPolicy(request_timeout=3.5)))
    try:
        assert 3.5 == transport.session.timeout.total
    finally:
        await transport.aclose()


# -- request_timeout with a session the caller passed in ------------------------------
#
# A caller's ClientSession() has aiohttp's 5-minute timeout; every request must
# still end within request_timeout (0.2 s here). The outer 2 s bound makes the
# old behaviour fail fast instead of hanging.

SHORT = 0.2


@pytest.fixture
async def stalled() -> AsyncIterator[str]:
    """A real server whose account call answers at once and any other path never answers."""
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if request.path != "/api/v1/account/":
            await release.wait()
        return web.json_response({"id": "acct_stalled"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    release.set()
    await runner.cleanup()


def short_timeout(config: Config) -> Config:
    return attrs.evolve(config, timing=attrs.evolve(config.timing, request_timeout=SHORT))


async def within_request_timeout(call: Awaitable[object], error: type[Exception]) -> Exception:
    started = time.monotonic()
    with pytest.raises(error) as info:
        async with asyncio.timeout(2):
            await call
    assert time.monotonic() - started < SHORT + 0.5
    return info.value


async def test_passed_session_token_post_ends_at_request_timeout(
    op: Op, awx_config: Config, awx_fake: FakeAirwallex
) -> None:
    """A token POST the provider sits on is a maybe-processed NetworkError at request_timeout."""
    config = short_timeout(awx_config)
    awx_fake.inject(Fault(FaultKind.DELAY, delay=3 * SHORT))
    async with aiohttp.ClientSession() as session:
        exc = await within_request_timeout(
            op.call(Transport(config, session=session)), NetworkError
        )

    assert isinstance(exc, NetworkError)
    assert exc.maybe_processed


async def test_passed_session_account_call_ends_at_request_timeout(stalled: str) -> None:
    """fetch_account() on a caller's session is a NetworkError at request_timeout."""
    # Under /stalled the account path is not the one the server answers.
    endpoints = Endpoints(
        authorize_url=f"{stalled}/oauth/authorize",
        token_url=f"{stalled}/oauth/token",
        api_base_url=f"{stalled}/stalled",
    )
    config = short_timeout(attrs.evolve(CONFIG, endpoints=endpoints))
    async with aiohttp.ClientSession() as session:
        transport = Transport(config, session=session)
        exc = await within_request_timeout(transport.fetch_account(Secret(ACCESS)), NetworkError)

    assert isinstance(exc, NetworkError)
    assert exc.maybe_processed


async def test_passed_session_api_call_ends_at_request_timeout(
    awx_config: Config, awx_fake: FakeAirwallex, awx_clock: ManualClock, stalled: str
) -> None:
    """ConnectionManager.request() on a caller's session times out at request_timeout,
    as a TimeoutError (an aiohttp timeout, as before); a caller's own timeout= wins."""
    endpoints = Endpoints(
        authorize_url=awx_fake.authorize_url, token_url=awx_fake.token_url, api_base_url=stalled
    )
    config = short_timeout(attrs.evolve(awx_config, endpoints=endpoints))
    async with (
        aiohttp.ClientSession() as session,
        ConnectionManager(config, clock=awx_clock, session=session) as awx,
    ):
        request = await awx.begin_authorization()
        connection = await awx.complete_authorization(awx_fake.approve(request.url))
        assert "acct_stalled" == connection.account_id
        call = awx.request(connection.id, "GET", "/api/v1/balances", retry=False)
        await within_request_timeout(call, TimeoutError)

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await awx.request(
                connection.id,
                "GET",
                "/api/v1/balances",
                retry=False,
                timeout=aiohttp.ClientTimeout(total=SHORT / 4),
            )
        assert time.monotonic() - started < SHORT


async def test_request_timeout_keeps_the_session_limits() -> None:
    """The per-request timeout caps the session's total and keeps its other limits."""
    tight = aiohttp.ClientTimeout(total=1.0, sock_connect=0.5)
    loose = aiohttp.ClientTimeout(total=None, sock_connect=0.5)
    for given, total in [(tight, 1.0), (loose, TIMING.request_timeout)]:
        async with aiohttp.ClientSession(timeout=given) as session:
            timeout = Transport(CONFIG, session=session).timeout
        assert (total, 0.5) == (timeout.total, timeout.sock_connect)
