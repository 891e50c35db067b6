"""
Fixtures of the store tests: what a child Python process needs to import
this checkout. The shared ones (``postgres_dsn``, ``postgres_schema``) come
from ``tests/conftest.py``, which applies to this folder too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import awx_connection


@pytest.fixture
def python_with_src() -> Callable[[str], str]:
    """
    Runs a script in a fresh interpreter importing this checkout's ``src``
    (first on PYTHONPATH) and returns what it printed; fails the test if the
    script fails. Blocking: from a coroutine, run it with ``asyncio.to_thread``.
    """
    src = str(Path(awx_connection.__file__).parents[1])
    pythonpath = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}

    def run(script: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert 0 == result.returncode, result.stderr
        return result.stdout.strip()

    return run
