"""The quickstart's hook, run as users run it: once per connection, not once per refresh."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


@pytest.mark.slow
async def test_quickstart_prints_connected_once(tmp_path: Path) -> None:
    """examples/quickstart.py refreshes (a 600 s clock jump) yet prints "connected" once."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(QUICKSTART),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert 0 == process.returncode, err.decode()
    text = out.decode()
    assert 1 == text.count(" is connected to account "), text
    assert "account: " in text
