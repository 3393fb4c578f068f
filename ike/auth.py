"""Public key (certificate) authentication for IKE_AUTH, sans-IO.

What lives here (the engine only calls `make_auth`, `check_auth`, `cert_payloads`,
`init_payloads` and `peer_hints`):

* AUTH payloads signed and verified over the signed octets of RFC 7296 §2.15
  (RealMessage | Nonce | prf(SK_p, IDx')): RFC 7427 "Digital Signature" (method 14) with
  RSASSA-PSS, RSASSA-PKCS1-v1_5 (SHA-2), ECDSA (P-256/384/521, DER signature) and Ed25519
  (Identity hash, RFC 8420); the classic methods 1 (RSA PKCS#1 v1.5 with SHA-1, accepted
  on receive and used only towards a peer that did not announce RFC 7427) and 9/10/11
  (ECDSA with SHA-256/384/512 on P-256/384/521, r|s, RFC 4754).
* SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4) sent in IKE_SA_INIT; the peer's list decides
  which hash we sign with.
* X.509 path validation to the configured CA certificates: the path is built from the
  peer's CERT payloads and the anchors, every signature checked, validity at the given
  time, basicConstraints cA (and pathLenConstraint) on every issuer, keyUsage where
  present (keyCertSign on issuers, digitalSignature/nonRepudiation on the end entity),
  and revocation by the configured CRLs (a CRL counts only if its issuer in the path
  signed it).
* The peer's ID must be in its certificate: ID_FQDN / ID_RFC822_ADDR / ID_IPV4_ADDR /
  ID_IPV6_ADDR against subjectAltName, ID_DER_ASN1_DN against the subject.
* CERTREQ (RFC 7296 §3.7): SHA-1 hashes of our CAs' SubjectPublicKeyInfo; a peer's CERTREQ
  naming one of our intermediates ends the chain we send there.

Every failure raises `AuthFailure` with a reason for humans (names, dates, algorithms;
never key material). Nothing here does I/O: certificates, keys and CRLs arrive as bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

from ike.codec import Authentication, Certificate, CertificateRequest, Notify, Payload
from ike.constants import AuthMethod, IdType, NotifyType
from ike.crypto import Prf
from ike.errors import LocalError
from ike.keys import psk_auth

if TYPE_CHECKING:
    from ike.config import CompiledConnection

__all__ = [
    "AuthFailure",
    "LocalCredential",
    "TrustAnchors",
    "PeerHints",
    "HashAlgorithm",
    "make_auth",
    "SignedData",
    "check_auth",
    "cert_payloads",
    "init_payloads",
    "peer_hints",
    "load_credential",
    "load_trust",
    "validate_chain",
    "id_in_certificate",
    "algorithm_identifier",
]

# RFC 7296 §3.6 Certificate Encoding / RFC 7427 §7 hash algorithm numbers (IANA)
CERT_X509_SIGNATURE = 4
ECDSA_SHA256_P256 = 9  # RFC 4754
ECDSA_SHA384_P384 = 10
ECDSA_SHA512_P521 = 11


class HashAlgorithm:
    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5  # RFC 8420 (EdDSA signs the message itself)


# What we announce and accept under RFC 7427 (SHA-1 is not: RFC 8247 §3.2).
OUR_HASH_ALGORITHMS = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
# what cryptography raises for certificates it cannot read (parts are parsed lazily)
_X509_ERRORS = (
    ValueError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
MAX_PATH_LENGTH = 8  # certificates from the end entity to the anchor, inclusive
# The peer is not authenticated yet while we search its path: bound the work it can cause.
MAX_PEER_CERTS = 16  # CERT payloads looked at
MAX_SIGNATURE_CHECKS = 64  # certificate signature verifications per path search

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class AuthFailure(Exception):
    """The peer's authentication does not verify; str() is the reason (no secrets)."""


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class LocalCredential:
    """Our certificate (first), the intermediates we send after it, and our private key."""

    certs: tuple[x509.Certificate, ...]
    key: PrivateKey = field(repr=False)
    rsa_pss: bool = True  # RSA keys sign with RSASSA-PSS (RFC 8247 §3.2), else PKCS#1 v1.5

    @property
    def der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.certs)


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """What the peer's certificate must chain to, and the CRLs that can revoke it."""

    cacerts: tuple[x509.Certificate, ...] = ()
    # end-entity certificates trusted as they are (swanctl's remote `certs`)
    peer_certs: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    @property
    def ca_hashes(self) -> tuple[bytes, ...]:
        """SHA-1 of each CA's SubjectPublicKeyInfo: the CERTREQ contents (§3.7)."""
        return tuple(spki_sha1(c) for c in self.cacerts)


