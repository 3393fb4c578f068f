"""Routing-driven failover with real FRR (zebra, bgpd, bfdd) in namespaces, running the
configurations of docs/routing.md word for word: eBGP + BFD (100 ms x 3) from gw-west to
east-primary and east-backup, the east LAN announced by both (the backup with a longer AS
path), iBGP between the east gateways. Veth links stand in for the tunnels (no IPsec
here); east-primary's "tunnel" fails by its interface going down, which gw-west cannot
see: only BFD tells it. The route must move to the backup within about a second and come
back; a UDP stream at 100/s measures the loss windows and a TCP stream must survive both
switches. Then the active/active variant: both next hops (ECMP).

    west (10.1.0.1 on lo) ─ ipsec-pri ══ ipsec-west [br] east-primary lan0 ─ to-pri ┐
                          ─ ipsec-bak ══ ipsec-west [br] east-backup  lan0 ─ to-bak ┴ br0
                                                                     east host 10.2.0.10
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import netns as netns_mod
from gateway.lab.failover import FRR_DAEMONS, east_lan_next_hops, frr_config
from gateway.netns import Netns
from tests.support.failover import TcpStream, UdpStream
from tests.support.fixtures import NetnsFactory
from tests.support.frr import Frr

DOC = Path(__file__).resolve().parents[2] / "docs" / "routing.md"
PRIMARY, BACKUP = "169.254.10.2", "169.254.20.2"
EAST_LAN = "10.2.0.0/24"
EAST_HOST, WEST_SRC = "10.2.0.10", "10.1.0.1"


def doc_configs() -> dict[str, str]:
    """The FRR configurations of docs/routing.md by name (<!-- frr-config: NAME -->)."""
    text = DOC.read_text()
    found = re.findall(r"<!-- frr-config: ([\w-]+) -->\n```text\n(.*?)```", text, re.S)
    return dict(found)


def link_in_bridge(ns: Netns, port: str, bridge: str) -> None:
    """Put `port` (already up) into a new bridge `bridge`, which gets the address."""
    ns.ip("link", "add", bridge, "type", "bridge")
    ns.ip("link", "set", port, "master", bridge)
    ns.ip("link", "set", bridge, "up")


def east_lan_route(west: Netns) -> set[str]:
    """Next hops of gw-west's kernel route to the east LAN (empty: none, or the blackhole)."""
    return east_lan_next_hops(west, EAST_LAN)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll every 10 ms; return how long it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def topology(make_netns: NetnsFactory) -> dict[str, Netns]:
    west, pri, bak, host = (make_netns(p) for p in ("gwfw", "gwfp", "gwfb", "gwfh"))
    netns_mod.veth(west, "ipsec-pri", pri, "tun0")
    netns_mod.veth(west, "ipsec-bak", bak, "tun0")
    west.ip("addr", "add", "169.254.10.1/30", "dev", "ipsec-pri")
    west.ip("addr", "add", "169.254.20.1/30", "dev", "ipsec-bak")
    west.ip("addr", "add", f"{WEST_SRC}/24", "dev", "lo")  # the west LAN
    east = ((pri, PRIMARY, "10.2.0.2/24", "to-pri"), (bak, BACKUP, "10.2.0.3/24", "to-bak"))
    for ns, addr, lan, port in east:
        link_in_bridge(ns, "tun0", "ipsec-west")
        ns.ip("addr", "add", f"{addr}/30", "dev", "ipsec-west")
        netns_mod.veth(ns, "lan0", host, port)
        ns.ip("addr", "add", lan, "dev", "lan0")
    host.ip("link", "add", "br0", "type", "bridge")
    for *_, port in east:
        host.ip("link", "set", port, "master", "br0")
    host.ip("link", "set", "br0", "up")
    host.ip("addr", "add", f"{EAST_HOST}/24", "dev", "br0")
    host.ip("route", "add", "default", "via", "10.2.0.2")
    return {"west": west, "primary": pri, "backup": bak, "host": host}


