"""Tunnel MTU and MSS arithmetic (pure Python; the daemon feeds the result to the LAN clamp).

An ESP packet (RFC 4303 §2) on the wire, tunnel mode:

    outer IP header       20 (IPv4, no options) or 40 (IPv6)
    UDP header             8 only with UDP encapsulation (RFC 3948, NAT-T)
    SPI + sequence number  8
    IV                     suite's IV: 8 for AES-GCM / ChaCha20-Poly1305, 16 for AES-CBC
    inner packet           P
    padding                0..align-1 so that P + 2 is a multiple of align
    pad length, next hdr   2
    ICV                    16 for AES-GCM-16 / ChaCha20-Poly1305, the HMAC's truncated
                           length otherwise (RFC 4868: 16/24/32 for SHA-256/384/512)

with align = max(cipher block size, 4) (RFC 4303 §2.4: the trailer ends on a 4-octet
boundary). ESN adds nothing on the wire (the high bits are not sent). So the largest P
that fits a physical MTU is

    avail = physical_mtu - outer - udp - 8 - iv - icv
    P     = floor(avail / align) * align - 2

Example, AES-256-GCM-16 over IPv4 without NAT-T on a 1500 link: avail = 1500-20-8-8-16 =
1448, P = 1448 - 2 = 1446; the IPv4 TCP MSS is then 1446 - 40 = 1406. AES-CBC +
HMAC-SHA-256: avail = 1500-20-8-16-16 = 1440, P = 1438. When the suite is unknown the
conservative fallback is physical_mtu - 80.

Transport mode keeps the packet's own IP header in front: only the payload behind it
(P - iph) is padded, and no outer header is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

FALLBACK_OVERHEAD = 80
ESP_HEADER = 8  # SPI + sequence number
ESP_TRAILER = 2  # pad length + next header
UDP_HEADER = 8
IPV4_HEADER = 20
IPV6_HEADER = 40
TCP_HEADER = 20
MIN_MTU_IPV4 = 576  # RFC 791 / RFC 1122: every host accepts 576-octet datagrams
MIN_MTU_IPV6 = 1280  # RFC 8200 §5


class MtuError(ValueError):
    """Arithmetic asked for with impossible inputs (MTU too small for the overhead...)."""


class _EncrLike(Protocol):
    @property
    def iv_size(self) -> int: ...
    @property
    def icv_size(self) -> int: ...
    @property
    def block_size(self) -> int: ...


class _IntegLike(Protocol):
    @property
    def icv_size(self) -> int: ...


class _SuiteLike(Protocol):
    """The shape of ike.proposals.EspSuite this module needs."""

    @property
    def encr(self) -> _EncrLike: ...
    @property
    def integ(self) -> _IntegLike | None: ...


@dataclass(frozen=True, slots=True)
class EspOverhead:
    """The per-packet sizes of one ESP suite."""

    iv_size: int
    icv_size: int
    block_size: int

    @property
    def align(self) -> int:
        return max(self.block_size, 4)

    @classmethod
    def of_suite(cls, suite: _SuiteLike) -> EspOverhead:
        icv = suite.encr.icv_size or (suite.integ.icv_size if suite.integ else 0)
        return cls(suite.encr.iv_size, icv, suite.encr.block_size)

    @classmethod
    def of_proposal(cls, text: str) -> EspOverhead | None:
        """The overhead of a negotiated ESP proposal string (e.g. list-sas esp_proposal
        "aes256gcm16" or "aes128-sha256-esn"); None when it cannot be parsed."""
        from ike.constants import ProtocolId
        from ike.errors import LocalError
        from ike.proposals import parse_proposal

        try:
            spec = parse_proposal(text, ProtocolId.ESP)
        except LocalError:
            return None
        encr = spec.encr[0]
        icv = encr.icv_size or (spec.integ[0].icv_size if spec.integ else 0)
        return cls(encr.iv_size, icv, encr.block_size)


def tunnel_mtu(
    physical_mtu: int,
    overhead: EspOverhead | None,
    *,
    outer_ipv6: bool = False,
    udp_encap: bool = False,
    mode: Literal["tunnel", "transport"] = "tunnel",
    inner_ipv6: bool = False,
) -> int:
    """The largest packet that still fits `physical_mtu` once ESP-encapsulated.

    Without a known suite: physical_mtu - 80 (the conservative fallback).
    """
    if overhead is None:
        mtu = physical_mtu - FALLBACK_OVERHEAD
    else:
        udp = UDP_HEADER if udp_encap else 0
        fixed = udp + ESP_HEADER + overhead.iv_size + overhead.icv_size
        if mode == "tunnel":
            avail = physical_mtu - (IPV6_HEADER if outer_ipv6 else IPV4_HEADER) - fixed
            mtu = (avail // overhead.align) * overhead.align - ESP_TRAILER
        else:
            iph = IPV6_HEADER if inner_ipv6 else IPV4_HEADER
            avail = physical_mtu - iph - fixed
            mtu = iph + (avail // overhead.align) * overhead.align - ESP_TRAILER
    if mtu < IPV4_HEADER + TCP_HEADER:
        raise MtuError(f"physical MTU {physical_mtu} leaves no room for packets after ESP")
    return mtu


def mss_for_mtu(mtu: int, *, ipv6: bool) -> int:
    """TCP MSS for packets of at most `mtu` bytes (RFC 9293 §3.7.1: no IP/TCP options)."""
    mss = mtu - (IPV6_HEADER if ipv6 else IPV4_HEADER) - TCP_HEADER
    if mss <= 0:
        raise MtuError(f"MTU {mtu} is too small for a TCP segment")
    return mss
