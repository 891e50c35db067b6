"""``awx-connection diagram``: the state machine as Mermaid, generated from the transition table."""

from __future__ import annotations

import argparse
import sys

from .._states import mermaid
from ._exits import EXIT_OK

__all__ = ["diagram"]


def diagram(_args: argparse.Namespace) -> int:
    """Print the diagram (it ends with a newline of its own)."""
    sys.stdout.write(mermaid())
    return EXIT_OK
