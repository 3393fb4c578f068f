"""RADIUS packets, sans-IO: RFC 2865 (packet, attributes, authenticators), RFC 2869 §5.14
and RFC 3579 §3.2 (Message-Authenticator), RFC 3579 §3.1 (EAP-Message), RFC 2548 §2.4
(MS-MPPE-Send/Recv-Key).

    | Code | Identifier | Length (2) | Authenticator (16) | Attributes: Type, Length, Value

Replies are taken only when they prove the shared secret twice: the Response Authenticator
(MD5 over the reply, the Request Authenticator and the secret) and a Message-Authenticator
(HMAC-MD5), which every reply to an Access-Request must carry (RFC 3579 §3.2; required
for all replies since the Blast-RADIUS attack, CVE-2024-3596). Anything else raises
`RadiusDecodeError`; the secret never appears in a message.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from gateway.errors import GatewayError

HEADER = struct.Struct("!BBH16s")
HEADER_LEN = 20
MAX_PACKET = 4096  # RFC 2865 §3
MAX_VALUE = 253
AUTHENTICATOR_LEN = 16
VENDOR_MICROSOFT = 311  # RFC 2548


class RadiusError(GatewayError):
    """A RADIUS exchange that cannot complete (no answer, no valid answer)."""


class RadiusDecodeError(RadiusError):
    """Bytes that are not a valid RADIUS packet, or a reply that fails its checks."""


class Code(IntEnum):
    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12


class Attr(IntEnum):
    """IANA RADIUS Attribute Types used here."""

    USER_NAME = 1
    NAS_IP_ADDRESS = 4
    SERVICE_TYPE = 6
    FRAMED_IP_ADDRESS = 8
    FRAMED_IP_NETMASK = 9
    FRAMED_MTU = 12
    REPLY_MESSAGE = 18
    STATE = 24
    CLASS = 25
    VENDOR_SPECIFIC = 26
    SESSION_TIMEOUT = 27
    CALLED_STATION_ID = 30
    CALLING_STATION_ID = 31
    NAS_IDENTIFIER = 32
    NAS_PORT_TYPE = 61
    EAP_MESSAGE = 79
    MESSAGE_AUTHENTICATOR = 80
    NAS_IPV6_ADDRESS = 95
    FRAMED_POOL = 88
    FRAMED_IPV6_ADDRESS = 168  # RFC 6911
    DNS_SERVER_IPV6_ADDRESS = 169  # RFC 6911


class MsAttr(IntEnum):
    """Microsoft vendor attributes (RFC 2548)."""

    MS_MPPE_SEND_KEY = 16
    MS_MPPE_RECV_KEY = 17
    MS_PRIMARY_DNS_SERVER = 28
    MS_SECONDARY_DNS_SERVER = 29


SERVICE_TYPE_FRAMED = 2
NAS_PORT_TYPE_VIRTUAL = 5

Attribute = tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class RadiusPacket:
    code: int
    identifier: int
    authenticator: bytes
    attributes: tuple[Attribute, ...]

    def all(self, attr: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr]

    def first(self, attr: int) -> bytes | None:
        for t, v in self.attributes:
            if t == attr:
                return v
        return None

    def vendor(self, vendor_id: int, vendor_type: int) -> list[bytes]:
        """Values of a vendor's sub-attribute in Vendor-Specific attributes (RFC 2865 §5.26,
        the recommended Type/Length/Value layout inside)."""
        out = []
        for value in self.all(Attr.VENDOR_SPECIFIC):
            if len(value) < 4 or int.from_bytes(value[:4], "big") != vendor_id:
                continue
            off = 4
            while off + 2 <= len(value):
                vtype, vlen = value[off], value[off + 1]
                if vlen < 2 or off + vlen > len(value):
                    raise RadiusDecodeError(f"bad vendor {vendor_id} sub-attribute length {vlen}")
                if vtype == vendor_type:
                    out.append(value[off + 2 : off + vlen])
                off += vlen
        return out


def decode_packet(data: bytes) -> RadiusPacket:
    if len(data) < HEADER_LEN:
        raise RadiusDecodeError(f"RADIUS packet of {len(data)} bytes")
    code, identifier, length, authenticator = HEADER.unpack_from(data)
    if not HEADER_LEN <= length <= min(len(data), MAX_PACKET):
        raise RadiusDecodeError(f"RADIUS Length {length} with {len(data)} bytes received")
    attrs: list[Attribute] = []
    off = HEADER_LEN
    while off < length:  # octets past Length are padding (RFC 2865 §3)
        if length - off < 2:
            raise RadiusDecodeError("truncated RADIUS attribute")
        atype, alen = data[off], data[off + 1]
        if alen < 2 or off + alen > length:
            raise RadiusDecodeError(f"RADIUS attribute {atype} with length {alen}")
        attrs.append((atype, bytes(data[off + 2 : off + alen])))
        off += alen
    return RadiusPacket(code, identifier, authenticator, tuple(attrs))


def encode_attributes(attributes: Iterable[Attribute]) -> bytes:
    out = bytearray()
    for atype, value in attributes:
        if len(value) > MAX_VALUE:
            raise ValueError(f"RADIUS attribute {atype} value of {len(value)} bytes")
        out += bytes((atype, 2 + len(value))) + value
    return bytes(out)


def encode_packet(p: RadiusPacket) -> bytes:
    attrs = encode_attributes(p.attributes)
    length = HEADER_LEN + len(attrs)
    if length > MAX_PACKET:
        raise ValueError(f"RADIUS packet of {length} bytes (at most {MAX_PACKET})")
    return HEADER.pack(p.code, p.identifier, length, p.authenticator) + attrs


def vendor_attribute(vendor_id: int, vendor_type: int, value: bytes) -> Attribute:
    return (
        Attr.VENDOR_SPECIFIC,
        vendor_id.to_bytes(4, "big") + bytes((vendor_type, 2 + len(value))) + value,
    )


# --------------------------------------------------------------------------- authenticators


def _message_authenticator(data: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.md5).digest()


def _zero_message_authenticator(data: bytes) -> tuple[bytes, int | None]:
    """The packet with its Message-Authenticator value zeroed, and that value's offset."""
    length = HEADER.unpack_from(data)[2]
    off = HEADER_LEN
    found: int | None = None
    while off + 2 <= length:
        atype, alen = data[off], data[off + 1]
        if atype == Attr.MESSAGE_AUTHENTICATOR:
            if alen != 18 or found is not None:
                raise RadiusDecodeError("a Message-Authenticator that is not one 16-byte value")
            found = off + 2
        off += max(alen, 2)
    if found is None:
        return data[:length], None
    return data[:found] + bytes(16) + data[found + 16 : length], found


