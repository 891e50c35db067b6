"""
The stores namespace and what importing it costs: no driver is imported
until its store is used (``sqlite3`` and ``asyncpg`` are lazy), and neither
is pytest until the contract suite is.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import awx_connection.stores


def test_stores_namespace_exports() -> None:
    """The namespace re-exports the stores and open_store; unknown names still fail."""
    assert ["MemoryStore", "PostgresStore", "SQLiteStore", "open_store"] == (
        awx_connection.stores.__all__
    )
    with pytest.raises(AttributeError, match="NoSuchStore"):
        _ = awx_connection.stores.NoSuchStore


def test_importing_the_package_imports_neither_driver(
    python_with_src: Callable[[str], str],
) -> None:
    """
    ``import awx_connection`` loads no store driver: ``sqlite3`` and the
    SQLite store come with the first use of ``SQLiteStore``, as ``asyncpg``
    does with ``PostgresStore``.
    """
    script = (
        "import sys, awx_connection, awx_connection.stores;"
        "before = sorted(m for m in ('sqlite3', 'asyncpg', 'awx_connection.stores._sqlite')"
        " if m in sys.modules);"
        "awx_connection.stores.SQLiteStore;"
        "print(before, 'awx_connection.stores._sqlite' in sys.modules)"
    )
    assert "[] True" == python_with_src(script)


def test_importing_stores_does_not_import_asyncpg(python_with_src: Callable[[str], str]) -> None:
    """PostgresStore is resolved lazily, so memory and SQLite users never load asyncpg."""
    script = "import sys, awx_connection.stores; print('asyncpg' in sys.modules)"
    assert "False" == python_with_src(script)


def test_the_contract_suite_imports_pytest_only_when_imported(
    python_with_src: Callable[[str], str],
) -> None:
    """
    ``import awx_connection`` and ``awx_connection.testing`` load no pytest;
    ``awx_connection.testing.store_contract`` does, and still no driver: a
    custom store's tests need neither asyncpg nor sqlite3.
    """
    script = (
        "import sys, awx_connection, awx_connection.testing, awx_connection.stores;"
        "before = 'pytest' in sys.modules;"
        "import awx_connection.testing.store_contract;"
        "drivers = sorted(m for m in ('sqlite3', 'asyncpg') if m in sys.modules);"
        "print(before, 'pytest' in sys.modules, drivers)"
    )
    assert "False True []" == python_with_src(script)
