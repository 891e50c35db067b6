"""The docs show the machine generated from the code, and stay in sync with it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from awx_connection import TRANSITIONS, ConnectionState, mermaid

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


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "_generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_architecture_page_shows_the_table_the_machine_runs() -> None:
    """docs/architecture.md embeds the table rendered from TRANSITIONS, every row of it."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(
        r"<!-- BEGIN GENERATED TABLE[^>]*-->\n(.*?)<!-- END GENERATED TABLE -->", page, re.S
    )
    assert match is not None, "generated table markers are missing"
    generated = _generator().transition_table()
    assert generated == match.group(1)
    for row in TRANSITIONS:
        assert f"| `{row.trigger.value}` |" in generated
        if row.guard is not None:
            assert f"`{row.guard.name}`" in generated
