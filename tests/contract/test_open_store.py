"""
Which store a URL names (``open_store``), and what the durable stores refuse
at construction: no keys without ``allow_plaintext``, a malformed database
URL (without ever showing its password).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from awx_connection import ConfigurationError, KeyRing
from awx_connection.stores import MemoryStore, SQLiteStore, open_store


def test_open_store_maps_urls_to_stores(tmp_path: Path) -> None:
    """memory:// and SQLAlchemy-style sqlite URLs pick their store, path and keys."""
    assert isinstance(open_store("memory://"), MemoryStore)
    relative = open_store("sqlite:///data/awx.db", allow_plaintext=True)
    assert isinstance(relative, SQLiteStore)
    assert relative.path == "data/awx.db"
    assert relative.keys is None
    keys = KeyRing.generate()
    absolute = open_store(f"sqlite:///{tmp_path}/awx.db", keys=keys)
    assert isinstance(absolute, SQLiteStore)
    assert Path(absolute.path) == tmp_path / "awx.db"
    assert Path(absolute.path).is_absolute()
    assert absolute.keys is keys


class _FakePostgresStore:
    def __init__(
        self, dsn: str, *, keys: KeyRing | None, allow_plaintext: bool, create: bool
    ) -> None:
        self.dsn = dsn
        self.keys = keys
        self.allow_plaintext = allow_plaintext
        self.create = create


@pytest.mark.parametrize("url", ["postgresql://user:pw@db:5432/awx", "postgres://db/awx"])
def test_open_store_maps_postgres_urls_to_postgres_store(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Both PostgreSQL spellings build a PostgresStore on the whole URL, with the keys."""
    fake = types.ModuleType("awx_connection.stores._postgres")
    fake.PostgresStore = _FakePostgresStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "awx_connection.stores._postgres", fake)
    keys = KeyRing.generate()
    store = open_store(url, keys=keys)
    assert isinstance(store, _FakePostgresStore)
    assert (url, keys, False, True) == (store.dsn, store.keys, store.allow_plaintext, store.create)
    plain = open_store(url, allow_plaintext=True)
    assert isinstance(plain, _FakePostgresStore)
    assert (None, True) == (plain.keys, plain.allow_plaintext)


def test_durable_stores_without_keys_refuse_unless_plaintext_is_allowed(tmp_path: Path) -> None:
    """
    A durable store without keys would write tokens in plaintext: refused at
    construction (no file created) with an error naming 'awx-connection keys
    new', unless allow_plaintext=True. The memory store is unaffected:
    nothing of it leaves the process.
    """
    from awx_connection.stores import PostgresStore

    path = tmp_path / "awx.db"
    dsn = "postgresql://app:hunter2@db/awx"
    builders: dict[str, Callable[..., object]] = {
        "SQLiteStore": lambda **allow: SQLiteStore(path, keys=None, **allow),
        "PostgresStore": lambda **allow: PostgresStore(dsn, keys=None, **allow),
        "open_store(sqlite)": lambda **allow: open_store(f"sqlite:///{path}", **allow),
        "open_store(postgresql)": lambda **allow: open_store(dsn, **allow),
    }
    for name, build in builders.items():
        for refusing in ({}, {"allow_plaintext": False}):
            with pytest.raises(ConfigurationError, match="'awx-connection keys new'") as caught:
                build(**refusing)
            assert "allow_plaintext=True" in str(caught.value), name
            assert "hunter2" not in str(caught.value), name
        assert build(allow_plaintext=True) is not None
    assert not path.exists()
    assert isinstance(open_store("memory://"), MemoryStore)


def test_open_store_without_asyncpg_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the PostgreSQL backend cannot be imported, the error says asyncpg, not the URL."""
    monkeypatch.setitem(sys.modules, "awx_connection.stores._postgres", None)
    with pytest.raises(ConfigurationError, match="asyncpg") as caught:
        open_store("postgresql://user:hunter2@db/awx")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["mysql://user:hunter2@db/awx", "sqlite:///", "sqlite://host/x.db", "awx.db", ""]
)
def test_open_store_rejects_other_urls_without_echoing_them(url: str) -> None:
    """An unsupported URL is a ConfigurationError listing the schemes, never showing credentials."""
    with pytest.raises(ConfigurationError, match=r"memory://.*sqlite:///.*postgresql://") as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://u:hunter2@h:notaport/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@h:99999/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@h1:5432,h2:x/db", "the port of host 2 is not a number"),
        # An unencoded '@' in the password: asyncpg splits at the first one.
        ("postgresql://u:hun@ter2:pw@h/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@[::1/db", "IPv6 host's '[' is not closed"),
        ("postgresql://u:hunter2@[::1]:x/db", "the port of host 1 is not a number"),
        ("postgresql://u:hunter2@h1,/db", "host 2 of the host list is empty"),
        ("postgresql://u:hunter2@h/db?sslmode", "query string is malformed"),
    ],
)
def test_a_malformed_postgres_url_is_a_configuration_error_without_the_password(
    url: str, problem: str
) -> None:
    """
    open_store() and PostgresStore() refuse a URL that asyncpg would only
    refuse in open(), with a bare ValueError quoting part of it: a
    ConfigurationError naming the problem and never the password.
    """
    from awx_connection.stores import PostgresStore

    for build in (
        lambda: open_store(url, keys=KeyRing.generate()),
        lambda: PostgresStore(url, keys=KeyRing.generate()),
    ):
        with pytest.raises(ConfigurationError, match="malformed database URL") as caught:
            build()
        assert problem in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert "ter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p%40ss@db:5432/awx",
        "postgres://db/awx",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@h1,h2:5433/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://u@h:/db",
    ],
)
def test_well_formed_postgres_urls_are_accepted(url: str) -> None:
    """What asyncpg parses (encoded passwords, IPv6, host lists, sockets) still builds a store."""
    from awx_connection.stores import PostgresStore

    assert url == PostgresStore(url, keys=KeyRing.generate()).dsn
