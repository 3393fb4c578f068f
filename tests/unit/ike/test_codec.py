"""Codec: every payload type round-trips, malformed input raises only DecodeError."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ike import codec as c
from ike.constants import ExchangeType, NotifyType, PayloadType, ProtocolId, TsType
from ike.errors import DecodeError

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

ALL_PAYLOADS: tuple[c.Payload, ...] = (
    c.SecurityAssociation(
        (
            c.Proposal(
                1,
                ProtocolId.IKE,
                b"",
                (
                    c.Transform(1, 20, 256),
                    c.Transform(2, 6),
                    c.Transform(4, 31),
                    c.Transform(1, 12, 128, ((0x8000 | 99, b"\x00\x01"), (77, b"abc"))),
                ),
            ),
            c.Proposal(2, ProtocolId.ESP, b"\x01\x02\x03\x04", (c.Transform(5, 0),)),
        )
    ),
    c.KeyExchange(31, bytes(range(32))),
    c.Identification(PayloadType.IDi, 2, b"moon.example"),
    c.Identification(PayloadType.IDr, 1, b"\xc0\x00\x02\x01"),
    c.Certificate(4, b"\x30\x03\x02\x01\x01"),
    c.CertificateRequest(4, bytes(20)),
    c.Authentication(2, bytes(48)),
    c.Nonce(bytes(32)),
    c.Notify(NotifyType.COOKIE, b"x" * 20),
    c.Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\xc0\x01\x02\x03"),
    c.Delete(ProtocolId.ESP, 4, (b"\x01\x02\x03\x04", b"\x05\x06\x07\x08")),
    c.Delete(ProtocolId.IKE, 0, ()),
    c.VendorId(b"strongSwan"),
    c.TrafficSelectors(
        PayloadType.TSi,
        (
            c.TrafficSelector(
                TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535, V4("10.0.0.0"), V4("10.0.0.255")
            ),
            c.TrafficSelector(
                TsType.TS_IPV6_ADDR_RANGE, 17, 500, 500, V6("2001:db8::"), V6("2001:db8::ff")
            ),
        ),
    ),
    c.TrafficSelectors(PayloadType.TSr, ()),
    c.Configuration(1, ((1, b""), (3, b"\x0a\x00\x00\x01"), (8, b""))),
    c.Eap(b"\x01\x07\x00\x05\x01"),
    c.UnknownPayload(200, False, b"opaque"),
)


def message(payloads: tuple[c.Payload, ...], **kw: object) -> c.Message:
    args: dict[str, object] = dict(
        spi_i=b"\x11" * 8,
        spi_r=b"\x22" * 8,
        exchange_type=ExchangeType.IKE_SA_INIT,
        is_initiator=True,
        is_response=False,
        message_id=0,
        payloads=payloads,
    )
    args.update(kw)
    return c.Message(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", ALL_PAYLOADS, ids=lambda p: type(p).__name__)
def test_each_payload_round_trips(payload: c.Payload) -> None:
    m = message((payload,))
    assert c.decode_message(c.encode_message(m)) == m


def test_chain_with_sk_last_round_trips() -> None:
    sk = c.Encrypted(PayloadType.IDi, bytes(60))
    m = message((c.Notify(NotifyType.COOKIE, b"c" * 16), sk), exchange_type=ExchangeType.IKE_AUTH)
    data = c.encode_message(m)
    assert c.decode_message(data) == m
    skf = c.EncryptedFragment(1, 3, PayloadType.IDi, bytes(40))
    m2 = message((skf,), exchange_type=ExchangeType.IKE_AUTH, is_response=True, message_id=1)
    assert c.decode_message(c.encode_message(m2)) == m2


def test_whole_chain_round_trips() -> None:
    m = message(ALL_PAYLOADS, message_id=0xFFFFFFFF, is_initiator=False, is_response=True)
    data = c.encode_message(m)
    assert c.decode_message(data) == m
    assert c.decode_header(data).length == len(data)


def test_header_checks() -> None:
    data = c.encode_message(message((c.Nonce(bytes(16)),)))
    with pytest.raises(DecodeError, match="version"):
        c.decode_message(data[:17] + b"\x10" + data[18:])
    with pytest.raises(DecodeError, match="length"):
        c.decode_message(data + b"\0")
    with pytest.raises(DecodeError):
        c.decode_message(data[:20])


def test_unknown_critical_payload_is_named() -> None:
    m = message((c.UnknownPayload(211, True, b"x"),))
    with pytest.raises(DecodeError) as info:
        c.decode_message(c.encode_message(m))
    assert info.value.critical_payload == 211


def test_sk_must_be_last() -> None:
    first, body = c.encode_payloads([c.Encrypted(0, b"abcd")])
    # Claim another payload follows SK by appending one: the decoder must refuse.
    with pytest.raises(DecodeError, match="last"):
        c.decode_payloads(first, body + b"\x00\x00\x00\x04")


def test_nonce_size_limits() -> None:
    for n in (15, 257):
        m = message((c.Nonce(bytes(n)),))
        with pytest.raises(DecodeError, match="nonce"):
            c.decode_message(c.encode_message(m))


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_decode_or_decode_error(data: bytes) -> None:
    try:
        c.decode_message(data)
    except DecodeError:
        pass


VALID = c.encode_message(message(ALL_PAYLOADS))


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=4), st.booleans())
def test_fuzz_mutated_valid_message(pos: int, patch: bytes, truncate: bool) -> None:
    data = VALID[:pos] + patch + VALID[pos + len(patch) :]
    if truncate:
        data = data[: pos + 1]
        # keep the header length consistent so the payload parser is reached
        if len(data) >= 28:
            data = data[:24] + len(data).to_bytes(4, "big") + data[28:]
    try:
        m = c.decode_message(data)
    except DecodeError:
        return
    # whatever decodes re-encodes without error
    c.encode_message(m)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=200))
def test_fuzz_payload_chain(first: int, body: bytes) -> None:
    try:
        c.decode_payloads(first, body)
    except DecodeError:
        pass
