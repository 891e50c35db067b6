"""
The state machine drawn from :data:`~awx_connection.TRANSITIONS`, as Mermaid.

The picture is generated, never drawn by hand, so it cannot drift from the
code (docs/state-machine.md embeds the output and a test compares them).
It is drawn to be read, not only to be complete: nine states and thirteen
rows with one arrow per source state gave seven ``reauthorize`` arrows
crossing the page over their labels. So:

- the state groups are boxes: ``authorizing`` (pending, authorized),
  ``usable`` (active, refreshing) and ``terminal`` (the five ends), which
  together hold each state once;
- a row whose sources fill a whole box starts from the box (``revoke`` from
  ``usable``, not from active and from refreshing);
- a row that still starts from more than one place (``reauthorize``, from
  ``authorizing`` and ``terminal``) goes through one join: short unlabelled
  arrows into it, one labelled arrow out;
- rows with the same ends share one arrow and list their triggers
  (``refreshed, refresh_aborted``).
"""

from __future__ import annotations

from collections.abc import Iterable

from ._states import AUTHORIZING, TERMINAL_STATES, TRANSITIONS, USABLE, ConnectionState

__all__ = ["BOXES", "mermaid"]

#: The diagram's boxes, by name: disjoint groups that together hold every state.
BOXES: tuple[tuple[str, frozenset[ConnectionState]], ...] = (
    ("authorizing", AUTHORIZING),
    ("usable", USABLE),
    ("terminal", TERMINAL_STATES),
)


def _box_of(state: ConnectionState) -> str | None:
    return next((name for name, members in BOXES if state in members), None)


def _starts(sources: Iterable[ConnectionState], dest: ConnectionState) -> tuple[str, ...]:
    """Where the arrows of a row begin: a box its sources fill, else each source."""
    left = set(sources)
    starts: list[str] = []
    for name, members in BOXES:
        if len(members) > 1 and members <= left:
            starts.append(name)
            left -= members
    starts.extend(state.value for state in ConnectionState if state in left)
    if len(starts) == 1 and _box_of(dest) == starts[0]:
        # An arrow from a box into its own member reads as nothing: draw
        # the states instead (a join is outside every box, so it may).
        return tuple(state.value for state in ConnectionState if state in set(sources))
    return tuple(starts)


def mermaid() -> str:
    """
    Render :data:`~awx_connection.TRANSITIONS` as a Mermaid ``stateDiagram-v2``.

    ``awx-connection diagram`` prints it; docs/state-machine.md embeds it.
    An arrow from a box means "from each state in it".
    """
    first: dict[str, list[str]] = {}
    arrows: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for row in TRANSITIONS:
        if not row.sources:
            box = _box_of(row.dest) or ""
            first.setdefault(box, []).append(f"[*] --> {row.dest.value}: {row.trigger.value}")
            continue
        key = (_starts(row.sources, row.dest), row.dest.value)
        labels = arrows.setdefault(key, [])
        if row.trigger.value not in labels:
            labels.append(row.trigger.value)

    lines = ["stateDiagram-v2"]
    lines.extend(f"    {line}" for line in first.get("", []))
    for name, members in BOXES:
        lines.append(f"    state {name} {{")
        lines.extend(f"        {line}" for line in first.get(name, []))
        lines.extend(f"        {state.value}" for state in ConnectionState if state in members)
        lines.append("    }")
    for (starts, dest), labels in arrows.items():
        label = ", ".join(labels)
        if len(starts) == 1:
            lines.append(f"    {starts[0]} --> {dest}: {label}")
            continue
        join = f"{labels[0]}_from"
        lines.append(f"    state {join} <<join>>")
        lines.extend(f"    {start} --> {join}" for start in starts)
        lines.append(f"    {join} --> {dest}: {label}")
    return "\n".join(lines) + "\n"
