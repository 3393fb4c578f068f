"""The daemon's model: the SA table (what list-sas shows, one `IkeRecord` per IKE SA with
its `ChildRecord`s), the gateway-wide `Totals`, and the `Attempt`s of our initiations.

The records are the one model every feature manager reads. Who writes what:

    IkeRecord     created by `SaTable.ensure` (an initiation, or the first event of an SA
                  the peer started); its IKE fields by gateway/daemon/ike_sas.py
    ChildRecord   created and removed by the data plane's feature (gateway/daemon/
                  children.py: a Child SA is recorded once it is installed), its
                  `xdp_slot` by gateway/daemon/xdpslots.py
    Totals        counted by the feature whose event it is (gateway/daemon/tally.py for
                  the engine's events, children.py for install failures and offload
                  fallbacks); traffic of Child SAs that are gone: gateway/daemon/traffic.py
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from gateway.dataplane.base import Counters, Installed


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
    # old inbound SAs kept after a rekey until their Delete + REKEY_GRACE (children.py)
    retiring: list[Installed] = field(default_factory=list)
    # what the Child's SAs that are gone counted (read as each one went: traffic.py)
    carried: Counters = field(default_factory=Counters)
    # counter reads started before this Child was recorded: their tables may hold a
    # slot's previous user, so its counters come from later reads only (traffic.py)
    counter_epoch: int = 0


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
    virtual_ips: tuple[str, ...] = ()  # given to the peer (responder) or to us (initiator)
    eap_identity: str = ""  # what the peer (or we) proved with EAP
    eap_method: str = ""

    def child(self, spi_in: int) -> ChildRecord | None:
        """The Child SA whose current inbound SPI is `spi_in`."""
        return next((c for c in self.children if c.spi_in == spi_in), None)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One initiation of ours that keyingtries covers (start_action, `ctl initiate`,
    dpd_action restart, close_action start): attempt 1 is the first."""

    connection: str
    child: str | None
    attempt: int
    more: tuple[str, ...] = ()  # Children to request over the IKE SA once it is up


@dataclass(slots=True)
class Totals:
    handshakes: int = 0
    auth_failures: int = 0
    dpd_failures: int = 0
    rekeys: int = 0
    reauths: int = 0  # IKE SAs that replaced an older one of the same peer (§2.8.3)
    redirects: int = 0  # IKEv2 redirects followed (initiator) and sent (responder)
    ike_rekeys: int = 0
    install_failures: int = 0
    engine_errors: int = 0  # exceptions out of the engine on network input (a bug)
    # installs/rekeys/moves where offload = "auto" got less from the kernel, per
    # "connection.child"
    offload_fallbacks: dict[str, int] = field(default_factory=dict)


class SaTable(dict[int, IkeRecord]):
    """ike_sa handle -> IkeRecord, in the order the SAs appeared.

    Change tracking for incremental list-sas (`list-sas` with `since`, backend.py): the
    table has an `epoch` (this daemon run) and a `version` that every change moves on.
    A record added or removed through the dict is recorded as such; a change inside a
    record is recorded by `touch()` (the core touches an event's IKE SA after the
    features handled it; commands that change a record outside an event touch it
    themselves). Removals are remembered for the last REMOVALS_KEPT of them; a client
    whose cursor is older than that (`forgotten`) gets the whole table again."""

    REMOVALS_KEPT: Final = 65536

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.epoch = secrets.token_hex(8)
        self.version = 0
        self.forgotten = 0  # removals at or below this version are no longer remembered
        self._changed: dict[int, int] = {}  # ike_sa -> version of its last change
        self._removed: dict[int, int] = {}  # ike_sa -> version of its removal

    def ensure(self, ike_sa: int, connection: str, initiator: bool) -> IkeRecord:
        """The record of `ike_sa`, made (CONNECTING) if it has none yet."""
        record = self.get(ike_sa)
        if record is None:
            record = IkeRecord(ike_sa, connection, "CONNECTING", initiator, self.clock())
            self[ike_sa] = record
        return record

    def touch(self, ike_sa: int) -> None:
        """The record of `ike_sa` changed (no-op for an SA not in the table)."""
        if ike_sa in self:
            self.version += 1
            self._changed[ike_sa] = self.version

    def __setitem__(self, ike_sa: int, record: IkeRecord) -> None:
        super().__setitem__(ike_sa, record)
        self._removed.pop(ike_sa, None)
        self.touch(ike_sa)

    def __delitem__(self, ike_sa: int) -> None:
        super().__delitem__(ike_sa)
        self._gone(ike_sa)

    def pop(self, ike_sa: int, *default: IkeRecord | None) -> IkeRecord | None:  # type: ignore[override]
        present = ike_sa in self
        record = super().pop(ike_sa, *default)
        if present:
            self._gone(ike_sa)
        return record

    def clear(self) -> None:
        for ike_sa in list(self):
            del self[ike_sa]

    def _gone(self, ike_sa: int) -> None:
        self.version += 1
        self._changed.pop(ike_sa, None)
        self._removed[ike_sa] = self.version
        while len(self._removed) > self.REMOVALS_KEPT:
            oldest = next(iter(self._removed))
            self.forgotten = self._removed.pop(oldest)

    def changes(self, since: int) -> tuple[list[IkeRecord], list[int]]:
        """(records changed after version `since`, ike_sa handles removed after it)."""
        changed = [self[i] for i, v in self._changed.items() if v > since]
        removed = [i for i, v in self._removed.items() if v > since]
        return changed, removed

    def of(self, connection: str) -> list[IkeRecord]:
        return [r for r in self.values() if r.connection == connection]

    def children(self) -> Iterator[tuple[IkeRecord, ChildRecord]]:
        for record in self.values():
            for child in record.children:
                yield record, child

    def has_child(self, connection: str, child: str) -> bool:
        """Some IKE SA of `connection` carries a Child SA of Child config `child`."""
        return any(r.connection == connection and c.name == child for r, c in self.children())
