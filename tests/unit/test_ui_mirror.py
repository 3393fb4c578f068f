"""ui/mirror.py: the console's copy of the SA table under incremental list-sas replies:
changed rows replace theirs, removed ones go, counters land on the right Child SA, a
full reply replaces everything, and a malformed reply resets the copy (next poll full)."""

from __future__ import annotations

from typing import Any

import pytest

from ui.mirror import SaMirror


def row(ike_sa: int, *spis: str, state: str = "ESTABLISHED") -> dict[str, Any]:
    return {
        "ike_sa": ike_sa,
        "connection": "east",
        "state": state,
        "children": [
            {"name": "net", "spi_in": s, "bytes_in": 0, "bytes_out": 0, "packets_in": 0}
            for s in spis
        ],
    }


def reply(version: int, *, full: bool = False, **parts: Any) -> dict[str, Any]:
    return (
        {"epoch": "e1", "version": version, "full": full, "sas": [], "removed": []}
        | {"counters": []}
        | parts
    )


def test_full_then_changes_removals_and_counters() -> None:
    m = SaMirror()
    assert m.cursor is None
    rows = m.apply(reply(3, full=True, sas=[row(1, "c1"), row(2, "c2"), row(3, "c3")]))
    assert [r["ike_sa"] for r in rows] == [1, 2, 3] and m.cursor == {"epoch": "e1", "version": 3}
    rows = m.apply(
        reply(
            5,
            sas=[row(2, "c2", state="DELETING"), row(4, "c4")],
            removed=[1],
            counters=[[3, "c3", 100, 200, 1, 2], [9, "dead", 1, 1, 1, 1]],
        )
    )
    assert [(r["ike_sa"], r["state"]) for r in rows] == [
        (2, "DELETING"),
        (3, "ESTABLISHED"),
        (4, "ESTABLISHED"),
    ]
    (c3,) = rows[1]["children"]
    assert (c3["bytes_in"], c3["bytes_out"], c3["packets_in"], c3["packets_out"]) == (
        100,
        200,
        1,
        2,
    )
    assert m.cursor == {"epoch": "e1", "version": 5}
    # counters only: the same rows, new numbers
    rows = m.apply(reply(5, counters=[[3, "c3", 150, 260, 3, 4]]))
    assert rows[1]["children"][0]["bytes_in"] == 150 and len(rows) == 3


def test_a_full_reply_replaces_the_copy() -> None:
    """What a restarted daemon, a reconnect or a cursor older than the removals the
    gateway remembers gets: rows not in it are gone."""
    m = SaMirror()
    m.apply(reply(2, full=True, sas=[row(1, "c1"), row(2, "c2")]))
    rows = m.apply(reply(7, full=True, sas=[row(5, "c5")]) | {"epoch": "e2"})
    assert [r["ike_sa"] for r in rows] == [5] and m.cursor == {"epoch": "e2", "version": 7}


@pytest.mark.parametrize(
    "bad",
    [
        {"epoch": "e1"},
        reply(1) | {"version": "1"},
        reply(1) | {"sas": {}},
        reply(1) | {"counters": [[1, "c1", 5]]},
        reply(1) | {"sas": ["x"]},
        "not an object",
    ],
)
def test_a_malformed_reply_resets_the_copy(bad: Any) -> None:
    m = SaMirror()
    m.apply(reply(2, full=True, sas=[row(1, "c1")]))
    with pytest.raises(ValueError, match="malformed incremental list-sas reply"):
        m.apply(bad)
    assert m.cursor is None and m.apply(reply(3)) == []
