"""Token-response parsing and the Secret wrapper, tested directly."""

from __future__ import annotations

import re

import attrs
import pytest

from awx_connection import MalformedResponseError, Secret, TimingPolicy, TokenSet
from awx_connection._tokens import parse_token_response

NOW = 1_000.0
TIMING = TimingPolicy(default_access_ttl=111.0, default_refresh_ttl=2222.0)
BASE: dict[str, object] = {"access_token": "at_1", "refresh_token": "rt_1"}


def parse(payload: object, generation: int = 3) -> TokenSet:
    return parse_token_response(payload, now=NOW, timing=TIMING, generation=generation)


# -- parse_token_response ---------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [None, [], ["access_token", "refresh_token"], "at_1", 42, b"{}", ({"access_token": "x"},)],
    ids=["none", "empty-list", "list", "str", "int", "bytes", "tuple"],
)
def test_non_dict_payload_is_malformed(payload: object) -> None:
    """Anything but a dict is a MalformedResponseError, never a TypeError or KeyError."""
    with pytest.raises(MalformedResponseError) as info:
        parse(payload)

    assert (200, True) == (info.value.status, info.value.maybe_processed)


def test_minimal_payload_uses_defaults() -> None:
    """Only the two tokens given: lifetimes from the policy, no scope, generation kept."""
    assert TokenSet(
        access_token=Secret("at_1"),
        refresh_token=Secret("rt_1"),
        access_expires_at=NOW + 111.0,
        refresh_expires_at=NOW + 2222.0,
        issued_at=NOW,
        generation=3,
        scope=(),
    ) == parse(BASE)


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [(300, 300.0), (299.5, 299.5), (1, 1.0), (0.5, 0.5), (86400, 86400.0)],
)
def test_access_lifetime_accepts_int_and_float(expires_in: float, expected: float) -> None:
    """Integer and float expires_in up to one day are used as given, as floats."""
    tokens = parse({**BASE, "expires_in": expires_in})

    assert expected == tokens.access_lifetime
    assert isinstance(tokens.access_expires_at, float)


@pytest.mark.parametrize(
    ("value", "expected"), [(90 * 86400, 90 * 86400.0), (400 * 86400.0, 400 * 86400.0)]
)
def test_refresh_lifetime_up_to_400_days(value: float, expected: float) -> None:
    """refresh_token_expires_in is honoured up to the 400-day bound inclusive."""
    tokens = parse({**BASE, "refresh_token_expires_in": value})

    assert NOW + expected == tokens.refresh_expires_at


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_in", float("nan")),
        ("expires_in", float("inf")),
        ("expires_in", -0.5),
        ("expires_in", 86400.5),
        ("expires_in", [300]),
        ("expires_in", {"seconds": 300}),
        ("refresh_token_expires_in", float("nan")),
        ("refresh_token_expires_in", 400 * 86400 + 0.5),
        ("refresh_token_expires_in", True),
    ],
)
def test_absurd_lifetime_is_malformed_not_defaulted(field: str, value: object) -> None:
    """A present but wrong lifetime is refused; defaults apply only to absent fields."""
    with pytest.raises(MalformedResponseError, match=field):
        parse({**BASE, field: value})


@pytest.mark.parametrize("field", ["expires_in", "refresh_token_expires_in"])
def test_null_lifetime_counts_as_absent(field: str) -> None:
    """A JSON null lifetime falls back to the timing policy default."""
    tokens = parse({**BASE, field: None})

    assert (NOW + 111.0, NOW + 2222.0) == (tokens.access_expires_at, tokens.refresh_expires_at)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("", ()),
        ("   ", ()),
        ("a", ("a",)),
        ("a b", ("a", "b")),
        ("  r:awx_action:balances_view\tw:x  \n", ("r:awx_action:balances_view", "w:x")),
        (None, ()),
    ],
    ids=["empty", "blank", "one", "two", "whitespace", "null"],
)
def test_scope_string_is_split_on_whitespace(scope: object, expected: tuple[str, ...]) -> None:
    """scope is a space-delimited string; blank or null gives no scopes."""
    assert expected == parse({**BASE, "scope": scope}).scope


