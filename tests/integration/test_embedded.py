"""
Embedded components: ``ConnectionManager.embedded_authorization()`` against
the fake's ``POST /api/v1/authentication/authorize``, and the code's life
after it (the browser's exchange the stand-in Airwallex.js makes, the KYC
submit that ends in ``account.active``), all over real sockets on a shared
manual clock.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from awx_connection import (
    Config,
    Connection,
    ConnectionManager,
    ConnectionRevokedError,
    ConnectionState,
    EmbeddedAuthorization,
    EmbeddedAuthorizationError,
    Endpoints,
    InvalidArgumentError,
    WebhookEvent,
    webhook_handler,
)
from awx_connection.testing import FakeAirwallex, ManualClock

S = ConnectionState
Connect = Callable[..., Awaitable[Connection]]
REDIRECT = "http://127.0.0.1:8000/airwallex/callback"
SECRET = "whsec_embedded_test"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def post(url: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    """One JSON POST, as the stand-in Airwallex.js (or a partner's server) makes it."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def redeem(fake: FakeAirwallex, code: EmbeddedAuthorization) -> tuple[int, dict[str, Any]]:
    """The browser's exchange: what ``init()`` posts with the code and the verifier."""
    options = code.init_options(enabled_elements=["kyc"])
    body = {k: options[k] for k in ("authCode", "codeVerifier", "clientId")}
    return await post(fake.base_url + "/components/v1/token", body)


async def test_success_gives_what_init_needs_and_the_browser_can_redeem_it(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """A code and its verifier as Secrets, the client id, env, a 30 s expiry; it redeems."""
    connection = await awx_connect()
    sent_at = awx_manager.clock.now()

    code = await awx_manager.embedded_authorization(connection.id)

    assert connection.id == code.connection_id
    assert awx_fake.client_id == code.client_id
    assert "demo" == code.env  # any host but api.airwallex.com
    assert ("onboarding:write",) == code.scopes
    assert code.expiry_assumed
    assert sent_at + 30.0 == code.expires_at
    assert code.auth_code.reveal().startswith("awx_ec_")
    assert code.auth_code.reveal() not in repr(code)
    assert code.code_verifier.reveal() not in repr(code)
    options = code.init_options(enabled_elements=["kyc"], locale="en")
    assert {"authCode", "clientId", "codeVerifier", "env", "enabledElements", "locale"} == set(
        options
    )
    assert 1 == awx_fake.counters.embedded_codes_issued

    status, granted = await redeem(awx_fake, code)

    assert 200 == status, granted
    assert connection.account_id == granted["account_id"]
    assert ["onboarding:write"] == granted["scopes"]
    assert 1 == awx_fake.counters.embedded_codes_redeemed
    assert code.auth_code.reveal() in awx_fake.issued_secrets()


async def test_a_reused_code_is_refused(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """Single use: the second exchange of one code fails, and each call gets a new code."""
    connection = await awx_connect()
    code = await awx_manager.embedded_authorization(connection.id)
    assert 200 == (await redeem(awx_fake, code))[0]

    status, body = await redeem(awx_fake, code)

    assert (401, "UNAUTHORIZED") == (status, body["code"])
    assert "used" in body["message"]
    another = await awx_manager.embedded_authorization(connection.id)
    assert another.auth_code != code.auth_code
    assert another.code_verifier != code.code_verifier
    assert 200 == (await redeem(awx_fake, another))[0]


async def test_a_wrong_verifier_spends_the_code(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """Bound to the challenge: another verifier fails, and the code is gone for the right one."""
    connection = await awx_connect()
    code = await awx_manager.embedded_authorization(connection.id)
    body = {"authCode": code.auth_code.reveal(), "clientId": code.client_id}

    status, refused = await post(
        awx_fake.base_url + "/components/v1/token", {**body, "codeVerifier": "x" * 64}
    )

    assert 401 == status
    assert "code_verifier does not match" in refused["message"]
    assert 401 == (await redeem(awx_fake, code))[0]
    assert 2 == awx_fake.counters.embedded_codes_refused


async def test_an_expired_code_is_refused(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_connect: Connect,
    awx_clock: ManualClock,
) -> None:
    """30 seconds of the shared clock, then AUTH_TIMEOUT: the documented Airwallex.js error."""
    connection = await awx_connect()
    code = await awx_manager.embedded_authorization(connection.id)
    assert code.expires_at <= awx_clock.now() + 30.0

    awx_clock.advance(30.0)
    status, body = await redeem(awx_fake, code)

    assert (401, "AUTH_TIMEOUT") == (status, body["code"])


async def test_a_bad_scope_is_a_typed_error_and_changes_nothing(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """An unsupported scope: 400 invalid_argument from scope, raised typed; still active."""
    connection = await awx_connect()

    with pytest.raises(EmbeddedAuthorizationError) as caught:
        await awx_manager.embedded_authorization(connection.id, scopes=["payouts:fly"])

    error = caught.value
    assert (400, "invalid_argument", "scope") == (error.status, error.code, error.source)
    assert "payouts:fly" in str(error)
    assert S.ACTIVE is (await awx_manager.get(connection.id)).state
    assert 0 == awx_fake.counters.embedded_codes_issued


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scopes": "onboarding:write"}, "list of strings"),
        ({"scopes": []}, "at least one"),
        ({"scopes": ["onboarding:write", " "]}, "without spaces"),
        ({"identity": ""}, "identity"),
        ({"on_behalf_of": "acct\r\nx-evil: 1"}, "on_behalf_of"),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_sent(
    awx_manager: ConnectionManager,
    awx_fake: FakeAirwallex,
    awx_connect: Connect,
    kwargs: dict[str, Any],
    match: str,
) -> None:
    """InvalidArgumentError, and no request reached the fake."""
    connection = await awx_connect()
    calls = awx_fake.counters.api_calls
    with pytest.raises(InvalidArgumentError, match=match):
        await awx_manager.embedded_authorization(connection.id, **kwargs)
    assert calls == awx_fake.counters.api_calls


async def test_the_fake_refuses_a_missing_challenge_in_airwallex_error_shape(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """What the library never sends, the fake still refuses as Airwallex does."""
    connection = await awx_connect()
    token = await awx_manager.access_token(connection.id)
    url = awx_fake.base_url + "/api/v1/authentication/authorize"
    bearer = {"Authorization": f"Bearer {token}"}

    status, body = await post(url, {"scope": ["onboarding:write"]}, **bearer)
    assert 400 == status
    assert {"code": "invalid_argument", "source": "code_challenge"}.items() <= body.items()
    assert {"code", "source", "message", "details"} == set(body)

    challenge = s256("v" * 64)
    status, body = await post(
        url, {"code_challenge": challenge, "scope": "onboarding:write"}, **bearer
    )
    assert (400, "scope") == (status, body["source"])

    status, body = await post(url, {"code_challenge": challenge, "scope": ["onboarding:write"]})
    assert (401, "unauthorized") == (status, body["code"])


async def test_on_behalf_of_another_account_is_forbidden(
    awx_manager: ConnectionManager, awx_connect: Connect
) -> None:
    """An OAuth connection's token speaks for its own account only (assumed: 403)."""
    connection = await awx_connect()
    with pytest.raises(EmbeddedAuthorizationError) as caught:
        await awx_manager.embedded_authorization(connection.id, on_behalf_of="acct_someone_else")
    assert (403, "x-on-behalf-of") == (caught.value.status, caught.value.source)
    own = await awx_manager.embedded_authorization(
        connection.id, on_behalf_of=connection.account_id, identity="user-7"
    )
    assert own.auth_code


async def test_a_revoked_connection_gets_no_code_and_its_codes_die(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex, awx_connect: Connect
) -> None:
    """Disconnected at Airwallex: 401, refresh refused, revoked; earlier codes stop working."""
    connection = await awx_connect()
    assert connection.account_id is not None
    before = await awx_manager.embedded_authorization(connection.id)
    token = await awx_manager.access_token(connection.id)
    awx_fake.disconnect(connection.account_id)
    status, body = await post(
        awx_fake.base_url + "/api/v1/authentication/authorize",
        {"code_challenge": s256("v" * 64), "scope": ["onboarding:write"]},
        Authorization=f"Bearer {token}",
    )
    assert 401 == status
    assert {"code", "source", "message", "details"} == set(body)

    with pytest.raises(ConnectionRevokedError):
        await awx_manager.embedded_authorization(connection.id)

    assert S.REVOKED is (await awx_manager.get(connection.id)).state
    status, body = await redeem(awx_fake, before)
    assert 401 == status
    assert "revoked" in body["message"]
    calls = awx_fake.counters.api_calls
    with pytest.raises(ConnectionRevokedError):  # known revoked: nothing is sent
        await awx_manager.embedded_authorization(connection.id)
    assert calls == awx_fake.counters.api_calls


async def test_a_401_that_a_refresh_fixes(
    awx_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The token we thought fresh is refused: one refresh, one retry, a code; still active."""
    caplog.set_level(logging.DEBUG)
    # The provider's tokens live 100 s but it does not say so; the library assumes 300 s.
    async with FakeAirwallex(
        clock=awx_clock, access_token_ttl=100, send_expires_in=False, redirect_uris=[REDIRECT]
    ) as fake:
        config = Config(
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            redirect_uri=REDIRECT,
            endpoints=Endpoints.from_base_url(fake.base_url),
            default_scopes=("account_details:read",),
        )
        async with ConnectionManager(config, clock=awx_clock, settle=False) as manager:
            request = await manager.begin_authorization()
            connection = await manager.complete_authorization(fake.approve(request.url))
            awx_clock.advance(150)

            code = await manager.embedded_authorization(connection.id)

            assert 1 == fake.counters.api_unauthorized
            assert 1 == fake.counters.refreshes
            assert 1 == fake.counters.embedded_codes_issued
            assert S.ACTIVE is (await manager.get(connection.id)).state
            assert 200 == (await redeem(fake, code))[0]
            secrets = {*fake.issued_secrets(), code.code_verifier.reveal()}
            logged = caplog.text + repr(code) + repr(manager)
            assert not [s for s in secrets if s in logged]


@pytest.fixture
async def hooked(
    awx_fake: FakeAirwallex, awx_clock: ManualClock
) -> AsyncIterator[ConnectionManager]:
    """A manager whose webhook endpoint (a real aiohttp server) the fake posts to."""
    config = Config(
        client_id=awx_fake.client_id,
        client_secret=awx_fake.client_secret,
        redirect_uri=REDIRECT,
        endpoints=Endpoints.from_base_url(awx_fake.base_url),
        default_scopes=("account_details:read",),
        webhook_secrets=(SECRET,),
    )
    async with ConnectionManager(config, clock=awx_clock) as manager:
        app = web.Application()
        app.router.add_post("/hooks", webhook_handler(manager))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            awx_fake.set_webhook(f"http://127.0.0.1:{runner.addresses[0][1]}/hooks", SECRET)
            yield manager
        finally:
            await runner.cleanup()


async def test_kyc_submit_sends_account_active_end_to_end(
    hooked: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """Code -> exchange -> KYC submit -> a signed account.active the library verifies."""
    request = await hooked.begin_authorization()
    connection = await hooked.complete_authorization(awx_fake.approve(request.url))
    seen: list[WebhookEvent] = []
    hooked.subscribe_webhooks(seen.append, names=["account.*"])
    code = await hooked.embedded_authorization(connection.id)
    status, granted = await redeem(awx_fake, code)
    assert 200 == status
    kyc = awx_fake.base_url + "/components/v1/kyc"

    status, refused = await post(kyc, {"session": granted["session"], "legal_name": "Acme"})
    assert (400, "VALIDATION_ERROR") == (status, refused["code"])
    status, done = await post(
        kyc, {"session": granted["session"], "legal_name": "Acme Pty Ltd", "country_code": "AU"}
    )
    await awx_fake.flush_webhooks()

    assert (200, "ACTIVE") == (status, done["status"])
    assert {connection.account_id: {"legal_name": "Acme Pty Ltd", "country_code": "AU"}} == (
        awx_fake.onboarded()
    )
    assert ["account.active"] == [event.name for event in seen]
    assert (connection.account_id,) == seen[0].account_ids
    assert (connection.id,) == seen[0].connection_ids
    assert "ACTIVE" == seen[0].data["status"]
