"""Route-based Child SAs (docs/routing.md): the feature manager that gives each one its
XFRM interface and routes, so that a route exists exactly while its Child SA is up.

    start               (owner) our leftover routes withdrawn, every configured interface
                        created or adopted and set down (gateway/routing/kernel.py)
    ChildSaEstablished  (after the data plane installed it, with its if_id) the interface
                        gets its MTU (the path MTU to the peer minus the negotiated ESP
                        overhead: the smallest over the Child SAs on it, or the configured
                        one), its addresses, and comes up; the Child's routes go in
                        (`tunnel-up`, `route-installed`)
    ChildSaRekeyed      nothing moves: the new SAs carry the same if_id
    IkeSaMigrated       MOBIKE: the interface stays, its MTU follows the new path (the
                        outer family or NAT-T may have changed)
    ChildSaDeleted      the Child's routes withdrawn at once (a dead peer, DPD: reason
                        `dpd`); the interface down with its last Child SA (`tunnel-down`,
                        `route-withdrawn`): a routing daemon (FRR) sees the link go, and
                        traffic routed into it meanwhile is dropped, never sent in clear
    IkeSaDeleted        whatever it still had, the same
    stop                (owner) our routes withdrawn, interfaces we created removed,
                        adopted ones set down

Several Child SAs may share one interface (children of one connection with one if_id, or
a Child and its duplicate): routes and the interface's up state are counted, so the last
one to go takes them. With workers the supervisor owns the interfaces (creates them at
start, removes them at stop: gateway/workers/supervisor.py) and each worker routes its
own Child SAs (`owner` False). Kernel refusals are reported (`tunnel-error`) and counted;
they never fail the Child SA itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.daemon.feature import EventContext, Feature, Host
from gateway.daemon.report import Logged, Published
from gateway.errors import GatewayError
from gateway.routing.mtu import xfrm_interface_mtu
from gateway.routing.routes import Route
from ike import events as ev

if TYPE_CHECKING:
    from gateway.config.schema import ChildSection, GatewayConfig
    from gateway.daemon.records import ChildRecord
    from gateway.routing.kernel import TunnelKernel

# ChildSaDeleted's reasons as the hooks and reports name why a tunnel went down
DOWN_REASONS = {
    "dead peer": "dpd",
    "expired": "expired",
    "deleted": "delete",
    "deleted by peer": "delete",
    "CHILD_SA_NOT_FOUND": "delete",
}


def down_reason(reason: str, closing: bool) -> str:
    """`dpd`, `expired`, `delete`, `shutdown`, or the IKE SA's own reason."""
    return "shutdown" if closing else DOWN_REASONS.get(reason, reason)


def route_based_config(config: GatewayConfig, connection: str, child: str) -> ChildSection | None:
    conn = config.connection(connection)
    found = conn.child(child) if conn is not None else None
    return found if found is not None and found.route_based else None


@dataclass(slots=True)
class TunnelChild:
    """One route-based Child SA up on an interface."""

    connection: str
    child: str
    ike_sa: int
    spi_in: int
    spec: Any  # its ChildSaSpec (outer addresses, ESP transform, encapsulation)
    routes: tuple[Route, ...]


@dataclass(slots=True)
class Tunnel:
    """One XFRM interface and what is up on it."""

    name: str
    if_id: int
    children: dict[int, TunnelChild] = field(default_factory=dict)  # by inbound SPI
    routes: dict[Route, int] = field(default_factory=dict)  # route -> Child SAs using it
    mtu: int | None = None
    up: bool = False


KernelFactory = Callable[[], "TunnelKernel"]


def kernel_tunnels() -> TunnelKernel:
    from gateway.routing.kernel import TunnelKernel

    return TunnelKernel()


