"""
The fake Airwallex provider, tested as a black box over real sockets.

Every test talks to a running FakeAirwallex with a plain aiohttp session, the
way the library's transport does, and moves time with a shared ManualClock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from awx_connection.testing import (
    FakeAirwallex,
    FakeCounters,
    FakeProviderError,
    Fault,
    FaultKind,
    FileClock,
    ManualClock,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

REDIRECT = "http://127.0.0.1/callback"
SCOPES = "account_details:read balance:read"
VERIFIER = "v" * 43 + "-._~"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=")
REUSE_MESSAGE = "invalid_grant: refresh token reuse detected; connection invalidated"
UNAUTHORIZED = {
    "code": "unauthorized",
    "source": "",
    "message": "Access token is invalid or has expired",
    "details": {},
}

Json = dict[str, Any]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeAirwallex]:
    async with FakeAirwallex(clock=clock) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def authorize_url(fake: FakeAirwallex, **overrides: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": fake.client_id,
        "redirect_uri": REDIRECT,
        "scope": SCOPES,
        "state": "st-123",
    }
    params.update(overrides)
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"{fake.authorize_url}?{query}"


def redirect_params(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


async def post_token(
    http: aiohttp.ClientSession, fake: FakeAirwallex, **fields: str
) -> tuple[int, Json]:
    body = {"client_id": fake.client_id, "client_secret": fake.client_secret, **fields}
    async with http.post(fake.token_url, json=body) as response:
        return response.status, await response.json()


async def exchange(
    http: aiohttp.ClientSession, fake: FakeAirwallex, code: str, **extra: str
) -> tuple[int, Json]:
    return await post_token(
        http, fake, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, **extra
    )


async def refresh(http: aiohttp.ClientSession, fake: FakeAirwallex, rt: str) -> tuple[int, Json]:
    return await post_token(http, fake, grant_type="refresh_token", refresh_token=rt)


async def connect(http: aiohttp.ClientSession, fake: FakeAirwallex, **approve: str) -> Json:
    code = redirect_params(fake.approve(authorize_url(fake), **approve))["code"]
    status, tokens = await exchange(http, fake, code)
    assert status == 200, tokens
    return tokens


async def call_api(
    http: aiohttp.ClientSession,
    fake: FakeAirwallex,
    access_token: str | None,
    path: str = "/api/v1/account/",
    method: str = "GET",
) -> tuple[int, Json]:
    headers = {} if access_token is None else {"Authorization": f"Bearer {access_token}"}
    async with http.request(method, fake.base_url + path, headers=headers) as response:
        return response.status, await response.json()


async def admin(
    http: aiohttp.ClientSession, fake: FakeAirwallex, path: str, body: Json | None = None
) -> tuple[int, Json]:
    method = "GET" if body is None else "POST"
    async with http.request(method, fake.base_url + path, json=body) as response:
        return response.status, await response.json()


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    pytest.fail("the condition never became true")


# -- authorize ---------------------------------------------------------------------------


def test_approve_redirects_with_code_and_state(fake: FakeAirwallex) -> None:
    """approve() sends the user back to redirect_uri with a fresh code and the same state."""
    redirect = fake.approve(authorize_url(fake))

    assert redirect.startswith(REDIRECT + "?")
    params = redirect_params(redirect)
    assert {"code", "state"} == params.keys()
    assert params["state"] == "st-123"
    assert params["code"] in fake.issued_secrets()


def test_approve_appends_to_a_redirect_uri_with_a_query(fake: FakeAirwallex) -> None:
    """A redirect URI that already has a query keeps it and gets the code after an '&'."""
    fake.register_redirect_uri("http://127.0.0.1/cb?tenant=7")

    redirect = fake.approve(authorize_url(fake, redirect_uri="http://127.0.0.1/cb?tenant=7"))

    assert redirect.startswith("http://127.0.0.1/cb?tenant=7&code=")
    assert redirect_params(redirect)["tenant"] == "7"


def test_deny_redirects_with_error_and_state(fake: FakeAirwallex) -> None:
    """deny() redirects with error, error_description and state, and no code."""
    redirect = fake.deny(authorize_url(fake), error="access_denied", description="nope")

    assert redirect_params(redirect) == {
        "error": "access_denied",
        "error_description": "nope",
        "state": "st-123",
    }


async def test_sign_up_connects_a_new_account_each_time(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """sign_up=true creates a new account per approval; without it the same default account."""

    async def account_of(url: str) -> str:
        code = redirect_params(fake.approve(url))["code"]
        status, tokens = await exchange(http, fake, code)
        assert status == 200
        account: str = (await call_api(http, fake, tokens["access_token"]))[1]["id"]
        return account

    default_1 = await account_of(authorize_url(fake))
    default_2 = await account_of(authorize_url(fake))
    new_1 = await account_of(authorize_url(fake, sign_up="true"))
    new_2 = await account_of(authorize_url(fake, sign_up="true"))

    assert default_1 == default_2
    assert len({default_1, new_1, new_2}) == 3
    assert all(account.startswith("acct_") for account in (default_1, new_1, new_2))


async def test_approve_with_an_explicit_account(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """approve(account_id=...) connects that account; an unknown one is refused."""
    account = fake.create_account("acct_mine", business_name="Mine Ltd")

    tokens = await connect(http, fake, account_id=account)
    status, body = await call_api(http, fake, tokens["access_token"])

    assert (
        status,
        body["id"],
        body["account_details"]["business_details"]["business_name"],
    ) == (200, "acct_mine", "Mine Ltd")
    with pytest.raises(FakeProviderError, match="unknown account"):
        fake.approve(authorize_url(fake), account_id="acct_nobody")


BAD_AUTHORIZE = [
    pytest.param({"client_id": "someone-else"}, "client_id", id="wrong-client-id"),
    pytest.param({"redirect_uri": "http://127.0.0.1/evil"}, "redirect_uri", id="unregistered-uri"),
    pytest.param({"redirect_uri": None}, "redirect_uri", id="missing-redirect-uri"),
    pytest.param({"response_type": "token"}, "response_type", id="implicit-flow"),
    pytest.param({"scope": None}, "scope", id="missing-scope"),
    pytest.param({"scope": " "}, "scope", id="blank-scope"),
    pytest.param(
        {"code_challenge": CHALLENGE.decode(), "code_challenge_method": "plain"},
        "code_challenge_method",
        id="plain-pkce",
    ),
    pytest.param(
        {"code_challenge": CHALLENGE.decode()}, "code_challenge_method", id="pkce-no-method"
    ),
    pytest.param({"code_challenge_method": "S256"}, "code_challenge", id="pkce-no-challenge"),
    pytest.param(
        {"code_challenge": "short", "code_challenge_method": "S256"},
        "code_challenge",
        id="pkce-bad-challenge",
    ),
]


@pytest.mark.parametrize(("overrides", "parameter"), BAD_AUTHORIZE)
async def test_invalid_authorize_requests_are_refused(
    fake: FakeAirwallex,
    http: aiohttp.ClientSession,
    overrides: dict[str, str | None],
    parameter: str,
) -> None:
    """approve(), deny() and GET /oauth/authorize all refuse a bad URL, naming the parameter."""
    url = authorize_url(fake, **overrides)

    with pytest.raises(FakeProviderError, match=parameter):
        fake.approve(url)
    with pytest.raises(FakeProviderError, match=parameter):
        fake.deny(url)
    async with http.get(url) as response:
        assert response.status == 400
        assert response.content_type == "text/html"
        assert parameter in await response.text()


def test_approve_refuses_a_url_with_another_path(fake: FakeAirwallex) -> None:
    """An authorize URL must point at /oauth/authorize."""
    url = authorize_url(fake).replace("/oauth/authorize", "/oauth/authorise")

    with pytest.raises(FakeProviderError, match="path"):
        fake.approve(url)


async def test_consent_page_and_decision_redirect(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """The HTML consent page posts its query back; Allow and Deny redirect like approve/deny."""
    url = authorize_url(fake, state="<b>&'\"")
    async with http.get(url) as response:
        assert response.status == 200
        page = await response.text()
    assert "<b>&" not in page  # escaped
    assert page.count('action="/oauth/authorize/decision"') == 2
    hidden = re.search(r'name="query" value="([^"]*)"', page)
    assert hidden is not None
    query = hidden.group(1).replace("&amp;", "&").replace("&#x27;", "'").replace("&quot;", '"')
    query = query.replace("&lt;", "<").replace("&gt;", ">")

    decision_url = fake.base_url + "/oauth/authorize/decision"
    form = {"query": query, "decision": "allow"}
    async with http.post(decision_url, data=form, allow_redirects=False) as response:
        assert response.status == 302
        allowed = redirect_params(response.headers["Location"])
    form["decision"] = "deny"
    async with http.post(decision_url, data=form, allow_redirects=False) as response:
        assert response.status == 302
        denied = redirect_params(response.headers["Location"])

    assert "<b>&'\"" == allowed["state"] == denied["state"]
    assert (await exchange(http, fake, allowed["code"]))[0] == 200
    assert denied["error"] == "access_denied"


# -- code exchange -----------------------------------------------------------------------


async def test_code_exchange_returns_a_token_set(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A good code gives Bearer tokens with both lifetimes and the granted scope."""
    tokens = await connect(http, fake)

    assert {
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "refresh_token_expires_in",
        "scope",
    } == tokens.keys()
    assert tokens["access_token"].startswith("awx_at_")
    assert tokens["refresh_token"].startswith("awx_rt_")
    assert (
        tokens["token_type"],
        tokens["expires_in"],
        tokens["refresh_token_expires_in"],
        tokens["scope"],
    ) == ("Bearer", 300, 90 * 86400, SCOPES)
    assert fake.counters.exchanges == 1
    assert fake.grant_status(tokens["refresh_token"]) == "active"


