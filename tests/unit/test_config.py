"""Configuration: endpoints, timing policy and credentials."""

from __future__ import annotations

import math

import pytest

from awx_connection import Config, ConfigurationError, Endpoints, Environment, Secret, TimingPolicy

SECRET = "cs_TopSecretValue"
REDIRECT = "https://platform.example/awx/callback"


# -- Endpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (
            Environment.PRODUCTION,
            (
                "https://airwallex.com/oauth/authorize",
                "https://api.airwallex.com/oauth/token",
                "https://api.airwallex.com",
            ),
        ),
        (
            Environment.SANDBOX,
            (
                "https://demo.airwallex.com/oauth/authorize",
                "https://api-demo.airwallex.com/oauth/token",
                "https://api-demo.airwallex.com",
            ),
        ),
    ],
)
def test_for_environment_uses_the_documented_hosts(
    environment: Environment, expected: tuple[str, str, str]
) -> None:
    """Each environment preset points at the hosts Airwallex documents."""
    endpoints = Endpoints.for_environment(environment)

    assert expected == (endpoints.authorize_url, endpoints.token_url, endpoints.api_base_url)


@pytest.mark.parametrize("base", ["https://api.sandbox.airwallex.com", "https://proxy.test/"])
def test_from_base_url_puts_every_endpoint_on_one_host(base: str) -> None:
    """from_base_url derives all three URLs from one base, ignoring a trailing slash."""
    endpoints = Endpoints.from_base_url(base)
    root = base.rstrip("/")

    assert (f"{root}/oauth/authorize", f"{root}/oauth/token", root) == (
        endpoints.authorize_url,
        endpoints.token_url,
        endpoints.api_base_url,
    )


@pytest.mark.parametrize(
    "base", ["http://api.example.com", "http://10.0.0.5:8080", "http://localhost.evil.test"]
)
def test_plain_http_to_a_remote_host_is_refused(base: str) -> None:
    """http:// to a non-loopback host is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="not HTTPS"):
        Endpoints.from_base_url(base)


@pytest.mark.parametrize("base", ["http://api.example.com", "http://10.0.0.5:8080"])
def test_plain_http_is_allowed_with_allow_insecure(base: str) -> None:
    """allow_insecure=True lets http:// through for any host."""
    assert f"{base}/oauth/token" == Endpoints.from_base_url(base, allow_insecure=True).token_url


@pytest.mark.parametrize(
    "base",
    ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:8443", "http://127.5.6.7"],
)
def test_plain_http_to_loopback_is_accepted(base: str) -> None:
    """http:// to a loopback address (the fake provider) needs no opt-in."""
    assert f"{base}/oauth/token" == Endpoints.from_base_url(base).token_url


@pytest.mark.parametrize(
    "url",
    ["/oauth/token", "api.airwallex.com/oauth/token", "ftp://api.example.com", "https://", ""],
    ids=["relative", "no-scheme", "ftp", "no-host", "empty"],
)
def test_non_absolute_http_url_is_refused(url: str) -> None:
    """Every endpoint must be an absolute http(s) URL."""
    with pytest.raises(ConfigurationError, match="token_url"):
        Endpoints(
            authorize_url="https://airwallex.com/oauth/authorize",
            token_url=url,
            api_base_url="https://api.airwallex.com",
            allow_insecure=True,
        )


# -- TimingPolicy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("skew_max", -1.0),
        ("skew_ratio", -0.1),
        ("state_ttl", 0.0),
        ("request_timeout", -5.0),
        ("request_timeout", math.nan),
        ("max_attempts", 0),
        ("backoff_base", -0.25),
        ("backoff_max", -1.0),
        ("grace", 0.0),
        ("grace_margin", -1.0),
        ("default_access_ttl", -300.0),
        ("default_refresh_ttl", 0.0),
        ("max_response_bytes", -1),
    ],
)
def test_timing_policy_refuses_out_of_range_values(field: str, value: float) -> None:
    """A negative (or, where it must be positive, zero or NaN) duration is refused."""
    with pytest.raises(ConfigurationError, match=field):
        TimingPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("grace", "margin"), [(60.0, 60.0), (60.0, 90.0), (10.0, 15.0)])
