"""The typing checks in ``tests/typing`` stay in mypy's path, so CI's ``mypy`` step runs them."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_checks_the_public_api_typing_file() -> None:
    """``.ci/run`` runs bare ``mypy``: what it checks is ``[tool.mypy] files``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "tests/typing" in config["files"]
    assert config["strict"] is True
    checked = (ROOT / "tests" / "typing" / "public_api.py").read_text()
    assert checked.count("assert_type(") >= 30
