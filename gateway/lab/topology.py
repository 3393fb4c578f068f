"""The lab's namespaces, links, addresses and routes, made and removed as one unit."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from importlib import resources

from gateway.netns import Netns, NetnsError, host_ip, list_ours, veth

# Node names in the order traffic crosses them.
NODES = ("west", "gw-west", "wan", "gw-east", "east")

WEST_HOST = "10.1.0.10"
EAST_HOST = "10.2.0.10"
WEST_LAN = "10.1.0.0/24"
EAST_LAN = "10.2.0.0/24"
GW_WEST_WAN = "198.51.100.2"
GW_EAST_WAN = "203.0.113.2"
GW_WEST_LAN = "10.1.0.1"
GW_EAST_LAN = "10.2.0.1"
ROUTER_WEST = "198.51.100.1"
ROUTER_EAST = "203.0.113.1"  # also gw-west's address as gw-east sees it behind the NAT


@dataclass(frozen=True, slots=True)
class Topology:
    """Namespace names are `prefix + node`; one lab per prefix."""

    prefix: str = "gwlab-"
    nat: bool = False

    def ns(self, node: str) -> Netns:
        if node not in NODES:
            raise KeyError(node)
        return Netns(self.prefix + node)

    def names(self) -> list[str]:
        return [self.prefix + n for n in NODES]

    def existing(self) -> list[str]:
        present = set(list_ours(self.prefix))
        return [n for n in self.names() if n in present]

    def create(self) -> None:
        """Build everything; on any failure remove what was built and re-raise."""
        if self.existing():
            raise NetnsError(
                f"a lab is already up ({', '.join(self.existing())}): run `gateway lab down`"
            )
        try:
            self._create()
        except (NetnsError, subprocess.SubprocessError, OSError):
            self.destroy()
            raise

    def _create(self) -> None:
        for node in NODES:
            host_ip("netns", "add", self.prefix + node)
            self.ns(node).ip("link", "set", "lo", "up")
        west, gww, wan, gwe, east = (self.ns(n) for n in NODES)
        veth(west, "eth0", gww, "lan0")
        veth(gww, "wan0", wan, "w0")
        veth(wan, "e0", gwe, "wan0")
        veth(gwe, "lan0", east, "eth0")

        west.ip("addr", "add", f"{WEST_HOST}/24", "dev", "eth0")
        west.ip("route", "add", "default", "via", GW_WEST_LAN)
        gww.ip("addr", "add", f"{GW_WEST_LAN}/24", "dev", "lan0")
        gww.ip("addr", "add", f"{GW_WEST_WAN}/24", "dev", "wan0")
        gww.ip("route", "add", "default", "via", ROUTER_WEST)
        wan.ip("addr", "add", f"{ROUTER_WEST}/24", "dev", "w0")
        wan.ip("addr", "add", f"{ROUTER_EAST}/24", "dev", "e0")
        gwe.ip("addr", "add", f"{GW_EAST_WAN}/24", "dev", "wan0")
        gwe.ip("route", "add", "default", "via", ROUTER_EAST)
        gwe.ip("addr", "add", f"{GW_EAST_LAN}/24", "dev", "lan0")
        east.ip("addr", "add", f"{EAST_HOST}/24", "dev", "eth0")
        east.ip("route", "add", "default", "via", GW_EAST_LAN)
        for ns in (gww, wan, gwe):
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The router's rules are the Vagrant lab's too (gateway/lab/nft/*.nft).
        wan.run("nft", "-f", "-", input=router_rules("router-filter.nft"))
        if self.nat:
            # gw-west sits behind a masquerading router: gw-east sees it as ROUTER_EAST
            # with translated ports, so IKE moves to UDP 4500 and ESP is UDP-encapsulated.
            nat = router_rules("router-nat.nft").replace("WAN_EAST_IF", "e0")
            wan.run("nft", "-f", "-", input=nat)

    def destroy(self) -> None:
        for name in reversed(self.existing()):
            Netns(name).close()


def router_rules(name: str) -> str:
    """The lab router's nftables rules, shared with the Vagrant lab's provisioning."""
    return resources.files("gateway.lab").joinpath("nft", name).read_text()
