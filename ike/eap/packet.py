"""EAP packets (RFC 3748 §4): the codec, Identity (§5.1), Notification (§5.2) and Nak (§5.3).

    0                   1                   2                   3
    | Code          | Identifier    | Length                        |
    | Type (Request/Response only)  | Type-Data ...

`decode_eap` either returns an `EapPacket` or raises `EapDecodeError`, nothing else
(tests/unit/ike/eap/test_packet.py fuzzes that). Success and Failure carry no Type; an
Expanded Type (254, §5.7) is kept as Type 254 with its Vendor-Id/Vendor-Type in `data`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ike.eap.errors import EapDecodeError

_HEADER = struct.Struct("!BBH")
HEADER_LEN = 4
MAX_LENGTH = 0xFFFF


class Code(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EapType(IntEnum):
    """IANA "Method Types" used here (RFC 3748 §5, RFC 5216, draft-kamath-pppext-eap-mschapv2)."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3
    MD5_CHALLENGE = 4
    TLS = 13
    TTLS = 21
    PEAP = 25
    MSCHAPV2 = 26
    EXPANDED = 254


@dataclass(frozen=True, slots=True)
class EapPacket:
    code: int
    identifier: int
    type: int | None = None  # Request and Response only
    data: bytes = b""  # Type-Data

    @property
    def is_request(self) -> bool:
        return self.code == Code.REQUEST

    @property
    def is_response(self) -> bool:
        return self.code == Code.RESPONSE


def decode_eap(data: bytes) -> EapPacket:
    """One EAP packet; the Length field must match `data` exactly (our carriers, the IKE
    EAP payload and RADIUS EAP-Message, hold exactly one packet)."""
    if len(data) < HEADER_LEN:
        raise EapDecodeError(f"EAP packet shorter than its header ({len(data)} bytes)")
    code, identifier, length = _HEADER.unpack_from(data)
    if length != len(data):
        raise EapDecodeError(f"EAP Length {length} but {len(data)} bytes")
    if code in (Code.SUCCESS, Code.FAILURE):
        if length != HEADER_LEN:
            raise EapDecodeError(f"EAP {Code(code).name} with {length - HEADER_LEN} data bytes")
        return EapPacket(code, identifier)
    if code not in (Code.REQUEST, Code.RESPONSE):
        raise EapDecodeError(f"unknown EAP Code {code}")
    if length == HEADER_LEN:
        raise EapDecodeError(f"EAP {Code(code).name} without a Type")
    return EapPacket(code, identifier, data[4], bytes(data[5:]))


def encode_eap(p: EapPacket) -> bytes:
    if p.code in (Code.SUCCESS, Code.FAILURE):
        return _HEADER.pack(p.code, p.identifier, HEADER_LEN)
    if p.type is None:
        raise ValueError("an EAP Request/Response needs a Type")
    length = HEADER_LEN + 1 + len(p.data)
    if length > MAX_LENGTH:
        raise ValueError(f"EAP packet of {length} bytes exceeds the 16-bit Length")
    return _HEADER.pack(p.code, p.identifier, length) + bytes((p.type,)) + p.data


def request(identifier: int, type: int, data: bytes = b"") -> EapPacket:
    return EapPacket(Code.REQUEST, identifier, type, data)


def response(identifier: int, type: int, data: bytes = b"") -> EapPacket:
    return EapPacket(Code.RESPONSE, identifier, type, data)


def success(identifier: int) -> EapPacket:
    return EapPacket(Code.SUCCESS, identifier)


def failure(identifier: int) -> EapPacket:
    return EapPacket(Code.FAILURE, identifier)


def nak(identifier: int, desired: tuple[int, ...]) -> EapPacket:
    """Legacy Nak (§5.3.1): the authentication types the peer would accept, or 0 for none."""
    types = bytes(t for t in desired if 4 <= t < EapType.EXPANDED) or b"\x00"
    return response(identifier, EapType.NAK, types)


def nak_types(p: EapPacket) -> tuple[int, ...]:
    """The Types a Nak asks for (empty: "no alternative", Type 0)."""
    if p.type != EapType.NAK or not p.data:
        raise EapDecodeError("not a Nak with at least one desired Type")
    return tuple(t for t in p.data if t != 0)
