"""
Issue 16's workflow end to end, across processes (examples/workflow_relay.py):
connected -> onboarding started -> account webhook -> feature enabled;
revoked -> reconnect link -> connected again. The relay and the partner's
JetStream consumer are separate processes; the example SIGKILLs each once
at the worst moment, and ``--chaos`` kills them at random moments as well.
The partner's own database must end with each effect exactly once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "workflow_relay.py"
FINAL = (
    "partner's view of customer-7: status=connected onboarding_started=1 "
    "feature_enabled=1 connects=2 reconnect_emails=1"
)


async def run_example(tmp_path: Path, nats_url: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "AWX_NATS": nats_url},
    )
    out, err = await asyncio.wait_for(process.communicate(), 110)
    assert 0 == process.returncode, err.decode() + logs_of(tmp_path)
    return out.decode()


def logs_of(directory: Path) -> str:
    """The relay's and the consumer's logs, for a failure's message."""
    return "".join(path.read_text() for path in directory.glob("*.log"))


@pytest.mark.timeout(60)
async def test_the_workflow_survives_a_sigkill_of_each_process(
    tmp_path: Path, nats_url: str
) -> None:
    """Every step happens once, though each process was killed once mid-workflow."""
    out = await run_example(tmp_path, nats_url)
    steps = [
        "partner: onboarding started",
        "[SIGKILL partner consumer, restarted]",
        "partner: feature enabled",
        "[SIGKILL relay, restarted]",
        "partner: reconnect link sent: https://partner.example/airwallex/reconnect?customer=customer-7",
        "partner: customer-7 connected again",
        FINAL + "; SIGKILLs: 2",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, out
    assert sorted(positions) == positions, out
    partner_log = (tmp_path / "workflow-partner.log").read_text()
    assert 1 == partner_log.count("onboarding started for customer-7"), partner_log
    assert 1 == partner_log.count("feature enabled for customer-7"), partner_log
    assert 1 == partner_log.count("reconnect link sent to customer-7"), partner_log


@pytest.mark.timeout(120)
async def test_the_workflow_survives_random_sigkills(tmp_path: Path, nats_url: str) -> None:
    """Killed at random moments too, the partner still ends with each effect once."""
    out = await run_example(tmp_path, nats_url, "--chaos", "16")
    assert FINAL in out, out
    kills = int(out.rsplit("SIGKILLs: ", 1)[1])
    assert kills >= 3, out  # two are the workflow's own
