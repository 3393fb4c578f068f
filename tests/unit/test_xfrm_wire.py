"""Fast encoders (gateway.xfrm.wire) vs the declarative pyroute2 codec (gateway.xfrm.netlink).

Every request the manager builds is decoded with the pyroute2 classes and re-encoded by
them: the bytes must be identical, and the decoded values must be what the spec said.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.xfrm import netlink as nl
from gateway.xfrm import wire
from gateway.xfrm.manager import policy_bodies, state_body
from gateway.xfrm.model import PolicyInfo, SaInfo
from gateway.xfrm.scan import scan_policy, scan_state
from gateway.xfrm.spec import (
    ChildSaSpec,
    EspTransform,
    Lifetime,
    Mark,
    SaKeys,
    TrafficSelector,
    UdpEncap,
)

GCM = EspTransform(aead="rfc4106(gcm(aes))", icv_bits=128)
CBC = EspTransform(crypt="cbc(aes)", integ="hmac(sha256)", trunc_bits=128)


def spec(**kw: object) -> ChildSaSpec:
    base: dict[str, object] = dict(
        local=ipaddress.ip_address("192.0.2.1"),
        remote=ipaddress.ip_address("192.0.2.2"),
        spi_in=0xC1000001,
        spi_out=0xC2000002,
        reqid=0x4E470001,
        esp=GCM,
        keys_in=SaKeys(bytes(range(20))),
        keys_out=SaKeys(bytes(range(20, 40))),
        local_ts=(TrafficSelector.parse("10.1.0.0/24"),),
        remote_ts=(TrafficSelector.parse("10.2.0.0/16", proto=6, port=443),),
    )
    base.update(kw)
    return ChildSaSpec(**base)  # type: ignore[arg-type]


def roundtrip(msg_type: int, body: bytes) -> Any:
    """Decode with pyroute2, re-encode with pyroute2, require identical bytes."""
    data = wire.message(msg_type, 1, 7, body)
    (msg,) = list(nl.MarshalXfrm().parse(data))
    cls: Any = nl.MarshalXfrm.msg_map[msg_type]
    again = cls()
    for key, value in msg.items():
        if key not in ("header", "attrs", "event"):
            again[key] = value
    again["attrs"] = [[a[0], a[1]] for a in msg["attrs"]]
    again["header"]["type"] = msg_type
    again["header"]["flags"] = 1
    again["header"]["sequence_number"] = 7
    again.encode()
    assert bytes(again.data) == data
    return msg


@pytest.mark.parametrize("inbound", [True, False])
@pytest.mark.parametrize("esp", [GCM, CBC])
def test_state_message_roundtrip(inbound: bool, esp: EspTransform) -> None:
    keys = SaKeys(bytes(range(16)), bytes(range(32))) if esp.crypt else SaKeys(bytes(range(20)))
    s = spec(
        esp=esp,
        keys_in=keys,
        keys_out=keys,
        encap=UdpEncap(4500, 4501),
        esn=True,
        lifetime=Lifetime(soft_bytes=10, hard_bytes=20, soft_packets=3, hard_packets=6),
        mark=Mark(5, 0xFF),
        if_id=9,
        set_mark=0x42,
    )
    body = state_body(s, inbound, offload=(3, nl.XFRM_OFFLOAD_INBOUND))
    msg = roundtrip(nl.XFRM_MSG_NEWSA, body)
    sa = SaInfo.from_msg(msg)
    assert sa.spi == (s.spi_in if inbound else s.spi_out)
    assert (str(sa.src), str(sa.dst)) == (
        ("192.0.2.2", "192.0.2.1") if inbound else ("192.0.2.1", "192.0.2.2")
    )
    assert sa.reqid == s.reqid and sa.mode == nl.XFRM_MODE_TUNNEL and sa.esn
    assert sa.encap == ((2, 4501, 4500) if inbound else (2, 4500, 4501))
    assert sa.replay_window == 1024
    assert (sa.soft_packet_limit, sa.hard_packet_limit, sa.hard_byte_limit) == (3, 6, 20)
    assert sa.mark == (5, 0xFF) and sa.if_id == 9
    assert sa.set_mark == (None if inbound else 0x42)
    assert sa.offload == "crypto" and sa.offload_ifindex == 3
    if esp.aead:
        assert (sa.aead, sa.icv_or_trunc_bits, sa.encr_key) == (esp.aead, 128, keys.encr)
    else:
        assert (sa.crypt, sa.auth, sa.integ_key) == ("cbc(aes)", "hmac(sha256)", keys.integ)
    assert keys.encr.hex() not in repr(sa) and keys.encr.hex() not in repr(s)


def test_policy_messages_roundtrip() -> None:
    s = spec()
    bodies = policy_bodies(s)
    assert [what().split()[1] for what, _, _ in bodies] == ["in", "fwd", "out"]
    for _what, new, delete in bodies:
        pol = PolicyInfo.from_msg(roundtrip(nl.XFRM_MSG_NEWPOLICY, new))
        (tmpl,) = pol.templates
        assert tmpl.reqid == s.reqid and tmpl.mode == nl.XFRM_MODE_TUNNEL
        if pol.direction == nl.XFRM_POLICY_OUT:
            assert (str(pol.selector.src), str(pol.selector.dst)) == ("10.1.0.0/24", "10.2.0.0/16")
            assert (pol.selector.proto, pol.selector.dport) == (6, 443)
            assert (str(tmpl.src), str(tmpl.dst)) == ("192.0.2.1", "192.0.2.2")
        else:
            assert (str(pol.selector.src), pol.selector.sport) == ("10.2.0.0/16", 443)
            assert (str(tmpl.src), str(tmpl.dst)) == ("192.0.2.2", "192.0.2.1")
        roundtrip(nl.XFRM_MSG_DELPOLICY, delete)
    transport = policy_bodies(spec(mode="transport", local_ts=(), remote_ts=()))
    assert [what().split()[1] for what, _, _ in transport] == ["in", "out"]


def test_ipv6_selectors_and_state() -> None:
    s = spec(
        local=ipaddress.ip_address("2001:db8::1"),
        remote=ipaddress.ip_address("2001:db8::2"),
        local_ts=(TrafficSelector.parse("fd00:1::/64"),),
        remote_ts=(TrafficSelector.parse("fd00:2::/48"),),
    )
    sa = SaInfo.from_msg(roundtrip(nl.XFRM_MSG_NEWSA, state_body(s, False)))
    assert (str(sa.src), str(sa.dst), sa.family) == ("2001:db8::1", "2001:db8::2", 10)
    _what, new, _ = policy_bodies(s)[-1]
    pol = PolicyInfo.from_msg(roundtrip(nl.XFRM_MSG_NEWPOLICY, new))
    assert (str(pol.selector.src), str(pol.selector.dst)) == ("fd00:1::/64", "fd00:2::/48")


@given(
    window=st.integers(1, 4096),
    oseq=st.integers(0, 2**32 - 1),
    bits=st.lists(st.integers(0, 2**32 - 1), max_size=128),
)
def test_replay_esn_roundtrip(window: int, oseq: int, bits: list[int]) -> None:
    body = state_body(
        spec(esn=True), False, replay=wire.replay_esn(window, oseq=oseq, bmp=tuple(bits))
    )
    msg = roundtrip(nl.XFRM_MSG_NEWSA, body)
    esn = msg.get_attr("XFRMA_REPLAY_ESN_VAL")
    words = (window + 31) // 32
    assert (esn["bmp_len"], esn["replay_window"], esn["oseq"]) == (words, window, oseq)
    assert esn["bmp"] == (bits + [0] * words)[:words]


def test_userpolicy_id_and_usersa_id_layout() -> None:
    body = wire.usersa_id(ipaddress.ip_address("192.0.2.9").packed, 0x01020304, 2, 50)
    msg = roundtrip(nl.XFRM_MSG_DELSA, body)
    assert (msg["spi"], msg["family"], msg["proto"]) == (0x01020304, 2, 50)
    assert body[16:20] == bytes([1, 2, 3, 4])  # network order on the wire


def test_lean_scan_agrees_with_full_decode() -> None:
    """reconcile's lean readers see the same identity as the pyroute2 decode."""
    s = spec(mark=Mark(5, 0xFF), if_id=9)
    body = state_body(s, True)
    ref = scan_state(body)
    sa = SaInfo.from_msg(roundtrip(nl.XFRM_MSG_NEWSA, body))
    assert (ref.reqid, ref.spi, ref.family, ref.proto) == (sa.reqid, sa.spi, 2, 50)
    assert ref.daddr[:4] == sa.dst.packed
    assert ref.key_attrs == wire.nla(21, wire.mark(5, 0xFF))
    for _what, new, _delete in policy_bodies(s):
        pref = scan_policy(new)
        pol = PolicyInfo.from_msg(roundtrip(nl.XFRM_MSG_NEWPOLICY, new))
        assert (pref.direction, pref.reqids) == (pol.direction, {s.reqid})
        assert pref.key_attrs == wire.nla(21, wire.mark(5, 0xFF)) + wire.nla(31, wire.u32(9))
