"""Route-based tunnels, the pure parts: interface MTU, rtnetlink requests, XFRM policies
of a route-based Child SA (if_id + 0.0.0.0/0 and ::/0), validation."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from bpf.mtu import MtuError
from gateway.routing import interfaces as ifs
from gateway.routing.mtu import esp_overhead, xfrm_interface_mtu
from gateway.routing.routes import (
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_COMPAT,
    RTPROT_GATEWAY,
    Route,
    route_payload,
    same_route,
)
from gateway.routing.rtnl import RTM_NEWLINK, RTM_NEWROUTE
from gateway.xfrm import netlink as nl
from gateway.xfrm import wire
from gateway.xfrm.manager import policy_bodies, state_body
from gateway.xfrm.model import PolicyInfo
from gateway.xfrm.spec import ChildSaSpec, EspTransform, SaKeys, TrafficSelector, UdpEncap

GCM = EspTransform(aead="rfc4106(gcm(aes))", icv_bits=128)
GCM8 = EspTransform(aead="rfc4106(gcm(aes))", icv_bits=64)
CHACHA = EspTransform(aead="rfc7539esp(chacha20,poly1305)", icv_bits=128)
CBC_SHA256 = EspTransform(crypt="cbc(aes)", integ="hmac(sha256)", trunc_bits=128)
CBC_SHA384 = EspTransform(crypt="cbc(aes)", integ="hmac(sha384)", trunc_bits=192)
CBC_SHA512 = EspTransform(crypt="cbc(aes)", integ="hmac(sha512)", trunc_bits=256)
ANY = (TrafficSelector.parse("0.0.0.0/0"), TrafficSelector.parse("::/0"))


def spec(outer: str = "4", esp: EspTransform = GCM, nat: bool = False, **kw: Any) -> ChildSaSpec:
    local, remote = ("192.0.2.1", "192.0.2.2") if outer == "4" else ("2001:db8::1", "2001:db8::2")
    base: dict[str, Any] = dict(
        local=ipaddress.ip_address(local),
        remote=ipaddress.ip_address(remote),
        spi_in=0xC1000001,
        spi_out=0xC2000002,
        reqid=0x4E470001,
        esp=esp,
        keys_in=SaKeys(bytes(20)),
        keys_out=SaKeys(bytes(20)),
        local_ts=ANY,
        remote_ts=ANY,
        encap=UdpEncap() if nat else None,
        if_id=42,
    )
    base.update(kw)
    return ChildSaSpec(**base)


# -- MTU ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path_mtu, s, mtu",
    [
        # outer + [UDP] + SPI/seq 8 + IV + ICV, rounded down to the block, minus 2 (trailer)
        (1500, spec("4", GCM), 1446),  # 1500-20-8-8-16 = 1448 -> 1446
        (1500, spec("4", GCM, nat=True), 1438),  # 8 more for UDP: 1440 -> 1438
        (1500, spec("6", GCM), 1426),  # 1500-40-8-8-16 = 1428 -> 1426
        (1500, spec("6", GCM, nat=True), 1418),
        (1500, spec("4", GCM8), 1454),  # an 8-byte ICV: 1456 -> 1454
        (1500, spec("4", CHACHA), 1446),  # IV 8, ICV 16, block 1 (4-byte alignment)
        (1500, spec("6", CHACHA, nat=True), 1418),
        (1500, spec("4", CBC_SHA256), 1438),  # IV 16, ICV 16: 1440 = 90*16 -> 1438
        (1500, spec("4", CBC_SHA512), 1422),  # ICV 32: 1424 = 89*16 -> 1422
        (1500, spec("6", CBC_SHA384, nat=True), 1390),  # 1404 -> 87*16 = 1392 -> 1390
        (1400, spec("6", CBC_SHA256, nat=True), 1310),  # 1400-40-8-8-16-16 = 1312 -> 1310
        (9000, spec("4", GCM), 8946),
    ],
)
def test_interface_mtu_by_hand(path_mtu: int, s: ChildSaSpec, mtu: int) -> None:
    assert xfrm_interface_mtu(path_mtu, s) == mtu


def wire_size(inner: int, s: ChildSaSpec) -> int:
    """One tunnel-mode ESP packet carrying `inner` bytes, field by field (RFC 4303 §2)."""
    o = esp_overhead(s.esp)
    pad = -(inner + 2) % o.align
    outer = 40 if s.remote.version == 6 else 20
    udp = 8 if s.encap else 0
    return outer + udp + 8 + o.iv_size + inner + pad + 2 + o.icv_size


@pytest.mark.parametrize("esp", [GCM, GCM8, CHACHA, CBC_SHA256, CBC_SHA384, CBC_SHA512])
@pytest.mark.parametrize("outer", ["4", "6"])
@pytest.mark.parametrize("nat", [False, True])
def test_interface_mtu_is_the_largest_that_fits(esp: EspTransform, outer: str, nat: bool) -> None:
    for path_mtu in (1280, 1400, 1500, 9000):
        s = spec(outer, esp, nat)
        mtu = xfrm_interface_mtu(path_mtu, s)
        assert wire_size(mtu, s) <= path_mtu
        # nothing larger fits (padding can absorb up to a block: try a block's worth)
        assert all(wire_size(mtu + k, s) > path_mtu for k in range(1, 17))


def test_interface_mtu_of_several_children_is_the_smallest() -> None:
    a, b = spec("4", GCM), spec("6", CBC_SHA256, nat=True)
    assert xfrm_interface_mtu(1500, a, b) == min(
        xfrm_interface_mtu(1500, a), xfrm_interface_mtu(1500, b)
    )


def test_transport_mode_covers_both_inner_families() -> None:
    s = spec("4", CBC_SHA256, mode="transport", local_ts=(), remote_ts=())
    # IPv4 inside: 20 + floor((1500-20-40)/16)*16 - 2 = 1458; IPv6: 40 + 1408 - 2 = 1446
    assert xfrm_interface_mtu(1500, s) == 1446


def test_unknown_algorithm_is_an_error_not_a_guess() -> None:
    s = spec("4", EspTransform(crypt="cbc(des3_ede)", integ="hmac(md5)", trunc_bits=96))
    with pytest.raises(ValueError, match="cbc\\(des3_ede\\).*not known"):
        xfrm_interface_mtu(1500, s)
    with pytest.raises(ValueError):
        xfrm_interface_mtu(1500)


def test_path_too_small_is_an_error() -> None:
    with pytest.raises(MtuError):
        xfrm_interface_mtu(80, spec("6", CBC_SHA512, nat=True))


# -- XFRM policies of a route-based Child --------------------------------------------------


def test_route_based_policies_carry_if_id_and_any_selectors() -> None:
    """0.0.0.0/0 and ::/0 on both sides, if_id on every policy (add and delete), the
    template's family is the outer one (IPv6 inside an IPv4 tunnel)."""
    s = spec("4", GCM)
    bodies = policy_bodies(s)
    assert len(bodies) == 6  # (v4 pair, v6 pair) x (in, fwd, out)
    seen = set()
    for _what, new, delete in bodies:
        data = wire.message(nl.XFRM_MSG_NEWPOLICY, 1, 1, new)
        (msg,) = list(nl.MarshalXfrm().parse(data))
        p = PolicyInfo.from_msg(msg)
        assert p.if_id == 42
        assert p.selector.src.prefixlen == 0 and p.selector.dst.prefixlen == 0
        (tmpl,) = p.templates
        assert (str(tmpl.src), str(tmpl.dst)) in {
            ("192.0.2.1", "192.0.2.2"),
            ("192.0.2.2", "192.0.2.1"),
        }
        assert tmpl.reqid == s.reqid
        seen.add((p.selector.src.version, p.direction))
        # DELPOLICY must name the if_id too: the kernel keys policies by it
        assert wire.nla(31, wire.u32(42)) in delete
    assert seen == {(v, d) for v in (4, 6) for d in (0, 1, 2)}


