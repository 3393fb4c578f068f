"""The daemon's SA table: what list-sas shows, one `IkeRecord` per IKE SA with its
`ChildRecord`s, and the gateway-wide `Totals`.

The records are the one model every feature manager reads. Who writes what:

    IkeRecord     created by `SaTable.ensure` (an initiation, or the first event of an SA
                  the peer started); its IKE fields by the `IkeRecords` feature below
    ChildRecord   created and removed by the data plane's feature (gateway/daemon/
                  children.py: a Child SA is recorded once it is installed), its
                  `xdp_slot` by gateway/daemon/xdpslots.py
    Totals        counted by the feature whose event it is (gateway/daemon/tally.py for
                  the engine's events, children.py for traffic of SAs that are gone)

`IkeRecords` keeps the IKE side of the table in step with the engine's events
(established, rekeyed, redirected, moved, deleted, failed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.daemon.feature import EventContext, Feature
from ike import events as ev

if TYPE_CHECKING:
    from gateway.dataplane.base import Installed


@dataclass(slots=True)
class ChildRecord:
    name: str
    state: str
    spi_in: int
    spi_out: int
    mode: str
    encap: bool
    esp_proposal: str
    local_ts: list[str]
    remote_ts: list[str]
    installed_at: float
    rekey_at: float | None = None
    expire_at: float | None = None
    installed: Installed | None = None
    xdp_slot: int | None = None  # the BPF programs' counter/clamp slot ([gateway.xdp])
    # rekey responder: the older SA whose outbound SA is still in use until the engine's
    # ChildSaOutboundSwitched (`installed` then has its inbound SA only)
    sending: Installed | None = None


@dataclass(slots=True)
class IkeRecord:
    ike_sa: int
    connection: str
    state: str
    initiator: bool
    started_at: float
    local: tuple[str, int] | None = None
    remote: tuple[str, int] | None = None
    local_id: str | None = None
    remote_id: str | None = None
    spi_i: bytes = b""
    spi_r: bytes = b""
    proposal: str | None = None
    established_at: float | None = None
    rekey_at: float | None = None
    expire_at: float | None = None
    children: list[ChildRecord] = field(default_factory=list)
    mobike: bool = False  # RFC 4555 negotiated
    additional_addrs: tuple[str, ...] = ()  # the peer's other addresses (MOBIKE)
    moving_to: str | None = None  # our UPDATE_SA_ADDRESSES to this local address is under way

    def child(self, spi_in: int) -> ChildRecord | None:
        """The Child SA whose current inbound SPI is `spi_in`."""
        return next((c for c in self.children if c.spi_in == spi_in), None)


@dataclass(slots=True)
class Totals:
    handshakes: int = 0
    auth_failures: int = 0
    dpd_failures: int = 0
    rekeys: int = 0
    redirects: int = 0  # IKEv2 redirects followed (initiator) and sent (responder)
    ike_rekeys: int = 0
    install_failures: int = 0
    engine_errors: int = 0  # exceptions out of the engine on network input (a bug)
    # counters of SAs that are gone, so gateway-wide totals never go backwards
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0


class SaTable(dict[int, IkeRecord]):
    """ike_sa handle -> IkeRecord, in the order the SAs appeared."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock

    def ensure(self, ike_sa: int, connection: str, initiator: bool) -> IkeRecord:
        """The record of `ike_sa`, made (CONNECTING) if it has none yet."""
        record = self.get(ike_sa)
        if record is None:
            record = IkeRecord(ike_sa, connection, "CONNECTING", initiator, self.clock())
            self[ike_sa] = record
        return record

    def of(self, connection: str) -> list[IkeRecord]:
        return [r for r in self.values() if r.connection == connection]

    def children(self) -> Iterator[tuple[IkeRecord, ChildRecord]]:
        for record in self.values():
            for child in record.children:
                yield record, child

    def has_child(self, connection: str, child: str) -> bool:
        """Some IKE SA of `connection` carries a Child SA of Child config `child`."""
        return any(r.connection == connection and c.name == child for r, c in self.children())


class IkeRecords(Feature):
    """The IKE side of the SA table, from the engine's events."""

    def __init__(self, sas: SaTable) -> None:
        self.sas = sas

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.IkeSaEstablished():
                r = self.sas.ensure(event.ike_sa, event.connection, event.initiator)
                r.state = "ESTABLISHED"
                r.local, r.remote = event.local, event.remote
                r.local_id, r.remote_id = event.local_id, event.remote_id
                r.spi_i, r.spi_r = event.spi_i, event.spi_r
                r.proposal = event.proposal
                r.established_at = event.time
                r.rekey_at, r.expire_at = event.rekey_at, event.expire_at
                r.mobike, r.additional_addrs = event.mobike, event.additional_addrs
            case ev.IkeSaRekeyed() if ctx.sa is not None:
                r = ctx.sa
                r.spi_i, r.spi_r = event.spi_i, event.spi_r
                r.proposal = event.proposal
                r.rekey_at, r.expire_at = event.rekey_at, event.expire_at
                if event.initiator is not None:  # the rekey's initiator is the new SA's (§2.18)
                    r.initiator = event.initiator
            case ev.IkeSaRedirected(initiator=True):
                # the attempt (or the established SA, gone already) goes on as a new
                # attempt against the new gateway: a record of its own
                old = self.sas.pop(event.ike_sa, None)
                record = self.sas.ensure(event.new_ike_sa, event.connection, True)
                if old is not None:
                    record.started_at = old.started_at  # the handshake's duration counts on
            case ev.IkeSaMigrated() if ctx.sa is not None:
                r = ctx.sa
                r.local, r.remote = event.local, event.remote
                r.additional_addrs = event.additional_addrs
                r.moving_to = None
            case ev.IkeSaMigrateFailed() if ctx.sa is not None:
                ctx.sa.moving_to = None
            case ev.AdditionalAddressesUpdated() if ctx.sa is not None:
                ctx.sa.additional_addrs = event.additional_addrs
            case ev.IkeSaDeleted() | ev.IkeSaFailed():
                self.sas.pop(event.ike_sa, None)
        return None
