"""
Values that explain themselves: every field of Config, Endpoints and
TimingPolicy refuses a value of the wrong type when it is built, with a
ConfigurationError naming the field, instead of failing later far away
(``Config(endpoints="http://...")`` used to end in an AttributeError at the
first request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest

from awx_connection import (
    Config,
    ConfigurationError,
    Endpoints,
    Environment,
    Secret,
    TimingPolicy,
)

BASE = "http://127.0.0.1:8080"


def config(**changes: Any) -> Config:
    fields: dict[str, Any] = {
        "client_id": "client",
        "client_secret": "secret",
        "redirect_uri": "http://127.0.0.1:8000/cb",
        "endpoints": Endpoints.from_base_url(BASE),
        "default_scopes": ("account_details:read",),
    }
    return Config(**{**fields, **changes})


def endpoints(**changes: Any) -> Endpoints:
    fields: dict[str, Any] = {
        "authorize_url": f"{BASE}/oauth/authorize",
        "token_url": f"{BASE}/oauth/token",
        "api_base_url": BASE,
    }
    return Endpoints(**{**fields, **changes})


#: (builder, field name) for every field of the three classes.
FIELDS = [
    *((config, f.alias or f.name) for f in attrs.fields(Config)),
    *((endpoints, f.alias or f.name) for f in attrs.fields(Endpoints)),
    *((lambda **kw: TimingPolicy(**kw), f.alias or f.name) for f in attrs.fields(TimingPolicy)),
]
IDS = [
    f"{'Config' if b is config else 'Endpoints' if b is endpoints else 'TimingPolicy'}.{n}"
    for b, n in FIELDS
]


def test_the_defaults_build() -> None:
    """The helpers' own values are accepted (so each case below tests one wrong field)."""
    assert config().pkce is True
    assert endpoints().allow_insecure is False
    assert TimingPolicy().event_retention is not None


@pytest.mark.parametrize(("build", "name"), FIELDS, ids=IDS)
def test_an_object_of_no_expected_type_is_refused_naming_the_field(build: Any, name: str) -> None:
    """object() in any field: a ConfigurationError that names it, not a later AttributeError."""
    with pytest.raises(ConfigurationError, match=name):
        build(**{name: object()})


TEXT_FIELDS = {
    "Config.client_id",
    "Config.client_secret",
    "Config.redirect_uri",
    "Endpoints.authorize_url",
    "Endpoints.token_url",
    "Endpoints.api_base_url",
}
FLAGS = {"Config.pkce", "Endpoints.allow_insecure"}


def cases(keep: Callable[[str], bool]) -> Any:
    """The (builder, field) cases whose id passes *keep*, with their ids."""
    chosen = [(case, id_) for case, id_ in zip(FIELDS, IDS, strict=True) if keep(id_)]
    return pytest.mark.parametrize(
        ("build", "name"), [case for case, _ in chosen], ids=[id_ for _, id_ in chosen]
    )


@cases(lambda id_: id_ not in TEXT_FIELDS)
def test_a_string_where_no_string_belongs_is_refused(build: Any, name: str) -> None:
    """A URL given as endpoints, "30" as a duration, "yes" as a flag: refused at once."""
    with pytest.raises(ConfigurationError):
        build(**{name: "http://127.0.0.1:9/"})


@cases(lambda id_: id_ not in FLAGS)
def test_a_bool_is_only_a_flag(build: Any, name: str) -> None:
    """True is not a number of seconds, a URL, a client id or a list of scopes."""
    with pytest.raises(ConfigurationError):
        build(**{name: True})


@cases(lambda id_: not id_.startswith("TimingPolicy."))
def test_a_number_where_a_flag_or_text_belongs_is_refused(build: Any, name: str) -> None:
    """1 for pkce, 123 for a client id, 1 for a list of scopes: refused."""
    with pytest.raises(ConfigurationError):
        build(**{name: 1})


def test_endpoints_as_a_url_says_what_to_write_instead() -> None:
    """The commonest mistake gets the fix in its message."""
    with pytest.raises(ConfigurationError, match=r"Endpoints\.from_base_url"):
        config(endpoints="https://api-demo.airwallex.com")


def test_a_secret_of_the_wrong_type_does_not_show_its_value() -> None:
    """The message names the type, never the value, which may be a secret."""
    with pytest.raises(ConfigurationError) as info:
        config(client_secret=b"hunter2-bytes")
    assert "hunter2" not in str(info.value)
    assert "bytes" in str(info.value)
    with pytest.raises(ConfigurationError, match="webhook_secrets"):
        config(webhook_secrets=["ok", 42])


def test_right_values_of_every_kind_still_build() -> None:
    """Secrets, flags, optional durations and the environment presets are unchanged."""
    built = config(
        client_secret=Secret("s"),
        webhook_secrets=("a", Secret("b")),
        pkce=False,
        endpoints=Endpoints.for_environment(Environment.SANDBOX),
        timing=TimingPolicy(event_retention=None, prune_interval=None, resume_delay=0),
    )
    assert built.timing.event_retention is None
    assert 2 == len(built.webhook_secrets)


@pytest.mark.parametrize("name", ["event_retention", "prune_interval"])
@pytest.mark.parametrize("bad", [0, -1.0, "30d"])
def test_retention_values_are_positive_or_none(name: str, bad: object) -> None:
    """Retention and its interval: a positive number, or None for off."""
    with pytest.raises(ConfigurationError, match=name):
        TimingPolicy(**{name: bad})  # type: ignore[arg-type]