def test_tunnel_states_take_either_inner_family() -> None:
    """XFRM_STATE_AF_UNSPEC on tunnel-mode states (both directions), so IPv6 can ride an
    IPv4 tunnel; transport mode keeps the kernel's default (the outer family)."""
    for s, want in ((spec("4", GCM), True), (spec("6", CBC_SHA256, nat=True), True)):
        for inbound in (True, False):
            data = wire.message(nl.XFRM_MSG_NEWSA, 1, 1, state_body(s, inbound))
            (msg,) = list(nl.MarshalXfrm().parse(data))
            assert bool(msg["flags"] & nl.XFRM_STATE_AF_UNSPEC) is want
            assert msg.get_attr("XFRMA_IF_ID") == 42
    transport = spec("4", GCM, mode="transport", local_ts=(), remote_ts=())
    data = wire.message(nl.XFRM_MSG_NEWSA, 1, 1, state_body(transport, False))
    (msg,) = list(nl.MarshalXfrm().parse(data))
    assert not msg["flags"] & nl.XFRM_STATE_AF_UNSPEC


def test_distinct_if_id_in_and_out() -> None:
    """swanctl's if_id_in != if_id_out: the inbound state and the in/fwd policies carry
    if_id_in, the outbound state and the out policy if_id_out (add and delete alike)."""
    s = spec("4", GCM, if_id=7, if_id_out=9)
    for inbound, want in ((True, 7), (False, 9)):
        data = wire.message(nl.XFRM_MSG_NEWSA, 1, 1, state_body(s, inbound))
        (msg,) = list(nl.MarshalXfrm().parse(data))
        assert msg.get_attr("XFRMA_IF_ID") == want
    for _what, new, delete in policy_bodies(s):
        (msg,) = list(nl.MarshalXfrm().parse(wire.message(nl.XFRM_MSG_NEWPOLICY, 1, 1, new)))
        p = PolicyInfo.from_msg(msg)
        want = 9 if p.direction == nl.XFRM_POLICY_OUT else 7
        assert p.if_id == want and wire.nla(31, wire.u32(want)) in delete
    with pytest.raises(ValueError, match="if_id_out needs if_id"):
        spec("4", GCM, if_id=None, if_id_out=9)
    with pytest.raises(ValueError, match="if_id must be"):
        spec("4", GCM, if_id=0)