def test_bgp_bfd_failover_and_back(topology: dict[str, Netns]) -> None:
    configs = doc_configs()
    assert set(configs) == {"gw-west", "east-primary", "east-backup"}
    for name, text in configs.items():  # the recipe is what the failover lab runs
        assert text == frr_config(name), name
    assert frr_config("east-backup", ecmp=True) == configs["east-backup"].replace(
        " set as-path prepend 65002 65002\n", ""
    )
    west, pri, bak = topology["west"], topology["primary"], topology["backup"]
    started = time.monotonic()
    with (
        Frr(west, daemons=FRR_DAEMONS["gw-west"]) as fw,
        Frr(pri, daemons=FRR_DAEMONS["east-primary"]) as fp,
        Frr(bak, daemons=FRR_DAEMONS["east-backup"]) as fb,
    ):
        fw.start(configs["gw-west"])
        fp.start(configs["east-primary"])
        fb.start(configs["east-backup"])
        fp.wait_bgp(["169.254.10.1", "10.2.0.3"])
        fb.wait_bgp(["169.254.20.1", "10.2.0.2"])
        fw.wait_bgp([PRIMARY, BACKUP])
        fw.wait_bfd([PRIMARY, BACKUP])
        wait_for(lambda: east_lan_route(west) == {PRIMARY}, 10, "route via the primary")
        converged = time.monotonic() - started

        udp = UdpStream(
            EAST_HOST,
            5400,
            src=WEST_SRC,
            sender_netns=west.name,
            receiver_netns=topology["host"].name,
        ).start()
        tcp = TcpStream(
            EAST_HOST, src=WEST_SRC, client_netns=west.name, server_netns=topology["host"].name
        ).start()
        time.sleep(1.0)

        # The primary's tunnel dies: gw-west's link stays up, only BFD can tell.
        pri.ip("link", "set", "ipsec-west", "down")
        failover = wait_for(lambda: east_lan_route(west) == {BACKUP}, 5, "route via backup")
        assert fw.bfd_states()[PRIMARY] == "down"
        assert fw.bgp_states()[PRIMARY] != "Established"
        time.sleep(1.5)

        pri.ip("link", "set", "ipsec-west", "up")
        failback = wait_for(lambda: east_lan_route(west) == {PRIMARY}, 20, "route back")
        time.sleep(1.0)
        u, t = udp.stop(drain=0.5), tcp.stop()

        print(
            f"\nFRR converged in {converged:.1f} s; route to the backup after "
            f"{failover * 1000:.0f} ms, back to the primary after {failback:.1f} s; "
            f"UDP loss windows (ms): {[round(w.duration * 1000) for w in u.windows]}; "
            f"TCP survived={t.survived} longest stall {t.longest_stall * 1000:.0f} ms"
        )
        # BFD at 100 ms x 3 plus BGP and zebra: about half a second; bounded loosely
        # for a shared machine.
        assert failover < 1.5
        assert u.windows, "the failover must show as lost datagrams"
        assert u.windows[0].duration < 1.5
        assert all(w.duration < 1.5 for w in u.windows)  # the way back loses little
        assert u.received > 0.9 * u.sent
        assert t.survived, t.error
        assert t.longest_stall < 3.0

        # Active/active: east-backup without the longer AS path -> two next hops.
        fb.configure("route-map TO-WEST permit 10", "no set as-path prepend")
        fb.vtysh("clear bgp ipv4 unicast 169.254.20.1 soft out")
        wait_for(lambda: east_lan_route(west) == {PRIMARY, BACKUP}, 10, "ECMP")
        pri.ip("link", "set", "ipsec-west", "down")
        wait_for(lambda: east_lan_route(west) == {BACKUP}, 5, "ECMP minus the primary")
        # Neither tunnel: the floating blackhole (distance 250) drops the east LAN's
        # traffic rather than letting it follow the default route in clear.
        bak.ip("link", "set", "ipsec-west", "down")
        wait_for(lambda: "blackhole" in west.ip("route", "show", EAST_LAN).stdout, 5, "blackhole")
        assert east_lan_route(west) == set()
        # gw-west's own tunnel link down takes its connected /30 with it: the covering
        # blackhole drops what is sent to the peer's tunnel address (a BGP FIN or SYN),
        # where the default route would send it in clear
        west.ip("route", "add", "default", "dev", "lo")
        west.ip("link", "set", "ipsec-pri", "down")
        for ns in (west, pri):  # pri: its ipsec-west is down since the ECMP check
            wait_for(
                lambda ns=ns: "blackhole" in ns.ip("route", "show", "169.254.10.0/24").stdout,
                5,
                "the tunnel addresses' blackhole",
            )
        route = west.run("ip", "route", "get", PRIMARY, check=False)
        assert "dev lo" not in route.stdout, route.stdout  # not the default route
