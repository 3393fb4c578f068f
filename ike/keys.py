"""Key derivation (RFC 7296 §2.13-2.15, §2.17) and PSK authentication.

Every key-holding dataclass hides its keys from repr, so an event or SA printed into a
log never carries key material.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.crypto import Prf
from ike.proposals import EspSuite, IkeSuite

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15


@dataclass(frozen=True, slots=True)
class IkeSaKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} (RFC 7296 §2.14)."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChildSaKeys:
    """KEYMAT split per direction (§2.17): i = initiator to responder, r = the reverse."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


def skeyseed(prf: Prf, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (§2.14)."""
    return prf(ni + nr, g_ir)


def skeyseed_rekey(prf: Prf, sk_d_old: bytes, g_ir_new: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (§2.18), for IKE SA rekeying."""
    return prf(sk_d_old, g_ir_new + ni + nr)


def derive_ike_sa_keys(
    suite: IkeSuite, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
) -> IkeSaKeys:
    prf = suite.prf
    a = suite.integ.key_size if suite.integ else 0
    e = suite.encr.key_size
    p = prf.size
    km = prf.plus(seed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    o = 0
    parts = []
    for n in (p, a, a, e, e, p, p):
        parts.append(km[o : o + n])
        o += n
    return IkeSaKeys(*parts)


def child_keymat(
    prf: Prf, sk_d: bytes, ni: bytes, nr: bytes, length: int, g_ir_new: bytes = b""
) -> bytes:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (§2.17)."""
    return prf.plus(sk_d, g_ir_new + ni + nr, length)


def derive_child_sa_keys(
    prf: Prf, suite: EspSuite, sk_d: bytes, ni: bytes, nr: bytes, g_ir_new: bytes = b""
) -> ChildSaKeys:
    e = suite.encr.key_size
    a = suite.integ.key_size if suite.integ else 0
    km = child_keymat(prf, sk_d, ni, nr, 2 * (e + a), g_ir_new)
    return ChildSaKeys(km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :])


def psk_pad(prf: Prf, psk: bytes) -> bytes:
    """prf(Shared Secret, "Key Pad for IKEv2") (§2.15): the same for every SA of a
    connection, so it is computed once per connection and PRF (ike.config)."""
    return prf(psk, KEY_PAD)


def psk_auth(
    prf: Prf, pad: bytes, real_message: bytes, nonce: bytes, sk_p: bytes, id_body: bytes
) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (§2.15), with
    `pad` = psk_pad(prf, PSK). SignedOctets = RealMessage | peer's Nonce | prf(SK_p, IDx')."""
    return prf(pad, real_message + nonce + prf(sk_p, id_body))