def build_access_request(
    identifier: int, request_authenticator: bytes, attributes: Sequence[Attribute], secret: bytes
) -> bytes:
    """An Access-Request with a Message-Authenticator as its first attribute (RFC 3579 §3.2;
    first, as the Blast-RADIUS advisories recommend)."""
    attrs = [(int(Attr.MESSAGE_AUTHENTICATOR), bytes(16)), *attributes]
    data = encode_packet(
        RadiusPacket(Code.ACCESS_REQUEST, identifier, request_authenticator, tuple(attrs))
    )
    mac = _message_authenticator(data, secret)
    return data[: HEADER_LEN + 2] + mac + data[HEADER_LEN + 18 :]


def response_authenticator(data: bytes, request_authenticator: bytes, secret: bytes) -> bytes:
    """RFC 2865 §3: MD5(Code | Identifier | Length | Request Authenticator | Attributes |
    Secret), over the packet as sent (its Message-Authenticator already filled in)."""
    length = HEADER.unpack_from(data)[2]
    return hashlib.md5(data[:4] + request_authenticator + data[HEADER_LEN:length] + secret).digest()


def verify_reply(data: bytes, request_authenticator: bytes, secret: bytes) -> RadiusPacket:
    """Decode a reply to an Access-Request and check both authenticators."""
    packet = decode_packet(data)
    if packet.code not in (Code.ACCESS_ACCEPT, Code.ACCESS_REJECT, Code.ACCESS_CHALLENGE):
        raise RadiusDecodeError(f"RADIUS Code {packet.code} in reply to an Access-Request")
    expected = response_authenticator(data, request_authenticator, secret)
    if not hmac.compare_digest(expected, packet.authenticator):
        raise RadiusDecodeError("Response Authenticator does not verify (wrong shared secret?)")
    zeroed, at = _zero_message_authenticator(data)
    if at is None:
        raise RadiusDecodeError("reply without Message-Authenticator")
    # RFC 3579 §3.2: computed with the Request Authenticator in the header
    mac = _message_authenticator(zeroed[:4] + request_authenticator + zeroed[HEADER_LEN:], secret)
    if not hmac.compare_digest(mac, data[at : at + 16]):
        raise RadiusDecodeError("Message-Authenticator does not verify")
    return packet


