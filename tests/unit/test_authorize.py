"""The authorize helpers: state, PKCE, the authorize URL, and hostile callback parsing."""

from __future__ import annotations

import base64
import hashlib
import re
import string
from urllib.parse import parse_qs, urlsplit

import pytest
from multidict import MultiDict

from awx_connection import CallbackError, ConfigurationError, Secret
from awx_connection._authorize import (
    MAX_CALLBACK_CHARS,
    authorize_url,
    check_scopes,
    new_pkce_pair,
    new_state,
    parse_callback,
    state_hash,
)

BASE = "https://airwallex.example/oauth/authorize"
REDIRECT = "https://app.example/airwallex/callback?tenant=7"
UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


def build(base: str = BASE, *, sign_up: bool = False, code_challenge: str | None = None) -> str:
    """authorize_url with fixed client values."""
    return authorize_url(
        base,
        client_id="client-123",
        redirect_uri=REDIRECT,
        scopes=["r:awx_action:balances_view", "w:awx_action:transfers_edit"],
        state=Secret("the-state"),
        sign_up=sign_up,
        code_challenge=code_challenge,
    )


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


# --- authorize_url --------------------------------------------------------------


def test_authorize_url_parameters() -> None:
    """The URL carries response_type=code, client id, redirect URI, scopes and state, once each."""
    url = build()
    assert url.startswith(BASE + "?")
    assert {
        "response_type": ["code"],
        "client_id": ["client-123"],
        "redirect_uri": [REDIRECT],
        "scope": ["r:awx_action:balances_view w:awx_action:transfers_edit"],
        "state": ["the-state"],
    } == query_of(url)


def test_authorize_url_scopes_are_plus_joined() -> None:
    """Scopes are space-joined, which form-encodes as '+'."""
    raw = urlsplit(build()).query
    assert "scope=r%3Aawx_action%3Abalances_view+w%3Aawx_action%3Atransfers_edit" in raw.split("&")


def test_authorize_url_sign_up_only_when_asked() -> None:
    """sign_up=true appears only when sign_up is requested."""
    assert ["true"] == query_of(build(sign_up=True))["sign_up"]
    assert "sign_up" not in query_of(build(sign_up=False))


def test_authorize_url_pkce_only_with_a_challenge() -> None:
    """code_challenge and code_challenge_method=S256 appear only when a challenge is given."""
    with_pkce = query_of(build(code_challenge="abc_DEF-123"))
    assert (["abc_DEF-123"], ["S256"]) == (
        with_pkce["code_challenge"],
        with_pkce["code_challenge_method"],
    )
    without = query_of(build())
    assert set() == {"code_challenge", "code_challenge_method"} & without.keys()


def test_authorize_url_appends_to_an_existing_query() -> None:
    """A base URL that already has a query gets '&', keeping its own parameters."""
    url = build(BASE + "?lang=en")
    assert url.startswith(BASE + "?lang=en&response_type=code&")
    assert ["en"] == query_of(url)["lang"]


def test_authorize_url_base_ending_in_question_mark() -> None:
    """A base URL ending in a bare '?' gets no second '?', so response_type stays a parameter."""
    url = build(BASE + "?")
    assert url.startswith(BASE + "?response_type=code&")
    assert ["code"] == query_of(url)["response_type"]


# --- PKCE, state, hashing -------------------------------------------------------


def test_pkce_challenge_is_unpadded_base64url_sha256_of_verifier() -> None:
    """challenge == base64url(sha256(verifier)), unpadded; verifier: 43..128 unreserved chars."""
    verifier, challenge = new_pkce_pair()
    raw = verifier.reveal()
    expected = base64.urlsafe_b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=")
    assert expected.decode() == challenge
    assert "=" not in challenge
    assert 43 <= len(raw) <= 128
    assert set() == set(raw) - UNRESERVED


def test_pkce_rfc7636_appendix_b_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the RFC 7636 appendix B verifier, the challenge is the RFC's value."""
    rfc_verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    monkeypatch.setattr("awx_connection._authorize.secrets.token_urlsafe", lambda n: rfc_verifier)
    verifier, challenge = new_pkce_pair()
    assert Secret(rfc_verifier) == verifier
    assert "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM" == challenge


def test_pkce_pairs_differ() -> None:
    """Two PKCE pairs never share a verifier."""
    assert new_pkce_pair()[0] != new_pkce_pair()[0]


def test_new_state_is_unique_and_long() -> None:
    """1,000 draws of new_state() are distinct and each at least 43 URL-safe chars."""
    values = [new_state().reveal() for _ in range(1000)]
    assert 1000 == len(set(values))
    assert 43 <= min(len(v) for v in values)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", v) for v in values)


def test_state_hash_is_sha256_hex() -> None:
    """state_hash is the lowercase hex SHA-256 of the raw state."""
    assert "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" == state_hash(
        Secret("abc")
    )


# --- check_scopes ---------------------------------------------------------------


def test_check_scopes_accepts_a_list() -> None:
    """A list of scope names comes back as a tuple."""
    assert ("a:b", "c:d") == check_scopes(["a:b", "c:d"])


@pytest.mark.parametrize(
    "scopes",
    [
        "r:awx_action:balances_view",
        [],
        [""],
        ["a", ""],
        ["a b"],
        ["a\tb"],
        ["a\n"],
        ["a:\ud800"],
    ],
    ids=[
        "bare-string",
        "empty-list",
        "empty-scope",
        "one-empty",
        "space",
        "tab",
        "newline",
        "lone-surrogate",
    ],
)
def test_check_scopes_rejects(scopes: object) -> None:
    """A bare string, no scopes, an empty scope or whitespace in a scope: ConfigurationError."""
    with pytest.raises(ConfigurationError):
        check_scopes(scopes)  # type: ignore[arg-type]


