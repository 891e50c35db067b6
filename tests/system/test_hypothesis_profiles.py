"""
The hunt profile brings its own timeout: under ``HYPOTHESIS_PROFILE=hunt``
every Hypothesis test (``@given`` or a state machine) gets a pytest-timeout
long enough for its 2,000 examples, instead of the suite's 60 s.

Checked by collecting, not running, the tests in a subprocess: the hunt
itself is far too long for CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: Prints, per collected item, whether Hypothesis itself deems it one of its
#: tests and the timeout the item ended up with.
PROBE = """
from hypothesis.internal.detection import is_hypothesis_test

def pytest_collection_finish(session):
    for item in session.items:
        marker = item.get_closest_marker("timeout")
        hypothesis = is_hypothesis_test(getattr(item, "obj", None))
        print("PROBE", item.nodeid, hypothesis, marker.args[0] if marker else None, sep="\\t")
"""


def collected_timeouts(profile: str, tmp_path: Path) -> dict[str, tuple[bool, float | None]]:
    (tmp_path / "awx_timeout_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI=true forces the ci profile
    env |= {"HYPOTHESIS_PROFILE": profile, "PYTHONPATH": str(tmp_path)}
    files = [
        "tests/integration/test_stateful.py",
        "tests/integration/test_fuzz.py",
        "tests/integration/test_encryption.py",
    ]
    plugins = ["-p", "no:cacheprovider", "-p", "awx_timeout_probe"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *plugins, *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    found: dict[str, tuple[bool, float | None]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("PROBE\t"):
            _, nodeid, hypothesis, timeout = line.split("\t")
            found[nodeid] = (hypothesis == "True", None if timeout == "None" else float(timeout))
    return found


def test_hunt_profile_gives_hypothesis_tests_a_longer_timeout(tmp_path: Path) -> None:
    """Under hunt, exactly the Hypothesis tests get one timeout, above the 6 minutes a hunt took."""
    found = collected_timeouts("hunt", tmp_path)

    hunted = {nodeid: timeout for nodeid, (hypothesis, timeout) in found.items() if hypothesis}
    assert "tests/integration/test_stateful.py::TestConnections::runTest" in hunted
    assert any(nodeid.startswith("tests/integration/test_encryption.py::") for nodeid in hunted)
    assert len(hunted) >= 10
    (timeout,) = set(hunted.values())
    assert timeout is not None
    assert timeout >= 360
    others = [nodeid for nodeid, (hypothesis, t) in found.items() if not hypothesis and t]
    assert [] == others
    assert len(found) > len(hunted)


def test_other_profiles_keep_the_suite_timeout(tmp_path: Path) -> None:
    """Without hunt, no test gets a timeout of its own: the suite's 60 s holds."""
    found = collected_timeouts("dev", tmp_path)

    assert found
    assert [] == [nodeid for nodeid, (_, timeout) in found.items() if timeout is not None]
