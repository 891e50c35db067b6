"""
The chaos soak's smoke mode (``benchmarks/soak.py --smoke --json``), so the
soak cannot rot between long runs, and so every change runs at least one
of each fault against real processes on both stores.

Smoke is tiny (6 connections, 2 worker processes, 8 rounds per store) but
still injects every fault kind, SIGKILLs a worker mid-round and another
while the provider holds a committed rotation, stops one gracefully
(SIGTERM) while the provider holds a committed rotation, takes the store
away mid-round and right after the provider rotated, disconnects and
reconnects a customer, and SIGKILLs the durable consumer. It must end with
no reused refresh token, no invalidated or unexpectedly revoked connection,
no lost event, nothing stuck, no secret in any log and no untyped error.
The second run is orphan mode (``--orphans``): nothing touches a
connection left ``refreshing``, so only the library's own resumer saves it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.postgres]

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"

MUST_BE_ZERO = (
    "reuse_violations",
    "invalidated",
    "revoked_unexpected",
    "lost_events",
    "stuck_connections",
    "secrets_in_logs",
    "untyped_errors",
)
FAULTS = {
    "drop_after_commit",
    "server_error",
    "server_error_after_commit",
    "rate_limit",
    "delay",
    "malformed_after_commit",
    "sigkill",
    "hold_after_commit_kill",
    "disconnect",
    "consumer_sigkill",
    "store_outage",
    "store_outage_after_commit",
    "sigterm_mid_rotation",
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("orphans", [False, True], ids=["settling", "orphans"])
async def test_soak_smoke(postgres_dsn: str, orphans: bool) -> None:
    """Both stores survive every kind of chaos once, and the report says so."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SOAK),
        "--smoke",
        "--json",
        *(["--orphans"] if orphans else []),
        "--postgres",
        postgres_dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            # SIGTERM first: the soak then kills its children and drops its schema.
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
    report = orjson.loads(out)
    summary = {k: v for k, v in report.items() if k != "stores"}

    assert {"sqlite", "postgres"} == set(report["stores"]), summary
    assert report["orphans"] is orphans
    for key in (
        "connections",
        "processes",
        "simulated_hours",
        "faults",
        "refreshes",
        "revoked_expected",
        "rotations_discarded",
        "seconds",
        *MUST_BE_ZERO,
    ):
        assert key in report, key
    assert [] == report["errors"], report["errors"]
    for kind, store in report["stores"].items():
        assert FAULTS <= set(store["faults"]), kind
        assert all(store["faults"][name] > 0 for name in FAULTS), (kind, store["faults"])
        assert store["refreshes"] > 0, kind
        assert store["reconnects"] > 0, kind
        assert store["events"]["consumer_runs"] == 2, kind
        for key in MUST_BE_ZERO:
            assert 0 == store[key], (kind, key, store.get("findings"), report.get("logs"))
    assert FAULTS <= set(report["faults"])
    for key in MUST_BE_ZERO:
        assert 0 == report[key], (key, summary)
    assert report["revoked_expected"] > 0
    assert report["seconds"] < 60
    assert report["ok"] is True
    assert 0 == process.returncode, err.decode()[-3000:]
