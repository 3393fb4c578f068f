"""XFRM interfaces (the kernel's `xfrm` link kind): a route-based tunnel's door.

An XFRM interface has an `if_id`. A packet routed into it is matched against the XFRM
policies and states that carry the same `if_id` (and only those), encrypted and sent to
the peer; a packet decrypted by a state with that `if_id` comes out of it. Without a
matching policy and state the interface drops what is routed into it (counted as
tx_carrier_errors): nothing leaves unencrypted. One interface serves every Child SA with
its `if_id`, so it outlives rekeys and MOBIKE moves; the SAs change under it.

Theory of operation
-------------------
`ensure(name, if_id, mtu=..., up=True)` is the one entry point a daemon needs at Child
SA set-up: it creates the interface (RTM_NEWLINK kind xfrm, `IFLA_XFRM_IF_ID`, optionally
`IFLA_XFRM_LINK`) or adopts an existing one of that name when it is an XFRM interface
with the same `if_id` (an interface of another kind, or another `if_id`, is an error and
is left alone), then sets the MTU and brings it up. Interfaces created here carry the
alias `OWNER_ALIAS` (`ip link` shows it), so after a restart they are known as ours:
`remove()` deletes ours and leaves adopted ones as they were found (unless forced).

Everything goes through one NETLINK_ROUTE socket opened in the manager's namespace.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from gateway.routing.rtnl import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWLINK,
    RoutingError,
    RtnlUser,
    get_link,
    link_index,
    payload,
)

OWNER_ALIAS = "xdp-ipsec-gateway"  # IFLA_IFALIAS of the interfaces we create
KIND = "xfrm"
IFF_UP = 0x1
MIN_MTU = 68  # the xfrm link's min_mtu (ETH_MIN_MTU)
MAX_MTU = 65535  # its max_mtu (IP_MAX_MTU)
IFNAMSIZ = 16
RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_F_NODAD = 0x02

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Counters of one link (IFLA_STATS64), the per-interface numbers of a tunnel."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    tx_carrier_errors: int = 0  # routed into the interface without a usable SA


@dataclass(frozen=True, slots=True)
class XfrmInterface:
    """One XFRM interface as the kernel reports it."""

    name: str
    index: int
    if_id: int
    mtu: int
    up: bool  # administratively up (IFF_UP)
    link: int = 0  # ifindex of the underlying device (IFLA_XFRM_LINK); 0: none
    owned: bool = False  # created by us (carries OWNER_ALIAS)
    stats: LinkStats = LinkStats()


def check_name(name: str) -> None:
    bad = "/" in name or ":" in name or any(c.isspace() for c in name)
    if not name or len(name.encode()) >= IFNAMSIZ or bad or name in (".", ".."):
        raise ValueError(
            f"invalid interface name {name!r} (1-15 characters, no '/', ':' or spaces)"
        )


def check_if_id(if_id: int) -> None:
    if not 1 <= if_id <= 0xFFFFFFFF:
        raise ValueError(f"if_id must be 1..4294967295, not {if_id}")


def check_mtu(mtu: int) -> None:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU must be {MIN_MTU}..{MAX_MTU}, not {mtu}")


def _kind_and_data(msg: Any) -> tuple[str | None, Any]:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return None, None
    return info.get_attr("IFLA_INFO_KIND"), info.get_attr("IFLA_INFO_DATA")


def _stats(msg: Any) -> LinkStats:
    raw = msg.get_attr("IFLA_STATS64")
    if raw is None:
        return LinkStats()
    return LinkStats(**{name: raw.get(name, 0) for name in LinkStats.__dataclass_fields__})


def interface_from_msg(msg: Any) -> XfrmInterface | None:
    """The XfrmInterface an RTM_NEWLINK message describes (None: not an XFRM link)."""
    kind, data = _kind_and_data(msg)
    if kind != KIND:
        return None
    return XfrmInterface(
        name=msg.get_attr("IFLA_IFNAME"),
        index=msg["index"],
        if_id=(data.get_attr("IFLA_XFRM_IF_ID") if data is not None else None) or 0,
        mtu=msg.get_attr("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        link=(data.get_attr("IFLA_XFRM_LINK") if data is not None else None) or 0,
        owned=msg.get_attr("IFLA_IFALIAS") == OWNER_ALIAS,
        stats=_stats(msg),
    )


def newlink_payload(name: str, if_id: int, *, mtu: int | None = None, link: int = 0) -> bytes:
    """RTM_NEWLINK body creating an XFRM interface."""
    data: list[tuple[str, int]] = [("IFLA_XFRM_IF_ID", if_id)]
    if link:
        data.append(("IFLA_XFRM_LINK", link))
    msg = ifinfmsg()
    msg["attrs"] = [
        ("IFLA_IFNAME", name),
        *([("IFLA_MTU", mtu)] if mtu is not None else []),
        (
            "IFLA_LINKINFO",
            {"attrs": [("IFLA_INFO_KIND", KIND), ("IFLA_INFO_DATA", {"attrs": data})]},
        ),
    ]
    return payload(msg)


class XfrmInterfaces(RtnlUser):
    """Creates, adopts, configures, reads and removes XFRM interfaces in one namespace."""

    # -- read ------------------------------------------------------------------------------

    def ifindex(self, name: str) -> int:
        """The index of any link by name (RoutingError ENODEV when there is none)."""
        return link_index(self.channel, name)

    def get(self, name: str) -> XfrmInterface | None:
        """The XFRM interface `name`; None when no link has that name. A link of another
        kind is an error (RoutingError EEXIST), so a name clash is never silent."""
        check_name(name)
        msg = get_link(self.channel, name)
        if msg is None:
            return None
        iface = interface_from_msg(msg)
        if iface is None:
            kind, _ = _kind_and_data(msg)
            raise RoutingError(
                f"XFRM interface {name}",
                errno.EEXIST,
                f"{name} exists and is not an XFRM interface (kind {kind or 'none'})",
            )
        return iface

    def interfaces(self) -> list[XfrmInterface]:
        """Every XFRM interface of the namespace (ours and others')."""
        out = []
        for msg in self.channel.dump(RTM_GETLINK, payload(ifinfmsg())):
            iface = interface_from_msg(msg)
            if iface is not None:
                out.append(iface)
        return out

    # -- create / adopt / configure --------------------------------------------------------

    def ensure(
        self,
        name: str,
        if_id: int,
        *,
        mtu: int | None = None,
        link: str | None = None,
        up: bool = True,
    ) -> XfrmInterface:
        """Create the XFRM interface `name` with `if_id`, or adopt the existing one (same
        kind and if_id); then set `mtu` (None: leave it) and bring it up (`up`)."""
        check_name(name)
        check_if_id(if_id)
        if mtu is not None:
            check_mtu(mtu)
        iface = self.get(name)
        if iface is None:
            self._create(name, if_id, mtu, self.ifindex(link) if link else 0)
            iface = self.get(name)
            assert iface is not None  # just created; the kernel answered the request
        elif iface.if_id != if_id:
            raise RoutingError(
                f"XFRM interface {name}",
                errno.EEXIST,
                f"{name} exists with if_id {iface.if_id}, not {if_id}",
            )
        return self.configure(iface, mtu=mtu, up=up)

    def _create(self, name: str, if_id: int, mtu: int | None, link: int) -> None:
        what = f"NEWLINK xfrm {name} if_id={if_id}"
        try:
            self.channel.request(
                RTM_NEWLINK,
                newlink_payload(name, if_id, mtu=mtu, link=link),
                what,
                NLM_F_CREATE | NLM_F_EXCL,
            )
        except RoutingError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise RoutingError(
                    what, exc.errno, "this kernel has no XFRM interfaces (CONFIG_XFRM_INTERFACE)"
                ) from None
            raise
        try:
            self._setlink(name, what, [("IFLA_IFALIAS", OWNER_ALIAS)])
        except RoutingError:
            self._delete(name)
            raise

    def configure(
        self, iface: XfrmInterface, *, mtu: int | None = None, up: bool | None = None
    ) -> XfrmInterface:
        """Set the MTU and/or the admin state where they differ; the result read back."""
        attrs: list[tuple[str, Any]] = []
        if mtu is not None and mtu != iface.mtu:
            check_mtu(mtu)
            attrs.append(("IFLA_MTU", mtu))
        flags = None
        if up is not None and up != iface.up:
            flags = IFF_UP if up else 0
        if not attrs and flags is None:
            return iface
        what = f"SETLINK {iface.name} mtu={mtu} up={up}"
        self._setlink(iface.name, what, attrs, index=iface.index, flags=flags)
        got = self.get(iface.name)
        if got is None:
            raise RoutingError(what, errno.ENODEV, f"{iface.name} vanished")
        return got

    def set_mtu(self, name: str, mtu: int) -> XfrmInterface:
        return self.configure(self._must(name), mtu=mtu)

    def set_up(self, name: str, up: bool = True) -> XfrmInterface:
        return self.configure(self._must(name), up=up)

    def _must(self, name: str) -> XfrmInterface:
        iface = self.get(name)
        if iface is None:
            raise RoutingError(f"XFRM interface {name}", errno.ENODEV, f"no such interface: {name}")
        return iface

    def _setlink(
        self,
        name: str,
        what: str,
        attrs: list[tuple[str, Any]],
        *,
        index: int = 0,
        flags: int | None = None,
    ) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        if flags is not None:
            msg["flags"] = flags
            msg["change"] = IFF_UP
        msg["attrs"] = attrs if index else [("IFLA_IFNAME", name), *attrs]
        self.channel.request(RTM_NEWLINK, payload(msg), what)

    # -- addresses -------------------------------------------------------------------------

    def add_address(self, name: str, address: IPInterface | str) -> None:
        """Put an address on the interface (e.g. 169.254.10.1/30 for BGP over the tunnel);
        an address already there is fine."""
        addr = ipaddress.ip_interface(address)
        index = self.ifindex(name)
        msg = ifaddrmsg()
        msg["family"] = 2 if addr.version == 4 else 10
        msg["prefixlen"] = addr.network.prefixlen
        msg["index"] = index
        msg["flags"] = IFA_F_NODAD if addr.version == 6 else 0
        msg["attrs"] = [("IFA_LOCAL", str(addr.ip)), ("IFA_ADDRESS", str(addr.ip))]
        try:
            self.channel.request(
                RTM_NEWADDR, payload(msg), f"NEWADDR {addr} dev {name}", NLM_F_CREATE | NLM_F_EXCL
            )
        except RoutingError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def addresses(self, name: str) -> list[IPInterface]:
        index = self.ifindex(name)
        out: list[IPInterface] = []
        for msg in self.channel.dump(RTM_GETADDR, payload(ifaddrmsg())):
            if msg["index"] == index:
                local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                out.append(ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"))
        return out

    # -- remove ----------------------------------------------------------------------------

    def remove(self, name: str, *, force: bool = False) -> bool:
        """Delete the interface if we created it (or `force`); an adopted interface is
        left as it was found. True when an interface was deleted. Its routes go with it."""
        iface = self.get(name)
        if iface is None or not (iface.owned or force):
            return False
        return self._delete(name)

    def _delete(self, name: str) -> bool:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            self.channel.request(RTM_DELLINK, payload(msg), f"DELLINK {name}")
        except RoutingError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True
