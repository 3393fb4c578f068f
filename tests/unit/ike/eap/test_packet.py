"""EAP packet codec (RFC 3748 §4-5): round trips, the checks, and the fuzz invariant
"decode or EapDecodeError, nothing else"."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ike.eap import packet as p
from ike.eap.errors import EapDecodeError
from ike.eap.packet import Code, EapPacket, EapType

PACKETS = [
    p.request(1, EapType.IDENTITY),
    p.response(1, EapType.IDENTITY, b"alice@example.org"),
    p.request(2, EapType.MSCHAPV2, b"\x01\x02\x00\x15" + bytes(17)),
    p.request(3, EapType.TLS, b"\x20"),
    p.nak(4, (EapType.TLS, EapType.MSCHAPV2)),
    p.success(5),
    p.failure(255),
]


@pytest.mark.parametrize("packet", PACKETS, ids=repr)
def test_round_trip(packet: EapPacket) -> None:
    assert p.decode_eap(p.encode_eap(packet)) == packet


def test_wire_layout() -> None:
    assert p.encode_eap(p.response(7, EapType.IDENTITY, b"bob")) == b"\x02\x07\x00\x08\x01bob"
    assert p.encode_eap(p.success(9)) == b"\x03\x09\x00\x04"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x00", "shorter"),
        (b"\x01\x00\x00\x06\x01", "Length 6 but 5"),
        (b"\x03\x00\x00\x05\x00", "SUCCESS with 1 data"),
        (b"\x05\x00\x00\x05\x01", "unknown EAP Code 5"),
        (b"\x02\x00\x00\x04", "without a Type"),
    ],
)
def test_malformed(data: bytes, match: str) -> None:
    with pytest.raises(EapDecodeError, match=match):
        p.decode_eap(data)


def test_nak_lists_types_and_zero_means_none() -> None:
    assert p.nak_types(p.nak(1, (13, 26))) == (13, 26)
    none = p.nak(1, ())
    assert none.data == b"\x00" and p.nak_types(none) == ()
    # Types below 4 (Identity, Notification, Nak) and Expanded are never offered
    assert p.nak(1, (1, 3, 254, 26)).data == bytes((26,))
    with pytest.raises(EapDecodeError):
        p.nak_types(p.response(1, EapType.NAK))


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        p.encode_eap(p.request(1, EapType.TLS, bytes(70000)))
    with pytest.raises(ValueError, match="needs a Type"):
        p.encode_eap(EapPacket(Code.REQUEST, 1))


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_decode_or_decode_error(data: bytes) -> None:
    try:
        pkt = p.decode_eap(data)
    except EapDecodeError:
        return
    assert p.encode_eap(pkt) == data