# --- parse_callback: accepted forms ---------------------------------------------


@pytest.mark.parametrize(
    "callback",
    [
        "https://app.example/airwallex/callback?code=the-code&state=the-state",
        "https://app.example/cb?state=the-state&code=the-code#fragment",
        "/airwallex/callback?code=the-code&state=the-state",
        "code=the-code&state=the-state",
        "?code=the-code&state=the-state",
        {"code": "the-code", "state": "the-state"},
        {"code": ["the-code"], "state": ("the-state",)},
        MultiDict([("code", "the-code"), ("state", "the-state")]),
    ],
    ids=["url", "url-fragment", "path", "query", "query-with-?", "mapping", "lists", "multidict"],
)
def test_parse_callback_accepts_code(callback: str | dict[str, str]) -> None:
    """A full URL, a query string or a mapping all yield the same code and state."""
    parsed = parse_callback(callback)
    assert Secret("the-state") == parsed.state
    assert Secret("the-code") == parsed.code
    assert (None, None) == (parsed.error, parsed.error_description)


def test_parse_callback_percent_decodes() -> None:
    """Query values are percent-decoded."""
    parsed = parse_callback("?state=a%2Fb&code=c%3Dd")
    assert (Secret("a/b"), Secret("c=d")) == (parsed.state, parsed.code)


def test_parse_callback_accepts_error() -> None:
    """An error redirect gives error and error_description and no code."""
    parsed = parse_callback(
        "https://app.example/cb?state=s&error=access_denied&error_description=User+said+no"
    )
    assert (None, "access_denied", "User said no") == (
        parsed.code,
        parsed.error,
        parsed.error_description,
    )


def test_parse_callback_empty_error_becomes_unknown() -> None:
    """An empty error value is kept as the error 'unknown_error'."""
    assert "unknown_error" == parse_callback("state=s&error=").error


# --- parse_callback: rejections -------------------------------------------------


@pytest.mark.parametrize(
    "callback",
    [
        "https://app.example/cb?code=c",
        "code=c&state=",
        {"code": "c"},
        "state=s&code=c&error=access_denied",
        {"state": "s", "code": "c", "error": "e"},
        "state=s",
        "https://app.example/cb?state=s&error_description=x",
        {"state": "s"},
        "state=s&state=t&code=c",
        "state=s&code=c&code=d",
        "state=s&error=a&error=b",
        "state=s&error=a&error_description=x&error_description=y",
        {"state": ["s", "t"], "code": "c"},
        MultiDict([("state", "s"), ("state", "t"), ("code", "c")]),
        "state=s&code=",
        {"state": "s", "code": ""},
        {"state": "s", "code": None},
        {"state": "s", "code": [1]},
        {"state": "s", "code": b"c"},
        {1: "a"},
        {"state": "s", "code": "c", 1: "a"},
        {b"state": "s", "code": "c"},
    ],
    ids=[
        "no-state",
        "empty-state",
        "no-state-mapping",
        "both",
        "both-mapping",
        "neither",
        "neither-with-description",
        "neither-mapping",
        "repeated-state",
        "repeated-code",
        "repeated-error",
        "repeated-description",
        "repeated-list",
        "repeated-multidict",
        "empty-code",
        "empty-code-mapping",
        "none-value",
        "int-value",
        "bytes-value",
        "int-name",
        "int-name-beside-valid-ones",
        "bytes-name",
    ],
)
def test_parse_callback_rejects(callback: object) -> None:
    """Malformed callbacks raise CallbackError, never another exception."""
    with pytest.raises(CallbackError):
        parse_callback(callback)  # type: ignore[arg-type]


def test_parse_callback_rejects_oversized_string() -> None:
    """A callback string longer than MAX_CALLBACK_CHARS is refused before parsing."""
    padding = "x" * MAX_CALLBACK_CHARS
    with pytest.raises(CallbackError, match="longer than"):
        parse_callback(f"https://app.example/cb?state=s&code=c&junk={padding}")


def test_parse_callback_rejects_oversized_mapping() -> None:
    """A mapping whose keys and values add up past MAX_CALLBACK_CHARS is refused."""
    with pytest.raises(CallbackError, match="longer than"):
        parse_callback({"state": "s", "code": "c", "junk": ["x" * MAX_CALLBACK_CHARS]})


def test_parse_callback_accepts_just_under_the_limit() -> None:
    """A string of exactly MAX_CALLBACK_CHARS characters is still parsed."""
    head = "state=s&code=c&junk="
    parsed = parse_callback(head + "x" * (MAX_CALLBACK_CHARS - len(head)))
    assert Secret("c") == parsed.code


def test_parse_callback_cleans_error_text() -> None:
    """Non-printable characters in error texts become spaces and each is cut to 200 chars."""
    parsed = parse_callback(
        {
            "state": "s",
            "error": "bad\x00\x1b[31mred\r\nline",
            "error_description": "\u2028" + "d" * 500,
        }
    )
    assert "bad  [31mred  line" == parsed.error
    assert " " + "d" * 199 == parsed.error_description


def test_callback_repr_hides_code_and_state() -> None:
    """The parsed Callback's repr shows neither the code nor the state."""
    parsed = parse_callback("state=STATE-SECRET-VALUE&code=CODE-SECRET-VALUE")
    text = repr(parsed) + str(parsed)
    assert "STATE-SECRET-VALUE" not in text
    assert "CODE-SECRET-VALUE" not in text


def test_bare_query_with_a_question_mark_in_a_value() -> None:
    """A bare query string whose value holds a literal '?' is still a query."""
    parsed = parse_callback("state=abc&error=access_denied&error_description=why%3F?really")
    assert "access_denied" == parsed.error
    assert "abc" == parsed.state.reveal()
