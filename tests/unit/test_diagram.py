"""
The generated state diagram says exactly what the transition table says.

The picture is simplified (boxes for the state groups, one join for
``reauthorize``, shared arrows for rows with the same ends), so these tests
read it back: every arrow, expanded from its box or join, is a row of
``TRANSITIONS``, and every row is drawn.
"""

from __future__ import annotations

import re

from awx_connection import TRANSITIONS, ConnectionState, mermaid

ARROW = re.compile(r"^(?P<start>\S+) --> (?P<end>\S+?)(?:: (?P<labels>.+))?$")


def read_back(text: str) -> tuple[set[tuple[str | None, str, str]], dict[str, set[str]]]:
    """The ``(source or None, trigger, dest)`` triples *text* draws, and its boxes."""
    boxes: dict[str, set[str]] = {}
    joins: set[str] = set()
    into: dict[str, list[str]] = {}
    drawn: set[tuple[str | None, str, str]] = set()
    box: str | None = None
    arrows: list[tuple[str, str, list[str]]] = []
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    for line in (line.strip() for line in lines[1:]):
        if match := re.fullmatch(r"state (\w+) \{", line):
            box = match.group(1)
            boxes[box] = set()
        elif line == "}":
            box = None
        elif match := re.fullmatch(r"state (\w+) <<join>>", line):
            joins.add(match.group(1))
        elif match := ARROW.match(line):
            labels = match["labels"].split(", ") if match["labels"] else []
            arrows.append((match["start"], match["end"], labels))
        elif box is not None and re.fullmatch(r"\w+", line):
            boxes[box].add(line)
        else:
            raise AssertionError(f"unexpected diagram line: {line!r}")

    def states(end: str) -> set[str]:
        return boxes.get(end, {end})

    for start, end, labels in arrows:
        if end in joins:
            assert not labels, "arrows into a join carry no label"
            into.setdefault(end, []).append(start)
            continue
        assert end not in boxes, "arrows end at a state, never at a box"
        if start in joins:
            starts = into[start]  # a join stands outside every box
        else:
            starts = [start]
            assert start not in boxes or end not in boxes[start], (
                f"an arrow from box {start} into its own member {end}"
            )
        for label in labels:
            for each in starts:
                if each == "[*]":
                    drawn.add((None, label, end))
                else:
                    drawn |= {(source, label, end) for source in states(each)}
    return drawn, boxes


def test_every_row_is_drawn_and_nothing_else() -> None:
    expected = {
        (source.value if source else None, row.trigger.value, row.dest.value)
        for row in TRANSITIONS
        for source in (row.sources or (None,))
    }
    drawn, _ = read_back(mermaid())
    assert drawn == expected


def test_each_state_is_in_one_box() -> None:
    _, boxes = read_back(mermaid())
    placed = [state for members in boxes.values() for state in members]
    assert sorted(placed) == sorted(state.value for state in ConnectionState)


def test_the_picture_is_simpler_than_the_table() -> None:
    """Fewer arrows than (source, row) pairs: the point of the boxes and the join."""
    text = mermaid()
    arrows = [line for line in text.splitlines() if "-->" in line]
    labelled = [line for line in arrows if ": " in line]
    pairs = sum(max(1, len(row.sources)) for row in TRANSITIONS)
    assert pairs == 20
    assert len(arrows) <= 14
    # One labelled arrow for reauthorize, however many states it leaves.
    assert sum("reauthorize" in line for line in labelled) == 1