def test_two_tunnels_with_any_selectors_differ_only_by_if_id() -> None:
    """Primary and backup tunnels both carry 0.0.0.0/0: their policies are distinct kernel
    objects because the if_id is part of the key (add and delete bodies differ)."""
    a = policy_bodies(spec("4", GCM, if_id=1))
    b = policy_bodies(spec("4", GCM, if_id=2, remote=ipaddress.ip_address("192.0.2.3")))
    assert {d for _, _, d in a}.isdisjoint({d for _, _, d in b})


# -- rtnetlink requests -------------------------------------------------------------------


def decode(msg_type: int, body: bytes) -> Any:
    header = (16 + len(body)).to_bytes(4, "little") + msg_type.to_bytes(2, "little")
    data = header + (1).to_bytes(2, "little") + bytes(8) + body
    (msg,) = list(MarshalRtnl().parse(data))
    return msg


def test_newlink_request_is_an_xfrm_link_with_if_id() -> None:
    msg = decode(RTM_NEWLINK, ifs.newlink_payload("ipsec-east", 7, mtu=1438, link=3))
    assert msg.get_attr("IFLA_IFNAME") == "ipsec-east"
    assert msg.get_attr("IFLA_MTU") == 1438
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "xfrm"
    data = info.get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_XFRM_IF_ID") == 7 and data.get_attr("IFLA_XFRM_LINK") == 3


