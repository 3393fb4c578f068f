"""Crafted packets for the data-plane tests and the benchmark (scapy; test-only import).

Every builder returns a whole Ethernet frame as bytes, ready for BPF_PROG_TEST_RUN or an
AF_PACKET socket.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

IKE_SA_INIT = 34
IKE_AUTH = 35
IKE_FLAG_INITIATOR = 0x08
IKE_FLAG_RESPONSE = 0x20

SRC4, DST4 = "198.51.100.7", "203.0.113.1"
SRC6, DST6 = "2001:db8:1::7", "2001:db8:2::1"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def esp_payload(spi: int, seq: int = 1, size: int = 64) -> bytes:
    """An ESP packet body (RFC 4303 §2): SPI, sequence number, opaque ciphertext."""
    return struct.pack("!II", spi, seq) + bytes(range(256)) * (size // 256) + bytes(size % 256)


def ike_header(
    exchange_type: int = IKE_SA_INIT,
    *,
    spi_i: bytes = b"\x11" * 8,
    spi_r: bytes = bytes(8),
    flags: int = IKE_FLAG_INITIATOR,
    body: bytes = b"",
) -> bytes:
    """RFC 7296 §3.1 header (version 2.0, next payload none) followed by `body`."""
    return (
        spi_i
        + spi_r
        + struct.pack("!BBBBII", 0, 0x20, exchange_type, flags, 0, 28 + len(body))
        + body
    )


def ip4(proto_layer: Packet | bytes, *, src: str = SRC4, dst: str = DST4, **ip: Any) -> Packet:
    return IP(src=src, dst=dst, **ip) / proto_layer


def ip6(proto_layer: Packet | bytes, *, src: str = SRC6, dst: str = DST6, **ip: Any) -> Packet:
    return IPv6(src=src, dst=dst, **ip) / proto_layer


def frame(l3: Packet, *, vlans: int = 0) -> bytes:
    """Ethernet around `l3`; vlans=1 adds an 802.1Q tag, 2 adds 802.1ad + 802.1Q."""
    eth: Packet = ETH.copy()
    if vlans >= 2:
        eth = eth / Dot1AD(vlan=100) / Dot1Q(vlan=200)
    elif vlans == 1:
        eth = eth / Dot1Q(vlan=200)
    for _ in range(max(0, vlans - 2)):
        eth = eth / Dot1Q(vlan=300)
    return bytes(eth / l3)


def esp4(spi: int, size: int = 64, **ip: Any) -> bytes:
    return frame(ip4(Raw(esp_payload(spi, size=size)), proto=50, **ip))


def esp6(spi: int, size: int = 64) -> bytes:
    return frame(ip6(Raw(esp_payload(spi, size=size)), nh=50))


def natt4(spi: int, size: int = 64, sport: int = 4500, dport: int = 4500) -> bytes:
    """ESP-in-UDP (RFC 3948 §2.1)."""
    return frame(ip4(UDP(sport=sport, dport=dport) / Raw(esp_payload(spi, size=size))))


def ike4(payload: bytes, *, port: int = 500, src: str = SRC4) -> bytes:
    """IKE on port 500, or on 4500 behind the non-ESP marker (RFC 3948 §2.2)."""
    body = payload if port == 500 else bytes(4) + payload
    return frame(ip4(UDP(sport=port, dport=port) / Raw(body), src=src))


def ike6(payload: bytes, *, src: str = SRC6) -> bytes:
    return frame(ip6(UDP(sport=500, dport=500) / Raw(payload), src=src))


def syn(
    *,
    mss: int | None = 1460,
    options: Sequence[tuple[str, object]] | None = None,
    flags: str = "S",
    v6: bool = False,
    dst: str | None = None,
    vlans: int = 0,
    **ip: Any,
) -> bytes:
    """A TCP SYN (or SYN-ACK with flags="SA") with a valid checksum."""
    opts = list(options) if options is not None else ([("MSS", mss)] if mss is not None else [])
    tcp = TCP(sport=40000, dport=443, flags=flags, seq=1000, options=opts)
    if v6:
        return frame(ip6(tcp, dst=dst or DST6, **ip), vlans=vlans)
    return frame(ip4(tcp, dst=dst or DST4, **ip), vlans=vlans)


def tcp_mss(data: bytes) -> int | None:
    """The MSS option of the TCP segment in an Ethernet frame (None: no MSS option)."""
    pkt = Ether(data)
    for name, value in pkt[TCP].options:
        if name == "MSS":
            return int(value)  # type: ignore[call-overload]
    return None


def tcp_checksum_ok(data: bytes) -> bool:
    """Check the TCP checksum over the raw segment bytes with scapy's own one's-complement
    sum (pseudo header included): a valid segment sums to zero."""
    from scapy.layers.inet import in4_chksum
    from scapy.layers.inet6 import in6_chksum

    pkt = Ether(data)
    segment = bytes(pkt[TCP])
    if IPv6 in pkt:
        return bool(in6_chksum(6, pkt[TCP].underlayer, segment) == 0)
    return bool(in4_chksum(6, pkt[IP], segment) == 0)