@dataclass(frozen=True, slots=True)
class PeerHints:
    """What the peer told us in IKE_SA_INIT (and CERTREQs in IKE_AUTH): the hash
    algorithms it verifies RFC 7427 signatures with, and the CAs it trusts."""

    hash_algorithms: frozenset[int] = frozenset()
    ca_hashes: frozenset[bytes] = frozenset()


def spki_sha1(cert: x509.Certificate) -> bytes:
    return hashlib.sha1(
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).digest()


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except (ValueError, x509.InvalidVersion):
        raise LocalError(f"{what}: not a PEM or DER X.509 certificate") from None


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise LocalError("crls: not a PEM or DER X.509 CRL") from None


def _public_der(key: object) -> bytes:
    if not isinstance(key, PublicKey):
        raise LocalError("certs: the certificate's key is not RSA, ECDSA, Ed25519 or Ed448")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_credential(certs: Sequence[bytes], key: bytes, *, rsa_pss: bool = True) -> LocalCredential:
    """Our chain (PEM/DER, ours first) and private key (PEM/DER, unencrypted). LocalError
    when they cannot be parsed or the key does not belong to the first certificate."""
    chain: list[x509.Certificate] = []
    for i, data in enumerate(certs):
        chain += _load_certs(data, f"certs[{i}]")
    if not chain:
        raise LocalError("certs: pubkey authentication needs our certificate")
    try:
        if b"-----BEGIN" in key:
            private = serialization.load_pem_private_key(key, password=None)
        else:
            private = serialization.load_der_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # never echo the key: only say what is wrong with it
        raise LocalError("key: not an unencrypted PEM or DER private key") from None
    if not isinstance(
        private,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise LocalError("key: only RSA, ECDSA, Ed25519 and Ed448 keys sign IKE AUTH")
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name not in _CURVES:
        raise LocalError(f"key: curve {private.curve.name} is not P-256, P-384 or P-521")
    if _public_der(private.public_key()) != _public_der(chain[0].public_key()):
        raise LocalError("key: does not belong to the first certificate in certs")
    return LocalCredential(tuple(chain), private, rsa_pss)


def load_trust(
    cacerts: Sequence[bytes], peer_certs: Sequence[bytes] = (), crls: Sequence[bytes] = ()
) -> TrustAnchors:
    cas: list[x509.Certificate] = []
    for i, data in enumerate(cacerts):
        cas += _load_certs(data, f"cacerts[{i}]")
    pinned: list[x509.Certificate] = []
    for i, data in enumerate(peer_certs):
        pinned += _load_certs(data, f"remote certs[{i}]")
    if not cas and not pinned:
        raise LocalError("cacerts: pubkey authentication of the peer needs CA certificates")
    return TrustAnchors(tuple(cas), tuple(pinned), tuple(_load_crl(c) for c in crls))


# --------------------------------------------------------------------------- DER helpers


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def _tlv(data: bytes, off: int = 0) -> tuple[int, bytes, int]:
    """(tag, body, next offset) of one DER element; AuthFailure when it is cut short."""
    if off + 2 > len(data):
        raise AuthFailure("AUTH: truncated ASN.1")
    tag, n = data[off], data[off + 1]
    off += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or off + k > len(data):
            raise AuthFailure("AUTH: bad ASN.1 length")
        n = int.from_bytes(data[off : off + k], "big")
        off += k
    if off + n > len(data):
        raise AuthFailure("AUTH: truncated ASN.1")
    return tag, data[off : off + n], off + n


def _children(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    off = 0
    while off < len(body):
        tag, value, off = _tlv(body, off)
        out.append((tag, value))
    return out


SEQUENCE, OID, NULL, INTEGER = 0x30, 0x06, 0x05, 0x02
# OID contents (DER, without tag and length)
_OID_SHA256 = bytes.fromhex("608648016503040201")
_OID_SHA384 = bytes.fromhex("608648016503040202")
_OID_SHA512 = bytes.fromhex("608648016503040203")
_OID_SHA1 = bytes.fromhex("2b0e03021a")
_OID_RSASSA_PSS = bytes.fromhex("2a864886f70d01010a")
_OID_MGF1 = bytes.fromhex("2a864886f70d010108")
_OID_RSA_PKCS1 = {
    HashAlgorithm.SHA2_256: bytes.fromhex("2a864886f70d01010b"),
    HashAlgorithm.SHA2_384: bytes.fromhex("2a864886f70d01010c"),
    HashAlgorithm.SHA2_512: bytes.fromhex("2a864886f70d01010d"),
}
_OID_ECDSA = {
    HashAlgorithm.SHA2_256: bytes.fromhex("2a8648ce3d040302"),
    HashAlgorithm.SHA2_384: bytes.fromhex("2a8648ce3d040303"),
    HashAlgorithm.SHA2_512: bytes.fromhex("2a8648ce3d040304"),
}
_OID_ED25519 = bytes.fromhex("2b6570")
_OID_ED448 = bytes.fromhex("2b6571")
_OID_HASH = {
    HashAlgorithm.SHA2_256: _OID_SHA256,
    HashAlgorithm.SHA2_384: _OID_SHA384,
    HashAlgorithm.SHA2_512: _OID_SHA512,
}
_HASH_BY_OID = {v: k for k, v in _OID_HASH.items()}
# curve -> (classic method, RFC 4754 hash, coordinate size)
_CURVES = {
    "secp256r1": (ECDSA_SHA256_P256, HashAlgorithm.SHA2_256, 32),
    "secp384r1": (ECDSA_SHA384_P384, HashAlgorithm.SHA2_384, 48),
    "secp521r1": (ECDSA_SHA512_P521, HashAlgorithm.SHA2_512, 66),
}
_CLASSIC_ECDSA = {m: (curve, h, size) for curve, (m, h, size) in _CURVES.items()}


def _hash_algid(h: int) -> bytes:
    return _der(SEQUENCE, _der(OID, _OID_HASH[h]) + _der(NULL, b""))


def algorithm_identifier(kind: str, h: int = HashAlgorithm.IDENTITY) -> bytes:
    """The DER AlgorithmIdentifier of RFC 7427 Appendix A (and RFC 8420 for EdDSA).

    kind: "rsa-pss" (MGF1 with the same hash, salt = hash length, trailerField 1),
    "rsa-pkcs1", "ecdsa", "ed25519", "ed448".
    """
    if kind == "rsa-pss":
        size = _HASHES[h]().digest_size
        params = (
            _der(0xA0, _hash_algid(h))
            + _der(0xA1, _der(SEQUENCE, _der(OID, _OID_MGF1) + _hash_algid(h)))
            + _der(0xA2, _der(INTEGER, bytes((size,))))
        )
        return _der(SEQUENCE, _der(OID, _OID_RSASSA_PSS) + _der(SEQUENCE, params))
    if kind == "rsa-pkcs1":
        return _der(SEQUENCE, _der(OID, _OID_RSA_PKCS1[h]) + _der(NULL, b""))
    if kind == "ecdsa":
        return _der(SEQUENCE, _der(OID, _OID_ECDSA[h]))
    if kind == "ed25519":
        return _der(SEQUENCE, _der(OID, _OID_ED25519))
    if kind == "ed448":
        return _der(SEQUENCE, _der(OID, _OID_ED448))
    raise ValueError(kind)


@dataclass(frozen=True, slots=True)
class _SigAlg:
    kind: str
    hash: int
    salt: int = 0  # RSASSA-PSS salt length


def _parse_hash_algid(body: bytes) -> int:
    parts = _children(body)
    if not parts or parts[0][0] != OID:
        raise AuthFailure("AUTH: bad hash AlgorithmIdentifier")
    if parts[0][1] == _OID_SHA1:
        raise AuthFailure("AUTH: RSASSA-PSS with SHA-1 is not accepted")
    h = _HASH_BY_OID.get(parts[0][1])
    if h is None:
        raise AuthFailure("AUTH: unsupported hash in RSASSA-PSS parameters")
    return h


def _parse_algid(der: bytes) -> _SigAlg:
    tag, body, end = _tlv(der)
    if tag != SEQUENCE or end != len(der):
        raise AuthFailure("AUTH: bad AlgorithmIdentifier")
    parts = _children(body)
    if not parts or parts[0][0] != OID:
        raise AuthFailure("AUTH: bad AlgorithmIdentifier")
    oid = parts[0][1]
    for h, o in _OID_RSA_PKCS1.items():
        if oid == o:
            return _SigAlg("rsa-pkcs1", h)
    for h, o in _OID_ECDSA.items():
        if oid == o:
            return _SigAlg("ecdsa", h)
    if oid == _OID_ED25519:
        return _SigAlg("ed25519", HashAlgorithm.IDENTITY)
    if oid == _OID_ED448:
        return _SigAlg("ed448", HashAlgorithm.IDENTITY)
    if oid != _OID_RSASSA_PSS:
        raise AuthFailure(f"AUTH: unsupported signature algorithm (OID {oid.hex()})")
    # RSASSA-PSS-params (RFC 4055 §3.1); the SHA-1 defaults are refused
    if len(parts) != 2 or parts[1][0] != SEQUENCE:
        raise AuthFailure("AUTH: RSASSA-PSS without parameters (SHA-1) is not accepted")
    h = mgf_h = 0
    salt = 20
    for tag, value in _children(parts[1][1]):
        inner = _children(value)
        if len(inner) != 1:
            raise AuthFailure("AUTH: bad RSASSA-PSS parameters")
        itag, ivalue = inner[0]
        if tag == 0xA0 and itag == SEQUENCE:
            h = _parse_hash_algid(ivalue)
        elif tag == 0xA1 and itag == SEQUENCE:
            mgf = _children(ivalue)
            if len(mgf) != 2 or mgf[0] != (OID, _OID_MGF1) or mgf[1][0] != SEQUENCE:
                raise AuthFailure("AUTH: RSASSA-PSS mask generation is not MGF1")
            mgf_h = _parse_hash_algid(mgf[1][1])
        elif tag == 0xA2 and itag == INTEGER and 0 < len(ivalue) <= 2:
            salt = int.from_bytes(ivalue, "big")
        elif tag == 0xA3 and itag == INTEGER and ivalue == b"\x01":
            pass  # trailerField 1 (the only one defined)
        else:
            raise AuthFailure("AUTH: bad RSASSA-PSS parameters")
    if not h or mgf_h != h:
        raise AuthFailure("AUTH: RSASSA-PSS needs one SHA-2 hash for the digest and MGF1")
    return _SigAlg("rsa-pss", h, salt)


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True, slots=True)
class SignedData:
    """What AUTH covers (RFC 7296 §2.15): RealMessage, the peer's nonce, and
    prf(SK_p, IDx') under the negotiated PRF. Holds SK_p: hidden from repr."""

    prf: Prf
    real_message: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    sk_p: bytes = field(repr=False)
    id_body: bytes

    def octets(self) -> bytes:
        """RealMessage | Nonce | prf(SK_p, IDx') (the signed octets)."""
        return self.real_message + self.nonce + self.prf(self.sk_p, self.id_body)

    def psk_mac(self, pad: bytes) -> bytes:
        return psk_auth(self.prf, pad, self.real_message, self.nonce, self.sk_p, self.id_body)


def _pick_hash(preferred: int, peer: frozenset[int]) -> int:
    if preferred in peer:
        return preferred
    for h in (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512):
        if h in peer:
            return h
    return preferred  # the peer announced nothing we share: our choice, it may refuse


def sign(cred: LocalCredential, octets: bytes, peer_hashes: frozenset[int]) -> Authentication:
    """Our AUTH payload. RFC 7427 (method 14) when the peer announced it, else the
    classic method for the key (EdDSA has none: always method 14)."""
    key = cred.key
    use_7427 = bool(peer_hashes)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        kind = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "ed448"
        return _method14(algorithm_identifier(kind), key.sign(octets))
    if isinstance(key, rsa.RSAPrivateKey):
        if not use_7427:
            sig = key.sign(octets, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 (RFC 7296 method 1)
            return Authentication(AuthMethod.RSA_DIGITAL_SIGNATURE, sig)
        h = _pick_hash(HashAlgorithm.SHA2_256, peer_hashes)
        algo = _HASHES[h]()
        if cred.rsa_pss:
            pss = padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size)
            return _method14(algorithm_identifier("rsa-pss", h), key.sign(octets, pss, algo))
        return _method14(
            algorithm_identifier("rsa-pkcs1", h), key.sign(octets, padding.PKCS1v15(), algo)
        )
    method, preferred, size = _CURVES[key.curve.name]
    if not use_7427:
        r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(_HASHES[preferred]())))
        return Authentication(method, r.to_bytes(size, "big") + s.to_bytes(size, "big"))
    h = _pick_hash(preferred, peer_hashes)
    sig = key.sign(octets, ec.ECDSA(_HASHES[h]()))
    return _method14(algorithm_identifier("ecdsa", h), sig)


