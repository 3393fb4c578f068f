"""Route-based tunnels against a kernel with ESP and XFRM interfaces (runs in the VM).

gw-west and gw-east each get two Child SAs from our XFRM backend, installed with an if_id
and 0.0.0.0/0 + ::/0 selectors, and an XFRM interface per if_id from gateway.routing,
its MTU derived from the path to the peer. Routes from gateway.routing decide which
tunnel carries what. One test, sharing its namespaces: the VM makes every step dear.

    west (10.1.0.1, fd00:1::1 on lo) ═ wan0 (MTU 1400) ═ east ─ lan0 ─ host (10.2.0.10, fd00:2::10)
      ipsec-v4: if_id 0x101, IPv4 outside, AES-GCM-16
      ipsec-v6: if_id 0x102, IPv6 outside, ESP-in-UDP, AES-CBC + HMAC-SHA-256
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from gateway import netns as netns_mod
from gateway.netns import Netns
from gateway.routing.interfaces import XfrmInterface, XfrmInterfaces
from gateway.routing.mtu import xfrm_interface_mtu
from gateway.routing.routes import Route, RouteManager
from gateway.routing.rtnl import RoutingError
from gateway.xfrm import TrafficSelector, XfrmManager
from gateway.xfrm.manager import InstalledChildSa
from gateway.xfrm.spec import ChildSaSpec
from tests.support.fixtures import NetnsFactory
from tests.support.xfrm import (
    CBC_SHA256,
    GCM,
    Plan,
    diagnostics,
    encap_socket,
    key_pair,
    ping,
    spec_pair,
    tcp_roundtrip,
)

ANY = (TrafficSelector.parse("0.0.0.0/0"), TrafficSelector.parse("::/0"))
OUTER4 = Plan("192.0.2.1", "192.0.2.2", net_a="0.0.0.0/0", net_b="0.0.0.0/0")
OUTER6 = Plan("2001:db8::1", "2001:db8::2", net_a="::/0", net_b="::/0")
WEST4, WEST6, HOST4, HOST6 = "10.1.0.1", "fd00:1::1", "10.2.0.10", "fd00:2::10"
IF4, IF6 = 0x101, 0x102


def route_based(
    plan: Plan, reqid: int, if_id: int, encap: bool, **kw: object
) -> tuple[ChildSaSpec, ChildSaSpec]:
    """Mirror-image specs of one route-based Child: if_id, 0.0.0.0/0 and ::/0."""
    a, b = spec_pair(plan, reqid, mode="tunnel", encap=encap, **kw)  # type: ignore[arg-type]
    a, b = (dataclasses.replace(s, local_ts=ANY, remote_ts=ANY, if_id=if_id) for s in (a, b))
    return a, b


def rekey(
    mw: XfrmManager, me: XfrmManager, cw: InstalledChildSa, ce: InstalledChildSa
) -> tuple[InstalledChildSa, InstalledChildSa]:
    """New SPIs and keys under the same reqid and if_id (make-before-break)."""
    kw, ke = key_pair(cw.spec.esp, 9)
    new_w = dataclasses.replace(
        cw.spec, spi_in=cw.spec.spi_in + 8, spi_out=cw.spec.spi_out + 8, keys_in=ke, keys_out=kw
    )
    new_e = dataclasses.replace(
        ce.spec, spi_in=ce.spec.spi_in + 8, spi_out=ce.spec.spi_out + 8, keys_in=kw, keys_out=ke
    )
    return mw.replace(cw, new_w), me.replace(ce, new_e)


def iface(xi: XfrmInterfaces, name: str) -> XfrmInterface:
    found = xi.get(name)
    assert found is not None, f"no XFRM interface {name}"
    return found


def df_ping(ns: Netns, src: str, dst: str, size: int, count: int = 1) -> tuple[int, str]:
    """Pings of `size` payload bytes with Don't Fragment: (exit status, output)."""
    argv = ["ping", "-M", "do", "-c", str(count), "-i", "0.3", "-W", "3", "-s", str(size)]
    out = ns.run(*argv, "-I", src, dst, check=False, timeout=60)
    return out.returncode, out.stdout + out.stderr


def ping_df(ns: Netns, src: str, dst: str, size: int) -> None:
    """One ping of `size` payload bytes with Don't Fragment: it must get through."""
    status, text = df_ping(ns, src, dst, size)
    assert status == 0, f"DF ping of {size} bytes {src} -> {dst}:\n{text}"


def kernel_pmtu(ns: Netns, src: str, dst: str, size: int) -> int:
    """DF pings of `size` bytes of payload: the MTU the kernel reports back."""
    _, text = df_ping(ns, src, dst, size, count=2)
    found = re.findall(r"mtu ?=? ?(\d+)", text)
    assert found, text
    return int(found[-1])


def cleartext_counters(ns: Netns) -> list[int]:
    """Packets with an inner address seen on east's WAN link (must stay 0: ESP only)."""
    out = ns.run("nft", "list", "table", "netdev", "leak").stdout
    return [int(n) for n in re.findall(r"counter packets (\d+)", out)]


