"""Regenerate the generated parts of the docs: ``python docs/_generate.py``."""

from __future__ import annotations

import re
from pathlib import Path

from awx_connection import mermaid

PAGE = Path(__file__).parent / "state-machine.md"


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


if __name__ == "__main__":
    main()
