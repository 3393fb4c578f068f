"""A stand-in for the kernel side of route-based tunnels (gateway.routing.kernel.
TunnelKernel) for the daemon tests on the host, whose kernel has no XFRM interfaces: a
record of calls over a model of links and routes. The VM tests run the real one."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.dataplane.none import NoneDataplane
from gateway.routing.interfaces import XfrmInterface
from gateway.routing.routes import PathInfo, Route


class KernelDataplane(NoneDataplane):
    """Installs nothing, but says it is the kernel's (route-based children need it)."""

    name = "xfrm"


class FakeTunnelKernel:
    """gateway.routing.kernel.TunnelKernel as a record of calls over a model of links."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.links: dict[str, XfrmInterface] = {}
        self.routes: set[Route] = set()
        self.closed = False

    def prepare(self, wanted: Any) -> tuple[int, list[XfrmInterface]]:
        wanted = list(wanted)
        self.calls.append(("prepare", tuple(wanted)))
        return 0, [self.ensure(n, i, up=False) for n, i in wanted]

    def ensure(self, name: str, if_id: int, *, up: bool) -> XfrmInterface:
        self.calls.append(("ensure", name, if_id, up))
        link = self.links.get(name) or XfrmInterface(name, 9, if_id, 1500, up, owned=True)
        self.links[name] = dataclasses.replace(link, up=up)
        return self.links[name]

    def get(self, name: str) -> XfrmInterface | None:
        return self.links.get(name)

    def configure(self, name: str, *, mtu: int | None = None, up: bool | None = None) -> None:
        self.calls.append(("configure", name, mtu, up))
        link = self.links[name]
        self.links[name] = dataclasses.replace(
            link, mtu=mtu if mtu is not None else link.mtu, up=link.up if up is None else up
        )

    def add_address(self, name: str, address: str) -> None:
        self.calls.append(("address", name, address))

    def install(self, route: Route) -> None:
        self.calls.append(("install", str(route)))
        self.routes.add(route)

    def withdraw(self, route: Route) -> bool:
        self.calls.append(("withdraw", str(route)))
        present = route in self.routes
        self.routes.discard(route)
        return present

    def path_mtu(self, remote: str) -> PathInfo:
        return PathInfo("wan0", 2, 1500, None, None)

    def release(self, names: Any) -> list[str]:
        names = list(names)
        self.calls.append(("release", tuple(names)))
        self.routes.clear()
        return [n for n in names if self.links.pop(n, None) is not None]

    def close(self) -> None:
        self.closed = True
