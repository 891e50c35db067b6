"""Every example runs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

#: Services that listen until stopped: tests/system/test_flask_example.py
#: starts flask_app.py as the docs say and drives it over HTTP.
SERVICES = {"flask_app.py"}

EXAMPLES = sorted(
    path
    for path in (Path(__file__).resolve().parent.parent / "examples").glob("*.py")
    if path.name not in SERVICES
)


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
async def test_example_runs(example: Path, tmp_path: Path) -> None:
    """The example exits 0 (run in a temporary directory so it leaves nothing behind)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(example),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert 0 == process.returncode, err.decode()
    assert out
