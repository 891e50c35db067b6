"""A smoke run of the benchmark suite, so it cannot rot (numbers not asserted)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.mark.slow
async def test_benchmarks_smoke() -> None:
    """`benchmarks/run.py --smoke --json` prints one well-formed line per benchmark."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RUN),
        "--smoke",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert 0 == process.returncode, err.decode()
    lines = [orjson.loads(line) for line in out.splitlines()]
    names = {line["name"] for line in lines}
    assert {"access_token_us", "coalesce_posts_100", "transition_us", "hot_path_ratio"} == names
    for line in lines:
        assert {"name", "value", "unit", "target", "ok"} <= set(line)
        assert isinstance(line["ok"], bool)
    coalesce = next(line for line in lines if line["name"] == "coalesce_posts_100")
    assert 1 == coalesce["value"]  # correctness, not speed: one POST for 100 callers
