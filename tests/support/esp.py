"""Minimal ESP (RFC 4303) seal/open in Python for checking Child SA keys end to end.

Tunnel mode only, the algorithms our engine negotiates: AES-GCM / ChaCha20-Poly1305
(RFC 4106 / RFC 7634: salt in the key's last 4 bytes, 8-byte IV, AAD = SPI | seq) and
AES-CBC + HMAC-SHA2 (RFC 3602 / RFC 4868). Test code, not a data plane.
"""

from __future__ import annotations

import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ike.events import ChildSaEstablished

_HASH = {
    "hmac(sha256)": ("sha256", 16),
    "hmac(sha384)": ("sha384", 24),
    "hmac(sha512)": ("sha512", 32),
}


def _aead(alg: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return ChaCha20Poly1305(key[:-4]) if "chacha" in alg else AESGCM(key[:-4])


def seal(child: ChildSaEstablished, seq: int, inner: bytes, next_header: int = 4) -> bytes:
    """An outbound ESP packet (what goes after the UDP header with NAT-T)."""
    key, spi = child.encr_key_out, child.spi_out
    head = struct.pack("!II", spi, seq)
    if child.integ_alg is None:
        pad = -(len(inner) + 2) % 4
        plain = inner + bytes(range(1, pad + 1)) + bytes((pad, next_header))
        iv = os.urandom(8)
        return head + iv + _aead(child.encr_alg, key).encrypt(key[-4:] + iv, plain, head)
    pad = -(len(inner) + 2) % 16
    plain = inner + bytes(range(1, pad + 1)) + bytes((pad, next_header))
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = head + iv + enc.update(plain) + enc.finalize()
    h, n = _HASH[child.integ_alg]
    return body + hmac.digest(child.integ_key_out, body, h)[:n]


def open_(child: ChildSaEstablished, packet: bytes) -> tuple[int, bytes]:
    """Check and decrypt an inbound ESP packet; returns (sequence number, inner packet)."""
    spi, seq = struct.unpack_from("!II", packet)
    if spi != child.spi_in:
        raise ValueError(f"SPI {spi:08x} is not our inbound SPI {child.spi_in:08x}")
    key = child.encr_key_in
    if child.integ_alg is None:
        iv = packet[8:16]
        plain = _aead(child.encr_alg, key).decrypt(key[-4:] + iv, packet[16:], packet[:8])
    else:
        h, n = _HASH[child.integ_alg]
        body, icv = packet[:-n], packet[-n:]
        if not hmac.compare_digest(icv, hmac.digest(child.integ_key_in, body, h)[:n]):
            raise ValueError("ESP ICV mismatch")
        iv = body[8:24]
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        plain = dec.update(body[24:]) + dec.finalize()
    pad = plain[-2]
    return seq, plain[: len(plain) - 2 - pad]


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    """An IPv4 ICMP echo request with correct checksums."""

    def csum(b: bytes) -> int:
        if len(b) % 2:
            b += b"\0"
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        return ~s & 0xFFFF

    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    total = 20 + len(icmp)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        ident,
        0,
        64,
        1,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + icmp