class Tunnels(Feature):
    """The XFRM interfaces and routes of route-based Child SAs."""

    def __init__(
        self, daemon: Host, *, kernel: KernelFactory = kernel_tunnels, owner: bool = True
    ) -> None:
        self.d = daemon
        self._factory = kernel
        self.owner = owner  # creates and removes the interfaces (not a worker)
        self.kernel: TunnelKernel | None = None
        self.tunnels: dict[str, Tunnel] = {}
        self._by_spi: dict[int, Tunnel] = {}  # a Child SA's inbound SPI -> its tunnel
        self.errors = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from gateway.config.schema import xfrm_interfaces

        wanted = list(xfrm_interfaces(self.d.config.connections).items())
        if not wanted:
            return
        if self.d.dataplane.name != "xfrm":  # `gateway run --dataplane none`: no SAs
            self.d.report(
                "tunnel-error",
                logging.WARNING,
                operation="start",
                error=f"dataplane {self.d.dataplane.name}: route-based children get no "
                "interfaces (nothing is installed in the kernel)",
            )
            return
        self.kernel = self._factory()
        for name, if_id in wanted:
            self.tunnels[name] = Tunnel(name, if_id)
        if not self.owner:
            return
        try:
            withdrawn, interfaces = self.kernel.prepare(wanted)
        except GatewayError as exc:
            self.kernel.close()
            self.kernel = None
            raise GatewayError(f"route-based tunnels: {exc}") from None
        for iface in interfaces:
            self.tunnels[iface.name].mtu = iface.mtu
            self.d.report(
                "tunnel-ready",
                interface=iface.name,
                if_id=iface.if_id,
                mtu=iface.mtu,
                adopted=Logged("no" if iface.owned else "yes"),
            )
        if withdrawn:
            self.d.report("routes-leftovers-withdrawn", routes=withdrawn)

    def stop(self) -> None:
        for tunnel in self.tunnels.values():
            for spi_in in list(tunnel.children):
                self._down(tunnel, spi_in, "shutdown")
        if self.kernel is None:
            return
        if self.owner:
            try:
                removed = self.kernel.release(self.tunnels)
            except GatewayError as exc:
                self._error("release", "", exc)
            else:
                for name in removed:
                    self.d.report("tunnel-removed", interface=name)
        self.kernel.close()
        self.kernel = None

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: Any, ctx: EventContext) -> None:
        if self.kernel is None and not isinstance(event, ev.ChildSaEstablished):
            return
        match event:
            case ev.ChildSaEstablished():
                config = route_based_config(self.d.config, event.connection, event.child)
                if config is not None:
                    self._up(event, config)
            case ev.ChildSaRekeyed():
                self._rekeyed(event)
            case ev.IkeSaMigrated():
                self._migrated(event)
            case ev.ChildSaDeleted():
                tunnel = self._by_spi.get(event.spi_in)
                if tunnel is not None:  # (an old SA after its rekey is no longer here)
                    self._down(tunnel, event.spi_in, down_reason(event.reason, self.d.closing))
            case ev.IkeSaDeleted():
                for spi_in, tunnel in list(self._by_spi.items()):
                    if tunnel.children[spi_in].ike_sa == event.ike_sa:
                        self._down(tunnel, spi_in, down_reason(event.reason, self.d.closing))

    def _record(self, ike_sa: int, spi_in: int) -> ChildRecord | None:
        record = self.d.sas.get(ike_sa)
        return record.child(spi_in) if record is not None else None

    def _up(self, e: ev.ChildSaEstablished, config: ChildSection) -> None:
        from gateway.dataplane.xfrm import installed_spec

        record = self._record(e.ike_sa, e.spi_in)
        if record is None or record.installed is None:
            return  # the data plane refused it (ChildSaFailed stands in for it)
        if self.kernel is None:  # the first route-based Child since a reload added it
            self.kernel = self._factory()
        assert config.interface is not None and config.if_id_in is not None
        tunnel = self.tunnels.get(config.interface)
        if tunnel is None:
            tunnel = self.tunnels[config.interface] = Tunnel(config.interface, config.if_id_in)
        spec = installed_spec(e, config, record.installed)
        child = TunnelChild(e.connection, e.child, e.ike_sa, e.spi_in, spec, ())
        tunnel.children[e.spi_in] = child
        self._by_spi[e.spi_in] = tunnel
        try:
            if not tunnel.up:
                self.kernel.ensure(tunnel.name, tunnel.if_id, up=False)
            mtu = config.interface_mtu or self._derived_mtu(tunnel)
            self.kernel.configure(tunnel.name, mtu=mtu, up=True)
            for address in config.interface_addresses:
                self.kernel.add_address(tunnel.name, address)
        except (GatewayError, ValueError) as exc:  # ValueError: no MTU fits (bpf/mtu.py)
            self._error("up", tunnel.name, exc, e.connection, e.child)
            return
        first = not tunnel.up
        tunnel.mtu, tunnel.up = mtu, True
        if first:
            self.d.report(
                "tunnel-up",
                connection=e.connection,
                child=e.child,
                interface=tunnel.name,
                if_id=tunnel.if_id,
                mtu=mtu,
                remote=Logged(e.remote_addr),
                remote_addr=Published(e.remote_addr),
            )
        child.routes = tuple(
            Route.parse(p, tunnel.name, table=config.route_table, metric=config.route_metric)
            for p in config.route_prefixes
        )
        for route in child.routes:
            self._route_in(tunnel, route, e.connection, e.child)

    def _derived_mtu(self, tunnel: Tunnel) -> int:
        """The path MTU to each peer on the interface minus that Child's ESP overhead."""
        assert self.kernel is not None
        mtus = []
        for child in tunnel.children.values():
            path = self.kernel.path_mtu(str(child.spec.remote))
            mtus.append(xfrm_interface_mtu(path.mtu, child.spec))
        return min(mtus)

    def _route_in(self, tunnel: Tunnel, route: Route, connection: str, child: str) -> None:
        assert self.kernel is not None
        count = tunnel.routes.get(route, 0)
        tunnel.routes[route] = count + 1
        if count:
            return
        try:
            self.kernel.install(route)
        except GatewayError as exc:
            self._error("route", tunnel.name, exc, connection, child)
            return
        self.d.report(
            "route-installed",
            connection=connection,
            child=child,
            interface=tunnel.name,
            route=str(route.dst),
            table=route.table,
            metric=route.metric,
        )

    def _rekeyed(self, e: ev.ChildSaRekeyed) -> None:
        """The new SAs carry the same if_id: only our bookkeeping follows the new SPI."""
        tunnel = self._by_spi.pop(e.old_spi_in, None)
        if tunnel is None:
            return
        from gateway.dataplane.xfrm import installed_spec

        child = tunnel.children.pop(e.old_spi_in)
        record = self._record(e.ike_sa, e.new.spi_in)
        config = route_based_config(self.d.config, e.connection, e.child)
        if record is not None and record.installed is not None:
            child.spec = installed_spec(e.new, config, record.installed)
        child.spi_in = e.new.spi_in
        tunnel.children[child.spi_in] = child
        self._by_spi[child.spi_in] = tunnel

    def _migrated(self, e: ev.IkeSaMigrated) -> None:
        """MOBIKE: the Child SAs moved under the interface; its MTU follows the path."""
        from gateway.xfrm import UdpEncap

        moved: set[str] = set()
        for spi_in, tunnel in self._by_spi.items():
            child = tunnel.children[spi_in]
            if child.ike_sa == e.ike_sa:
                child.spec = dataclasses.replace(
                    child.spec,
                    local=ipaddress.ip_address(e.local[0]),
                    remote=ipaddress.ip_address(e.remote[0]),
                    encap=UdpEncap(*e.encap) if e.encap else None,
                )
                moved.add(tunnel.name)
        for name in moved:
            tunnel = self.tunnels[name]
            if not tunnel.up or self._fixed_mtu(tunnel):
                continue
            assert self.kernel is not None
            try:
                mtu = self._derived_mtu(tunnel)
                if mtu != tunnel.mtu:
                    self.kernel.configure(name, mtu=mtu)
                    self.d.report("tunnel-mtu", interface=name, mtu=mtu, old_mtu=tunnel.mtu)
                    tunnel.mtu = mtu
            except (GatewayError, ValueError) as exc:
                self._error("mtu", name, exc, e.connection)

    def _fixed_mtu(self, tunnel: Tunnel) -> bool:
        """An interface_mtu configured for a Child on it: the MTU is not derived."""
        for child in tunnel.children.values():
            config = route_based_config(self.d.config, child.connection, child.child)
            if config is not None and config.interface_mtu is not None:
                return True
        return False

    def _down(self, tunnel: Tunnel, spi_in: int, reason: str) -> None:
        """The Child SA is gone: its routes out (the last user of each), then the
        interface down with its last Child SA."""
        child = tunnel.children.pop(spi_in, None)
        self._by_spi.pop(spi_in, None)
        if child is None:
            return
        for route in child.routes:
            count = tunnel.routes.get(route, 0) - 1
            if count > 0:
                tunnel.routes[route] = count
                continue
            tunnel.routes.pop(route, None)
            withdrawn = False
            if self.kernel is not None:
                try:
                    withdrawn = self.kernel.withdraw(route)
                except GatewayError as exc:
                    self._error("withdraw", tunnel.name, exc, child.connection, child.child)
            self.d.report(
                "route-withdrawn",
                connection=child.connection,
                child=child.child,
                interface=tunnel.name,
                route=str(route.dst),
                table=route.table,
                metric=route.metric,
                reason=reason,
                was_there=Logged("yes" if withdrawn else "no"),
            )
        if tunnel.children or not tunnel.up:
            return
        tunnel.up = False
        if self.kernel is not None:
            try:
                self.kernel.configure(tunnel.name, up=False)
            except GatewayError as exc:
                self._error("down", tunnel.name, exc, child.connection, child.child)
        self.d.report(
            "tunnel-down",
            connection=child.connection,
            child=child.child,
            interface=tunnel.name,
            if_id=tunnel.if_id,
            reason=reason,
        )

    def _error(
        self, what: str, interface: str, exc: Exception, connection: str = "", child: str = ""
    ) -> None:
        self.errors += 1
        self.d.report(
            "tunnel-error",
            logging.ERROR,
            connection=connection or None,
            child=child or None,
            interface=interface or None,
            operation=what,
            error=Logged(exc),
            message=Published(f"{interface} {what}: {exc}"),
        )

    # ------------------------------------------------------------------ shown

    def interface_of(self, spi_in: int) -> Tunnel | None:
        """The tunnel of a Child SA (by its inbound SPI), if it is route-based."""
        return self._by_spi.get(spi_in)

    def child_row(self, child: ChildRecord) -> Mapping[str, Any]:
        tunnel = self._by_spi.get(child.spi_in)
        return {"interface": tunnel.name if tunnel is not None else None}

    def stats(self) -> Mapping[str, Any]:
        """Per interface: its kernel state and counters, and what is up on it here."""
        if not self.tunnels:
            return {}
        rows = []
        for tunnel in self.tunnels.values():
            row: dict[str, Any] = {
                "interface": tunnel.name,
                "if_id": tunnel.if_id,
                "children": len(tunnel.children),
                "routes": len(tunnel.routes),
                "connections": sorted({c.connection for c in tunnel.children.values()}),
            }
            try:
                iface = self.kernel.get(tunnel.name) if self.kernel is not None else None
            except GatewayError:
                iface = None
            row["present"] = iface is not None
            if iface is not None:
                s = iface.stats
                row.update(
                    up=iface.up,
                    mtu=iface.mtu,
                    rx_bytes=s.rx_bytes,
                    rx_packets=s.rx_packets,
                    tx_bytes=s.tx_bytes,
                    tx_packets=s.tx_packets,
                    tx_errors=s.tx_errors,
                    no_sa_drops=s.tx_carrier_errors,
                )
            rows.append(row)
        return {"tunnels": rows, "tunnel_errors": self.errors}