def _method14(algid: bytes, signature: bytes) -> Authentication:
    """RFC 7427 §3: length of the AlgorithmIdentifier, the AlgorithmIdentifier, signature."""
    return Authentication(AuthMethod.DIGITAL_SIGNATURE, bytes((len(algid),)) + algid + signature)


def verify_signature(auth: Authentication, key: PublicKey, octets: bytes) -> None:
    """AuthFailure unless `auth` is a valid signature of `octets` by `key`."""
    try:
        _verify(auth, key, octets)
    except (InvalidSignature, ValueError):  # ValueError: e.g. a PSS salt longer than fits
        raise AuthFailure("AUTH signature does not verify with the peer's key") from None


def _verify(auth: Authentication, key: PublicKey, octets: bytes) -> None:
    method, data = auth.method, auth.data
    if method == AuthMethod.RSA_DIGITAL_SIGNATURE:
        if not isinstance(key, rsa.RSAPublicKey):
            raise AuthFailure("AUTH method 1 (RSA) but the certificate key is not RSA")
        key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
        return
    if method in _CLASSIC_ECDSA:
        curve, h, size = _CLASSIC_ECDSA[method]
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve:
            raise AuthFailure(f"AUTH method {method} needs an ECDSA {curve} certificate key")
        if len(data) != 2 * size:
            raise AuthFailure(f"AUTH method {method}: signature is not {2 * size} bytes")
        der = encode_dss_signature(
            int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big")
        )
        key.verify(der, octets, ec.ECDSA(_HASHES[h]()))
        return
    if method != AuthMethod.DIGITAL_SIGNATURE:
        raise AuthFailure(f"AUTH method {method} is not a signature method we accept")
    if not data or len(data) < 1 + data[0]:
        raise AuthFailure("AUTH: truncated RFC 7427 signature")
    alg = _parse_algid(data[1 : 1 + data[0]])
    sig = data[1 + data[0] :]
    if alg.kind in ("rsa-pss", "rsa-pkcs1"):
        if not isinstance(key, rsa.RSAPublicKey):
            raise AuthFailure(f"AUTH uses {alg.kind} but the certificate key is not RSA")
        algo = _HASHES[alg.hash]()
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(algo), salt_length=alg.salt)
            if alg.kind == "rsa-pss"
            else padding.PKCS1v15()
        )
        key.verify(sig, octets, pad, algo)
    elif alg.kind == "ecdsa":
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise AuthFailure("AUTH uses ECDSA but the certificate key is not ECDSA")
        key.verify(sig, octets, ec.ECDSA(_HASHES[alg.hash]()))
    elif alg.kind == "ed25519":
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise AuthFailure("AUTH uses Ed25519 but the certificate key is not Ed25519")
        key.verify(sig, octets)
    else:
        if not isinstance(key, ed448.Ed448PublicKey):
            raise AuthFailure("AUTH uses Ed448 but the certificate key is not Ed448")
        key.verify(sig, octets)