def test_grace_margin_must_be_below_grace(grace: float, margin: float) -> None:
    """grace_margin >= grace would leave no retry window, so it is refused."""
    with pytest.raises(ConfigurationError, match="grace_margin"):
        TimingPolicy(grace=grace, grace_margin=margin)


@pytest.mark.parametrize("ratio", [1.0, 1.5])
def test_skew_ratio_must_be_below_one(ratio: float) -> None:
    """A skew ratio of 1 or more would refresh before the token is even issued."""
    with pytest.raises(ConfigurationError, match="skew_ratio"):
        TimingPolicy(skew_ratio=ratio)


@pytest.mark.parametrize(
    ("lifetime", "expected"), [(300.0, 60.0), (100.0, 20.0), (3600.0, 60.0), (0.0, 0.0)]
)
def test_skew_is_the_smaller_of_60s_and_20_percent(lifetime: float, expected: float) -> None:
    """skew(lifetime) = min(60, 0.2 * lifetime) with the defaults."""
    assert expected == pytest.approx(TimingPolicy().skew(lifetime))


def test_backoff_doubles_up_to_the_cap() -> None:
    """backoff(n) = base * 2**(n-1), capped at backoff_max."""
    policy = TimingPolicy(backoff_base=0.5, backoff_max=3.0)

    assert [0.5, 1.0, 2.0, 3.0, 3.0] == [policy.backoff(n) for n in range(1, 6)]


def test_default_timing_policy_is_valid() -> None:
    """The defaults follow Airwallex: 60 s grace, 5-minute access, 60-day refresh."""
    policy = TimingPolicy()

    assert (60.0, 300.0, 60 * 86400.0) == (
        policy.grace,
        policy.default_access_ttl,
        policy.default_refresh_ttl,
    )


# -- Config ---------------------------------------------------------------------------------


def make_config(**changes: object) -> Config:
    fields: dict[str, object] = {
        "client_id": "client_1",
        "client_secret": SECRET,
        "redirect_uri": REDIRECT,
    }
    return Config(**{**fields, **changes})  # type: ignore[arg-type]


def test_client_secret_is_wrapped_and_masked() -> None:
    """A plain-string client_secret becomes a Secret and stays out of repr(config)."""
    config = make_config()

    assert Secret(SECRET) == config.client_secret
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


def test_client_secret_given_as_secret_is_kept() -> None:
    """A client_secret already wrapped is used as is."""
    secret = Secret(SECRET)

    assert secret is make_config(client_secret=secret).client_secret


def test_config_defaults_to_sandbox() -> None:
    """Without endpoints, Config talks to the sandbox."""
    assert Endpoints.for_environment(Environment.SANDBOX) == make_config().endpoints


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"client_id": ""}, "client_id"),
        ({"client_secret": ""}, "client_secret"),
        ({"client_secret": Secret("")}, "client_secret"),
        ({"redirect_uri": "/callback"}, "redirect_uri"),
    ],
    ids=["client-id", "client-secret", "client-secret-wrapped", "relative-redirect"],
)
def test_config_refuses_empty_credentials_and_bad_redirect(
    changes: dict[str, object], match: str
) -> None:
    """An empty client id or secret, or a relative redirect_uri, is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=match):
        make_config(**changes)


def test_config_accepts_http_redirect_uri() -> None:
    """The redirect URI is the platform's own; plain http (local development) is allowed."""
    assert "http://dev.local/cb" == make_config(redirect_uri="http://dev.local/cb").redirect_uri


def test_default_scopes_are_a_tuple() -> None:
    """default_scopes accepts any iterable of names and stores a tuple."""
    assert ("a", "b") == make_config(default_scopes=["a", "b"]).default_scopes


def test_default_scopes_as_one_string_is_refused() -> None:
    """One string is refused rather than split into single characters."""
    with pytest.raises(ConfigurationError, match="default_scopes"):
        make_config(default_scopes="a b")


