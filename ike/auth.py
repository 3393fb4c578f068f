"""The AUTH payload logic of IKE_AUTH (RFC 7296 §2.15), PSK or certificate, sans-IO.

What the IKE_AUTH exchange (ike/exchanges/ike_auth.py) calls: `make_auth` (our AUTH
over RealMessage | Nonce | prf(SK_p, IDx'): the PSK MAC or a signature), `check_auth` /
`responder_auth_failure` (the peer's AUTH, its certificate path and identity),
`cert_payloads` (our chain, shortened by the peer's CERTREQ: RFC 7296 §3.7), and for
IKE_SA_INIT `init_payloads` (SIGNATURE_HASH_ALGORITHMS, RFC 7427 §4, and CERTREQ with the
SHA-1 hashes of our CAs' SubjectPublicKeyInfo) and `peer_hints` (what the peer sent of
them: its list decides which hash we sign with). Certificates, names and signature
algorithms themselves live in ike/pki/.

Every failure raises `AuthFailure` with a reason for humans (names, dates, algorithms;
never key material). Nothing here does I/O: certificates, keys and CRLs arrive as bytes.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from ike.codec import Authentication, Certificate, CertificateRequest, Notify, Payload
from ike.config import CompiledConnection
from ike.constants import AuthMethod, NotifyType
from ike.crypto import Prf
from ike.errors import AuthFailure
from ike.keys import psk_auth
from ike.pki.names import same_identity
from ike.pki.signatures import OUR_HASH_ALGORITHMS, sign, verify_signature
from ike.pki.x509 import MAX_PEER_CERTS, TrustAnchors, peer_certificates, peer_key, spki_sha1

__all__ = [
    "AuthFailure",
    "PeerHints",
    "SignedData",
    "make_auth",
    "check_auth",
    "responder_auth_failure",
    "accepts_method",
    "uses_pubkey",
    "cert_payloads",
    "init_payloads",
    "peer_hints",
]

# RFC 7296 §3.6 Certificate Encoding
CERT_X509_SIGNATURE = 4


@dataclass(frozen=True, slots=True)
class PeerHints:
    """What the peer told us in IKE_SA_INIT (and CERTREQs in IKE_AUTH): the hash
    algorithms it verifies RFC 7427 signatures with, and the CAs it trusts."""

    hash_algorithms: frozenset[int] = frozenset()
    ca_hashes: frozenset[bytes] = frozenset()


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
    cred = conn.credential
    peer_hashes = hints.hash_algorithms if hints else frozenset()
    return sign(cred.key, signed.octets(), peer_hashes, rsa_pss=cred.rsa_pss)


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
    # other encodings (hash and URL, raw keys) are not supported
    certs = peer_certificates(
        p.data for p in payloads if type(p) is Certificate and p.encoding == CERT_X509_SIGNATURE
    )
    if not certs:
        if len(conn.trust.peer_certs) == 1:
            certs = [conn.trust.peer_certs[0]]  # the peer relies on our pinned copy
        else:
            raise AuthFailure("peer sent no certificate")
    if len(certs) > MAX_PEER_CERTS:
        raise AuthFailure(f"peer sent {len(certs)} certificates (at most {MAX_PEER_CERTS})")
    verify_signature(auth, peer_key(conn.trust, certs, peer_id, now), signed.octets())


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
