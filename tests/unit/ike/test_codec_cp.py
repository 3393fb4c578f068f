"""The configuration payload (RFC 7296 §3.15): typed attribute values, the length checks
of §3.15.1 (a malformed CP raises DecodeError, nothing else), and the virtual-IP request
and reply of ike/cp.py (§2.19)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli.decode import describe_payload
from ike import codec as c
from ike import cp
from ike.constants import CfgType, ConfigAttr, ExchangeType
from ike.errors import DecodeError

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
A = ConfigAttr


def round_trip(payload: c.Configuration) -> c.Configuration:
    first, body = c.encode_payloads([payload])
    (decoded,) = c.decode_payloads(first, body)
    assert isinstance(decoded, c.Configuration)
    return decoded


def test_wire_layout_of_a_request_and_the_r_bit() -> None:
    request = cp.build_request(ip4=True, ip6=True)
    first, body = c.encode_payloads([request])
    # generic header (no next payload, length 24) | CFG_REQUEST | four empty attributes
    assert body == bytes.fromhex(
        "00000018" + "01000000" + "00010000" + "00080000" + "00030000" + "000a0000"
    )
    # the R bit (top bit of the type) is ignored on receipt
    with_r = body[:8] + b"\x80\x01" + body[10:]
    assert c.decode_payloads(first, with_r) == (request,)


TYPED: list[tuple[int, c.ConfigValue]] = [
    (A.INTERNAL_IP4_ADDRESS, V4("10.3.0.7")),
    (A.INTERNAL_IP4_NETMASK, V4("255.255.255.0")),
    (A.INTERNAL_IP4_DNS, V4("10.3.0.53")),
    (A.INTERNAL_IP4_NBNS, V4("10.3.0.54")),
    (A.INTERNAL_IP4_DHCP, V4("10.3.0.1")),
    (A.INTERNAL_IP6_ADDRESS, ipaddress.IPv6Interface("fd00:3::7/128")),
    (A.INTERNAL_IP6_DNS, V6("fd00:3::53")),
    (A.INTERNAL_IP6_DHCP, V6("fd00:3::1")),
    (A.INTERNAL_IP4_SUBNET, ipaddress.IPv4Network("10.1.0.0/16")),
    (A.INTERNAL_IP6_SUBNET, ipaddress.IPv6Network("fd00:1::/48")),
    (A.SUPPORTED_ATTRIBUTES, (1, 3, 8)),
    (A.APPLICATION_VERSION, b"gateway 0.1"),
    (28672, b"unity"),  # unknown (Cisco Unity): kept raw
]


@pytest.mark.parametrize(("attr", "value"), TYPED, ids=lambda x: str(x))
def test_typed_values_round_trip(attr: int, value: c.ConfigValue) -> None:
    payload = c.Configuration(CfgType.CFG_REPLY, (c.config_attribute(attr, value),))
    decoded = round_trip(payload)
    assert decoded == payload and decoded.values(attr) == [value]
    assert round_trip(c.Configuration(CfgType.CFG_REQUEST, ((attr, b""),))).values(attr) == [
        () if attr == A.SUPPORTED_ATTRIBUTES else None
    ]


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        (A.INTERNAL_IP4_ADDRESS, bytes(3), "INTERNAL_IP4_ADDRESS of 3 bytes"),
        (A.INTERNAL_IP4_DNS, bytes(16), "INTERNAL_IP4_DNS of 16 bytes"),
        (A.INTERNAL_IP6_ADDRESS, bytes(16), "INTERNAL_IP6_ADDRESS of 16 bytes"),
        (A.INTERNAL_IP6_ADDRESS, bytes(16) + b"\x81", "prefix > 128"),
        (A.INTERNAL_IP6_DNS, bytes(17), "INTERNAL_IP6_DNS of 17 bytes"),
        (A.INTERNAL_IP4_SUBNET, bytes(4), "INTERNAL_IP4_SUBNET of 4 bytes"),
        (A.INTERNAL_IP4_SUBNET, bytes(4) + b"\xff\x00\xff\x00", "non-contiguous"),
        (A.INTERNAL_IP6_SUBNET, bytes(18), "INTERNAL_IP6_SUBNET of 18"),
        (A.SUPPORTED_ATTRIBUTES, b"\x00", "multiple of 2"),
    ],
)
def test_malformed_attributes_raise_decode_error(attr: int, value: bytes, match: str) -> None:
    message = c.Message(
        b"\x11" * 8,
        b"\x22" * 8,
        ExchangeType.IKE_AUTH,
        True,
        False,
        1,
        (c.Configuration(CfgType.CFG_REQUEST, ((attr, value),)),),
    )
    with pytest.raises(DecodeError, match=match):
        c.decode_message(c.encode_message(message))


addresses4 = st.builds(V4, st.integers(0, 2**32 - 1))
addresses6 = st.builds(V6, st.integers(0, 2**128 - 1))
typed_values = st.one_of(
    st.tuples(st.sampled_from(sorted(c._IP4_ATTRS)), st.one_of(st.none(), addresses4)),
    st.tuples(st.sampled_from(sorted(c._IP6_ATTRS)), st.one_of(st.none(), addresses6)),
    st.tuples(
        st.just(A.INTERNAL_IP6_ADDRESS),
        st.builds(lambda a, p: ipaddress.IPv6Interface((a, p)), addresses6, st.integers(0, 128)),
    ),
    st.tuples(
        st.just(A.INTERNAL_IP4_SUBNET),
        st.builds(
            lambda a, p: ipaddress.IPv4Network((a, p), strict=False), addresses4, st.integers(0, 32)
        ),
    ),
    st.tuples(
        st.just(A.INTERNAL_IP6_SUBNET),
        st.builds(
            lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
            addresses6,
            st.integers(0, 128),
        ),
    ),
    st.tuples(st.just(A.SUPPORTED_ATTRIBUTES), st.lists(st.integers(0, 0x7FFF)).map(tuple)),
    st.tuples(
        st.integers(16, 0x7FFF).filter(lambda t: t != A.INTERNAL_DNS_DOMAIN), st.binary(max_size=40)
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(CfgType)), st.lists(typed_values, max_size=8))
def test_fuzz_typed_round_trip(cfg_type: int, values: list[tuple[int, c.ConfigValue]]) -> None:
    payload = c.Configuration(cfg_type, tuple(c.config_attribute(a, v) for a, v in values))
    decoded = round_trip(payload)
    assert decoded == payload
    for attr, value in values:
        assert (value if value != b"" else None) in decoded.values(attr)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 255),
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=20)), max_size=6),
)
def test_fuzz_any_cp_body_decodes_or_raises_decode_error(
    cfg_type: int, attrs: list[tuple[int, bytes]]
) -> None:
    body = bytes((cfg_type, 0, 0, 0)) + b"".join(
        t.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v for t, v in attrs
    )
    data = bytes((0, 0)) + (4 + len(body)).to_bytes(2, "big") + body
    try:
        (payload,) = c.decode_payloads(47, data)
    except DecodeError:
        return
    assert isinstance(payload, c.Configuration)
    for attr, _ in payload.attributes:
        payload.values(attr)  # every decoded attribute has a typed value


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=60))
def test_fuzz_random_cp_bytes(body: bytes) -> None:
    data = bytes((0, 0)) + (4 + len(body)).to_bytes(2, "big") + body
    try:
        c.decode_payloads(47, data)
    except DecodeError:
        pass


def test_request_and_reply_between_initiator_and_responder() -> None:
    request = round_trip(cp.build_request(ip4=True, ip6=True, current_ip4=V4("10.3.0.9")))
    asked = cp.read_request(request)
    assert asked == cp.VirtualIpRequest(
        ip4=True, ip6=True, requested_ip4=V4("10.3.0.9"), dns4=True, dns6=True
    )
    assert asked.wants_address
    assignment = cp.VirtualIpAssignment(
        ip4=V4("10.3.0.9"),
        ip6=ipaddress.IPv6Interface("fd00:3::9/128"),
        dns=(V4("10.3.0.53"), V6("fd00:3::53")),
        subnets=(ipaddress.IPv4Network("10.1.0.0/16"),),
    )
    reply = round_trip(cp.build_reply(assignment))
    assert reply.cfg_type == CfgType.CFG_REPLY
    assert [a for a, _ in reply.attributes] == [
        A.INTERNAL_IP4_ADDRESS,
        A.INTERNAL_IP6_ADDRESS,
        A.INTERNAL_IP4_DNS,
        A.INTERNAL_IP6_DNS,
        A.INTERNAL_IP4_SUBNET,
    ]
    assert cp.read_reply(reply) == assignment
    # each side ignores the other's message type
    assert cp.read_request(reply) is None and cp.read_reply(request) is None


def test_request_for_a_known_ipv6_address_and_without_dns() -> None:
    request = cp.build_request(ip4=False, ip6=True, current_ip6=V6("fd00:3::9"), dns=False)
    asked = cp.read_request(round_trip(request))
    assert asked == cp.VirtualIpRequest(ip6=True, requested_ip6=V6("fd00:3::9"))
    assert cp.read_request(c.Configuration(CfgType.CFG_REQUEST, ())) == cp.VirtualIpRequest()


def test_gateway_decode_names_the_attributes() -> None:
    shown = describe_payload(cp.build_reply(cp.VirtualIpAssignment(ip4=V4("10.3.0.9"))))
    assert shown["cfg_type"] == "CFG_REPLY"
    assert shown["attributes"] == [["INTERNAL_IP4_ADDRESS", "0a030009"]]