# -- Config.from_env -------------------------------------------------------------------------

ENV = {
    "AWX_CLIENT_ID": "client_env",
    "AWX_CLIENT_SECRET": SECRET,
    "AWX_REDIRECT_URI": REDIRECT,
}


def test_from_env_reads_the_variables() -> None:
    """The three required variables fill the config; sandbox hosts and no scopes by default."""
    config = Config.from_env(ENV)

    assert ("client_env", Secret(SECRET), REDIRECT, (), "https://api-demo.airwallex.com") == (
        config.client_id,
        config.client_secret,
        config.redirect_uri,
        config.default_scopes,
        config.endpoints.api_base_url,
    )


@pytest.mark.parametrize(
    "missing",
    [("AWX_CLIENT_ID",), ("AWX_CLIENT_SECRET",), ("AWX_CLIENT_ID", "AWX_REDIRECT_URI")],
)
def test_from_env_names_missing_variables(missing: tuple[str, ...]) -> None:
    """Missing (or empty) variables are named in the error, which never shows the secret."""
    env = {**ENV, **dict.fromkeys(missing[1:], "")}
    del env[missing[0]]

    with pytest.raises(ConfigurationError) as info:
        Config.from_env(env)

    for name in missing:
        assert name in str(info.value)
    assert SECRET not in str(info.value)


def test_from_env_missing_everything_names_all_three() -> None:
    """An empty environment names every required variable."""
    with pytest.raises(ConfigurationError) as info:
        Config.from_env({})

    assert "AWX_CLIENT_ID, AWX_CLIENT_SECRET, AWX_REDIRECT_URI" in str(info.value)


def test_from_env_production() -> None:
    """AWX_ENVIRONMENT=production selects the production hosts."""
    config = Config.from_env({**ENV, "AWX_ENVIRONMENT": "production"})

    assert Endpoints.for_environment(Environment.PRODUCTION) == config.endpoints


@pytest.mark.parametrize("value", ["prod", "staging", "PRODUCTION"])
def test_from_env_refuses_an_unknown_environment(value: str) -> None:
    """An AWX_ENVIRONMENT other than production/sandbox is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="AWX_ENVIRONMENT") as info:
        Config.from_env({**ENV, "AWX_ENVIRONMENT": value})

    assert SECRET not in str(info.value)


def test_from_env_base_url_overrides_the_environment() -> None:
    """AWX_BASE_URL puts every endpoint on that host, whatever AWX_ENVIRONMENT says."""
    config = Config.from_env(
        {**ENV, "AWX_ENVIRONMENT": "production", "AWX_BASE_URL": "http://127.0.0.1:8089/"}
    )

    assert Endpoints.from_base_url("http://127.0.0.1:8089") == config.endpoints


def test_from_env_insecure_base_url_is_refused() -> None:
    """AWX_BASE_URL on plain http to a remote host is refused like any endpoint."""
    with pytest.raises(ConfigurationError, match="not HTTPS") as info:
        Config.from_env({**ENV, "AWX_BASE_URL": "http://proxy.example.com"})

    assert SECRET not in str(info.value)


def test_from_env_splits_scopes_on_whitespace() -> None:
    """AWX_SCOPES is split on whitespace into default_scopes."""
    config = Config.from_env({**ENV, "AWX_SCOPES": " r:awx_action:balances_view  w:x\t"})

    assert ("r:awx_action:balances_view", "w:x") == config.default_scopes


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an argument, from_env reads os.environ."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWX_ENVIRONMENT", raising=False)
    monkeypatch.delenv("AWX_BASE_URL", raising=False)
    monkeypatch.delenv("AWX_SCOPES", raising=False)

    assert Config.from_env(ENV) == Config.from_env()


def test_fragment_in_an_endpoint_is_refused() -> None:
    """RFC 6749 section 3.1: endpoint URLs carry no fragment."""
    with pytest.raises(ConfigurationError, match="fragment"):
        Endpoints.from_base_url("https://api.example.com/#x")
