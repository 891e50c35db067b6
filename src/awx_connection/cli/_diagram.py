"""``awx-connection diagram``: the state machine as Mermaid, generated from the transition table."""

from __future__ import annotations

import argparse
import sys

from .._diagram import mermaid
from ._exits import EXIT_OK
from ._output import emit_json

__all__ = ["diagram"]


def diagram(args: argparse.Namespace) -> int:
    """Print the diagram (it ends with a newline of its own), or ``{"mermaid": TEXT}``."""
    if args.json:
        emit_json({"mermaid": mermaid()})
    else:
        sys.stdout.write(mermaid())
    return EXIT_OK