def sign_reply(
    code: int,
    identifier: int,
    request_authenticator: bytes,
    attributes: Sequence[Attribute],
    secret: bytes,
) -> bytes:
    """A reply as a server builds it (Message-Authenticator first, then the Response
    Authenticator): for tests of the client without a server, and of verify_reply."""
    attrs = [(int(Attr.MESSAGE_AUTHENTICATOR), bytes(16)), *attributes]
    data = encode_packet(RadiusPacket(code, identifier, request_authenticator, tuple(attrs)))
    mac = _message_authenticator(data, secret)
    data = data[: HEADER_LEN + 2] + mac + data[HEADER_LEN + 18 :]
    resp = response_authenticator(data, request_authenticator, secret)
    return data[:4] + resp + data[HEADER_LEN:]


# --------------------------------------------------------------------------- attributes


def eap_message_attributes(eap: bytes) -> list[Attribute]:
    """One EAP packet as EAP-Message attributes of at most 253 bytes (RFC 3579 §3.1)."""
    return [(int(Attr.EAP_MESSAGE), eap[i : i + MAX_VALUE]) for i in range(0, len(eap), MAX_VALUE)]


def eap_message(packet: RadiusPacket) -> bytes | None:
    chunks = packet.all(Attr.EAP_MESSAGE)
    return b"".join(chunks) if chunks else None


def _mppe_blocks(secret: bytes, request_authenticator: bytes, salt: bytes, cipher: bytes) -> bytes:
    """The key stream b(1)..b(n) of RFC 2548 §2.4.2 for ciphertext `cipher`."""
    stream = bytearray()
    prev = request_authenticator + salt
    for i in range(0, len(cipher), 16):
        stream += hashlib.md5(secret + prev).digest()
        prev = cipher[i : i + 16]
    return bytes(stream)


def decrypt_mppe_key(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """The key in an MS-MPPE-Send-Key / MS-MPPE-Recv-Key value: Salt (2, high bit set) |
    encrypted (Key-Length | Key | padding) in 16-octet blocks."""
    if len(value) < 2 + 16 or (len(value) - 2) % 16 or not value[0] & 0x80:
        raise RadiusDecodeError(f"MS-MPPE key attribute of {len(value)} bytes")
    salt, cipher = value[:2], value[2:]
    stream = _mppe_blocks(secret, request_authenticator, salt, cipher)
    plain = bytes(c ^ s for c, s in zip(cipher, stream, strict=True))
    key_length = plain[0]
    if key_length > len(plain) - 1:
        raise RadiusDecodeError("MS-MPPE key length exceeds the attribute (wrong secret?)")
    return plain[1 : 1 + key_length]


def encrypt_mppe_key(key: bytes, secret: bytes, request_authenticator: bytes, salt: bytes) -> bytes:
    """The inverse of decrypt_mppe_key (what a server sends)."""
    if len(salt) != 2 or not salt[0] & 0x80:
        raise ValueError("the MPPE salt is two octets with the high bit set")
    plain = bytes((len(key),)) + key
    plain += bytes(-len(plain) % 16)
    cipher = bytearray()
    prev = request_authenticator + salt
    for i in range(0, len(plain), 16):
        block = bytes(
            p ^ s
            for p, s in zip(plain[i : i + 16], hashlib.md5(secret + prev).digest(), strict=True)
        )
        cipher += block
        prev = block
    return salt + bytes(cipher)


def ip_address(value: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if len(value) not in (4, 16):
        raise RadiusDecodeError(f"an address attribute of {len(value)} bytes")
    return ipaddress.ip_address(value)
