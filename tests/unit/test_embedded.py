"""The embedded-components code's pure parts: expiry, env, argument checks, the value."""

from __future__ import annotations

import pytest

from awx_connection import EmbeddedAuthorization, InvalidArgumentError, Secret
from awx_connection._embedded import CODE_LIFETIME, _check_scopes, _expiry, components_env


def test_expiry_follows_the_response_when_it_says() -> None:
    """expires_in (seconds) or expires_at (Airwallex's ISO form) win over the assumption."""
    assert (1030.0, False) == _expiry({"expires_in": 30}, 1000.0)
    when = _expiry({"expires_at": "2026-05-12T00:00:00+0000"}, 0.0)
    assert (1778544000.0, False) == when


@pytest.mark.parametrize(
    "body", [{}, {"expires_in": True}, {"expires_in": -5}, {"expires_at": "soon"}]
)
def test_expiry_falls_back_to_the_documented_30_seconds(body: dict[str, object]) -> None:
    """No usable expiry: 30 s from when the request was sent, flagged as assumed."""
    assert (1000.0 + CODE_LIFETIME, True) == _expiry(body, 1000.0)
    assert 30.0 == CODE_LIFETIME


def test_env_is_prod_only_for_the_production_api_host() -> None:
    assert "prod" == components_env("https://api.airwallex.com")
    assert "demo" == components_env("https://api-demo.airwallex.com")
    assert "demo" == components_env("https://api.sandbox.airwallex.com")
    assert "demo" == components_env("http://127.0.0.1:8080")


def test_scopes_must_be_a_list_of_plain_strings() -> None:
    assert ("onboarding:write",) == _check_scopes(["onboarding:write"])
    for bad in ("onboarding:write", [], [""], ["a b"], [None], 7):
        with pytest.raises(InvalidArgumentError):
            _check_scopes(bad)  # type: ignore[arg-type]


def test_the_value_masks_its_secrets_and_reveals_them_only_for_init() -> None:
    value = EmbeddedAuthorization(
        connection_id="conn_1",
        auth_code=Secret("awx_ec_code"),
        code_verifier=Secret("pkce-secret" * 5),
        client_id="client",
        env="demo",
        scopes=("onboarding:write",),
        expires_at=30.0,
        expiry_assumed=True,
    )
    assert "awx_ec_code" not in repr(value)
    assert "pkce-secret" not in repr(value)
    assert {
        "authCode": "awx_ec_code",
        "clientId": "client",
        "codeVerifier": "pkce-secret" * 5,
        "env": "demo",
        "enabledElements": ["onboarding"],
    } == value.init_options(enabled_elements=["onboarding"])
