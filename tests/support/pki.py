"""A small X.509 PKI made by the tests (cryptography's builders): CAs, leaves, CRLs.

Dates are fixed (not the wall clock) unless the caller passes its own, so unit tests are
deterministic; host tests against strongSwan pass dates around the real time.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

UTC = datetime.UTC
NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime.datetime(2030, 1, 1, tzinfo=UTC)
# an engine clock inside NOT_BEFORE..NOT_AFTER (2027-01-15)
NOW = 1_800_000_000.0

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(kind: str) -> Key:
    """kind: rsa (2048), p256, p384, p521, ed25519."""
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


def _sign_hash(key: Key) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=not sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gateway tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(
    cn: str,
    kind: str = "p256",
    *,
    issuer: Issued | None = None,
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
    ca: bool = True,
    path_length: int | None = None,
) -> Issued:
    """A self-signed root, or (with `issuer`) an intermediate CA."""
    key = new_key(kind)
    subject = _name(cn)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(sign=True, ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    signer = issuer.key if issuer else key
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    return Issued(b.sign(signer, _sign_hash(signer)), key)  # type: ignore[arg-type]


def make_leaf(
    issuer: Issued,
    cn: str,
    kind: str = "p256",
    *,
    dns: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
    digital_signature: bool = True,
    key: Key | None = None,
) -> Issued:
    key = key or new_key(kind)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.RFC822Name(e) for e in emails]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=digital_signature, ca=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(b.sign(issuer.key, _sign_hash(issuer.key)), key)  # type: ignore[arg-type]


def make_crl(
    issuer: Issued,
    revoked: tuple[Issued, ...],
    *,
    last_update: datetime.datetime = NOT_BEFORE,
    next_update: datetime.datetime = NOT_AFTER,
    signer: Issued | None = None,
) -> bytes:
    """A PEM CRL by `issuer` (signed by `signer`'s key if given: a forged CRL)."""
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(last_update)
        .next_update(next_update)
    )
    for r in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(r.cert.serial_number)
            .revocation_date(last_update)
            .build()
        )
    key = (signer or issuer).key
    crl = b.sign(key, _sign_hash(key))  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)
