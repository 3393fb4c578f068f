"""The lab's namespaces, links, addresses and routes, made and removed as one unit.

Two shapes: the lab (west, gw-west, wan, gw-east, east) and the failover lab
(`gateway lab up --failover`, docs/lab.md), where gw-west has two tunnels to two east
gateways on one east LAN:

    west ── gw-west ── wan ──┬── east-primary ──┬── east (br0: both east gateways)
                             └── east-backup  ──┘
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from importlib import resources

from gateway.netns import Netns, NetnsError, host_ip, list_ours, veth

# Node names in the order traffic crosses them.
NODES = ("west", "gw-west", "wan", "gw-east", "east")
FAILOVER_NODES = ("west", "gw-west", "wan", "east-primary", "east-backup", "east")

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
# the failover lab: the east gateways' WAN /25s off the router, their LAN addresses, and
# the tunnels' inner /30s (BGP runs between them, docs/routing.md)
PRIMARY_WAN, BACKUP_WAN = "203.0.113.2", "203.0.113.130"
ROUTER_BACKUP = "203.0.113.129"
PRIMARY_LAN, BACKUP_LAN = "10.2.0.2", "10.2.0.3"
PRIMARY_TUNNEL, BACKUP_TUNNEL = "169.254.10.2", "169.254.20.2"
WEST_TUNNELS = {"primary": "169.254.10.1", "backup": "169.254.20.1"}


@dataclass(frozen=True, slots=True)
class Topology:
    """Namespace names are `prefix + node`; one lab per prefix."""

    prefix: str = "gwlab-"
    nat: bool = False
    failover: bool = False

    @property
    def nodes(self) -> tuple[str, ...]:
        return FAILOVER_NODES if self.failover else NODES

    def ns(self, node: str) -> Netns:
        if node not in self.nodes:
            raise KeyError(node)
        return Netns(self.prefix + node)

    def names(self) -> list[str]:
        return [self.prefix + n for n in self.nodes]

    def existing(self) -> list[str]:
        """This prefix's namespaces of either shape (`down` removes whichever is up)."""
        present = set(list_ours(self.prefix))
        every = dict.fromkeys(self.prefix + n for n in (*NODES, *FAILOVER_NODES))
        return [n for n in every if n in present]

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
        for node in self.nodes:
            host_ip("netns", "add", self.prefix + node)
            self.ns(node).ip("link", "set", "lo", "up")
        if self.failover:
            self._create_failover()
            return
        west, gww, wan, gwe, east = (self.ns(n) for n in NODES)
        self._west_side(west, gww, wan)
        veth(wan, "e0", gwe, "wan0")
        veth(gwe, "lan0", east, "eth0")
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

    @staticmethod
    def _west_side(west: Netns, gww: Netns, wan: Netns) -> None:
        """The side both topologies share: the west host, gw-west, the router's west leg."""
        veth(west, "eth0", gww, "lan0")
        veth(gww, "wan0", wan, "w0")
        west.ip("addr", "add", f"{WEST_HOST}/24", "dev", "eth0")
        west.ip("route", "add", "default", "via", GW_WEST_LAN)
        gww.ip("addr", "add", f"{GW_WEST_LAN}/24", "dev", "lan0")
        gww.ip("addr", "add", f"{GW_WEST_WAN}/24", "dev", "wan0")
        gww.ip("route", "add", "default", "via", ROUTER_WEST)
        wan.ip("addr", "add", f"{ROUTER_WEST}/24", "dev", "w0")

    def _create_failover(self) -> None:
        west, gww, wan, pri, bak, east = (self.ns(n) for n in FAILOVER_NODES)
        self._west_side(west, gww, wan)
        veth(wan, "e0", pri, "wan0")
        veth(wan, "b0", bak, "wan0")
        veth(pri, "lan0", east, "to-pri")
        veth(bak, "lan0", east, "to-bak")
        wan.ip("addr", "add", f"{ROUTER_EAST}/25", "dev", "e0")
        wan.ip("addr", "add", f"{ROUTER_BACKUP}/25", "dev", "b0")
        for ns, wan_addr, router, lan in (
            (pri, PRIMARY_WAN, ROUTER_EAST, PRIMARY_LAN),
            (bak, BACKUP_WAN, ROUTER_BACKUP, BACKUP_LAN),
        ):
            ns.ip("addr", "add", f"{wan_addr}/25", "dev", "wan0")
            ns.ip("route", "add", "default", "via", router)
            ns.ip("addr", "add", f"{lan}/24", "dev", "lan0")
        # the east LAN: one bridge in the east host's namespace joins both east gateways
        east.ip("link", "add", "br0", "type", "bridge")
        for port in ("to-pri", "to-bak"):
            east.ip("link", "set", port, "master", "br0")
        east.ip("link", "set", "br0", "up")
        east.ip("addr", "add", f"{EAST_HOST}/24", "dev", "br0")
        east.ip("route", "add", "default", "via", PRIMARY_LAN)
        for ns in (gww, wan, pri, bak):
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        wan.run("nft", "-f", "-", input=router_rules("router-filter.nft"))

    def destroy(self) -> None:
        for name in reversed(self.existing()):
            Netns(name).close()


def router_rules(name: str) -> str:
    """The lab router's nftables rules, shared with the Vagrant lab's provisioning."""
    return resources.files("gateway.lab").joinpath("nft", name).read_text()
