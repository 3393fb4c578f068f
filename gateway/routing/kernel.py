"""The kernel side of route-based tunnels in one namespace: XFRM interfaces and routes
over one NETLINK_ROUTE socket, and what a daemon does with them at start and stop.

`TunnelKernel` is what the daemon's feature (gateway/daemon/tunnels.py) drives; its
methods are the few operations a Child SA's life needs (an interface set up, its MTU,
its addresses, routes in and out, the path MTU to a peer). `prepare` and `release` are
the start and stop of a gateway process that owns the namespace's tunnels (a single
daemon, or the supervisor of workers, gateway/workers/supervisor.py):

    prepare   our routes left by a crashed run withdrawn; every configured interface
              created (or adopted) and set down, so a routing daemon sees it before
              any SA is up, and nothing is routed into it meanwhile
    release   our routes withdrawn; interfaces we created removed, adopted ones set
              down and left as they were found
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable

from gateway.routing.interfaces import XfrmInterface, XfrmInterfaces
from gateway.routing.routes import PathInfo, Route, RouteManager
from gateway.routing.rtnl import RoutingError, RtnlChannel

__all__ = ["RoutingError", "TunnelKernel"]


class TunnelKernel:
    """XFRM interfaces and our routes in the namespace `netns` (None: this one)."""

    def __init__(self, *, netns: str | None = None) -> None:
        channel = RtnlChannel(netns)
        self.interfaces = XfrmInterfaces(channel)
        self.routes = RouteManager(channel)

    def close(self) -> None:
        self.interfaces.close()

    # -- a tunnel's life ---------------------------------------------------------------------

    def ensure(self, name: str, if_id: int, *, up: bool) -> XfrmInterface:
        """The interface, created or adopted, administratively `up` or down."""
        return self.interfaces.ensure(name, if_id, up=up)

    def get(self, name: str) -> XfrmInterface | None:
        return self.interfaces.get(name)

    def configure(self, name: str, *, mtu: int | None = None, up: bool | None = None) -> None:
        iface = self.interfaces.get(name)
        if iface is None:
            raise RoutingError(f"SETLINK {name}", errno.ENODEV, f"no such interface: {name}")
        self.interfaces.configure(iface, mtu=mtu, up=up)

    def add_address(self, name: str, address: str) -> None:
        self.interfaces.add_address(name, address)

    def install(self, route: Route) -> None:
        self.routes.install(route)

    def withdraw(self, route: Route) -> bool:
        return self.routes.withdraw(route)

    def path_mtu(self, remote: str) -> PathInfo:
        return self.routes.path_to(ipaddress.ip_address(remote))

    # -- a gateway's start and stop -----------------------------------------------------------

    def prepare(self, wanted: Iterable[tuple[str, int]]) -> tuple[int, list[XfrmInterface]]:
        """Start: (routes of ours withdrawn, the interfaces (name, if_id) set down)."""
        withdrawn = self.routes.withdraw_all()
        return withdrawn, [self.ensure(name, if_id, up=False) for name, if_id in wanted]

    def release(self, names: Iterable[str]) -> list[str]:
        """Stop: our routes withdrawn; the named interfaces removed if we created them,
        else set down. The names of the removed ones."""
        self.routes.withdraw_all()
        removed = []
        for name in names:
            iface = self.interfaces.get(name)
            if iface is None:
                continue
            if iface.owned:
                if self.interfaces.remove(name):
                    removed.append(name)
            elif iface.up:
                self.interfaces.configure(iface, up=False)
        return removed
