"""Crypto suites on `cryptography` and the stdlib's HMAC (RFC 7296 §3.3.2, RFC 7634, RFC 8031).

Each algorithm is a small immutable object built once at import (tables below, keyed by
the IANA transform ID); per-SA state (AEAD contexts) lives in ike.sk. Private keys are
derived from the injected random source so the engine is deterministic under test.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ike.constants import DhGroup, EncrId, IntegId, NotifyType, PrfId
from ike.errors import ProtocolError

RandomSource = Callable[[int], bytes]

__all__ = [
    "AeadContext",
    "AEAD_ALGORITHMS",
    "DH_GROUPS",
    "ENCR",
    "INTEG",
    "PRF",
    "DhGroupImpl",
    "Encr",
    "Integ",
    "InvalidTag",
    "Prf",
    "RandomSource",
]


# --------------------------------------------------------------------------- PRF


@dataclass(frozen=True, slots=True)
class Prf:
    """HMAC-SHA2 PRF (RFC 4868). Key and output size are the hash size (§2.14)."""

    id: int
    name: str  # strongSwan keyword
    hash: str
    size: int

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hash)

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 §2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
        if length > 255 * self.size:
            raise ValueError("prf+ cannot produce that much keying material")
        out = bytearray()
        t = b""
        n = 1
        h = self.hash
        while len(out) < length:
            t = hmac.digest(key, t + seed + bytes((n,)), h)
            out += t
            n += 1
        return bytes(out[:length])


PRF: dict[int, Prf] = {
    PrfId.PRF_HMAC_SHA2_256: Prf(PrfId.PRF_HMAC_SHA2_256, "prfsha256", "sha256", 32),
    PrfId.PRF_HMAC_SHA2_384: Prf(PrfId.PRF_HMAC_SHA2_384, "prfsha384", "sha384", 48),
    PrfId.PRF_HMAC_SHA2_512: Prf(PrfId.PRF_HMAC_SHA2_512, "prfsha512", "sha512", 64),
}


# --------------------------------------------------------------------------- integrity


@dataclass(frozen=True, slots=True)
class Integ:
    """HMAC-SHA2 integrity with truncation (RFC 4868 §2.1)."""

    id: int
    name: str
    hash: str
    key_size: int
    icv_size: int
    kernel_name: str

    def mac(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hash)[: self.icv_size]


INTEG: dict[int, Integ] = {
    IntegId.AUTH_HMAC_SHA2_256_128: Integ(
        IntegId.AUTH_HMAC_SHA2_256_128, "sha256", "sha256", 32, 16, "hmac(sha256)"
    ),
    IntegId.AUTH_HMAC_SHA2_384_192: Integ(
        IntegId.AUTH_HMAC_SHA2_384_192, "sha384", "sha384", 48, 24, "hmac(sha384)"
    ),
    IntegId.AUTH_HMAC_SHA2_512_256: Integ(
        IntegId.AUTH_HMAC_SHA2_512_256, "sha512", "sha512", 64, 32, "hmac(sha512)"
    ),
}


# --------------------------------------------------------------------------- encryption


@dataclass(frozen=True, slots=True)
class Encr:
    """One encryption transform at one key size.

    `key_size` is the keying material taken from prf+, which for AEADs includes the
    4-byte salt (RFC 5282 §7.1, RFC 7634 §2); the kernel wants the same bytes.
    """

    id: int
    key_bits: int | None  # the Key Length attribute; None when the transform has none
    name: str  # strongSwan keyword
    kernel_name: str
    aead: bool
    key_size: int
    iv_size: int
    icv_size: int  # 0 for non-AEAD (the integrity transform supplies it)
    block_size: int


def _gcm(bits: int) -> Encr:
    return Encr(
        EncrId.ENCR_AES_GCM_16,
        bits,
        f"aes{bits}gcm16",
        "rfc4106(gcm(aes))",
        True,
        bits // 8 + 4,
        8,
        16,
        4,
    )


def _cbc(bits: int) -> Encr:
    return Encr(EncrId.ENCR_AES_CBC, bits, f"aes{bits}", "cbc(aes)", False, bits // 8, 16, 0, 16)


_CHACHA = Encr(
    EncrId.ENCR_CHACHA20_POLY1305,
    None,
    "chacha20poly1305",
    "rfc7539esp(chacha20,poly1305)",
    True,
    36,
    8,
    16,
    4,
)

# keyed by (transform ID, Key Length attribute)
ENCR: dict[tuple[int, int | None], Encr] = {
    (e.id, e.key_bits): e
    for e in (_gcm(128), _gcm(192), _gcm(256), _cbc(128), _cbc(192), _cbc(256), _CHACHA)
}
AEAD_ALGORITHMS = frozenset(e.id for e in ENCR.values() if e.aead)


AeadContext = AESGCM | ChaCha20Poly1305


def aead_context(encr: Encr, key: bytes) -> AeadContext:
    """The AEAD object for a key (keying material minus the trailing 4-byte salt)."""
    if encr.id == EncrId.ENCR_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key[:-4])
    return AESGCM(key[:-4])


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


# --------------------------------------------------------------------------- Diffie-Hellman

# RFC 3526 §3, 2048-bit MODP group (group 14), generator 2.
MODP_2048_P = int(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1"
    "29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD"
    "EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245"
    "E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D"
    "C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F"
    "83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D"
    "670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9"
    "DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510"
    "15728E5A 8AACAA68 FFFFFFFF FFFFFFFF".replace(" ", ""),
    16,
)


def _bad_ke(why: str) -> ProtocolError:
    return ProtocolError(NotifyType.INVALID_SYNTAX, f"invalid KE public value: {why}")


class DhPrivate:
    """Our half of one exchange: `public` goes into the KE payload."""

    __slots__ = ("group", "public", "_key")

    def __init__(self, group: DhGroupImpl, public: bytes, key: object) -> None:
        self.group = group
        self.public = public
        self._key = key

    def __repr__(self) -> str:
        return f"DhPrivate(group={self.group.name})"

    def exchange(self, peer: bytes) -> bytes:
        """g^ir from the peer's KE data; ProtocolError(INVALID_SYNTAX) if it is invalid."""
        return self.group.exchange(self._key, peer)