def test_interface_read_back_from_a_link_message() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    m = ifinfmsg()
    m["index"] = 9
    m["flags"] = ifs.IFF_UP
    m["attrs"] = [
        ("IFLA_IFNAME", "ipsec-east"),
        ("IFLA_MTU", 1438),
        ("IFLA_IFALIAS", ifs.OWNER_ALIAS),
        (
            "IFLA_LINKINFO",
            {
                "attrs": [
                    ("IFLA_INFO_KIND", "xfrm"),
                    ("IFLA_INFO_DATA", {"attrs": [("IFLA_XFRM_IF_ID", 7)]}),
                ]
            },
        ),
    ]
    iface = ifs.interface_from_msg(decode(RTM_NEWLINK, _body(m)))
    assert iface == ifs.XfrmInterface("ipsec-east", 9, 7, 1438, True, 0, True)
    m["attrs"] = [("IFLA_IFNAME", "eth0"), ("IFLA_MTU", 1500)]
    assert ifs.interface_from_msg(decode(RTM_NEWLINK, _body(m))) is None


def _body(m: Any) -> bytes:
    m.encode()
    return bytes(m.data[16:])


@pytest.mark.parametrize("name", ["", "a" * 16, "ipsec east", "a/b", "x:1", ".."])
def test_bad_interface_names(name: str) -> None:
    with pytest.raises(ValueError):
        ifs.check_name(name)


def test_bad_if_id_and_mtu() -> None:
    for bad in (0, -1, 1 << 32):
        with pytest.raises(ValueError):
            ifs.check_if_id(bad)
    for bad in (67, 65536):
        with pytest.raises(ValueError):
            ifs.check_mtu(bad)
    ifs.check_name("ipsec-east12345")  # 15 characters: the kernel's limit


@pytest.mark.parametrize(
    "route, table_field, scope",
    [
        (Route.parse("10.2.0.0/24", "ipsec0", table=220, metric=50), 220, RT_SCOPE_LINK),
        (Route.parse("10.2.0.0/24", "ipsec0", table=1000), RT_TABLE_COMPAT, RT_SCOPE_LINK),
        (Route.parse("fd00:2::/64", "ipsec0"), 254, RT_SCOPE_UNIVERSE),
        (Route.parse("10.3.0.0/16", "eth0", via="192.0.2.2"), 254, RT_SCOPE_UNIVERSE),
    ],
)
def test_route_request(route: Route, table_field: int, scope: int) -> None:
    msg = decode(RTM_NEWROUTE, route_payload(route, 5, RTPROT_GATEWAY))
    assert msg["table"] == table_field and msg.get_attr("RTA_TABLE") == route.table
    assert msg["proto"] == RTPROT_GATEWAY and msg["scope"] == scope
    assert msg["dst_len"] == route.dst.prefixlen
    assert msg.get_attr("RTA_DST") == str(route.dst.network_address)
    assert msg.get_attr("RTA_OIF") == 5
    # IPv6 metric 0 is the kernel's default 1024 (as `ip -6 route add` does it)
    assert msg.get_attr("RTA_PRIORITY") == (1024 if route.dst.version == 6 else route.metric)
    assert msg.get_attr("RTA_GATEWAY") == (str(route.via) if route.via else None)


def test_route_validation_and_identity() -> None:
    with pytest.raises(ValueError):
        Route.parse("10.2.0.0/24", "x", table=255)  # the local table is the kernel's
    with pytest.raises(ValueError):
        Route.parse("10.2.0.0/24", "x", via="2001:db8::1")
    with pytest.raises(ValueError):
        Route.parse("10.2.0.1/24", "x")  # host bits set: a typo, not a network
    a = Route.parse("fd00::/64", "x")
    assert same_route(a, Route.parse("fd00::/64", "x", metric=1024))
    assert not same_route(a, Route.parse("fd00::/64", "x", table=220))
