"""`[gateway.xdp]`: the feature manager that gives each Child SA its slot in the XDP/TC
programs (gateway/dataplane/xdp.py) and takes it back.

    ChildSaEstablished  a slot (counters, MSS clamp) for the new Child SA
    ChildSaRekeyed      the new SPIs join the Child's slot (its counters carry on); the
                        old SPIs leave it with the old inbound SA, REKEY_GRACE after its
                        Delete
    ChildSaDeleted      the SPIs (with the Child's last SA: the slot) go
    IkeSaDeleted        whatever the IKE SA still had, gone

list-sas shows each Child SA's slot and the programs' counters for it (`xdp`), `stats`
the programs' verdict counters, and DPD counts the ESP packets they saw arrive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.records import ChildRecord, IkeRecord
from ike import events as ev

if TYPE_CHECKING:
    from gateway.dataplane.xdp import XdpAdapter


class XdpSlots(Feature):
    def __init__(self, daemon: Host, adapter: XdpAdapter) -> None:
        self.d = daemon
        self.adapter = adapter
        self._old: dict[int, int] = {}  # old spi_in after a rekey -> its IKE SA

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.ChildSaEstablished():
                child = self._child(event.ike_sa, event.spi_in)
                if child is not None:
                    placed = self.adapter.child_established(event, offloaded=_offloaded(child))
                    child.xdp_slot = placed.slot if placed is not None else None
            case ev.ChildSaRekeyed():
                child = self._child(event.ike_sa, event.new.spi_in)
                if child is not None and child.xdp_slot is not None:
                    self.adapter.child_rekeyed(
                        event.old_spi_in, event.new, offloaded=_offloaded(child)
                    )
                    self._old[event.old_spi_in] = event.ike_sa
            case ev.ChildSaDeleted():
                if self._old.pop(event.spi_in, None) is not None:
                    self.d.later(self.d.rekey_grace, self.adapter.child_deleted, event.spi_in)
                else:
                    self.adapter.child_deleted(event.spi_in)
            case ev.IkeSaDeleted():
                for old, ike_sa in list(self._old.items()):
                    if ike_sa == event.ike_sa:
                        del self._old[old]
                        self.adapter.child_deleted(old)
                for child in ctx.children:
                    self.adapter.child_deleted(child.spi_in)

    def _child(self, ike_sa: int, spi_in: int) -> ChildRecord | None:
        record = self.d.sas.get(ike_sa)
        return record.child(spi_in) if record is not None else None

    def stop(self) -> None:
        self._old.clear()
        for spi_in in self.adapter.known_spis():  # current and old SAs alike
            self.adapter.child_deleted(spi_in)

    def child_row(self, child: ChildRecord) -> Mapping[str, Any]:
        # the XDP/TC programs' per-slot counters (docs/bpf.md)
        return {"xdp": self.adapter.child_counters(child.spi_in)}

    def stats(self) -> Mapping[str, Any]:
        return {"xdp": self.adapter.verdict_rows()}

    def packets_in(self, record: IkeRecord, child: ChildRecord) -> int:
        xdp = self.adapter.child_counters(child.spi_in)
        return xdp["esp_in_packets"] if xdp else 0


def _offloaded(child: ChildRecord) -> bool:
    return child.installed is not None and child.installed.offload != "none"
