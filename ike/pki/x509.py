"""X.509 for IKE: our credential, the peer's trust anchors, and its certificate path.

Loads our chain and private key and the CA certificates, pinned peer certificates and
CRLs (PEM or DER bytes: ike/ reads no files), and validates the peer's certificate: the
path is built from its CERT payloads and the anchors, every signature checked, validity
at the given time, basicConstraints cA (and pathLenConstraint) on every issuer, keyUsage
where present (keyCertSign on issuers, digitalSignature/nonRepudiation on the end entity),
and revocation by the configured CRLs (a CRL counts only if its issuer in the path signed
it). The peer's ID must be in its certificate: ID_FQDN / ID_RFC822_ADDR / ID_IPV4_ADDR /
ID_IPV6_ADDR against subjectAltName, ID_DER_ASN1_DN against the subject. Failures raise
AuthFailure with names and dates, never key material.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ike.constants import IdType
from ike.errors import AuthFailure, LocalError
from ike.pki.names import same_identity
from ike.pki.signatures import CURVES, PrivateKey, PublicKey

# what cryptography raises for certificates it cannot read (parts are parsed lazily)
X509_ERRORS = (
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
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name not in CURVES:
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
    except X509_ERRORS:  # a malformed or repeated extension
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
    except (TypeError, InvalidSignature, *X509_ERRORS):
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



def peer_certificates(ders: Iterable[bytes]) -> list[x509.Certificate]:
    """The peer's CERT payload contents as certificates; AuthFailure if one is not DER."""
    certs: list[x509.Certificate] = []
    for data in ders:
        try:
            certs.append(x509.load_der_x509_certificate(data))
        except X509_ERRORS:
            raise AuthFailure("a CERT payload is not a DER X.509 certificate") from None
    return certs


def peer_key(
    trust: TrustAnchors, certs: list[x509.Certificate], peer_id: tuple[int, bytes], now: float
) -> PublicKey:
    """The public key of the peer's end-entity certificate (`certs[0]`) once its path to
    our anchors validates at `now` and it names `peer_id`; AuthFailure otherwise."""
    try:
        return _check_certificate(trust, certs, peer_id, now)
    except X509_ERRORS:
        # cryptography parses some parts lazily: a malformed name, extension or key of the
        # peer's certificate shows up here
        raise AuthFailure("peer's certificate is malformed") from None


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

