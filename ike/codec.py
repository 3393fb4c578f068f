"""Wire codec for IKEv2 messages (RFC 7296 §3) and encrypted fragments (RFC 7383 §2.5).

One pair per structure: ``_pull_<x>`` decodes a payload body, ``_push_<x>`` encodes it.
Payload dispatch is table driven (``_PULLERS``). Every malformed input raises
``DecodeError`` and nothing else (tests/unit/ike/test_codec.py fuzzes that invariant).

The Encrypted payload (SK) stays opaque here: ``Encrypted.first_payload`` is the type of
the first inner payload and ``body`` is IV | ciphertext | ICV; ike.sk decrypts it and the
inner chain is decoded with ``decode_payloads(first_payload, plaintext)``.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ike.constants import (
    ATTR_KEY_LENGTH,
    IKE_HEADER_LEN,
    IKE_VERSION,
    ConfigAttr,
    HeaderFlag,
    PayloadType,
    TsType,
    name_of,
)
from ike.errors import DecodeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")
_PROPOSAL = struct.Struct("!BBHBBBB")
_TRANSFORM = struct.Struct("!BBHBBH")
_ATTR_TV = struct.Struct("!HH")
_TS = struct.Struct("!BBHHH")
_NOTIFY = struct.Struct("!BBH")
_DELETE = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_TWO_U16 = struct.Struct("!HH")

_AF_BIT = 0x8000


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Transform:
    """RFC 7296 §3.3.2. `key_length` is the Key Length attribute (§3.3.5) in bits."""

    type: int
    id: int
    key_length: int | None = None
    # Any other attribute, raw: (type incl. the AF bit, value). Makes the transform unusable.
    other_attributes: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    payload_type: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...]


@dataclass(frozen=True, slots=True)
class KeyExchange:
    payload_type: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Identification:
    """IDi or IDr (§3.5); `kind` says which. `body` is what MACedIDFor* covers (§2.15)."""

    kind: int  # PayloadType.IDi or PayloadType.IDr
    id_type: int
    data: bytes

    @property
    def payload_type(self) -> int:
        return self.kind

    @property
    def body(self) -> bytes:
        return bytes((self.id_type, 0, 0, 0)) + self.data


@dataclass(frozen=True, slots=True)
class Certificate:
    payload_type: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    payload_type: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Authentication:
    payload_type: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Nonce:
    payload_type: ClassVar[int] = PayloadType.NONCE
    data: bytes


@dataclass(frozen=True, slots=True)
class Notify:
    payload_type: ClassVar[int] = PayloadType.NOTIFY
    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""


@dataclass(frozen=True, slots=True)
class Delete:
    payload_type: ClassVar[int] = PayloadType.DELETE
    protocol: int
    spi_size: int
    spis: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class VendorId:
    payload_type: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One selector (§3.13.1): an address range, a protocol (0 = any) and a port range."""

    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: IPAddress
    end_addr: IPAddress


@dataclass(frozen=True, slots=True)
class TrafficSelectors:
    kind: int  # PayloadType.TSi or PayloadType.TSr
    selectors: tuple[TrafficSelector, ...]

    @property
    def payload_type(self) -> int:
        return self.kind


@dataclass(frozen=True, slots=True)
class Encrypted:
    """SK (§3.14): body = IV | encrypted inner payloads and padding | ICV."""

    payload_type: ClassVar[int] = PayloadType.SK
    first_payload: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Configuration:
    """CP (§3.15): `attributes` are (type, raw value) in wire order; `values(attr)` gives
    the typed values of one type (config_value). The decoder checks the length of every
    attribute it knows (§3.15.1), so a decoded CP always has typed values."""

    payload_type: ClassVar[int] = PayloadType.CP
    cfg_type: int
    attributes: tuple[tuple[int, bytes], ...]

    def values(self, attr: int) -> list[ConfigValue]:
        return [config_value(a, v) for a, v in self.attributes if a == attr]


@dataclass(frozen=True, slots=True)
class Eap:
    payload_type: ClassVar[int] = PayloadType.EAP
    data: bytes  # the whole EAP message (RFC 3748 §4)