def test_route_based_tunnels(make_netns: NetnsFactory) -> None:
    west, east, host = make_netns("gwrw"), make_netns("gwre"), make_netns("gwrh")
    netns_mod.veth(west, "wan0", east, "wan0", mtu=1400)
    netns_mod.veth(east, "lan0", host, "eth0")
    for ns, v4, v6 in (
        (west, "192.0.2.1/24", "2001:db8::1/64"),
        (east, "192.0.2.2/24", "2001:db8::2/64"),
    ):
        ns.ip("addr", "add", v4, "dev", "wan0")
        ns.ip("addr", "add", v6, "dev", "wan0", "nodad")
    west.ip("addr", "add", f"{WEST4}/32", "dev", "lo")
    west.ip("addr", "add", f"{WEST6}/128", "dev", "lo")
    east.ip("addr", "add", "10.2.0.1/24", "dev", "lan0")
    east.ip("addr", "add", "fd00:2::1/64", "dev", "lan0", "nodad")
    host.ip("addr", "add", f"{HOST4}/24", "dev", "eth0")
    host.ip("addr", "add", f"{HOST6}/64", "dev", "eth0", "nodad")
    host.ip("route", "add", "default", "via", "10.2.0.1")
    host.ip("-6", "route", "add", "default", "via", "fd00:2::1")
    east.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    # Anything with an inner address on east's WAN would be clear text leaving west.
    east.run(
        "nft",
        "-f",
        "-",
        input=(
            "table netdev leak {\n chain in {\n"
            "  type filter hook ingress device wan0 priority 0;\n"
            f"  ip saddr {WEST4} counter\n  ip6 saddr {WEST6} counter\n }}\n}}\n"
        ),
    )

    with (
        XfrmManager(netns=west.name) as mw,
        XfrmManager(netns=east.name) as me,
        XfrmInterfaces(netns=west.name) as xw,
        XfrmInterfaces(netns=east.name) as xe,
        RouteManager(netns=west.name) as rw,
        RouteManager(netns=east.name) as re_,
    ):
        # The NAT-T sockets after the managers: their bypass policies need the xfrm_user
        # module, which the first NETLINK_XFRM socket loads (Debian's kernel has it as one).
        sockets = [encap_socket(ns, v6=True) for ns in (west, east)]
        try:
            # -- two route-based Childs per side, an XFRM interface each ------------------
            t4w, t4e = route_based(OUTER4, mw.allocate_reqid(), IF4, False, esp=GCM)
            t6w, t6e = route_based(
                OUTER6, mw.allocate_reqid(), IF6, True, esp=CBC_SHA256, spi_base=0xC0000200
            )
            c4w, c4e = mw.install(t4w), me.install(t4e)
            c6w, c6e = mw.install(t6w), me.install(t6e)

            path = rw.path_to("192.0.2.2")
            assert (path.dev, path.mtu) == ("wan0", 1400)
            assert rw.path_to("2001:db8::2").mtu == 1400
            mtu4 = xfrm_interface_mtu(path.mtu, t4w)
            mtu6 = xfrm_interface_mtu(path.mtu, t6w)
            assert (mtu4, mtu6) == (1346, 1310)  # 1400-20-8-8-16-2; (1400-40-8-8-16-16)-2
            ifaces = {}
            for xi, ns in ((xw, west), (xe, east)):
                i4 = xi.ensure("ipsec-v4", IF4, mtu=mtu4)
                i6 = xi.ensure("ipsec-v6", IF6, mtu=mtu6, link="wan0")
                assert (i4.if_id, i4.mtu, i4.up, i4.owned) == (IF4, mtu4, True, True)
                assert (i6.if_id, i6.mtu, i6.link) == (IF6, mtu6, xi.ifindex("wan0"))
                again = xi.ensure("ipsec-v4", IF4, mtu=mtu4)  # ours, found as it is
                assert dataclasses.replace(again, stats=i4.stats) == i4
                shown = ns.ip("-d", "link", "show", "ipsec-v4").stdout
                assert "xfrm if_id 0x101" in shown and f"mtu {mtu4}" in shown
                assert "alias xdp-ipsec-gateway" in shown
                ifaces[ns.name] = (i4, i6)
            for m, child, if_id in ((mw, c4w, IF4), (me, c6e, IF6)):
                assert {sa.if_id for sa in m.read_states(child.spec)} == {if_id}
            assert {p.if_id for p in mw.policies()} == {IF4, IF6} and len(mw.policies()) == 12

            # -- routes: west sends via ipsec-v4 (table 220), ipsec-v6 is the fallback ----
            west.ip("rule", "add", "pref", "100", "lookup", "220")
            west.ip("-6", "rule", "add", "pref", "100", "lookup", "220")
            primary = [
                Route.parse("10.2.0.0/24", "ipsec-v4", table=220, metric=10, src=WEST4),
                Route.parse("fd00:2::/64", "ipsec-v4", table=220, metric=10, src=WEST6),
            ]
            fallback = [
                Route.parse("10.2.0.0/24", "ipsec-v6", metric=20, src=WEST4),
                Route.parse("fd00:2::/64", "ipsec-v6", metric=20, src=WEST6),
            ]
            back = [
                Route.parse(f"{WEST4}/32", "ipsec-v4", metric=10),
                Route.parse(f"{WEST6}/128", "ipsec-v4", metric=10),
                Route.parse(f"{WEST4}/32", "ipsec-v6", metric=20),
                Route.parse(f"{WEST6}/128", "ipsec-v6", metric=20),
            ]
            for r in primary + fallback:
                rw.install(r)
            for r in back:
                re_.install(r)

            # IPv4 and IPv6 inside an IPv4 tunnel, forwarded by east to the host.
            before, before6 = mw.counters(c4w).packets_out, mw.counters(c6w).packets_out
            ping(west, WEST4, HOST4, peer=east)
            ping(west, WEST6, HOST6, peer=east)
            assert tcp_roundtrip(west, host, WEST4, HOST4) == 200_000
            assert mw.counters(c4w).packets_out >= before + 6
            assert mw.counters(c6w).packets_out <= before6 + 2  # not this way
            # A packet of exactly the interface MTU crosses; the kernel's own ESP
            # arithmetic agrees with ours (interface at 1500: it reports the real limit).
            ping_df(west, WEST4, HOST4, mtu4 - 28)
            xw.set_mtu("ipsec-v4", 1500)
            assert kernel_pmtu(west, WEST4, HOST4, mtu4 - 28 + 1) == mtu4
            xw.set_mtu("ipsec-v4", mtu4)

            # Rekey and MOBIKE move the SAs under the interface; traffic keeps flowing.
            c4w, c4e = rekey(mw, me, c4w, c4e)
            assert {sa.if_id for sa in mw.read_states(c4w.spec)} == {IF4}
            ping(west, WEST4, HOST4, count=2)
            west.ip("addr", "add", "198.51.100.1/24", "dev", "wan0")
            east.ip("addr", "add", "198.51.100.2/24", "dev", "wan0")
            a, b = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.2")
            c4w, c4e = mw.migrate(c4w, a, b), me.migrate(c4e, b, a)
            ping(west, WEST6, HOST6, count=2)
            assert mw.counters(c4w).packets_out >= 2
            assert iface(xw, "ipsec-v4").index == ifaces[west.name][0].index

            # -- the primary's routes withdrawn: IPv4 and IPv6 inside an IPv6 tunnel -------
            for r in primary:
                assert rw.withdraw(r)
            before6 = mw.counters(c6w).packets_out
            ping(west, WEST4, HOST4, peer=east)
            ping(west, WEST6, HOST6, peer=east)
            assert mw.counters(c6w).packets_out >= before6 + 6
            ping_df(west, WEST6, HOST6, mtu6 - 48)
            xw.set_mtu("ipsec-v6", 1500)
            assert kernel_pmtu(west, WEST4, HOST4, mtu6 - 28 + 1) == mtu6
            xw.set_mtu("ipsec-v6", mtu6)

            # -- no SA behind the interface: dropped there, nothing leaves in clear -------
            mw.delete(c6w)
            errors = iface(xw, "ipsec-v6").stats.tx_carrier_errors
            lost = west.run(
                "ping", "-c", "2", "-i", "0.3", "-W", "1", "-I", WEST4, HOST4, check=False
            )
            assert lost.returncode != 0
            assert iface(xw, "ipsec-v6").stats.tx_carrier_errors >= errors + 2
            # The Child negotiated again (new SPIs and keys): same interface, traffic again.
            me.delete(c6e)
            t6w, t6e = route_based(
                OUTER6, t6w.reqid, IF6, True, esp=CBC_SHA256, spi_base=0xC0000300
            )
            c6w, c6e = mw.install(t6w), me.install(t6e)
            ping(west, WEST4, HOST4, count=2, peer=east)
            assert iface(xw, "ipsec-v6").index == ifaces[west.name][1].index
            assert cleartext_counters(east) == [0, 0]

            # -- adopt an interface made by someone else; remove only ours ----------------
            west.ip("link", "add", "ipsec-x", "type", "xfrm", "if_id", "0x103")
            x = xw.ensure("ipsec-x", 0x103, mtu=1300)
            assert (x.owned, x.mtu, x.up) == (False, 1300, True)
            try:
                xw.ensure("ipsec-x", 0x104)
                raise AssertionError("an if_id mismatch must be refused")
            except RoutingError as exc:
                assert "exists with if_id 259, not 260" in str(exc)
            assert xw.remove("ipsec-x") is False and xw.get("ipsec-x") is not None
            assert xw.remove("ipsec-v6") is True and xw.get("ipsec-v6") is None
            assert [r for r in rw.routes() if r.dev == "ipsec-v6"] == []  # went with it
            assert {i.name for i in xw.interfaces()} == {"ipsec-v4", "ipsec-x"}
        except AssertionError:
            print(diagnostics(west), diagnostics(east), sep="\n")
            raise
        finally:
            for s in sockets:
                s.close()
            for m in (mw, me):
                m.flush()