# --------------------------------------------------------------------------- X.509


def _utc(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, datetime.UTC)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _check_validity(cert: x509.Certificate, at: datetime.datetime) -> None:
    if at < cert.not_valid_before_utc:
        since = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"
        raise AuthFailure(f"certificate {_name(cert)!r} is not valid before {since}")
    if at > cert.not_valid_after_utc:
        until = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
        raise AuthFailure(f"certificate {_name(cert)!r} expired {until}")


def _ext(cert: x509.Certificate, cls: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except _X509_ERRORS:  # a malformed or repeated extension
        raise AuthFailure(f"certificate {_name(cert)!r} has a malformed extension") from None


def _check_issuer(ca: x509.Certificate, below: int) -> None:
    """`ca` issued a path with `below` CA certificates under it (the end entity excluded)."""
    bc = _ext(ca, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise AuthFailure(f"issuer {_name(ca)!r} is not a CA (basicConstraints)")
    if bc.path_length is not None and below > bc.path_length:
        raise AuthFailure(f"issuer {_name(ca)!r}: path length constraint exceeded")
    ku = _ext(ca, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise AuthFailure(f"issuer {_name(ca)!r} may not sign certificates (keyUsage)")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (TypeError, InvalidSignature, *_X509_ERRORS):
        return False
    return True


def _revoked(
    cert: x509.Certificate, issuer: x509.Certificate, crls: Iterable[x509.CertificateRevocationList]
) -> bool:
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                continue
        except (TypeError, UnsupportedAlgorithm):
            continue
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return True
    return False


def validate_chain(
    trust: TrustAnchors,
    end_entity: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    now: float,
) -> list[x509.Certificate]:
    """The path end entity -> ... -> anchor, or AuthFailure naming the first problem.

    A certificate pinned in `trust.peer_certs` is its own path (validity still checked).
    Otherwise a path is searched depth-first through the peer's intermediates to one of
    the CA certificates; the error of the deepest attempt is reported.
    """
    at = _utc(now)
    ee_der = end_entity.public_bytes(serialization.Encoding.DER)
    if any(c.public_bytes(serialization.Encoding.DER) == ee_der for c in trust.peer_certs):
        _check_validity(end_entity, at)
        return [end_entity]
    if not trust.cacerts:
        raise AuthFailure(f"certificate {_name(end_entity)!r} is not one of the trusted peer certs")
    _check_validity(end_entity, at)
    ku = _ext(end_entity, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not (ku.digital_signature or ku.content_commitment):
        raise AuthFailure(f"certificate {_name(end_entity)!r} may not sign (keyUsage)")
    anchors = {c.public_bytes(serialization.Encoding.DER) for c in trust.cacerts}
    pool = list(trust.cacerts) + [
        c for c in intermediates if c.public_bytes(serialization.Encoding.DER) not in anchors
    ]
    errors: list[str] = []
    budget = [MAX_SIGNATURE_CHECKS]

    def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        cert = path[-1]
        if len(path) >= MAX_PATH_LENGTH:
            errors.append(f"no path to a trusted CA within {MAX_PATH_LENGTH} certificates")
            return None
        for issuer in pool:
            if issuer.subject != cert.issuer or any(issuer is p for p in path):
                continue
            if budget[0] <= 0:
                raise AuthFailure("certificate path search gave up (too many candidates)")
            budget[0] -= 1
            if not _signed_by(cert, issuer):
                errors.append(f"signature of {_name(cert)!r} does not verify with its issuer's key")
                continue
            try:
                _check_validity(issuer, at)
                _check_issuer(issuer, len(path) - 1)
                if _revoked(cert, issuer, trust.crls):
                    raise AuthFailure(f"certificate {_name(cert)!r} is revoked (CRL)")
            except AuthFailure as exc:
                errors.append(str(exc))
                continue
            der = issuer.public_bytes(serialization.Encoding.DER)
            if der in anchors:
                return [*path, issuer]
            found = extend([*path, issuer])
            if found is not None:
                return found
        return None

    path = extend([end_entity])
    if path is None:
        if errors:
            raise AuthFailure(errors[-1])
        raise AuthFailure(
            f"certificate {_name(end_entity)!r}: issuer {end_entity.issuer.rfc4514_string()!r} "
            "is not a trusted CA"
        )
    return path


def id_in_certificate(id_type: int, data: bytes, cert: x509.Certificate) -> bool:
    """Is the IKE identity one the certificate vouches for (RFC 4945 §3.1)?"""
    if id_type == IdType.ID_DER_ASN1_DN:
        return same_identity((id_type, data), (id_type, cert.subject.public_bytes()))
    san = _ext(cert, x509.SubjectAlternativeName)
    if not isinstance(san, x509.SubjectAlternativeName):
        return False
    if id_type == IdType.ID_FQDN:
        want = data.decode("ascii", "replace").lower()
        return any(n.lower() == want for n in san.get_values_for_type(x509.DNSName))
    if id_type == IdType.ID_RFC822_ADDR:
        want = data.decode("ascii", "replace").lower()
        return any(n.lower() == want for n in san.get_values_for_type(x509.RFC822Name))
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR) and len(data) in (4, 16):
        addr = ipaddress.ip_address(data)
        return any(a == addr for a in san.get_values_for_type(x509.IPAddress))
    return False


# --------------------------------------------------------------------------- DN identities

_DN_LABELS = {
    bytes.fromhex("550406"): "C",
    bytes.fromhex("550408"): "ST",
    bytes.fromhex("550407"): "L",
    bytes.fromhex("55040a"): "O",
    bytes.fromhex("55040b"): "OU",
    bytes.fromhex("550403"): "CN",
    bytes.fromhex("550405"): "serialNumber",
    bytes.fromhex("2a864886f70d010901"): "E",
    bytes.fromhex("0992268993f22c640119"): "DC",
}
# attribute types by strongSwan's (upper-cased) names, beyond RFC 4514's own
_DN_TYPES = {
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME,
    "G": NameOID.GIVEN_NAME,
    "T": NameOID.TITLE,
}
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (as strongSwan: bytes as Latin-1)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


def _dn_attributes(der: bytes) -> tuple[tuple[bytes, str], ...] | None:
    """A DER Name as ((OID, value), ...) in order, or None when it is not one we read."""
    try:
        tag, body, end = _tlv(der)
        if tag != SEQUENCE or end != len(der):
            return None
        out = []
        for set_tag, rdn in _children(body):
            if set_tag != 0x31:
                return None
            for seq_tag, atv in _children(rdn):
                parts = _children(atv)
                if seq_tag != SEQUENCE or len(parts) != 2 or parts[0][0] != OID:
                    return None
                codec = _STRING_CODECS.get(parts[1][0])
                if codec is None:
                    return None
                out.append((parts[0][1], parts[1][1].decode(codec)))
        return tuple(out)
    except (AuthFailure, UnicodeDecodeError):
        return None


def same_identity(a: tuple[int, bytes], b: tuple[int, bytes]) -> bool:
    """IDs equal; two DNs compare by attribute types and values (case-insensitive, any
    string type), so PrintableString vs UTF8String encodings of one name match."""
    if a[0] != IdType.ID_DER_ASN1_DN or b[0] != IdType.ID_DER_ASN1_DN:
        return a == b
    da, db = _dn_attributes(a[1]), _dn_attributes(b[1])
    if da is None or db is None:
        return a[1] == b[1]
    return [(o, v.casefold()) for o, v in da] == [(o, v.casefold()) for o, v in db]


def dn_from_text(text: str) -> bytes:
    """strongSwan's DN syntax (``C=CH, O=Example, CN=gw``: most significant first, as in
    the certificate) -> the DER Name of an ID_DER_ASN1_DN. LocalError if unparseable."""
    parts = []
    for part in re.split(r"(?<!\\),", text):
        kind, eq, value = part.strip().partition("=")
        if not eq or not kind.strip() or not value.strip():
            raise LocalError(f"identity {text!r}: {part.strip()!r} is not TYPE=value")
        parts.append(f"{kind.strip().upper()}={value.strip()}")
    try:
        # RFC 4514 strings list the least significant RDN first: reverse strongSwan's order
        name = x509.Name.from_rfc4514_string(",".join(reversed(parts)), _DN_TYPES)
    except ValueError:
        raise LocalError(f"identity {text!r}: not a distinguished name we can read") from None
    return name.public_bytes()


def dn_to_text(der: bytes) -> str | None:
    """A DER Name in strongSwan's syntax, or None if it cannot be read."""
    attrs = _dn_attributes(der)
    if attrs is None:
        return None
    return ", ".join(
        f"{_DN_LABELS.get(o, _oid_text(o))}={v.replace(',', chr(92) + ',')}" for o, v in attrs
    )


def _oid_text(oid: bytes) -> str:
    arcs = [oid[0] // 40, oid[0] % 40] if oid else []
    n = 0
    for b in oid[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(n)
            n = 0
    return ".".join(map(str, arcs))


def subject_identity(cert: x509.Certificate) -> tuple[int, bytes]:
    """Our default identity with a certificate: its subject DN (strongSwan's default)."""
    if not cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) and not len(cert.subject):
        raise LocalError("certs: the certificate has an empty subject; set an id")
    return IdType.ID_DER_ASN1_DN, cert.subject.public_bytes()


# --------------------------------------------------------------------------- payloads


def init_payloads(uses_pubkey: bool, trust: Sequence[TrustAnchors] = ()) -> list[Payload]:
    """What IKE_SA_INIT carries for pubkey authentication: SIGNATURE_HASH_ALGORITHMS
    (RFC 7427 §4) and, in the responder's answer, CERTREQ for the CAs we trust (§1.2)."""
    if not uses_pubkey:
        return []
    out: list[Payload] = []
    hashes_ = _ca_hash_list(trust)
    if hashes_:
        out.append(CertificateRequest(CERT_X509_SIGNATURE, hashes_))
    out.append(
        Notify(
            NotifyType.SIGNATURE_HASH_ALGORITHMS,
            b"".join(h.to_bytes(2, "big") for h in OUR_HASH_ALGORITHMS),
        )
    )
    return out


def _ca_hash_list(trust: Sequence[TrustAnchors]) -> bytes:
    seen: list[bytes] = []
    for t in trust:
        for h in t.ca_hashes:
            if h not in seen:
                seen.append(h)
    return b"".join(seen)


def peer_hints(payloads: Sequence[Payload], base: PeerHints | None = None) -> PeerHints:
    """The peer's SIGNATURE_HASH_ALGORITHMS and CERTREQ hashes (merged into `base`)."""
    algs = set(base.hash_algorithms) if base else set()
    cas = set(base.ca_hashes) if base else set()
    for p in payloads:
        if type(p) is Notify and p.type == NotifyType.SIGNATURE_HASH_ALGORITHMS:
            d = p.data
            algs.update(int.from_bytes(d[i : i + 2], "big") for i in range(0, len(d) - 1, 2))
        elif type(p) is CertificateRequest and p.encoding == CERT_X509_SIGNATURE:
            d = p.data
            cas.update(d[i : i + 20] for i in range(0, len(d) - 19, 20))
    return PeerHints(frozenset(algs), frozenset(cas))


def cert_payloads(
    conn: CompiledConnection, hints: PeerHints | None, *, certreq: bool
) -> list[Payload]:
    """CERT payloads for our chain (ours first; intermediates until one the peer's CERTREQ
    names as trusted), then, if `certreq`, our CERTREQ (the initiator's IKE_AUTH)."""
    out: list[Payload] = []
    cred = conn.credential
    if cred is not None:
        wanted = hints.ca_hashes if hints else frozenset()
        for i, (cert, der) in enumerate(zip(cred.certs, cred.der, strict=True)):
            if i and spki_sha1(cert) in wanted:
                break  # the peer trusts this CA: what is above it is of no use (§3.7)
            out.append(Certificate(CERT_X509_SIGNATURE, der))
    if certreq and conn.trust is not None:
        hashes_ = _ca_hash_list((conn.trust,))
        if hashes_:
            out.append(CertificateRequest(CERT_X509_SIGNATURE, hashes_))
    return out


def make_auth(
    conn: CompiledConnection, hints: PeerHints | None, signed: SignedData
) -> Authentication:
    """Our AUTH payload: the PSK MAC (§2.15) or a signature with our certificate's key."""
    if conn.credential is None:
        mac = signed.psk_mac(conn.psk_pads[signed.prf.hash])
        return Authentication(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, mac)
    return sign(conn.credential, signed.octets(), hints.hash_algorithms if hints else frozenset())


def accepts_method(conn: CompiledConnection, method: int) -> bool:
    """Could this connection accept a peer authenticating with `method`?"""
    if conn.trust is None:
        return method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE
    return method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE


def check_auth(
    conn: CompiledConnection,
    payloads: Sequence[Payload],
    auth: Authentication,
    peer_id: tuple[int, bytes],
    signed: SignedData,
    now: float,
) -> None:
    """AuthFailure unless the peer's AUTH verifies as `conn.remote` demands: the PSK MAC,
    or a signature by a certificate that chains to our CAs and names `peer_id`."""
    if conn.trust is None:
        if auth.method != AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
            raise AuthFailure(f"peer uses AUTH method {auth.method}, we expect a PSK")
        if not hmac.compare_digest(signed.psk_mac(conn.psk_pads[signed.prf.hash]), auth.data):
            raise AuthFailure("PSK AUTH does not verify")
        return
    if auth.method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE:
        raise AuthFailure("peer uses a PSK, we expect a certificate signature")
    certs: list[x509.Certificate] = []
    for p in payloads:
        if type(p) is Certificate:
            if p.encoding != CERT_X509_SIGNATURE:
                continue  # other encodings (hash and URL, raw keys) are not supported
            try:
                certs.append(x509.load_der_x509_certificate(p.data))
            except _X509_ERRORS:
                raise AuthFailure("a CERT payload is not a DER X.509 certificate") from None
    if not certs:
        if len(conn.trust.peer_certs) == 1:
            certs = [conn.trust.peer_certs[0]]  # the peer relies on our pinned copy
        else:
            raise AuthFailure("peer sent no certificate")
    if len(certs) > MAX_PEER_CERTS:
        raise AuthFailure(f"peer sent {len(certs)} certificates (at most {MAX_PEER_CERTS})")
    try:
        key = _check_certificate(conn.trust, certs, peer_id, now)
    except _X509_ERRORS:
        # cryptography parses some parts lazily: a malformed name, extension or key of the
        # peer's certificate shows up here
        raise AuthFailure("peer's certificate is malformed") from None
    verify_signature(auth, key, signed.octets())


def _check_certificate(
    trust: TrustAnchors, certs: list[x509.Certificate], peer_id: tuple[int, bytes], now: float
) -> PublicKey:
    end_entity = certs[0]
    validate_chain(trust, end_entity, certs[1:], now)
    if not id_in_certificate(peer_id[0], peer_id[1], end_entity):
        raise AuthFailure(f"peer's identity is not in its certificate {_name(end_entity)!r}")
    key = end_entity.public_key()
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise AuthFailure(f"certificate {_name(end_entity)!r}: unsupported public key type")
    return key


def uses_pubkey(conn: CompiledConnection) -> bool:
    return conn.credential is not None or conn.trust is not None


def responder_auth_failure(
    conn: CompiledConnection,
    payloads: Sequence[Payload],
    auth: Authentication,
    peer_id: tuple[int, bytes],
    signed: SignedData,
    now: float,
) -> str | None:
    """The initiator's check of the responder's IDr and AUTH: None if good, else why."""
    if conn.remote_id is not None and not same_identity(conn.remote_id, peer_id):
        return f"responder's identity is not {conn.config.remote_id!r}"
    try:
        check_auth(conn, payloads, auth, peer_id, signed, now)
    except AuthFailure as exc:
        return str(exc)
    return None
