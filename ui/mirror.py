"""The console's copy of the gateway's SA table, kept current by incremental list-sas.

A poll sends the cursor of the last reply (`{"epoch", "version"}`, None at first and
after every reconnect) and gets back only what changed after it (docs/daemon.md,
"Incremental list-sas"): the full rows of the IKE SAs that changed, the handles of those
removed, and the four counters of every other Child SA. A reply marked `full` carries
the whole table and replaces the copy: the gateway sends one when it cannot answer
from the cursor (first poll, a restarted daemon, a cursor older than the removals it
remembers, the workers' supervisor). So a missed reply or a reconnect costs one full
poll, never a stale row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SaMirror:
    """The SA table as the last replies left it; `apply()` returns list-sas rows."""

    def __init__(self) -> None:
        self.cursor: dict[str, Any] | None = None
        self._rows: dict[Any, dict[str, Any]] = {}  # (worker, ike_sa) -> list-sas row
        self._children: dict[tuple[Any, str], dict[str, Any]] = {}  # (ike_sa, spi_in)

    def reset(self) -> None:
        """Forget everything: the next poll asks for the whole table."""
        self.cursor = None
        self._rows.clear()
        self._children.clear()

    def apply(self, reply: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One incremental reply onto the copy. A malformed one raises ValueError and
        leaves the copy reset (the next poll is a full one)."""
        try:
            return self._apply(reply)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.reset()
            raise ValueError(f"malformed incremental list-sas reply: {exc}") from None

    def _apply(self, reply: Mapping[str, Any]) -> list[dict[str, Any]]:
        epoch, version = reply["epoch"], reply["version"]
        if not isinstance(epoch, str) or isinstance(version, bool) or not isinstance(version, int):
            raise ValueError("epoch/version of the wrong type")
        sas, removed, counters = reply["sas"], reply["removed"], reply["counters"]
        if not isinstance(sas, list) or not isinstance(removed, list):
            raise ValueError("sas/removed are not lists")
        if not isinstance(counters, list):
            raise ValueError("counters is not a list")
        reshaped = bool(sas or removed)
        if reply["full"] is True:
            self._rows.clear()
            reshaped = True
        for ike_sa in removed:
            self._rows.pop((None, ike_sa), None)
        for i, row in enumerate(sas):
            if not isinstance(row, dict):
                raise ValueError("a row is not an object")
            ike_sa = row.get("ike_sa")
            self._rows[(row.get("worker"), ike_sa) if ike_sa is not None else ("row", i)] = row
        if reshaped:
            self._children = {
                (row.get("ike_sa"), str(child.get("spi_in"))): child
                for row in self._rows.values()
                if row.get("worker") is None
                for child in row.get("children") or ()
                if isinstance(child, dict)
            }
        children = self._children
        for ike_sa, spi_in, b_in, b_out, p_in, p_out in counters:
            child = children.get((ike_sa, spi_in))
            if child is not None:
                child["bytes_in"], child["bytes_out"] = b_in, b_out
                child["packets_in"], child["packets_out"] = p_in, p_out
        self.cursor = {"epoch": epoch, "version": version}
        return list(self._rows.values())
