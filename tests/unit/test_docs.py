"""The docs show the machine generated from the code, and stay in sync with it."""

from __future__ import annotations

import re
from pathlib import Path

from awx_connection import ConnectionState, mermaid

ROOT = Path(__file__).resolve().parents[2]


def generated_block(page: str) -> str:
    match = re.search(
        r"<!-- BEGIN GENERATED DIAGRAM[^>]*-->\n```mermaid\n(.*?)```\n"
        r"<!-- END GENERATED DIAGRAM -->",
        page,
        re.S,
    )
    assert match is not None, "generated diagram markers are missing"
    return match.group(1)


def test_state_machine_page_matches_code() -> None:
    """docs/state-machine.md embeds exactly `awx-connection diagram`'s output."""
    page = (ROOT / "docs" / "state-machine.md").read_text()
    assert mermaid() == generated_block(page)


def test_every_state_is_documented() -> None:
    """The states table of the docs names every state."""
    page = (ROOT / "docs" / "state-machine.md").read_text()
    for state in ConnectionState:
        assert f"| `{state.value}` |" in page
