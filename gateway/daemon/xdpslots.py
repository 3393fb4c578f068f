"""`[gateway.xdp]`: the feature manager that gives each Child SA its slot in the XDP/TC
programs (gateway/dataplane/xdp.py) and takes it back.

    ChildSaEstablished  a slot (counters, MSS clamp) for the new Child SA; a route-based
                        Child's LAN prefixes are its routes, not its (0.0.0.0/0) selectors
    ChildSaRekeyed      the new SPIs join the Child's slot (its counters carry on); the
                        old SPIs leave it with the old inbound SA, REKEY_GRACE after its
                        Delete
    ChildSaDeleted      an old SA's SPIs go; the Child's current SA: the Child ends,
                        every SPI of its slot goes with the slot, whose final counts
                        go to gateway/daemon/traffic.py
    IkeSaDeleted        whatever the IKE SA still had, gone (final counts kept too)

list-sas shows each Child SA's slot and the programs' counters for it (`xdp`) and the
CPU its ESP is steered to (`cpu`); `stats` the programs' verdict counters (`xdp`), the
ESP steered per CPU (`xdp_steered`) and the slot space (`xdp_slots`); DPD counts the
ESP packets they saw arrive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.records import ChildRecord, IkeRecord
from ike import events as ev

if TYPE_CHECKING:
    from gateway.dataplane.xdp import SlotFinal, XdpAdapter


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
                    placed = self.adapter.child_established(
                        event,
                        offloaded=_offloaded(child),
                        lan_prefixes=self._lan_prefixes(event.connection, event.child),
                    )
                    child.xdp_slot = placed.slot if placed is not None else None
            case ev.ChildSaRekeyed():
                child = self._child(event.ike_sa, event.new.spi_in)
                if child is not None and child.xdp_slot is not None:
                    self.adapter.child_rekeyed(
                        event.old_spi_in,
                        event.new,
                        offloaded=_offloaded(child),
                        lan_prefixes=self._lan_prefixes(event.connection, event.child),
                    )
                    self._old[event.old_spi_in] = event.ike_sa
            case ev.ChildSaDeleted():
                if self._old.pop(event.spi_in, None) is not None:
                    self.d.later(self.d.rekey_grace, self._deleted, event.spi_in)
                else:  # the Child ends: its slot (with any old SPI in its grace) goes
                    self._released(self.adapter.child_ended(event.spi_in))
            case ev.IkeSaDeleted():
                for old, ike_sa in list(self._old.items()):
                    if ike_sa == event.ike_sa:
                        del self._old[old]
                for child in ctx.children:
                    self._released(self.adapter.child_ended(child.spi_in))

    def _deleted(self, spi_in: int) -> None:
        """An old SA's grace is over: its SPIs leave the slot (the Child lives on)."""
        self._released(self.adapter.child_deleted(spi_in))

    def _released(self, final: SlotFinal | None) -> None:
        if final is not None:
            self.d.traffic.slot_released(final.connection, final.child, final.counters)

    def _lan_prefixes(self, connection: str, child: str) -> tuple[str, ...] | None:
        """A route-based Child's routes stand for its selectors (which may be 0.0.0.0/0)."""
        conn = self.d.config.connection(connection)
        config = conn.child(child) if conn is not None else None
        return config.route_prefixes if config is not None and config.route_based else None

    def _child(self, ike_sa: int, spi_in: int) -> ChildRecord | None:
        record = self.d.sas.get(ike_sa)
        return record.child(spi_in) if record is not None else None

    def stop(self) -> None:
        self._old.clear()
        for spi_in in self.adapter.known_spis():  # current and old SAs alike
            self.adapter.child_deleted(spi_in)

    def child_row(self, child: ChildRecord) -> Mapping[str, Any]:
        # the XDP/TC programs' per-slot counters (docs/bpf.md) and the steering CPU
        return {
            "xdp": self.d.traffic.slot_row(child),  # from the last counter read
            "cpu": self.adapter.slot_cpu(child.spi_in),
        }

    def stats(self) -> Mapping[str, Any]:
        return {
            "xdp": self.adapter.verdict_rows(),
            "xdp_steered": {str(cpu): n for cpu, n in self.adapter.steered().items()},
            "xdp_slots": self.adapter.slot_usage(),
            "mss_clamped": self.adapter.mss_clamped(),
        }

    def packets_in(self, record: IkeRecord, child: ChildRecord) -> int:
        xdp = self.adapter.child_counters(child.spi_in)
        return xdp["esp_in_packets"] if xdp else 0


def _offloaded(child: ChildRecord) -> bool:
    return child.installed is not None and child.installed.offload != "none"
