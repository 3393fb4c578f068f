"""Route-based tunnel parts on the host kernel, in namespaces we create: routes in tables
with metrics (IPv4/IPv6), the path to a peer and its MTU, XFRM policies with if_id and
0.0.0.0/0 + ::/0 selectors, and the XFRM interface manager's errors. The host kernel has
no `xfrm` link kind (CONFIG_XFRM_INTERFACE off): XFRM interfaces themselves, and traffic
through them, are tested in tests/kernel/test_routing_kernel.py."""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest

from gateway.netns import Netns
from gateway.routing.interfaces import XfrmInterfaces
from gateway.routing.routes import RTPROT_GATEWAY, Route, RouteManager
from gateway.routing.rtnl import RoutingError
from gateway.xfrm import TrafficSelector, XfrmManager
from gateway.xfrm.netlink import XFRM_POLICY_OUT
from tests.support.xfrm import V4_TUNNEL, ip_xfrm_blocks, spec_pair


def kernel_routes(ns: Netns, table: str = "all") -> list[dict[str, object]]:
    out = []
    for family in ("-4", "-6"):
        text = ns.ip("-j", family, "route", "show", "table", table).stdout
        out += [r for r in json.loads(text or "[]") if r.get("type", "unicast") == "unicast"]
    return out


def test_routes_in_tables_with_metrics(netns_pair: tuple[Netns, Netns]) -> None:
    a, _ = netns_pair
    a.ip("route", "add", "10.5.0.0/24", "dev", "eth0", "metric", "5")  # the admin's
    a.ip("-6", "route", "add", "fd00:5::/64", "dev", "eth0", "table", "220")
    ours = [
        Route.parse("10.2.0.0/24", "eth0", table=220, metric=50, src="192.0.2.1"),
        Route.parse("10.3.0.0/16", "eth0", via="192.0.2.2", metric=7),
        Route.parse("fd00:2::/64", "eth0", table=1000),
        Route.parse("fd00:3::/64", "eth0", via="2001:db8::2", metric=300),
    ]
    with RouteManager(netns=a.name) as rm:
        for r in ours:
            rm.install(r)
            rm.install(r)  # ours already there: fine
        assert sorted(map(str, rm.routes())) == sorted(map(str, ours))
        got = {
            (r["dst"], str(r.get("table", "main")), r.get("metric", 0), r.get("protocol"))
            for r in kernel_routes(a)
            if r.get("protocol") == str(RTPROT_GATEWAY)
        }
        assert got == {
            ("10.2.0.0/24", "220", 50, str(RTPROT_GATEWAY)),
            ("10.3.0.0/16", "main", 7, str(RTPROT_GATEWAY)),
            ("fd00:2::/64", "1000", 1024, str(RTPROT_GATEWAY)),
            ("fd00:3::/64", "main", 300, str(RTPROT_GATEWAY)),
        }
        assert a.ip("route", "get", "10.3.1.1").stdout.startswith("10.3.1.1 via 192.0.2.2")

        # Someone else's route with the same key is neither replaced nor withdrawn.
        clash = Route.parse("10.5.0.0/24", "eth0", metric=5)
        with pytest.raises(RoutingError, match="exists in table 254 and is not ours"):
            rm.install(clash)
        assert rm.withdraw(clash) is False
        clash6 = Route.parse("fd00:5::/64", "eth0", table=220)
        with pytest.raises(RoutingError) as err:
            rm.install(clash6)
        assert err.value.errno == 17  # EEXIST
        assert rm.withdraw(clash6) is False

        # Withdraw: once True, then False (gone is fine); withdraw_all only ours.
        assert rm.withdraw(ours[0]) is True and rm.withdraw(ours[0]) is False
        assert rm.withdraw_all(table=1000) == 1
        assert sorted(map(str, rm.routes())) == sorted(map(str, [ours[1], ours[3]]))
        assert rm.withdraw_all() == 2 and rm.routes() == []
        assert a.ip("route", "show", "10.5.0.0/24", "metric", "5").stdout.strip()
        assert a.ip("-6", "route", "show", "table", "220", "fd00:5::/64").stdout.strip()

        # A route of a device that goes away goes with it; withdrawing it then is fine.
        a.ip("link", "add", "tmp0", "type", "veth", "peer", "name", "tmp1")
        a.ip("link", "set", "tmp0", "up")
        gone = Route.parse("10.9.0.0/24", "tmp0")
        rm.install(gone)
        a.ip("link", "del", "tmp0")
        assert rm.routes() == [] and rm.withdraw(gone) is False

        with pytest.raises(RoutingError, match="no such interface: nope"):
            rm.install(Route.parse("10.9.0.0/24", "nope"))


