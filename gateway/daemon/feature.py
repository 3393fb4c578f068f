"""The feature managers' hook interface (faucet's valve_* managers): each concern of the
daemon is one class, registered once, that the core loops over.

For every engine event the core builds one `EventContext` (the event's IKE SA record
and its Child SA records as they were when the event arrived) and calls `on_event` of
each registered feature, in the order `Daemon.__init__` registers them (gateway/daemon/core.py). A
feature may answer with another event that stands in for the one it got: the data plane
refusing a Child SA turns ChildSaEstablished into ChildSaFailed, and the features after
it (and the control requests waiting for an outcome) see the failure.

The other hooks let a feature add to what the daemon shows without the core knowing the
feature: its columns of a Child SA's list-sas row, its part of `stats`, the inbound
packets it counted for a Child SA (asked when a DPD check is due), and its own start and
stop. Every hook has a default that does nothing, so a feature writes only what it uses.

A new feature (route-based tunnels, updown hooks, address pools, offload, per-SA
counters, INITIAL_CONTACT handling) is one subclass of `Feature`, registered there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.daemon.records import ChildRecord, IkeRecord
    from ike.events import Event


@dataclass(frozen=True, slots=True)
class EventContext:
    """What the daemon knew when an engine event arrived (the same for every feature)."""

    sa: IkeRecord | None  # the event's IKE SA (None: not recorded, e.g. a new responder SA)
    state: str | None  # its state at that moment ("CONNECTING", "ESTABLISHED", ...)
    children: tuple[ChildRecord, ...]  # its Child SAs at that moment


class Feature:
    """One concern of the daemon. Override the hooks it needs."""

    def on_event(self, event: Event, ctx: EventContext) -> Event | None:
        """React to one engine event; return an event to stand in for it, or None."""
        return None

    async def start(self) -> None:
        """The daemon is starting (after the data plane, before the start actions)."""

    def stop(self) -> None:
        """The daemon is stopping (its IKE SAs are deleted): undo what is installed."""

    def child_row(self, child: ChildRecord) -> Mapping[str, Any]:
        """This feature's fields of the Child SA's list-sas row."""
        return {}

    def stats(self) -> Mapping[str, Any]:
        """This feature's fields of `stats`."""
        return {}

    def packets_in(self, record: IkeRecord, child: ChildRecord) -> int:
        """Inbound packets this feature counted for the Child SA (DPD: a Child SA with
        traffic needs no check)."""
        return 0
