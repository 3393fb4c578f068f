"""AUTH signatures (RFC 7296 §2.15 methods 1, 9-11; RFC 7427 method 14; RFC 8420).

Signs the AUTH octets with our private key and verifies the peer's signature with the
key of its (already validated) certificate: RFC 7427 "Digital Signature" with RSASSA-PSS,
RSASSA-PKCS1-v1_5 (SHA-2), ECDSA (P-256/384/521, DER signature) and Ed25519/Ed448
(Identity hash), whose AlgorithmIdentifiers (RFC 7427 Appendix A) are built and parsed
here; the classic methods 1 (RSA PKCS#1 v1.5 with SHA-1, accepted on receive and used only
towards a peer that did not announce RFC 7427) and 9/10/11 (ECDSA r|s, RFC 4754).
Every failure raises AuthFailure with a reason for humans, never key material.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ike.codec import Authentication
from ike.constants import AuthMethod
from ike.errors import AuthFailure
from ike.pki.der import INTEGER, NULL, OID, SEQUENCE, children, der, tlv

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
HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}


PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


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
CURVES = {
    "secp256r1": (ECDSA_SHA256_P256, HashAlgorithm.SHA2_256, 32),
    "secp384r1": (ECDSA_SHA384_P384, HashAlgorithm.SHA2_384, 48),
    "secp521r1": (ECDSA_SHA512_P521, HashAlgorithm.SHA2_512, 66),
}
_CLASSIC_ECDSA = {m: (curve, h, size) for curve, (m, h, size) in CURVES.items()}


def _hash_algid(h: int) -> bytes:
    return der(SEQUENCE, der(OID, _OID_HASH[h]) + der(NULL, b""))


def algorithm_identifier(kind: str, h: int = HashAlgorithm.IDENTITY) -> bytes:
    """The DER AlgorithmIdentifier of RFC 7427 Appendix A (and RFC 8420 for EdDSA).

    kind: "rsa-pss" (MGF1 with the same hash, salt = hash length, trailerField 1),
    "rsa-pkcs1", "ecdsa", "ed25519", "ed448".
    """
    if kind == "rsa-pss":
        size = HASHES[h]().digest_size
        params = (
            der(0xA0, _hash_algid(h))
            + der(0xA1, der(SEQUENCE, der(OID, _OID_MGF1) + _hash_algid(h)))
            + der(0xA2, der(INTEGER, bytes((size,))))
        )
        return der(SEQUENCE, der(OID, _OID_RSASSA_PSS) + der(SEQUENCE, params))
    if kind == "rsa-pkcs1":
        return der(SEQUENCE, der(OID, _OID_RSA_PKCS1[h]) + der(NULL, b""))
    if kind == "ecdsa":
        return der(SEQUENCE, der(OID, _OID_ECDSA[h]))
    if kind == "ed25519":
        return der(SEQUENCE, der(OID, _OID_ED25519))
    if kind == "ed448":
        return der(SEQUENCE, der(OID, _OID_ED448))
    raise ValueError(kind)


@dataclass(frozen=True, slots=True)
class _SigAlg:
    kind: str
    hash: int
    salt: int = 0  # RSASSA-PSS salt length


def _parse_hash_algid(body: bytes) -> int:
    parts = children(body)
    if not parts or parts[0][0] != OID:
        raise AuthFailure("AUTH: bad hash AlgorithmIdentifier")
    if parts[0][1] == _OID_SHA1:
        raise AuthFailure("AUTH: RSASSA-PSS with SHA-1 is not accepted")
    h = _HASH_BY_OID.get(parts[0][1])
    if h is None:
        raise AuthFailure("AUTH: unsupported hash in RSASSA-PSS parameters")
    return h


def _parse_algid(der: bytes) -> _SigAlg:
    tag, body, end = tlv(der)
    if tag != SEQUENCE or end != len(der):
        raise AuthFailure("AUTH: bad AlgorithmIdentifier")
    parts = children(body)
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
    for tag, value in children(parts[1][1]):
        inner = children(value)
        if len(inner) != 1:
            raise AuthFailure("AUTH: bad RSASSA-PSS parameters")
        itag, ivalue = inner[0]
        if tag == 0xA0 and itag == SEQUENCE:
            h = _parse_hash_algid(ivalue)
        elif tag == 0xA1 and itag == SEQUENCE:
            mgf = children(ivalue)
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




def _pick_hash(preferred: int, peer: frozenset[int]) -> int:
    if preferred in peer:
        return preferred
    for h in (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512):
        if h in peer:
            return h
    return preferred  # the peer announced nothing we share: our choice, it may refuse


def sign(
    key: PrivateKey, octets: bytes, peer_hashes: frozenset[int], *, rsa_pss: bool = True
) -> Authentication:
    """Our AUTH payload. RFC 7427 (method 14) when the peer announced it, else the
    classic method for the key (EdDSA has none: always method 14). `rsa_pss`: an RSA key
    signs with RSASSA-PSS (RFC 8247 §3.2), else PKCS#1 v1.5."""
    use_7427 = bool(peer_hashes)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        kind = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "ed448"
        return _method14(algorithm_identifier(kind), key.sign(octets))
    if isinstance(key, rsa.RSAPrivateKey):
        if not use_7427:
            sig = key.sign(octets, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 (RFC 7296 method 1)
            return Authentication(AuthMethod.RSA_DIGITAL_SIGNATURE, sig)
        h = _pick_hash(HashAlgorithm.SHA2_256, peer_hashes)
        algo = HASHES[h]()
        if rsa_pss:
            pss = padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size)
            return _method14(algorithm_identifier("rsa-pss", h), key.sign(octets, pss, algo))
        return _method14(
            algorithm_identifier("rsa-pkcs1", h), key.sign(octets, padding.PKCS1v15(), algo)
        )
    method, preferred, size = CURVES[key.curve.name]
    if not use_7427:
        r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(HASHES[preferred]())))
        return Authentication(method, r.to_bytes(size, "big") + s.to_bytes(size, "big"))
    h = _pick_hash(preferred, peer_hashes)
    sig = key.sign(octets, ec.ECDSA(HASHES[h]()))
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
        key.verify(der, octets, ec.ECDSA(HASHES[h]()))
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
        algo = HASHES[alg.hash]()
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(algo), salt_length=alg.salt)
            if alg.kind == "rsa-pss"
            else padding.PKCS1v15()
        )
        key.verify(sig, octets, pad, algo)
    elif alg.kind == "ecdsa":
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise AuthFailure("AUTH uses ECDSA but the certificate key is not ECDSA")
        key.verify(sig, octets, ec.ECDSA(HASHES[alg.hash]()))
    elif alg.kind == "ed25519":
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise AuthFailure("AUTH uses Ed25519 but the certificate key is not Ed25519")
        key.verify(sig, octets)
    else:
        if not isinstance(key, ed448.Ed448PublicKey):
            raise AuthFailure("AUTH uses Ed448 but the certificate key is not Ed448")
        key.verify(sig, octets)