def test_path_to_a_peer_and_its_mtu(netns_pair: tuple[Netns, Netns]) -> None:
    a, _ = netns_pair
    a.ip("link", "set", "eth0", "mtu", "1400")
    with RouteManager(netns=a.name) as rm:
        p = rm.path_to("192.0.2.2")
        assert (p.dev, p.mtu, str(p.src), p.via) == ("eth0", 1400, "192.0.2.1", None)
        p6 = rm.path_to(ipaddress.ip_address("2001:db8::2"))
        assert (p6.dev, p6.mtu, str(p6.src)) == ("eth0", 1400, "2001:db8::1")
        # a route with its own MTU (as a PMTU lock would set) beats the device's
        a.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.2", "mtu", "lock", "1300")
        p = rm.path_to("198.51.100.9")
        assert (p.mtu, str(p.via)) == (1300, "192.0.2.2")
        with pytest.raises(RoutingError) as err:
            rm.path_to("203.0.113.1")  # no default route here
        assert err.value.errno == 101  # ENETUNREACH


def test_xfrm_interface_errors_on_a_kernel_without_them(netns_pair: tuple[Netns, Netns]) -> None:
    """The host kernel lacks the xfrm link kind: a clear error, nothing created. A name
    taken by another kind of link is refused and the link left alone. Addresses work on
    any link."""
    a, _ = netns_pair
    with XfrmInterfaces(netns=a.name) as xi:
        with pytest.raises(RoutingError, match="no XFRM interfaces .CONFIG_XFRM_INTERFACE."):
            xi.ensure("ipsec-east", 42, mtu=1438)
        assert xi.get("ipsec-east") is None and xi.interfaces() == []
        with pytest.raises(RoutingError, match="eth0 exists and is not an XFRM interface"):
            xi.ensure("eth0", 42, mtu=1300)
        assert "mtu 1500" in a.ip("link", "show", "eth0").stdout
        # remove() never deletes a link of another kind, even by mistake
        with pytest.raises(RoutingError, match="not an XFRM interface"):
            xi.remove("eth0", force=True)
        assert a.ip("link", "show", "eth0").returncode == 0
        xi.add_address("eth0", "169.254.10.1/30")
        xi.add_address("eth0", "169.254.10.1/30")  # already there: fine
        xi.add_address("eth0", "fd00:10::1/64")
        got = set(map(str, xi.addresses("eth0")))
        assert {"169.254.10.1/30", "fd00:10::1/64", "192.0.2.1/24"} <= got


def test_route_based_policies_on_the_kernel(netns_pair: tuple[Netns, Netns]) -> None:
    """Two tunnels with 0.0.0.0/0 and ::/0 selectors coexist in the kernel because their
    if_ids differ (the if_id is part of a policy's key), read back with their if_id, and
    one is removed without touching the other."""
    a, _ = netns_pair
    any_ts = (TrafficSelector.parse("0.0.0.0/0"), TrafficSelector.parse("::/0"))
    with XfrmManager(netns=a.name) as mgr:
        primary, _ = spec_pair(V4_TUNNEL, mgr.allocate_reqid(), mode="tunnel", encap=False)
        primary = dataclasses.replace(primary, local_ts=any_ts, remote_ts=any_ts, if_id=1)
        backup = dataclasses.replace(
            primary,
            reqid=mgr.allocate_reqid(),
            remote=ipaddress.ip_address("192.0.2.3"),
            if_id=2,
        )
        mgr.install_trap(primary)
        mgr.install_trap(backup)
        pols = mgr.policies()
        assert len(pols) == 4  # (v4, v6) x (primary, backup), out
        assert {(p.if_id, p.selector.src.version) for p in pols} == {
            (i, v) for i in (1, 2) for v in (4, 6)
        }
        assert all(p.direction == XFRM_POLICY_OUT and p.selector.dst.prefixlen == 0 for p in pols)
        blocks = ip_xfrm_blocks(a, "policy")
        assert sum("if_id 0x1" in b for b in blocks) == 2
        assert sum("if_id 0x2" in b for b in blocks) == 2
        assert any(b.startswith("src ::/0 dst ::/0") for b in blocks)
        mgr.remove_trap(primary)
        assert {p.if_id for p in mgr.policies()} == {2}
        mgr.remove_trap(backup)
        assert mgr.policies() == []
        # swanctl's distinct if_id_in/if_id_out: the out policy carries if_id_out
        split = dataclasses.replace(primary, reqid=mgr.allocate_reqid(), if_id=3, if_id_out=4)
        mgr.install_trap(split)
        assert {p.if_id for p in mgr.policies()} == {4}
        mgr.remove_trap(split)
        assert mgr.policies() == []
