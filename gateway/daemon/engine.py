"""The daemon's side of the IKE engine (ike/): the `Engine` it drives, how it is made from
the configuration, and the InboundTraffic hook through which the engine asks whether
ESP arrived on a Child SA (DPD: a Child SA with traffic needs no check).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gateway.config.engine import engine_connection, engine_settings
from gateway.config.schema import GatewayConfig
from ike import config as ike_config
from ike import events as ev

if TYPE_CHECKING:
    from gateway.daemon.records import ChildRecord, IkeRecord, SaTable
    from ike.engine import InboundSpiAllocator


class Engine(Protocol):
    """What the daemon uses of the sans-IO IKE engine (ike/, docs/ike.md)."""

    def receive_datagram(
        self, data: bytes, addr: tuple[tuple[str, int], tuple[str, int]], now: float
    ) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def initiate(
        self, connection: str, child: str | None, now: float, *, packet_ts: Any = None
    ) -> int: ...

    def create_child_sa(
        self, ike_sa: int, child: str | None, now: float, *, packet_ts: Any = None
    ) -> None: ...

    def delete_ike_sa(self, ike_sa: int, now: float) -> None: ...

    def delete_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None: ...

    def rekey_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None: ...

    def rekey_ike_sa(self, ike_sa: int, now: float) -> None: ...

    def update_addresses(
        self, ike_sa: int, local: str | None, remote: str | None, now: float
    ) -> None: ...
    def redirect_ike_sa(self, ike_sa: int, gateway: str, now: float) -> None: ...

    def set_connections(self, connections: Sequence[ike_config.ConnectionConfig]) -> None:
        """A new connection table (reload); existing SAs keep their own connection."""

    def datagrams_to_send(self) -> Iterable[ev.Datagram]: ...

    def next_timer(self) -> float | None: ...

    def next_event(self) -> ev.Event | None: ...


def make_engine(
    config: GatewayConfig,
    spis: InboundSpiAllocator | None = None,
    traffic: Any = None,
    ike_spis: Callable[[], bytes] | None = None,
) -> Engine:
    from ike.engine import IkeEngine

    return IkeEngine(  # type: ignore[no-any-return]
        [engine_connection(c) for c in config.connections],
        spis=spis,  # [gateway.xdp]: our inbound SPIs carry the XDP counter slot
        traffic=traffic,  # ESP counters: a Child SA with traffic needs no DPD check
        ike_spis=ike_spis,  # workers: our IKE SPIs carry the worker index
        settings=engine_settings(config.gateway),
    )


class CountsInbound(Protocol):
    def packets_in(self, record: IkeRecord, child: ChildRecord) -> int: ...


class InboundTraffic:
    """The engine's InboundTraffic hook (ike/engine.py): inbound packets of a Child SA,
    as the features count them (the data plane's kernel counters, the XDP programs'
    per-slot ESP count). Asked only when a DPD check is due, for that SA's children."""

    __slots__ = ("_sas", "_features")

    def __init__(self, sas: SaTable, features: Sequence[CountsInbound]) -> None:
        self._sas = sas
        self._features = features

    def packets_in(self, ike_sa: int, spi_in: int) -> int:
        record = self._sas.get(ike_sa)
        child = record.child(spi_in) if record is not None else None
        if record is None or child is None:
            return 0  # an old SA after a rekey (retiring) or not installed
        return sum(f.packets_in(record, child) for f in self._features)


def engine_stats(engine: Any) -> dict[str, int]:
    """The engine's own counters (`stats.engine`), when it keeps any."""
    stats = getattr(engine, "stats", None)
    if stats is None or not hasattr(stats, "__slots__"):
        return {}
    return {name: int(getattr(stats, name)) for name in stats.__slots__}
