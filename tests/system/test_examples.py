"""Every example runs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

#: Services that listen until stopped: tests/system/test_guides.py starts them
#: with their guide's commands (tests/system/test_flask_example.py, flask_app.py
#: with docs/sync.md's) and drives them over HTTP.
SERVICES = {"aiohttp_app.py", "flask_app.py"}

EXAMPLES = sorted(
    path
    for path in (Path(__file__).resolve().parents[2] / "examples").glob("*.py")
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