@dataclass(frozen=True, slots=True)
class DhGroupImpl:
    id: int
    name: str  # strongSwan keyword
    ke_size: int

    def generate(self, random: RandomSource) -> DhPrivate:
        """A fresh private value. With the default source (os.urandom) OpenSSL generates it
        (its CSPRNG, about twice as fast for X25519); an injected source is used as is, so
        tests stay deterministic."""
        gid = self.id
        native = random is os.urandom
        if gid == DhGroup.CURVE25519:
            k25 = (
                x25519.X25519PrivateKey.generate()
                if native
                else x25519.X25519PrivateKey.from_private_bytes(random(32))
            )
            return DhPrivate(self, k25.public_key().public_bytes_raw(), k25)
        if gid == DhGroup.CURVE448:
            k448 = (
                x448.X448PrivateKey.generate()
                if native
                else x448.X448PrivateKey.from_private_bytes(random(56))
            )
            return DhPrivate(self, k448.public_key().public_bytes_raw(), k448)
        if gid in _CURVES:
            curve, bits = _CURVES[gid]
            if native:
                kec = ec.generate_private_key(curve)
            else:
                d = int.from_bytes(random((bits + 7) // 8), "big") % (1 << (bits - 1)) or 1
                kec = ec.derive_private_key(d, curve)
            pub = kec.public_key().public_numbers()
            half = self.ke_size // 2
            return DhPrivate(self, pub.x.to_bytes(half, "big") + pub.y.to_bytes(half, "big"), kec)
        # MODP: a 512-bit exponent is ample for a 2048-bit group (RFC 3526 §8 table).
        x = int.from_bytes(random(64), "big") | 1 << 511
        y = pow(2, x, MODP_2048_P)
        return DhPrivate(self, y.to_bytes(self.ke_size, "big"), x)

    def exchange(self, key: object, peer: bytes) -> bytes:
        if len(peer) != self.ke_size:
            raise _bad_ke(f"{len(peer)} bytes for {self.name} (want {self.ke_size})")
        gid = self.id
        try:
            if gid == DhGroup.CURVE25519:
                k25 = cast(x25519.X25519PrivateKey, key)
                shared = k25.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            elif gid == DhGroup.CURVE448:
                k448 = cast(x448.X448PrivateKey, key)
                shared = k448.exchange(x448.X448PublicKey.from_public_bytes(peer))
            elif gid in _CURVES:
                kec = cast(ec.EllipticCurvePrivateKey, key)
                # from_encoded_point checks that the point is on the curve (RFC 5903 §7)
                pub = ec.EllipticCurvePublicKey.from_encoded_point(kec.curve, b"\x04" + peer)
                shared = kec.exchange(ec.ECDH(), pub)
            else:
                y = int.from_bytes(peer, "big")
                if not 1 < y < MODP_2048_P - 1:  # RFC 6989 §2.1
                    raise _bad_ke("MODP value out of range")
                return pow(y, cast(int, key), MODP_2048_P).to_bytes(self.ke_size, "big")
        except ValueError as exc:
            raise _bad_ke(str(exc)) from None
        # RFC 8031 §2.2 / RFC 7748 §6: an all-zero X25519/X448 result means a bad point
        if shared.count(0) == len(shared):
            raise _bad_ke("all-zero shared secret")
        return shared


# Curve and bit size of the group order: a private value below 2^(bits-1) is always below
# the order of these curves (each order exceeds 2^(bits-1)), so no order constant is needed.
_CURVES: dict[int, tuple[ec.EllipticCurve, int]] = {
    DhGroup.ECP_256: (ec.SECP256R1(), 256),
    DhGroup.ECP_384: (ec.SECP384R1(), 384),
    DhGroup.ECP_521: (ec.SECP521R1(), 521),
}

DH_GROUPS: dict[int, DhGroupImpl] = {
    g.id: g
    for g in (
        DhGroupImpl(DhGroup.MODP_2048, "modp2048", 256),
        DhGroupImpl(DhGroup.ECP_256, "ecp256", 64),
        DhGroupImpl(DhGroup.ECP_384, "ecp384", 96),
        DhGroupImpl(DhGroup.ECP_521, "ecp521", 132),
        DhGroupImpl(DhGroup.CURVE25519, "x25519", 32),
        DhGroupImpl(DhGroup.CURVE448, "x448", 56),
    )
}
