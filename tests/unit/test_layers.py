"""
The house has floors, and imports only go down (docs/architecture.md).

Each module of ``awx_connection`` sits on one layer; it may import from its
own layer and the ones below, never from above. This is what lets a
newcomer read the core bottom-up (values, then decisions, then I/O, then
the jobs, then the façade) and change a lower module without reading the
upper ones. The check is on the source (every ``import``, including those
under ``TYPE_CHECKING``), so a new upward import fails here with its name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "awx_connection"

#: Bottom to top. A module not listed fails the test: place it when adding it.
LAYERS: dict[str, tuple[str, ...]] = {
    "values": (
        "_clock",
        "_config",
        "_connection",
        "_crypto",
        "_delivery",
        "_errors",
        "_events",
        "_gate",
        "_records",
        "_retry",
        "_secrets",
        "_states",
        "_text",
        "_tokens",
        "_webhooks",
    ),
    "decisions": ("_diagram", "_machine", "_paging", "_rotation"),
    "io": ("_portal", "_store", "_transport", "stores"),
    "shared": ("_core", "_live"),
    "jobs": (
        "_api",
        "_authorize",
        "_embedded",
        "_intake",
        "_keepalive",
        "_lifecycle",
        "_outbox",
        "_retention",
        "relay",
        "_rotator",
        "_statistics",
        "_writer",
    ),
    "facade": ("__init__", "_blocking", "_manager", "aiohttp", "blocking"),
    "tools": ("__main__", "cli", "instrumentation", "testing"),
}

_LEVEL = {name: level for level, names in enumerate(LAYERS.values()) for name in names}


def _top(path: Path) -> str:
    """The layer key of a module file: its first component below the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    """Top components (``_live``, ``stores``...) of the package modules *path* imports."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for a module of the package itself
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("awx_connection."):
                    found.add(node.module.split(".")[1])
                continue
            if node.level - 1 < depth:
                continue  # within its own subpackage
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("awx_connection."):
                    found.add(alias.name.split(".")[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    """A module nobody placed would escape the check below."""
    unplaced = sorted({_top(p) for p in MODULES} - _LEVEL.keys())
    assert unplaced == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path: Path) -> None:
    """No module imports from a layer above its own."""
    own = _top(path)
    upward = sorted(dep for dep in _imports(path) if _LEVEL.get(dep, -1) > _LEVEL[own])
    assert upward == [], f"{own} ({_level_name(own)}) imports from above: {upward}"


def _level_name(module: str) -> str:
    return list(LAYERS)[_LEVEL[module]]
