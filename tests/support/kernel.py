"""Two of our daemons over kernel ESP (tests/kernel): their addresses, the networks they
protect, and what the kernel holds (states, policies) and passes (ping)."""

from __future__ import annotations

import re

from gateway.netns import Netns

WEST, EAST = "192.0.2.1", "192.0.2.2"


def protected_nets(a: Netns, b: Netns) -> None:
    """10.1.x.1 behind a (on its lo), 10.2.x.1 behind b, routed over the veth."""
    for x in ("0", "1"):
        a.ip("addr", "add", f"10.1.{x}.1/32", "dev", "lo")
        b.ip("addr", "add", f"10.2.{x}.1/32", "dev", "lo")
        a.ip("route", "add", f"10.2.{x}.0/24", "via", EAST)
        b.ip("route", "add", f"10.1.{x}.0/24", "via", WEST)


def states(ns: Netns) -> list[str]:
    return re.findall(r"spi (0x[0-9a-f]+)", ns.run("ip", "xfrm", "state").stdout)


def policies(ns: Netns) -> int:
    return len(re.findall(r"^src ", ns.run("ip", "xfrm", "policy").stdout, re.M))


def ping(ns: Netns, src: str, dst: str, count: int = 3) -> None:
    ns.run("ping", "-c", str(count), "-W", "5", "-I", src, dst, timeout=120)
