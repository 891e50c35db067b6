"""Regenerate the generated parts of the docs: ``python docs/_generate.py``."""

from __future__ import annotations

import re
from pathlib import Path

from awx_connection import mermaid
from awx_connection._states import TRANSITIONS

PAGE = Path(__file__).parent / "state-machine.md"
ARCHITECTURE = Path(__file__).parent / "architecture.md"

TABLE = re.compile(
    r"(<!-- BEGIN GENERATED TABLE[^>]*-->\n).*?(<!-- END GENERATED TABLE -->)", flags=re.S
)


def transition_table() -> str:
    """
    The transition table as Markdown: every row with its intent, guard,
    effects and action, rendered from ``TRANSITIONS`` itself (the rows the
    machine runs).
    """
    lines = [
        "| trigger | from | to | intent | guard | effects | action |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in TRANSITIONS:
        sources = ", ".join(f"`{s.value}`" for s in row.sources) or "(new)"
        guard = f"`{row.guard.name}`: {row.guard.doc}" if row.guard else ""
        effects = ", ".join(f"{effect.value} `{field}`" for field, effect in row.effects)
        action = "" if row.action.value == "none" else f"`{row.action.value}`"
        lines.append(
            f"| `{row.trigger.value}` | {sources} | `{row.dest.value}` | `{row.intent.value}` "
            f"| {guard} | {effects} | {action} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    page = PAGE.read_text()
    page = re.sub(
        r"(<!-- BEGIN GENERATED DIAGRAM[^>]*-->\n```mermaid\n).*?"
        r"(```\n<!-- END GENERATED DIAGRAM -->)",
        lambda m: m.group(1) + mermaid() + m.group(2),
        page,
        flags=re.S,
    )
    PAGE.write_text(page)
    architecture = ARCHITECTURE.read_text()
    ARCHITECTURE.write_text(
        TABLE.sub(lambda m: m.group(1) + transition_table() + m.group(2), architecture)
    )


if __name__ == "__main__":
    main()
