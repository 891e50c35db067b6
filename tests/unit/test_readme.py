"""The README's commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains the README's test command verbatim."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(
        line for line in readme.splitlines() if "pip install" in line and "[test]" in line
    )
    assert command in ci


def test_readme_opens_with_two_commands() -> None:
    """The first code block installs and runs the demo, then the tests."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert 2 == len(commands)
    assert commands[0].endswith("awx-connection demo")
    assert commands[1].endswith("pytest")
