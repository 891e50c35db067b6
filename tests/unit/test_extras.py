"""
The install extras match the docs: ``pip install awx-connection`` brings no
PostgreSQL driver, ``[postgres]`` does and is named when it is missing,
``[fastapi]`` is everything the FastAPI example imports, and ``[test]``
holds every extra CI needs.

Read from the installed distribution's metadata (what pip resolved), not
from pyproject.toml: a fresh virtual environment per case would be the
direct check, and costs a minute each.
"""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from awx_connection import ConfigurationError
from awx_connection.stores import open_store

ROOT = Path(__file__).resolve().parent.parent.parent
INSTALL = "pip install 'awx-connection[postgres]'"


def requirements(extra: str | None) -> set[str]:
    """The distribution names *extra* adds (None: the base install), normalized."""
    found = set()
    for line in requires("awx-connection") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None:
            wanted = extra is None
        else:
            wanted = extra is not None and marker.evaluate({"extra": extra})
        if wanted:
            found.add(normalized(requirement.name))
    return found


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def test_the_base_install_has_no_postgresql_driver() -> None:
    """asyncpg is in [postgres] (and [test], for CI), never in the base requirements."""
    assert "asyncpg" not in requirements(None)
    assert {"asyncpg"} == requirements("postgres")
    assert "aiohttp" in requirements(None)  # so there is no [aiohttp] extra


def test_the_test_extra_holds_every_extra_ci_needs() -> None:
    """CI installs [test] only: it must bring what every extra the docs name brings."""
    test = requirements("test")
    for extra in ("postgres", "fastapi", "flask", "testing", "nats", "webhooks"):
        assert requirements(extra) <= test, extra


def third_party_imports(path: Path) -> set[str]:
    """The distributions a program's imports come from, but for this library and the stdlib."""
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"awx_connection"}
    owners = packages_distributions()
    return {normalized(owners[module][0]) for module in modules}


@pytest.mark.parametrize(
    ("example", "extra"),
    [("fastapi_app.py", "fastapi"), ("flask_app.py", "flask"), ("aiohttp_app.py", None)],
)
def test_each_guide_program_needs_only_its_extra(example: str, extra: str | None) -> None:
    """
    examples/fastapi_app.py imports nothing [fastapi] does not bring (it once
    needed httpx, which FastAPI does not depend on); flask_app.py nothing
    beyond [flask]; the aiohttp one, nothing beyond the base install.
    """
    have = requirements(None) | (requirements(extra) if extra else set())
    assert set() == third_party_imports(ROOT / "examples" / example) - have


@pytest.fixture
def asyncpg_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncpg cannot be imported, and the PostgreSQL store's modules are not loaded yet."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # `import asyncpg` now fails
    for name in list(sys.modules):
        if name.startswith("awx_connection.stores._postgres"):
            monkeypatch.delitem(sys.modules, name)


@pytest.mark.usefixtures("asyncpg_missing")
def test_a_postgresql_url_without_asyncpg_names_the_extra() -> None:
    """open_store(): a ConfigurationError that says which extra to install."""
    with pytest.raises(ConfigurationError) as caught:
        open_store("postgresql://app:hunter2@db/app")
    assert INSTALL in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.usefixtures("asyncpg_missing")
def test_importing_postgres_store_without_asyncpg_names_the_extra() -> None:
    """``from awx_connection.stores import PostgresStore``: still an ImportError, with the extra."""
    with pytest.raises(ImportError) as caught:
        from awx_connection.stores import PostgresStore  # noqa: F401
    assert INSTALL in str(caught.value)
    assert "asyncpg" == caught.value.name