@pytest.mark.parametrize("scope", [["a", "b"], 7, {"a": 1}, False])
def test_non_string_scope_is_malformed(scope: object) -> None:
    """A scope that is not a string is refused."""
    with pytest.raises(MalformedResponseError, match="scope"):
        parse({**BASE, "scope": scope})


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", None])
def test_bearer_token_type_in_any_case_is_accepted(token_type: object) -> None:
    """token_type is compared case-insensitively, and null counts as absent."""
    assert Secret("at_1") == parse({**BASE, "token_type": token_type}).access_token


@pytest.mark.parametrize("token_type", ["mac", "", "Bearer ", 1, ["Bearer"]])
def test_other_token_type_is_malformed(token_type: object) -> None:
    """Any token_type but Bearer is refused."""
    with pytest.raises(MalformedResponseError, match="token_type"):
        parse({**BASE, "token_type": token_type})


@pytest.mark.parametrize("field", ["access_token", "refresh_token"])
@pytest.mark.parametrize("value", ["", " \t", None, 5, b"rt", "x" * (16 * 1024 + 1)])
def test_bad_token_value_is_malformed(field: str, value: object) -> None:
    """Each token must be a non-blank string of at most 16 KiB."""
    with pytest.raises(MalformedResponseError, match=field) as info:
        parse({**BASE, field: value})

    assert "x" * 100 not in str(info.value)


def test_token_of_exactly_16_kib_is_accepted() -> None:
    """The token length bound is inclusive."""
    token = "x" * (16 * 1024)

    assert Secret(token) == parse({**BASE, "access_token": token}).access_token


def test_malformed_message_never_contains_the_tokens() -> None:
    """A rejected response's error does not carry the (valid) tokens it held."""
    payload = {"access_token": "at_LEAK", "refresh_token": "rt_LEAK", "expires_in": -1}

    with pytest.raises(MalformedResponseError) as info:
        parse(payload)

    assert "LEAK" not in str(info.value) + repr(info.value)


def test_access_lifetime_is_expiry_minus_issue_time() -> None:
    """TokenSet.access_lifetime is access_expires_at - issued_at."""
    tokens = attrs.evolve(parse(BASE), issued_at=500.0, access_expires_at=800.0)

    assert 300.0 == tokens.access_lifetime


def test_token_set_repr_masks_tokens() -> None:
    """A TokenSet's repr shows neither token."""
    tokens = parse({"access_token": "at_SHOWN?", "refresh_token": "rt_SHOWN?"})

    assert "SHOWN" not in repr(tokens)


# -- Secret -------------------------------------------------------------------------------


def test_secret_is_masked_in_repr_str_and_format() -> None:
    """repr, str and f-strings of a Secret never show its value."""
    secret = Secret("hunter2")

    assert ("Secret('********')", "********", "x=********") == (
        repr(secret),
        str(secret),
        f"x={secret}",
    )


def test_secret_reveal_returns_the_value() -> None:
    """reveal() is the one way to the raw value."""
    assert "hunter2" == Secret("hunter2").reveal()


def test_secret_equality_and_hash_follow_the_value() -> None:
    """Secrets with equal values are equal and hash alike; different values differ."""
    assert Secret("a") == Secret("a")
    assert hash(Secret("a")) == hash(Secret("a"))
    assert Secret("a") != Secret("b")
    assert 1 == len({Secret("a"), Secret("a")})


def test_secret_is_not_equal_to_its_plain_string() -> None:
    """A Secret never compares equal to a str, in either order."""
    assert Secret("a") != "a"
    assert "a" != Secret("a")


def test_secret_fingerprint_is_ten_stable_hex_digits() -> None:
    """fingerprint is 10 lowercase hex digits, stable per value, different across values."""
    fingerprint = Secret("hunter2").fingerprint

    assert re.fullmatch(r"[0-9a-f]{10}", fingerprint)
    # sha256("hunter2") starts f52fbd32b2: the tag is pinned, not process-random.
    assert "f52fbd32b2" == fingerprint
    assert fingerprint == Secret("hunter2").fingerprint
    assert fingerprint != Secret("hunter3").fingerprint
    assert "hunter2" not in fingerprint


def test_secret_truthiness_follows_emptiness() -> None:
    """An empty Secret is falsy, any other truthy."""
    assert (False, True) == (bool(Secret("")), bool(Secret("x")))
