"""NAT detection (RFC 7296 §2.23) and NAT-T keepalives (RFC 3948 §2.3).

The NAT_DETECTION_SOURCE_IP / _DESTINATION_IP hashes we send and what the peer's say:
whether a NAT sits on the path (then ESP is UDP-encapsulated and IKE floats to port
4500) and whether it is our address that is translated (then we keep the mapping open
with keepalives: one 0xFF byte from the NAT-T port, no non-ESP marker).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Sequence

from ike.codec import Notify, Payload
from ike.constants import NotifyType
from ike.events import Endpoint
from ike.ts import ip

KEEPALIVE = b"\xff"  # RFC 3948 §2.3


@functools.lru_cache(maxsize=4096)
def _ip_port(ep: Endpoint) -> bytes:
    return ip(ep[0]).packed + struct.pack("!H", ep[1])


def nat_hash(spi_i: bytes, spi_r: bytes, ep: Endpoint) -> bytes:
    """RFC 7296 §2.23: SHA-1(SPIi | SPIr | IP | Port)."""
    return hashlib.sha1(spi_i + spi_r + _ip_port(ep)).digest()


def detection_notifies(
    spi_i: bytes, spi_r: bytes, local: Endpoint, remote: Endpoint
) -> list[Payload]:
    """NAT_DETECTION_SOURCE_IP (our end) and _DESTINATION_IP (the peer's) of a path."""
    return [
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(spi_i, spi_r, local)),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, spi_r, remote)),
    ]


def nat_state(
    spi_i: bytes, spi_r: bytes, local: Endpoint, remote: Endpoint, payloads: Sequence[Payload]
) -> tuple[bool, bool] | None:
    """(a NAT on the path, our own address translated) from the peer's NAT_DETECTION
    hashes over `local`/`remote`, or None when it sent none. The initiator's
    IKE_SA_INIT request hashes with SPIr = 0."""
    src: list[bytes] = []
    dst: list[bytes] = []
    for p in payloads:
        if type(p) is Notify:
            if p.type == NotifyType.NAT_DETECTION_SOURCE_IP:
                src.append(p.data)
            elif p.type == NotifyType.NAT_DETECTION_DESTINATION_IP:
                dst.append(p.data)
    if not src or not dst:
        return None
    remote_ok = nat_hash(spi_i, spi_r, remote) in src
    local_ok = nat_hash(spi_i, spi_r, local) in dst
    return not (remote_ok and local_ok), not local_ok