@dataclass(frozen=True, slots=True)
class EncryptedFragment:
    """SKF (RFC 7383 §2.5). `first_payload` is only meaningful in fragment 1."""

    payload_type: ClassVar[int] = PayloadType.SKF
    number: int
    total: int
    first_payload: int
    body: bytes


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload type we do not implement, kept so `gateway decode` can show it."""

    type: int
    critical: bool
    body: bytes

    @property
    def payload_type(self) -> int:
        return self.type


Payload = (
    SecurityAssociation
    | KeyExchange
    | Identification
    | Certificate
    | CertificateRequest
    | Authentication
    | Nonce
    | Notify
    | Delete
    | VendorId
    | TrafficSelectors
    | Encrypted
    | Configuration
    | Eap
    | EncryptedFragment
    | UnknownPayload
)


@dataclass(frozen=True, slots=True)
class Message:
    spi_i: bytes
    spi_r: bytes
    exchange_type: int
    is_initiator: bool  # the I flag: sent by the original initiator of the IKE SA
    is_response: bool
    message_id: int
    payloads: tuple[Payload, ...]

    def find(self, cls: type[object]) -> object | None:
        for p in self.payloads:
            if type(p) is cls:
                return p
        return None


@dataclass(frozen=True, slots=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    version: int
    exchange_type: int
    flags: int
    message_id: int
    length: int

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)


# --------------------------------------------------------------------------- decoding


def decode_header(data: bytes) -> Header:
    """The fixed IKE header (§3.1); checks the version and that the length is exact."""
    if len(data) < IKE_HEADER_LEN:
        raise DecodeError(f"message shorter than the IKE header ({len(data)} bytes)")
    spi_i, spi_r, nxt, version, xchg, flags, msg_id, length = _HEADER.unpack_from(data)
    if version >> 4 != 2:
        raise DecodeError(f"IKE major version {version >> 4} is not 2")
    if length != len(data):
        raise DecodeError(f"header length {length} but datagram has {len(data)} bytes")
    return Header(spi_i, spi_r, nxt, version, xchg, flags, msg_id, length)


def decode_message(data: bytes, header: Header | None = None) -> Message:
    """The whole message; pass `header` if decode_header(data) was already called."""
    h = header or decode_header(data)
    payloads = decode_payloads(h.next_payload, data, IKE_HEADER_LEN)
    return Message(
        h.spi_i, h.spi_r, h.exchange_type, h.is_initiator, h.is_response, h.message_id, payloads
    )


def decode_payloads(first: int, data: bytes, offset: int = 0) -> tuple[Payload, ...]:
    """Decode a payload chain starting at `offset` with first payload type `first`."""
    out: list[Payload] = []
    nxt = first
    end = len(data)
    while nxt != PayloadType.NONE:
        if end - offset < 4:
            raise DecodeError(f"truncated generic payload header at offset {offset}")
        following, crit, plen = _GENERIC.unpack_from(data, offset)
        if plen < 4 or offset + plen > end:
            raise DecodeError(f"payload length {plen} at offset {offset} exceeds the message")
        body = data[offset + 4 : offset + plen]
        ptype = nxt
        if ptype == PayloadType.SK or ptype == PayloadType.SKF:
            if offset + plen != end:
                raise DecodeError("the Encrypted payload is not the last payload")
            if ptype == PayloadType.SK:
                out.append(Encrypted(following, body))
            else:
                out.append(_pull_skf(following, body))
            return tuple(out)
        puller = _PULLERS.get(ptype)
        if puller is None:
            critical = bool(crit & 0x80)
            if critical:
                raise DecodeError(
                    f"unsupported critical payload type {ptype}", critical_payload=ptype
                )
            out.append(UnknownPayload(ptype, False, body))
        else:
            out.append(puller(ptype, body))
        offset += plen
        nxt = following
    if offset != end:
        raise DecodeError(f"{end - offset} bytes after the last payload")
    return tuple(out)


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise DecodeError(f"{what} payload too short ({len(body)} bytes)")


def _pull_transforms(data: bytes, count: int) -> tuple[Transform, ...]:
    transforms: list[Transform] = []
    off = 0
    for i in range(count):
        if len(data) - off < 8:
            raise DecodeError("truncated transform")
        last, _r, tlen, ttype, _r2, tid = _TRANSFORM.unpack_from(data, off)
        if tlen < 8 or off + tlen > len(data):
            raise DecodeError(f"bad transform length {tlen}")
        expect_last = 0 if i == count - 1 else 3
        if last != expect_last:
            raise DecodeError("transform 'last' marker does not match the transform count")
        key_length: int | None = None
        others: list[tuple[int, bytes]] = []
        a = off + 8
        tend = off + tlen
        while a < tend:
            if tend - a < 4:
                raise DecodeError("truncated transform attribute")
            atype, aval = _ATTR_TV.unpack_from(data, a)
            if atype & _AF_BIT:
                if atype & ~_AF_BIT == ATTR_KEY_LENGTH and key_length is None:
                    key_length = aval
                else:
                    others.append((atype, data[a + 2 : a + 4]))
                a += 4
            else:
                if a + 4 + aval > tend:
                    raise DecodeError("transform attribute exceeds the transform")
                others.append((atype, data[a + 4 : a + 4 + aval]))
                a += 4 + aval
        transforms.append(Transform(ttype, tid, key_length, tuple(others)))
        off = tend
    if off != len(data):
        raise DecodeError("bytes after the last transform")
    return tuple(transforms)


@functools.lru_cache(maxsize=1024)
def _pull_sa(_t: int, body: bytes) -> SecurityAssociation:
    """Cached by body: peers of one gateway send the same few proposals over and over."""
    proposals: list[Proposal] = []
    off = 0
    while True:
        if len(body) - off < 8:
            raise DecodeError("truncated proposal")
        last, _r, plen, num, proto, spi_size, ntrans = _PROPOSAL.unpack_from(body, off)
        if plen < 8 + spi_size or off + plen > len(body):
            raise DecodeError(f"bad proposal length {plen}")
        spi = body[off + 8 : off + 8 + spi_size]
        transforms = _pull_transforms(body[off + 8 + spi_size : off + plen], ntrans)
        proposals.append(Proposal(num, proto, spi, transforms))
        off += plen
        if last == 0:
            break
        if last != 2:
            raise DecodeError(f"bad proposal 'last' marker {last}")
    if off != len(body):
        raise DecodeError("bytes after the last proposal")
    return SecurityAssociation(tuple(proposals))


def _pull_ke(_t: int, body: bytes) -> KeyExchange:
    _need(body, 4, "KE")
    return KeyExchange(_U16.unpack_from(body)[0], body[4:])


def _pull_id(t: int, body: bytes) -> Identification:
    _need(body, 4, "ID")
    return Identification(t, body[0], body[4:])


def _pull_cert(_t: int, body: bytes) -> Certificate:
    _need(body, 1, "CERT")
    return Certificate(body[0], body[1:])


def _pull_certreq(_t: int, body: bytes) -> CertificateRequest:
    _need(body, 1, "CERTREQ")
    return CertificateRequest(body[0], body[1:])


def _pull_auth(_t: int, body: bytes) -> Authentication:
    _need(body, 4, "AUTH")
    return Authentication(body[0], body[4:])


def _pull_nonce(_t: int, body: bytes) -> Nonce:
    # §3.9: 16..256 octets
    if not 16 <= len(body) <= 256:
        raise DecodeError(f"nonce of {len(body)} bytes (16..256 allowed)")
    return Nonce(body)


def _pull_notify(_t: int, body: bytes) -> Notify:
    _need(body, 4, "Notify")
    proto, spi_size, ntype = _NOTIFY.unpack_from(body)
    if 4 + spi_size > len(body):
        raise DecodeError("Notify SPI exceeds the payload")
    return Notify(ntype, body[4 + spi_size :], proto, body[4 : 4 + spi_size])


def _pull_delete(_t: int, body: bytes) -> Delete:
    _need(body, 4, "Delete")
    proto, spi_size, nspi = _DELETE.unpack_from(body)
    if len(body) != 4 + spi_size * nspi:
        raise DecodeError("Delete SPI count does not match its length")
    if spi_size == 0 and nspi != 0:
        raise DecodeError("Delete with zero-size SPIs but a non-zero count")
    spis = tuple(body[4 + i * spi_size : 4 + (i + 1) * spi_size] for i in range(nspi))
    return Delete(proto, spi_size, spis)


def _pull_vendor(_t: int, body: bytes) -> VendorId:
    return VendorId(body)


_TS_ADDR_LEN = {TsType.TS_IPV4_ADDR_RANGE: 4, TsType.TS_IPV6_ADDR_RANGE: 16}


@functools.lru_cache(maxsize=4096)
def _address(packed: bytes) -> IPAddress:
    return ipaddress.ip_address(packed)


@functools.lru_cache(maxsize=4096)
def _pull_ts(t: int, body: bytes) -> TrafficSelectors:
    _need(body, 4, "TS")
    count = body[0]
    off = 4
    selectors: list[TrafficSelector] = []
    for _ in range(count):
        if len(body) - off < 8:
            raise DecodeError("truncated traffic selector")
        ts_type, proto, slen, sport, eport = _TS.unpack_from(body, off)
        alen = _TS_ADDR_LEN.get(ts_type)
        if alen is None:
            raise DecodeError(f"unsupported traffic selector type {ts_type}")
        if slen != 8 + 2 * alen or off + slen > len(body):
            raise DecodeError(f"bad traffic selector length {slen}")
        start = _address(body[off + 8 : off + 8 + alen])
        end = _address(body[off + 8 + alen : off + 8 + 2 * alen])
        selectors.append(TrafficSelector(ts_type, proto, sport, eport, start, end))
        off += slen
    if off != len(body):
        raise DecodeError("bytes after the last traffic selector")
    return TrafficSelectors(t, tuple(selectors))


def _pull_cp(_t: int, body: bytes) -> Configuration:
    _need(body, 4, "CP")
    attrs: list[tuple[int, bytes]] = []
    off = 4
    while off < len(body):
        if len(body) - off < 4:
            raise DecodeError("truncated configuration attribute")
        atype, alen = _TWO_U16.unpack_from(body, off)
        if off + 4 + alen > len(body):
            raise DecodeError("configuration attribute exceeds the payload")
        atype &= 0x7FFF  # the R bit is ignored on receipt (§3.15.1)
        value = body[off + 4 : off + 4 + alen]
        config_value(atype, value)  # a known attribute must have a valid length and value
        attrs.append((atype, value))
        off += 4 + alen
    return Configuration(body[0], tuple(attrs))


# --------------------------------------------------------------------------- CP attributes

ConfigValue = (
    ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv6Interface
    | ipaddress.IPv4Network
    | ipaddress.IPv6Network
    | tuple[int, ...]
    | bytes
    | None
)
"""A typed attribute value; None is an empty attribute (in a CFG_REQUEST: "give me one")."""

_IP4_ATTRS = frozenset(
    (
        ConfigAttr.INTERNAL_IP4_ADDRESS,
        ConfigAttr.INTERNAL_IP4_NETMASK,
        ConfigAttr.INTERNAL_IP4_DNS,
        ConfigAttr.INTERNAL_IP4_NBNS,
        ConfigAttr.INTERNAL_IP4_DHCP,
    )
)
_IP6_ATTRS = frozenset((ConfigAttr.INTERNAL_IP6_DNS, ConfigAttr.INTERNAL_IP6_DHCP))
_PREFIXED_IP6 = frozenset((ConfigAttr.INTERNAL_IP6_ADDRESS, ConfigAttr.INTERNAL_IP6_SUBNET))


def config_value(atype: int, value: bytes) -> ConfigValue:
    """The typed value of one configuration attribute (§3.15.1): IPv4Address for the IPv4
    address/netmask/DNS/NBNS/DHCP, IPv6Interface (address/prefix) for
    INTERNAL_IP6_ADDRESS, IPv6Address for IPv6 DNS/DHCP, IPv4Network / IPv6Network for the
    subnets, the attribute types of SUPPORTED_ATTRIBUTES, raw bytes for anything else.
    A length the RFC does not allow raises DecodeError."""
    n = len(value)
    if n == 0 and atype != ConfigAttr.SUPPORTED_ATTRIBUTES:
        return None
    name = name_of(ConfigAttr, atype)
    if atype in _IP4_ATTRS:
        if n != 4:
            raise DecodeError(f"{name} of {n} bytes (0 or 4)")
        return ipaddress.IPv4Address(value)
    if atype in _IP6_ATTRS:
        if n != 16:
            raise DecodeError(f"{name} of {n} bytes (0 or 16)")
        return ipaddress.IPv6Address(value)
    if atype in _PREFIXED_IP6:
        if n != 17 or value[16] > 128:
            raise DecodeError(f"{name} of {n} bytes or prefix > 128 (0 or 17 bytes)")
        addr = ipaddress.IPv6Address(value[:16])
        if atype == ConfigAttr.INTERNAL_IP6_ADDRESS:
            return ipaddress.IPv6Interface((addr, value[16]))
        return ipaddress.IPv6Network((addr, value[16]), strict=False)
    if atype == ConfigAttr.INTERNAL_IP4_SUBNET:
        if n != 8:
            raise DecodeError(f"{name} of {n} bytes (0 or 8)")
        try:
            return ipaddress.IPv4Network(
                (ipaddress.IPv4Address(value[:4]), str(ipaddress.IPv4Address(value[4:]))),
                strict=False,
            )
        except ValueError:
            raise DecodeError(f"{name} with a non-contiguous netmask") from None
    if atype == ConfigAttr.SUPPORTED_ATTRIBUTES:
        if n % 2:
            raise DecodeError(f"{name} of {n} bytes (a multiple of 2)")
        return tuple(_U16.unpack_from(value, i)[0] for i in range(0, n, 2))
    return bytes(value)


def config_attribute(atype: int, value: ConfigValue) -> tuple[int, bytes]:
    """(type, raw value) for Configuration.attributes; the inverse of config_value."""
    if value is None:
        return atype, b""
    if isinstance(value, ipaddress.IPv6Interface):
        return atype, value.ip.packed + bytes((value.network.prefixlen,))
    if isinstance(value, ipaddress.IPv6Network):
        return atype, value.network_address.packed + bytes((value.prefixlen,))
    if isinstance(value, ipaddress.IPv4Network):
        return atype, value.network_address.packed + value.netmask.packed
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return atype, value.packed
    if isinstance(value, tuple):
        return atype, b"".join(_U16.pack(t) for t in value)
    return atype, bytes(value)


def _pull_eap(_t: int, body: bytes) -> Eap:
    _need(body, 4, "EAP")
    if _U16.unpack_from(body, 2)[0] != len(body):
        raise DecodeError("EAP length does not match the payload")
    return Eap(body)


def _pull_skf(first: int, body: bytes) -> EncryptedFragment:
    _need(body, 4, "SKF")
    number, total = _TWO_U16.unpack_from(body)
    if number == 0 or total == 0 or number > total:
        raise DecodeError(f"bad fragment number {number}/{total}")
    return EncryptedFragment(number, total, first, body[4:])


_PULLERS: dict[int, Callable[[int, bytes], Payload]] = {
    PayloadType.SA: _pull_sa,
    PayloadType.KE: _pull_ke,
    PayloadType.IDi: _pull_id,
    PayloadType.IDr: _pull_id,
    PayloadType.CERT: _pull_cert,
    PayloadType.CERTREQ: _pull_certreq,
    PayloadType.AUTH: _pull_auth,
    PayloadType.NONCE: _pull_nonce,
    PayloadType.NOTIFY: _pull_notify,
    PayloadType.DELETE: _pull_delete,
    PayloadType.VENDOR_ID: _pull_vendor,
    PayloadType.TSi: _pull_ts,
    PayloadType.TSr: _pull_ts,
    PayloadType.CP: _pull_cp,
    PayloadType.EAP: _pull_eap,
}


# --------------------------------------------------------------------------- encoding


@functools.lru_cache(maxsize=1024)
def _push_transform(t: Transform, last: bool) -> bytes:
    """Cached: a gateway sends the same few transforms over and over."""
    attrs = b""
    if t.key_length is not None:
        attrs += _ATTR_TV.pack(_AF_BIT | ATTR_KEY_LENGTH, t.key_length)
    for atype, value in t.other_attributes:
        if atype & _AF_BIT:
            attrs += _U16.pack(atype) + value
        else:
            attrs += _TWO_U16.pack(atype, len(value)) + value
    return _TRANSFORM.pack(0 if last else 3, 0, 8 + len(attrs), t.type, 0, t.id) + attrs


@functools.lru_cache(maxsize=1024)
def _proposal_parts(
    number: int, protocol: int, spi_size: int, transforms: tuple[Transform, ...], last: bool
) -> tuple[bytes, bytes]:
    """(proposal header, transforms) of a proposal; the SPI goes between them. Cached."""
    n = len(transforms)
    ts = b"".join(_push_transform(t, j == n - 1) for j, t in enumerate(transforms))
    hdr = _PROPOSAL.pack(0 if last else 2, 0, 8 + spi_size + len(ts), number, protocol, spi_size, n)
    return hdr, ts


def _push_sa(p: SecurityAssociation) -> bytes:
    out = []
    n = len(p.proposals)
    for i, prop in enumerate(p.proposals):
        hdr, ts = _proposal_parts(
            prop.number, prop.protocol, len(prop.spi), prop.transforms, i == n - 1
        )
        out.append(hdr + prop.spi + ts)
    return b"".join(out)


def _push_ts(p: TrafficSelectors) -> bytes:
    out = [bytes((len(p.selectors), 0, 0, 0))]
    for s in p.selectors:
        addrs = s.start_addr.packed + s.end_addr.packed
        out.append(_TS.pack(s.ts_type, s.ip_protocol, 8 + len(addrs), s.start_port, s.end_port))
        out.append(addrs)
    return b"".join(out)


def _push_delete(p: Delete) -> bytes:
    return _DELETE.pack(p.protocol, p.spi_size, len(p.spis)) + b"".join(p.spis)


def _push_cp(p: Configuration) -> bytes:
    attrs = b"".join(_TWO_U16.pack(a, len(v)) + v for a, v in p.attributes)
    return bytes((p.cfg_type, 0, 0, 0)) + attrs


_PUSHERS: dict[type, Callable[[Any], bytes]] = {
    Nonce: lambda p: p.data,
    VendorId: lambda p: p.data,
    Eap: lambda p: p.data,
    KeyExchange: lambda p: _U16.pack(p.group) + b"\0\0" + p.data,
    Notify: lambda p: _NOTIFY.pack(p.protocol, len(p.spi), p.type) + p.spi + p.data,
    Identification: lambda p: p.body,
    Authentication: lambda p: bytes((p.method, 0, 0, 0)) + p.data,
    SecurityAssociation: _push_sa,
    TrafficSelectors: _push_ts,
    Delete: _push_delete,
    Certificate: lambda p: bytes((p.encoding,)) + p.data,
    CertificateRequest: lambda p: bytes((p.encoding,)) + p.data,
    Configuration: _push_cp,
    Encrypted: lambda p: p.body,
    EncryptedFragment: lambda p: _TWO_U16.pack(p.number, p.total) + p.body,
    UnknownPayload: lambda p: p.body,
}


def encode_body(p: Payload) -> bytes:
    """The body of one payload (without its generic header)."""
    return _PUSHERS[type(p)](p)


def _next_type(p: Payload) -> int:
    if type(p) is Encrypted or type(p) is EncryptedFragment:
        return p.first_payload  # type: ignore[union-attr]
    return 0


def encode_payloads(payloads: tuple[Payload, ...] | list[Payload]) -> tuple[int, bytes]:
    """Encode a chain; returns (type of the first payload, bytes)."""
    parts = []
    n = len(payloads)
    for i, p in enumerate(payloads):
        body = encode_body(p)
        nxt = payloads[i + 1].payload_type if i + 1 < n else _next_type(p)
        crit = 0x80 if type(p) is UnknownPayload and p.critical else 0  # type: ignore[union-attr]
        parts.append(_GENERIC.pack(nxt, crit, 4 + len(body)))
        parts.append(body)
    first = payloads[0].payload_type if payloads else 0
    return first, b"".join(parts)


def encode_header(
    spi_i: bytes,
    spi_r: bytes,
    next_payload: int,
    exchange_type: int,
    *,
    is_initiator: bool,
    is_response: bool,
    message_id: int,
    length: int,
) -> bytes:
    flags = (HeaderFlag.INITIATOR if is_initiator else 0) | (
        HeaderFlag.RESPONSE if is_response else 0
    )
    return _HEADER.pack(
        spi_i, spi_r, next_payload, IKE_VERSION, exchange_type, flags, message_id, length
    )


def encode_message(m: Message) -> bytes:
    first, body = encode_payloads(m.payloads)
    return (
        encode_header(
            m.spi_i,
            m.spi_r,
            first,
            m.exchange_type,
            is_initiator=m.is_initiator,
            is_response=m.is_response,
            message_id=m.message_id,
            length=IKE_HEADER_LEN + len(body),
        )
        + body
    )
