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
packets it counted for a Child SA (asked when a DPD check is due), and its own start,
stop and drain (waiting, bounded, for what it still runs). Every hook has a default that
does nothing, so a feature writes only what it uses.

A feature sees the daemon as a `Host` (below): the services of the core (report,
engine calls, the pump, timers, waiters) and the small public interface of each other
feature it works with (`ChildSaApi`, `TrapApi`, `RetryApi`, `ActionApi`, `TallyApi`,
`TunnelApi`, `TrafficApi`),
so no feature imports the core or another feature's class.

A new feature (route-based tunnels, updown hooks, offload, per-SA counters,
INITIAL_CONTACT handling) is one subclass of `Feature`, registered there (as the
address pools, vips.py, the EAP users, eapusers.py, and the RADIUS relay, radius.py, are).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config.schema import ConnectionSection, GatewayConfig
    from gateway.control.server import ControlServer
    from gateway.daemon.engine import Engine
    from gateway.daemon.records import Attempt, ChildRecord, IkeRecord, SaTable, Totals
    from gateway.dataplane.base import Counters, Dataplane, TrapKey
    from gateway.dataplane.xdp import XdpAdapter
    from gateway.transport import UdpTransport
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

    def prepare(self, events: Sequence[Event]) -> None:
        """The events of one pump round, before on_event sees them one by one: a feature
        may do their kernel work in one batch here (Child SAs: one netlink send) and
        take each result in on_event. What it does must keep the order of effects that
        on_event alone would give."""

    async def start(self) -> None:
        """The daemon is starting (after the data plane, before the start actions)."""

    def stop(self) -> None:
        """The daemon is stopping (its IKE SAs are deleted): undo what is installed."""

    async def drain(self) -> None:
        """After every feature's stop(): wait (bounded) for what still runs (hooks)."""

    def reloaded(self, config: GatewayConfig) -> None:
        """A reload applied `config` (its connections and pools; [gateway] changes wait for
        a restart): re-read what this feature reads from files, take new settings."""

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


# --------------------------------------------------------------------------- what a feature sees


class ChildSaApi(Protocol):
    def retiring(self, spi_in: int) -> bool:
        """An old inbound SA kept after its rekey (its ChildSaDeleted is no Child's end)."""
        ...


class TrapApi(Protocol):
    def sync(self) -> None: ...

    def forget(self, connections: Sequence[str]) -> None: ...

    def trap_dict(self, key: TrapKey) -> dict[str, Any] | None: ...


class RetryApi(Protocol):
    def track(self, ike_sa: int, attempt: Attempt) -> None: ...

    def cancel(self, connection: str) -> bool: ...

    def cancel_pending(self, connection: str) -> bool: ...


class ActionApi(Protocol):
    @property
    def follow(self) -> dict[int, tuple[str, ...]]: ...

    def take_follow(self, ike_sa: int) -> tuple[str, ...]: ...

    def initiate(self, conn: ConnectionSection, child: str | None, attempt: int = 1) -> int: ...

    def start_actions(self, conn: ConnectionSection) -> None: ...

    def restart_closed(self, conn: ConnectionSection, child: str) -> None: ...

    def resolve(self, name: str) -> tuple[ConnectionSection, str | None]: ...


class TunnelApi(Protocol):
    def interface_of(self, spi_in: int) -> Any:
        """A route-based Child SA's tunnel (gateway/daemon/tunnels.py: name, if_id,
        mtu), by its inbound SPI; None for a policy-based one."""
        ...


class TallyApi(Protocol):
    @property
    def histogram(self) -> Any: ...


class TrafficApi(Protocol):
    """gateway/daemon/traffic.py: per-SA counters, and what SAs that go counted."""

    async def refresh(self) -> None: ...

    def recorded(self, child: ChildRecord) -> None: ...

    def child(self, c: ChildRecord) -> Counters: ...

    def sa_gone(self, connection: str, child: ChildRecord, counters: Counters) -> None: ...

    def child_ended(self, connection: str, child: ChildRecord) -> None: ...

    def slot_released(self, connection: str, child: str, counters: Any) -> None: ...

    def gone_total(self) -> Counters: ...

    def slot_row(self, c: ChildRecord) -> dict[str, int] | None: ...


class Host(Protocol):
    """What the feature managers use of the daemon (gateway/daemon/core.py's Daemon)."""

    config: GatewayConfig  # (a reload replaces it)

    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def started_at(self) -> float: ...
    @property
    def sas(self) -> SaTable: ...
    @property
    def totals(self) -> Totals: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def transport(self) -> UdpTransport: ...
    @property
    def control(self) -> ControlServer: ...
    @property
    def dataplane(self) -> Dataplane: ...
    @property
    def xdp(self) -> XdpAdapter | None: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...
    @property
    def closing(self) -> bool: ...
    @property
    def rekey_grace(self) -> float: ...
    @property
    def start_filter(self) -> Callable[[str], bool]: ...
    @property
    def features(self) -> Sequence[Feature]: ...
    @property
    def children(self) -> ChildSaApi: ...
    @property
    def traps(self) -> TrapApi: ...
    @property
    def retries(self) -> RetryApi: ...
    @property
    def actions(self) -> ActionApi: ...
    @property
    def tally(self) -> TallyApi: ...
    @property
    def tunnels(self) -> TunnelApi: ...
    @property
    def traffic(self) -> TrafficApi: ...

    def report(self, event: str, level: int = ..., /, **fields: Any) -> None:
        """Log and publish (gateway/daemon/report.py)."""

    def engine_call(self, method: Callable[..., Any], *args: Any) -> Any:
        """An API call into the engine; LocalError becomes a ControlError."""

    def pump(self) -> None:
        """Handle the engine's events, send its datagrams, re-arm its timer."""

    def soon(self, callback: Callable[..., Any], *args: Any) -> None: ...

    def later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None: ...

    def wait(self, match: Callable[[Any], str | None]) -> asyncio.Future[str]: ...

    def unwait(self, future: asyncio.Future[str]) -> None: ...

    async def outcome(self, future: asyncio.Future[str], timeout: float, what: str) -> None: ...

    def sa_row(self, record: IkeRecord) -> dict[str, Any]: ...