async def test_code_is_single_use(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """The second exchange of a code is invalid_grant."""
    code = redirect_params(fake.approve(authorize_url(fake)))["code"]

    first, _ = await exchange(http, fake, code)
    second, body = await exchange(http, fake, code)

    assert (first, second) == (200, 400)
    assert body["message"] == "invalid_grant: authorization code already used"


async def test_code_is_burnt_by_a_failed_exchange(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A code presented with the wrong redirect_uri cannot be retried with the right one."""
    code = redirect_params(fake.approve(authorize_url(fake)))["code"]

    wrong, body = await post_token(
        http,
        fake,
        grant_type="authorization_code",
        code=code,
        redirect_uri="http://127.0.0.1/other",
    )
    retry, _ = await exchange(http, fake, code)

    assert (wrong, retry) == (400, 400)
    assert "redirect_uri does not match" in body["message"]
    assert fake.counters.invalid_grant_responses == 2


async def test_code_expires(
    fake: FakeAirwallex, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A code older than code_ttl is invalid_grant."""
    code = redirect_params(fake.approve(authorize_url(fake)))["code"]
    clock.advance(600)

    status, body = await exchange(http, fake, code)

    assert (status, body["message"]) == (400, "invalid_grant: authorization code expired")


async def test_unknown_code(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """A code the fake never issued is invalid_grant; a missing one is invalid_request."""
    unknown = await exchange(http, fake, "awx_ac_made_up")
    missing = await post_token(http, fake, grant_type="authorization_code", redirect_uri=REDIRECT)

    assert (unknown[0], unknown[1]["code"]) == (400, "invalid_grant")
    assert (missing[0], missing[1]["code"]) == (400, "invalid_request")


async def test_pkce_verifier_accepted(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """The S256 verifier matching the code's challenge is accepted."""
    url = authorize_url(fake, code_challenge=CHALLENGE.decode(), code_challenge_method="S256")
    code = redirect_params(fake.approve(url))["code"]

    status, body = await exchange(http, fake, code, code_verifier=VERIFIER)

    assert status == 200, body


@pytest.mark.parametrize(
    ("verifier", "reason"),
    [
        pytest.param(None, "code_verifier is required", id="missing"),
        pytest.param("w" * 43, "does not match", id="mismatch"),
        pytest.param("short", "43-128", id="malformed"),
    ],
)
async def test_pkce_verifier_refused(
    fake: FakeAirwallex, http: aiohttp.ClientSession, verifier: str | None, reason: str
) -> None:
    """A code with a challenge needs the matching verifier, or the exchange is invalid_grant."""
    url = authorize_url(fake, code_challenge=CHALLENGE.decode(), code_challenge_method="S256")
    code = redirect_params(fake.approve(url))["code"]
    extra = {} if verifier is None else {"code_verifier": verifier}

    status, body = await exchange(http, fake, code, **extra)

    assert (status, body["code"]) == (400, "invalid_grant")
    assert reason in body["message"]


async def test_verifier_without_challenge_is_refused(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A verifier for a code issued without a challenge betrays a lost challenge: invalid_grant."""
    code = redirect_params(fake.approve(authorize_url(fake)))["code"]

    status, body = await exchange(http, fake, code, code_verifier=VERIFIER)

    assert (status, body["code"]) == (400, "invalid_grant")


# -- request validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"client_secret": "wrong"}, id="wrong-secret"),
        pytest.param({"client_id": "someone-else"}, id="wrong-id"),
        pytest.param({"client_secret": None}, id="missing-secret"),
    ],
)
async def test_bad_client_credentials_are_invalid_client(
    fake: FakeAirwallex, http: aiohttp.ClientSession, credentials: dict[str, str | None]
) -> None:
    """Wrong or missing client credentials get 401 invalid_client."""
    body: Json = {"client_id": fake.client_id, "client_secret": fake.client_secret}
    body.update(grant_type="refresh_token", refresh_token="awx_rt_x", **credentials)

    async with http.post(fake.token_url, json=body) as response:
        assert response.status == 401
        assert await response.json() == {
            "code": "invalid_client",
            "message": "invalid_client: client authentication failed",
        }
    assert fake.counters.invalid_client_responses == 1


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        pytest.param(b"grant_type=refresh_token", "application/x-www-form-urlencoded", id="form"),
        pytest.param(b"{not json", "application/json", id="broken-json"),
        pytest.param(b"[1, 2]", "application/json", id="json-array"),
    ],
)
async def test_token_body_must_be_a_json_object(
    fake: FakeAirwallex, http: aiohttp.ClientSession, data: bytes, content_type: str
) -> None:
    """Anything but a JSON object is 400 invalid_request."""
    headers = {"Content-Type": content_type}
    async with http.post(fake.token_url, data=data, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_request"


async def test_oversized_token_body_is_413(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A token request over 64 KiB is refused with 413, with or without a Content-Length."""
    big = {"grant_type": "refresh_token", "padding": "x" * 70_000}

    async with http.post(fake.token_url, json=big) as response:
        assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"padding": "'
        for _ in range(70):
            yield b"x" * 1000
        yield b'"}'

    headers = {"Content-Type": "application/json"}
    async with http.post(fake.token_url, data=chunks(), headers=headers) as response:
        assert response.status == 413
        assert (await response.json())["code"] == "invalid_request"


async def test_unsupported_grant_type(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """client_credentials (or anything else) is 400 unsupported_grant_type."""
    status, body = await post_token(http, fake, grant_type="client_credentials")

    assert (status, body["code"]) == (400, "unsupported_grant_type")
    assert body["message"].startswith("unsupported_grant_type: ")


# -- rotation ----------------------------------------------------------------------------


async def test_refresh_rotates_both_tokens(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A refresh returns a new access and refresh token; the old access token keeps working."""
    first = await connect(http, fake)

    status, second = await refresh(http, fake, first["refresh_token"])

    assert status == 200
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert (await call_api(http, fake, second["access_token"]))[0] == 200
    assert (await call_api(http, fake, first["access_token"]))[0] == 200
    assert (fake.counters.refreshes, fake.counters.grace_reissues) == (1, 0)


async def test_previous_token_inside_grace_is_reissued(
    fake: FakeAirwallex, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """The previous refresh token still works inside the grace window (a lost response)."""
    rt0 = (await connect(http, fake))["refresh_token"]
    _, lost = await refresh(http, fake, rt0)
    clock.advance(59)

    status, recovered = await refresh(http, fake, rt0)

    assert status == 200
    assert recovered["refresh_token"] not in (rt0, lost["refresh_token"])
    assert (
        fake.counters.refreshes,
        fake.counters.grace_reissues,
        fake.counters.reuse_violations,
    ) == (2, 1, 0)
    assert (await refresh(http, fake, recovered["refresh_token"]))[0] == 200


async def test_grace_reissue_retires_the_unreceived_token(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """After a grace re-issue, the token from the lost response counts as old: reuse."""
    rt0 = (await connect(http, fake))["refresh_token"]
    _, lost = await refresh(http, fake, rt0)
    await refresh(http, fake, rt0)

    status, body = await refresh(http, fake, lost["refresh_token"])

    assert (status, body["message"]) == (400, REUSE_MESSAGE)
    assert fake.grant_status(rt0) == "invalidated"


async def test_grace_reissue_does_not_extend_the_window(
    fake: FakeAirwallex, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """Re-issuing inside the grace window keeps the original deadline."""
    rt0 = (await connect(http, fake))["refresh_token"]
    await refresh(http, fake, rt0)
    clock.advance(30)
    assert (await refresh(http, fake, rt0))[0] == 200
    clock.advance(30)

    status, body = await refresh(http, fake, rt0)

    assert (status, body["message"]) == (400, REUSE_MESSAGE)


async def test_previous_token_after_grace_invalidates_the_connection(
    fake: FakeAirwallex, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """The previous token at the end of the grace window is reuse: every token dies."""
    rt0 = (await connect(http, fake))["refresh_token"]
    _, newest = await refresh(http, fake, rt0)
    clock.advance(60)

    status, body = await refresh(http, fake, rt0)

    assert (status, body["code"], body["message"]) == (400, "invalid_grant", REUSE_MESSAGE)
    assert await call_api(http, fake, newest["access_token"]) == (401, UNAUTHORIZED)
    assert (await refresh(http, fake, newest["refresh_token"]))[0] == 400
    assert fake.grant_status(newest["access_token"]) == "invalidated"
    assert (
        fake.counters.reuse_violations,
        fake.counters.invalidations,
        fake.counters.invalid_grant_responses,
    ) == (1, 1, 2)


async def test_older_than_previous_token_is_reuse(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A token two rotations old is reuse even inside the latest grace window."""
    rt0 = (await connect(http, fake))["refresh_token"]
    _, second = await refresh(http, fake, rt0)
    _, third = await refresh(http, fake, second["refresh_token"])

    status, body = await refresh(http, fake, rt0)

    assert (status, body["message"]) == (400, REUSE_MESSAGE)
    assert (await call_api(http, fake, third["access_token"]))[0] == 401
    assert fake.counters.invalidations == 1


async def test_expired_refresh_token_is_invalid_grant_without_invalidation(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A refresh token past refresh_token_ttl is invalid_grant, but not reuse."""
    async with FakeAirwallex(clock=clock, refresh_token_ttl=1000) as fake:
        tokens = await connect(http, fake)
        clock.advance(1000)

        status, body = await refresh(http, fake, tokens["refresh_token"])

        assert (status, body["message"]) == (400, "invalid_grant: refresh token expired")
        assert (
            fake.counters.invalidations,
            fake.grant_status(tokens["refresh_token"]),
        ) == (0, "active")


async def test_unknown_refresh_token(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """A refresh token the fake never issued is invalid_grant and counted."""
    status, body = await refresh(http, fake, "awx_rt_made_up")

    assert (status, body["code"]) == (400, "invalid_grant")
    assert fake.counters.invalid_grant_responses == 1
    assert fake.grant_status("awx_rt_made_up") == "unknown"


async def test_overlapping_refresh_of_one_token_is_429(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A second refresh of a token still in flight gets 429 and changes nothing."""
    rt0 = (await connect(http, fake))["refresh_token"]
    fake.inject(Fault(FaultKind.DELAY, grant_type="refresh_token", delay=0.3))
    first = asyncio.create_task(refresh(http, fake, rt0))
    await eventually(lambda: fake.counters.faults_applied == 1)  # the first is in flight

    status, body = await refresh(http, fake, rt0)
    first_status, _ = await first

    assert (status, body["code"]) == (429, "too_many_requests")
    assert body["message"] == "too_many_requests: Concurrent token refresh is not allowed."
    assert first_status == 200
    assert (
        fake.counters.concurrent_rejections,
        fake.counters.refreshes,
        fake.counters.grace_reissues,
    ) == (1, 1, 0)
    # The in-flight mark is gone: rt0 is now simply the previous token.
    assert (await refresh(http, fake, rt0))[0] == 200


# -- faults ------------------------------------------------------------------------------


async def test_drop_after_commit_closes_without_a_response(
    fake: FakeAirwallex, clock: ManualClock
) -> None:
    """DROP_AFTER_COMMIT rotates, then the client gets ServerDisconnectedError, not a response."""
    async with aiohttp.ClientSession() as http:
        rt0 = (await connect(http, fake))["refresh_token"]
    fake.inject(Fault(FaultKind.DROP_AFTER_COMMIT))

    async with aiohttp.ClientSession() as http:  # a fresh connection, not a reused one
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await refresh(http, fake, rt0)
        status, _ = await refresh(http, fake, rt0)

    assert status == 200
    assert (
        fake.counters.dropped_responses,
        fake.counters.grace_reissues,
        fake.counters.faults_applied,
    ) == (1, 1, 1)


@pytest.mark.parametrize(
    ("fault", "status", "code", "committed"),
    [
        pytest.param(Fault(FaultKind.SERVER_ERROR), 503, "server_error", False, id="5xx"),
        pytest.param(
            Fault(FaultKind.SERVER_ERROR, status=502), 502, "server_error", False, id="502"
        ),
        pytest.param(
            Fault(FaultKind.SERVER_ERROR_AFTER_COMMIT), 500, "server_error", True, id="5xx-commit"
        ),
        pytest.param(Fault(FaultKind.RATE_LIMIT), 429, "too_many_requests", False, id="429"),
    ],
)
async def test_error_faults(
    fake: FakeAirwallex,
    http: aiohttp.ClientSession,
    fault: Fault,
    status: int,
    code: str,
    committed: bool,
) -> None:
    """Error faults answer their status; only the after-commit kind rotates the token."""
    rt0 = (await connect(http, fake))["refresh_token"]
    fake.inject(fault)

    got_status, body = await refresh(http, fake, rt0)
    retry_status, _ = await refresh(http, fake, rt0)

    assert (status, code) == (got_status, body["code"])
    assert retry_status == 200
    # If the fault committed, the retry presented the previous token.
    assert int(committed) == fake.counters.grace_reissues
    assert fake.counters.faults_applied == 1


async def test_rate_limit_body(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """RATE_LIMIT answers Airwallex's generic rate-limit body."""
    fake.inject(Fault(FaultKind.RATE_LIMIT))

    status, body = await refresh(http, fake, "awx_rt_anything")

    assert (
        status,
        body,
    ) == (429, {"code": "too_many_requests", "message": "Rate Limit Exceeded."})


async def test_malformed_after_commit(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """MALFORMED_AFTER_COMMIT rotates, then answers 200 with HTML."""
    rt0 = (await connect(http, fake))["refresh_token"]
    fake.inject(Fault(FaultKind.MALFORMED_AFTER_COMMIT))

    async with http.post(
        fake.token_url,
        json={
            "grant_type": "refresh_token",
            "refresh_token": rt0,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
        },
    ) as response:
        assert (response.status, response.content_type) == (200, "text/html")
        assert await response.read() == b"<html>not json"
    assert fake.counters.refreshes == 1


async def test_delay_fault_waits_real_time(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """DELAY holds the request for real seconds, then processes it normally."""
    tokens = await connect(http, fake)
    fake.inject(Fault(FaultKind.DELAY, delay=0.2))

    started = time.monotonic()
    status, _ = await refresh(http, fake, tokens["refresh_token"])

    assert status == 200
    assert time.monotonic() - started >= 0.2


async def test_faults_match_grant_type_in_fifo_order(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A refresh-only fault skips code exchanges; faults apply in order, `times` times each."""
    fake.inject(Fault(FaultKind.SERVER_ERROR, grant_type="refresh_token", status=502, times=2))
    tokens = await connect(http, fake)  # would fail if it had consumed the fault
    fake.inject(Fault(FaultKind.SERVER_ERROR, status=504))
    rt = tokens["refresh_token"]

    statuses = [(await refresh(http, fake, rt))[0] for _ in range(4)]

    assert statuses == [502, 502, 504, 200]
    assert fake.counters.faults_applied == 3


async def test_clear_faults(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """clear_faults() drops every queued fault."""
    tokens = await connect(http, fake)
    fake.inject(Fault(FaultKind.SERVER_ERROR, times=5))
    fake.clear_faults()

    assert (await refresh(http, fake, tokens["refresh_token"]))[0] == 200
    assert fake.counters.faults_applied == 0


def test_fault_validates_its_fields() -> None:
    """A Fault with an unknown grant type, zero times or a negative delay cannot be built."""
    with pytest.raises(ValueError, match="grant_type"):
        Fault(FaultKind.DELAY, grant_type="password")
    with pytest.raises(ValueError, match="times"):
        Fault(FaultKind.DELAY, times=0)
    with pytest.raises(ValueError, match="delay"):
        Fault(FaultKind.DELAY, delay=-1)


# -- revocation and expiry ---------------------------------------------------------------


async def test_disconnect_revokes_every_grant_of_the_account(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """After disconnect(), refresh is invalid_grant and the API says 401, for every grant."""
    account = fake.create_account()
    one = await connect(http, fake, account_id=account)
    two = await connect(http, fake, account_id=account)
    other = await connect(http, fake)

    assert fake.disconnect(account) == 2

    for tokens in (one, two):
        status, body = await refresh(http, fake, tokens["refresh_token"])
        assert (status, body["code"]) == (400, "invalid_grant")
        assert await call_api(http, fake, tokens["access_token"]) == (401, UNAUTHORIZED)
        assert fake.grant_status(tokens["refresh_token"]) == "revoked"
    assert (await call_api(http, fake, other["access_token"]))[0] == 200
    assert (fake.counters.disconnects, fake.counters.invalidations) == (1, 0)
    assert fake.disconnect(account) == 0
    with pytest.raises(FakeProviderError):
        fake.disconnect("acct_nobody")


async def test_disconnect_kills_unexchanged_codes(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A code issued before the user disconnected cannot be exchanged afterwards."""
    account = fake.create_account()
    code = redirect_params(fake.approve(authorize_url(fake), account_id=account))["code"]
    fake.disconnect(account)

    status, body = await exchange(http, fake, code)

    assert (status, body["message"]) == (400, "invalid_grant: authorization code revoked")


async def test_access_token_expires_with_the_clock(
    fake: FakeAirwallex, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """An access token works until access_token_ttl has passed, then gets 401."""
    access_token = (await connect(http, fake))["access_token"]
    clock.advance(299.5)
    assert (await call_api(http, fake, access_token))[0] == 200
    clock.advance(0.5)

    assert await call_api(http, fake, access_token) == (401, UNAUTHORIZED)
    assert (fake.counters.api_calls, fake.counters.api_unauthorized) == (2, 1)


async def test_send_expires_in_false_omits_lifetimes(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """send_expires_in=False leaves both lifetimes out of exchange and refresh responses."""
    async with FakeAirwallex(clock=clock, send_expires_in=False) as fake:
        tokens = await connect(http, fake)
        _, refreshed = await refresh(http, fake, tokens["refresh_token"])

    for body in (tokens, refreshed):
        assert "expires_in" not in body
        assert "refresh_token_expires_in" not in body
        assert "access_token" in body


async def test_fractional_ttls_are_sent_as_numbers(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A fractional TTL is sent as is, never rounded down to zero."""
    async with FakeAirwallex(clock=clock, access_token_ttl=0.5) as fake:
        tokens = await connect(http, fake)

    assert tokens["expires_in"] == 0.5


# -- API ---------------------------------------------------------------------------------


async def test_api_endpoints(fake: FakeAirwallex, http: aiohttp.ClientSession) -> None:
    """The account endpoint answers with and without the slash; other paths echo the call."""
    account = fake.create_account("acct_api", business_name="Api Pty")
    access_token = (await connect(http, fake, account_id=account))["access_token"]

    with_slash = await call_api(http, fake, access_token, "/api/v1/account/")
    without = await call_api(http, fake, access_token, "/api/v1/account")
    other = await call_api(http, fake, access_token, "/api/v1/balances/current", "POST")
    anonymous = await call_api(http, fake, None, "/api/v1/balances/current")

    expected_account = {
        "id": "acct_api",
        "nickname": "Api Pty",
        "status": "ACTIVE",
        "account_details": {"business_details": {"business_name": "Api Pty"}},
    }
    assert (200, expected_account) == with_slash == without
    assert (
        200,
        {"ok": True, "method": "POST", "path": "/api/v1/balances/current", "account_id": account},
    ) == other
    assert anonymous == (401, UNAUTHORIZED)
    assert (fake.counters.api_calls, fake.counters.api_unauthorized) == (4, 1)


# -- admin -------------------------------------------------------------------------------


async def test_admin_counters_and_clock(
    fake: FakeAirwallex, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """The admin endpoints expose the counters and move the shared clock."""
    await connect(http, fake)
    start = clock.now()

    counters = await admin(http, fake, "/_fake/counters")
    now = await admin(http, fake, "/_fake/clock")
    advanced = await admin(http, fake, "/_fake/clock/advance", {"seconds": 90})
    backwards = await admin(http, fake, "/_fake/clock/advance", {"seconds": -1})

    assert (200, fake.counters.as_dict()) == counters
    assert counters[1]["exchanges"] == 1
    assert (200, {"now": start}) == now
    assert (200, {"now": start + 90}) == advanced
    assert start + 90 == clock.now()
    assert backwards[0] == 400


async def test_admin_advance_needs_a_manual_clock(http: aiohttp.ClientSession) -> None:
    """Advancing a system clock over HTTP is a 400, not a crash."""
    async with FakeAirwallex() as fake:
        status, body = await admin(http, fake, "/_fake/clock/advance", {"seconds": 1})

    assert (status, body["code"]) == (400, "invalid_request")


async def test_admin_faults_approve_and_disconnect(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """A test in another process can inject faults, approve, and disconnect over HTTP."""
    _, created = await admin(http, fake, "/_fake/accounts", {"account_id": "acct_remote"})
    status, approved = await admin(
        http,
        fake,
        "/_fake/approve",
        {"authorize_url": authorize_url(fake), "account_id": created["account_id"]},
    )
    assert status == 200
    code = redirect_params(approved["redirect_url"])["code"]
    _, tokens = await exchange(http, fake, code)

    injected = await admin(
        http, fake, "/_fake/faults", {"kind": "server_error", "status": 502, "times": 1}
    )
    faulted, _ = await refresh(http, fake, tokens["refresh_token"])
    disconnected = await admin(http, fake, "/_fake/disconnect", {"account_id": "acct_remote"})
    status_after = await admin(
        http, fake, "/_fake/grant_status", {"token": tokens["refresh_token"]}
    )

    assert injected[0] == 200
    assert faulted == 502
    assert disconnected == (200, {"revoked": 1})
    assert status_after == (200, {"status": "revoked"})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/_fake/faults", {"kind": "explode"}, id="unknown-fault"),
        pytest.param("/_fake/faults", {"kind": "delay", "times": 0}, id="zero-times"),
        pytest.param("/_fake/approve", {"authorize_url": "http://x/oauth/authorize"}, id="bad-url"),
        pytest.param("/_fake/disconnect", {"account_id": "acct_nobody"}, id="unknown-account"),
        pytest.param("/_fake/disconnect", {}, id="missing-field"),
    ],
)
async def test_admin_rejects_bad_requests(
    fake: FakeAirwallex, http: aiohttp.ClientSession, path: str, body: Json
) -> None:
    """Bad admin requests are 400 invalid_request with a reason."""
    status, answer = await admin(http, fake, path, body)

    assert (status, answer["code"]) == (400, "invalid_request")
    assert answer["message"].startswith("invalid_request: ")


# -- the object itself -------------------------------------------------------------------


async def test_issued_secrets_lists_everything_issued(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """issued_secrets() covers codes, both tokens of every rotation, and the client secret."""
    code = redirect_params(fake.approve(authorize_url(fake)))["code"]
    _, first = await exchange(http, fake, code)
    _, second = await refresh(http, fake, first["refresh_token"])

    secrets_ = fake.issued_secrets()

    assert {
        code,
        first["access_token"],
        first["refresh_token"],
        second["access_token"],
        second["refresh_token"],
        fake.client_secret,
    } == secrets_
    assert fake.client_secret.startswith("fake_cs_")


async def test_lifecycle() -> None:
    """URLs need a started server; aclose() is idempotent; the repr hides the secret."""
    fake = FakeAirwallex(client_secret="s3cret")
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.base_url

    await fake.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            await fake.start()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.base_url)
        assert fake.base_url + "/oauth/token" == fake.token_url
        assert fake.base_url + "/oauth/authorize" == fake.authorize_url
        assert "s3cret" not in repr(fake)
    finally:
        await fake.aclose()
    await fake.aclose()

    with pytest.raises(RuntimeError):
        _ = fake.base_url


def test_counters_as_dict_is_a_snapshot() -> None:
    """as_dict() copies: later increments do not change an earlier snapshot."""
    counters = FakeCounters()
    snapshot = counters.as_dict()
    counters.refreshes += 1

    assert snapshot["refreshes"] == 0
    assert len(snapshot) == 18
    assert all(value == 0 for value in snapshot.values())


def test_register_redirect_uri_refuses_what_oauth_forbids() -> None:
    """Relative URIs and fragments cannot be registered."""
    fake = FakeAirwallex()

    with pytest.raises(ValueError, match="absolute"):
        fake.register_redirect_uri("/callback")
    with pytest.raises(ValueError, match="fragment"):
        fake.register_redirect_uri("http://127.0.0.1/cb#x")


async def test_hold_after_commit_rotates_then_holds_until_released(
    fake: FakeAirwallex, http: aiohttp.ClientSession
) -> None:
    """HOLD_AFTER_COMMIT rotates, keeps the client waiting, and drops it once released."""
    tokens = await connect(http, fake)
    fake.inject(Fault(FaultKind.HOLD_AFTER_COMMIT, grant_type="refresh_token"))
    request = asyncio.ensure_future(refresh(http, fake, tokens["refresh_token"]))
    await eventually(lambda: fake.counters.held_responses == 1)
    assert 1 == fake.counters.refreshes  # committed while the client waits
    assert not request.done()
    fake.release_held()
    with pytest.raises(aiohttp.ClientError):
        await request
    assert 1 == fake.counters.dropped_responses


def test_file_clock_is_shared_through_its_file(tmp_path: Path) -> None:
    """Two FileClock objects on one path see each other's advance at once."""
    writer = FileClock.create(tmp_path / "clock", start=100.0)
    reader = FileClock(tmp_path / "clock")
    assert 100.0 == reader.now()
    assert 400.5 == writer.advance(300.5)
    assert 400.5 == reader.now()
    with pytest.raises(ValueError, match="back in time"):
        writer.advance(-1)
    writer.close()
    reader.close()
