"""One NETLINK_ROUTE socket for links and routes, on the XFRM channel's socket logic.

pyroute2's synchronous IPRoute runs a private asyncio loop per call and fails inside the
daemon's loop ("This event loop is already running"), like its XFRM counterpart; so this
is gateway.xfrm.channel's plain socket with pyroute2's rtnetlink classes (ifinfmsg,
rtmsg) for encoding and decoding. Requests are small and answered at once by the kernel,
so a synchronous call from the event loop is as cheap as the XFRM manager's.
"""

from __future__ import annotations

import errno
from typing import Any, Self

from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from gateway.xfrm.channel import NetlinkChannel
from gateway.xfrm.errors import KernelError

NETLINK_ROUTE = 0
NLM_F_ROOT = 0x100
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

MSG_NAMES = {
    RTM_NEWLINK: "NEWLINK",
    RTM_DELLINK: "DELLINK",
    RTM_GETLINK: "GETLINK",
    RTM_SETLINK: "SETLINK",
    RTM_NEWROUTE: "NEWROUTE",
    RTM_DELROUTE: "DELROUTE",
    RTM_GETROUTE: "GETROUTE",
}


class RoutingError(KernelError):
    """The kernel refused a link or route operation ("NEWLINK xfrm ipsec0 if_id=7")."""


class RtnlChannel(NetlinkChannel):
    """Requests and dumps on NETLINK_ROUTE, in the namespace `netns` (None: ours)."""

    PROTOCOL = NETLINK_ROUTE
    ERROR = RoutingError
    RCVBUF = 4 << 20  # a route dump of a full table fits; nothing here is batched big
    SNDBUF = 1 << 20

    def make_marshal(self) -> Any:
        return MarshalRtnl()

    def describe(self, msg_type: int) -> str:
        return MSG_NAMES.get(msg_type, f"type {msg_type}")

    def __enter__(self) -> RtnlChannel:
        return self


class RtnlUser:
    """Base of the managers here: one channel (given, or opened in `netns`), closed with
    the manager (a context manager)."""

    def __init__(self, channel: RtnlChannel | None = None, *, netns: str | None = None) -> None:
        self.channel = channel or RtnlChannel(netns)
        self.netns = self.channel.netns

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def payload(msg: Any) -> bytes:
    """The encoded body of a pyroute2 message (after the 16-byte netlink header, which
    the channel writes with its own sequence number)."""
    msg.encode()
    return bytes(msg.data[16:])


def get_link(channel: RtnlChannel, name: str | None = None, index: int = 0) -> Any | None:
    """RTM_GETLINK by name or index; None when there is no such link."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_IFNAME", name)] if name is not None else []
    try:
        return channel.request(RTM_GETLINK, payload(msg), f"GETLINK {name or index}")
    except RoutingError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise


def link_index(channel: RtnlChannel, name: str) -> int:
    """The index of link `name` (RoutingError ENODEV when there is none)."""
    msg = get_link(channel, name)
    if msg is None:
        raise RoutingError(f"GETLINK {name}", errno.ENODEV, f"no such interface: {name}")
    return int(msg["index"])
