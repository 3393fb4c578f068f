"""Routes a route-based tunnel needs: installed while its Child SA is up, withdrawn when
it goes, in a chosen routing table with a chosen metric; and the path to a peer (the
device and MTU the outer ESP packets take), from which the tunnel MTU is derived.

Theory of operation
-------------------
Every route installed here carries the routing protocol number `protocol` (default
`RTPROT_GATEWAY` = 78, shown by `ip route` as `proto 78`). That marks it as ours: install
is idempotent for our own route, refuses to overwrite someone else's route with the same
key (destination, table, metric; RoutingError EEXIST), withdraw removes only a route of
our protocol, and `withdraw_all()` clears our leftovers (after a crash) without touching
routes of the kernel, of FRR or of the administrator. FRR's zebra sees these routes as
"kernel" routes, so `redistribute kernel` announces what the gateway installs.

IPv4 and IPv6 alike. For IPv6 a metric of 0 means the kernel's default, 1024 (as with
`ip -6 route add`); `Route.kernel_metric` is what the kernel stores.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.rtnl.rtmsg import rtmsg

from gateway.routing.rtnl import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELROUTE,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWROUTE,
    RoutingError,
    RtnlChannel,
    RtnlUser,
    get_link,
    link_index,
    payload,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RTPROT_GATEWAY = 78  # our routes' protocol number (unassigned in iproute2's rt_protos)
MAIN_TABLE = 254
LOCAL_TABLE = 255
RT_TABLE_COMPAT = 252  # rtm_table when the table number only fits RTA_TABLE
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTM_F_CLONED = 0x200
IP6_RT_PRIO_USER = 1024
AF_INET, AF_INET6 = 2, 10


@dataclass(frozen=True, slots=True)
class Route:
    """A unicast route to `dst` out of `dev` (optionally via a next hop) in `table`."""

    dst: IPNetwork
    dev: str
    table: int = MAIN_TABLE
    metric: int = 0
    via: IPAddress | None = None
    src: IPAddress | None = None  # preferred source address (e.g. our inner address)

    def __post_init__(self) -> None:
        if not 1 <= self.table <= 0xFFFFFFFF or self.table == LOCAL_TABLE:
            raise ValueError(f"route table must be 1..4294967295 and not local, not {self.table}")
        if not 0 <= self.metric <= 0xFFFFFFFF:
            raise ValueError(f"route metric must be 0..4294967295, not {self.metric}")
        for addr in (self.via, self.src):
            if addr is not None and addr.version != self.dst.version:
                raise ValueError(f"{addr} is not of the family of {self.dst}")

    @classmethod
    def parse(
        cls,
        dst: str,
        dev: str,
        *,
        table: int = MAIN_TABLE,
        metric: int = 0,
        via: str | None = None,
        src: str | None = None,
    ) -> Route:
        return cls(
            ipaddress.ip_network(dst),
            dev,
            table,
            metric,
            ipaddress.ip_address(via) if via else None,
            ipaddress.ip_address(src) if src else None,
        )

    @property
    def family(self) -> int:
        return AF_INET if self.dst.version == 4 else AF_INET6

    @property
    def kernel_metric(self) -> int:
        if self.dst.version == 6 and self.metric == 0:
            return IP6_RT_PRIO_USER
        return self.metric

    def __str__(self) -> str:
        via = f" via {self.via}" if self.via else ""
        src = f" src {self.src}" if self.src else ""
        return f"{self.dst}{via} dev {self.dev} table {self.table} metric {self.metric}{src}"


def same_route(a: Route, b: Route) -> bool:
    """Same kernel route: destination, device, table, metric as stored, next hop."""
    return (a.dst, a.dev, a.table, a.kernel_metric, a.via) == (
        b.dst,
        b.dev,
        b.table,
        b.kernel_metric,
        b.via,
    )


@dataclass(frozen=True, slots=True)
class PathInfo:
    """Where packets to an address go: the device, its index, the path MTU, the source
    address the kernel picks and the next hop (None: directly connected)."""

    dev: str
    index: int
    mtu: int
    src: IPAddress | None
    via: IPAddress | None


def route_payload(route: Route, oif: int, protocol: int, *, delete: bool = False) -> bytes:
    msg = rtmsg()
    msg["family"] = route.family
    msg["dst_len"] = route.dst.prefixlen
    msg["table"] = route.table if route.table < 256 else RT_TABLE_COMPAT
    msg["proto"] = protocol
    msg["type"] = RTN_UNICAST
    v4_link = route.dst.version == 4 and route.via is None
    msg["scope"] = RT_SCOPE_LINK if v4_link else RT_SCOPE_UNIVERSE
    attrs: list[tuple[str, Any]] = [
        ("RTA_TABLE", route.table),
        ("RTA_DST", str(route.dst.network_address)),
        ("RTA_OIF", oif),
        ("RTA_PRIORITY", route.kernel_metric),
    ]
    if route.via is not None:
        attrs.append(("RTA_GATEWAY", str(route.via)))
    if route.src is not None and not delete:
        attrs.append(("RTA_PREFSRC", str(route.src)))
    msg["attrs"] = attrs
    return payload(msg)


class RouteManager(RtnlUser):
    """Installs and withdraws our routes in one namespace; reads the path to a peer."""

    def __init__(
        self,
        channel: RtnlChannel | None = None,
        *,
        netns: str | None = None,
        protocol: int = RTPROT_GATEWAY,
    ) -> None:
        if not 5 <= protocol <= 255:  # 0-4 are the kernel's (unspec, redirect, kernel, ...)
            raise ValueError(f"route protocol must be 5..255, not {protocol}")
        super().__init__(channel, netns=netns)
        self.protocol = protocol

    # -- install / withdraw ----------------------------------------------------------------

    def install(self, route: Route) -> None:
        """Add the route; ours already there is fine, anyone else's is RoutingError EEXIST."""
        oif = link_index(self.channel, route.dev)
        try:
            self.channel.request(
                RTM_NEWROUTE,
                route_payload(route, oif, self.protocol),
                f"NEWROUTE {route}",
                NLM_F_CREATE | NLM_F_EXCL,
            )
        except RoutingError as exc:
            if exc.errno != errno.EEXIST:
                raise
            if any(same_route(r, route) for r in self.routes(table=route.table)):
                return
            raise RoutingError(
                f"NEWROUTE {route}",
                errno.EEXIST,
                f"a route to {route.dst} with metric {route.kernel_metric} exists in "
                f"table {route.table} and is not ours",
            ) from None

    def withdraw(self, route: Route) -> bool:
        """Remove our route; True when it was there. Gone already (or its device gone,
        which takes its routes along) is fine: a withdraw must never fail a tear-down."""
        msg = get_link(self.channel, route.dev)
        if msg is None:
            return False
        try:
            self.channel.request(
                RTM_DELROUTE,
                route_payload(route, int(msg["index"]), self.protocol, delete=True),
                f"DELROUTE {route}",
            )
        except RoutingError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT):
                return False
            raise
        return True

    def withdraw_all(self, *, dev: str | None = None, table: int | None = None) -> int:
        """Remove all our routes (optionally of one device or table): start-up reconcile
        and interface removal. Returns how many went."""
        return sum(self.withdraw(r) for r in self.routes(table=table, dev=dev))

    # -- read --------------------------------------------------------------------------------

    def _names(self) -> dict[int, str]:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        return {
            m["index"]: m.get_attr("IFLA_IFNAME")
            for m in self.channel.dump(RTM_GETLINK, payload(ifinfmsg()))
        }

    def routes(
        self, *, table: int | None = None, dev: str | None = None, ours_only: bool = True
    ) -> list[Route]:
        """Unicast routes of both families (ours only by default), as Route values."""
        names = self._names()
        out: list[Route] = []
        for family in (AF_INET, AF_INET6):
            req = rtmsg()
            req["family"] = family
            for m in self.channel.dump(RTM_GETROUTE, payload(req)):
                route = self._route_from_msg(m, names, ours_only)
                if route is None:
                    continue
                if (table is None or route.table == table) and (dev is None or route.dev == dev):
                    out.append(route)
        return out

    def _route_from_msg(self, m: Any, names: dict[int, str], ours_only: bool) -> Route | None:
        if m["type"] != RTN_UNICAST or m["flags"] & RTM_F_CLONED:
            return None
        if ours_only and m["proto"] != self.protocol:
            return None
        oif = m.get_attr("RTA_OIF")
        if oif is None or oif not in names:
            return None  # multipath or device-less routes: not ours
        family = m["family"]
        dst = m.get_attr("RTA_DST") or ("0.0.0.0" if family == AF_INET else "::")
        via = m.get_attr("RTA_GATEWAY")
        src = m.get_attr("RTA_PREFSRC")
        table = m.get_attr("RTA_TABLE") or m["table"]
        metric = m.get_attr("RTA_PRIORITY") or 0
        if family == AF_INET6 and metric == IP6_RT_PRIO_USER:
            metric = 0
        return Route(
            ipaddress.ip_network(f"{dst}/{m['dst_len']}"),
            names[oif],
            table,
            metric,
            ipaddress.ip_address(via) if via else None,
            ipaddress.ip_address(src) if src else None,
        )

    def path_to(self, address: IPAddress | str) -> PathInfo:
        """The kernel's route lookup for `address` (RTM_GETROUTE): device, path MTU (the
        route's or cached PMTU's RTAX_MTU, else the device MTU), source and next hop."""
        addr = ipaddress.ip_address(address)
        req = rtmsg()
        req["family"] = AF_INET if addr.version == 4 else AF_INET6
        req["dst_len"] = addr.max_prefixlen
        req["attrs"] = [("RTA_DST", str(addr))]
        reply = self.channel.request(RTM_GETROUTE, payload(req), f"GETROUTE {addr}")
        if reply is None:
            raise RoutingError(f"GETROUTE {addr}", errno.ENETUNREACH, "no reply")
        oif = reply.get_attr("RTA_OIF")
        link = get_link(self.channel, index=oif) if oif else None
        if link is None:
            raise RoutingError(f"GETROUTE {addr}", errno.ENETUNREACH, f"no route to {addr}")
        mtu = link.get_attr("IFLA_MTU")
        metrics = reply.get_attr("RTA_METRICS")
        if metrics is not None and metrics.get_attr("RTAX_MTU"):
            mtu = min(mtu, metrics.get_attr("RTAX_MTU"))
        src, via = reply.get_attr("RTA_PREFSRC"), reply.get_attr("RTA_GATEWAY")
        return PathInfo(
            dev=link.get_attr("IFLA_IFNAME"),
            index=int(oif),
            mtu=int(mtu),
            src=ipaddress.ip_address(src) if src else None,
            via=ipaddress.ip_address(via) if via else None,
        )
