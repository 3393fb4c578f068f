"""Certificate authentication (ike/auth.py, ike/pki/): RFC 7427 encodings, signatures of every key
type, X.509 path validation, ID matching, CERTREQ, CRLs, and two in-memory engines doing
IKE_AUTH with certificates (a CA, an intermediate and leaves made by the test)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike import auth, codec
from ike.auth import AuthFailure, PeerHints
from ike.codec import Authentication, Certificate, CertificateRequest, Notify, Payload
from ike.config import (
    CompiledConnection,
    ConnectionConfig,
    compile_connection,
    format_identity,
    parse_identity,
)
from ike.constants import AuthMethod, IdType, NotifyType
from ike.crypto import PRF
from ike.engine import IkeEngine
from ike.errors import LocalError
from ike.events import ChildSaEstablished, IkeSaDeleted, IkeSaEstablished, IkeSaFailed
from ike.pki import der as pki_der
from ike.pki import names, signatures, x509
from ike.pki.signatures import HashAlgorithm
from tests.support.pki import NOW, UTC, Issued, make_ca, make_crl, make_leaf
from tests.unit.ike.harness import A_IP, B_IP, Net, pair_confs

ALL = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, 5)
KINDS = ["rsa-pss", "rsa-pkcs1", "p256", "p384", "ed25519"]


class Pki:
    """root -> intermediate -> leaves (one per key kind and side); a foreign root."""

    def __init__(self) -> None:
        self.root = make_ca("Test Root CA", "p384")
        self.inter = make_ca("Test Intermediate CA", "p256", issuer=self.root)
        self.other_root = make_ca("Some Other CA", "p256")
        self._leaves: dict[tuple[str, str], Issued] = {}

    def leaf(self, side: str, kind: str) -> Issued:
        key_kind = "rsa" if kind.startswith("rsa") else kind
        if (side, key_kind) not in self._leaves:
            ip = A_IP if side == "a" else B_IP
            self._leaves[side, key_kind] = make_leaf(
                self.inter,
                f"{side}.example",
                key_kind,
                dns=(f"{side}.example",),
                emails=(f"gw@{side}.example",),
                ips=(ip,),
            )
        return self._leaves[side, key_kind]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def pubkey_conf(base: ConnectionConfig, leaf: Issued, pki: Pki, **kw: object) -> ConnectionConfig:
    """`base` with pubkey auth both ways: `leaf` and the intermediate, trusting the root."""
    fields: dict[str, object] = {
        "local_auth": "pubkey",
        "remote_auth": "pubkey",
        "psk": b"",
        "certs": (leaf.pem, pki.inter.pem),
        "private_key": leaf.key_pem,
        "cacerts": (pki.root.pem,),
    }
    fields.update(kw)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def pubkey_pair(pki: Pki, kind_a: str, kind_b: str | None = None, **kw: object) -> Net:
    """a (initiator side) and b with pubkey auth both ways; a_*/b_* keywords per side."""
    a, b = pair_confs(a_local_id="@a.example", b_local_id="@b.example")
    a_kw = {k[2:]: v for k, v in kw.items() if k.startswith("a_")}
    b_kw = {k[2:]: v for k, v in kw.items() if k.startswith("b_")}
    kb = kind_b or kind_a
    a = pubkey_conf(a, pki.leaf("a", kind_a), pki, rsa_pss=kind_a != "rsa-pkcs1", **a_kw)
    b = pubkey_conf(b, pki.leaf("b", kb), pki, rsa_pss=kb != "rsa-pkcs1", **b_kw)
    return Net.make(a, b, now=NOW)


def run(net: Net) -> None:
    net.a.initiate("a2b", None, net.now)
    net.pump()


def failures(net: Net, side: str) -> list[IkeSaFailed]:
    return net.of(side, IkeSaFailed)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- encodings


def test_algorithm_identifiers_match_rfc_7427_appendix_a() -> None:
    # RFC 7427 Appendix A.1.2 sha256WithRSAEncryption, A.3.1 ecdsa-with-sha256,
    # A.4.3 RSASSA-PSS with SHA-256 (MGF1-SHA-256, salt 32); RFC 8420 §2 id-Ed25519
    assert signatures.algorithm_identifier("rsa-pkcs1", 2) == bytes.fromhex(
        "300d06092a864886f70d01010b0500"
    )
    assert signatures.algorithm_identifier("ecdsa", 2) == bytes.fromhex("300a06082a8648ce3d040302")
    assert signatures.algorithm_identifier("ecdsa", 3) == bytes.fromhex("300a06082a8648ce3d040303")
    assert signatures.algorithm_identifier("rsa-pss", 2) == bytes.fromhex(
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500"
        "a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120"
    )
    assert signatures.algorithm_identifier("ed25519") == bytes.fromhex("300506032b6570")


@pytest.mark.parametrize(
    "kind,peer,method,algid",
    [
        ("rsa-pss", ALL, AuthMethod.DIGITAL_SIGNATURE, ("rsa-pss", 2)),
        ("rsa-pkcs1", ALL, AuthMethod.DIGITAL_SIGNATURE, ("rsa-pkcs1", 2)),
        ("rsa-pss", (4,), AuthMethod.DIGITAL_SIGNATURE, ("rsa-pss", 4)),
        ("p256", ALL, AuthMethod.DIGITAL_SIGNATURE, ("ecdsa", 2)),
        ("p384", ALL, AuthMethod.DIGITAL_SIGNATURE, ("ecdsa", 3)),
        ("ed25519", ALL, AuthMethod.DIGITAL_SIGNATURE, ("ed25519", 5)),
        # a peer without SIGNATURE_HASH_ALGORITHMS gets the classic methods
        ("rsa-pss", (), AuthMethod.RSA_DIGITAL_SIGNATURE, None),
        ("p256", (), 9, None),
        ("p384", (), 10, None),
        ("ed25519", (), AuthMethod.DIGITAL_SIGNATURE, ("ed25519", 5)),
    ],
)
def test_sign_and_verify_each_key_type(
    pki: Pki, kind: str, peer: tuple[int, ...], method: int, algid: tuple[str, int] | None
) -> None:
    leaf = pki.leaf("a", kind)
    cred = x509.load_credential((leaf.pem,), leaf.key_pem, rsa_pss=kind != "rsa-pkcs1")
    octets = b"RealMessage1" + b"Nr" + b"prf(SK_pi, IDi')"
    a = signatures.sign(cred.key, octets, frozenset(peer), rsa_pss=cred.rsa_pss)
    assert a.method == method
    if algid is not None:
        n = a.data[0]
        assert a.data[1 : 1 + n] == signatures.algorithm_identifier(*algid)
    key = leaf.cert.public_key()
    signatures.verify_signature(a, key, octets)  # type: ignore[arg-type]
    with pytest.raises(AuthFailure, match="does not verify"):
        signatures.verify_signature(a, key, octets + b"x")  # type: ignore[arg-type]
    bad = bytearray(a.data)
    bad[-3] ^= 1
    with pytest.raises(AuthFailure):
        signatures.verify_signature(Authentication(a.method, bytes(bad)), key, octets)  # type: ignore[arg-type]


def test_p521_classic_method_11(pki: Pki) -> None:
    leaf = make_leaf(pki.inter, "c.example", "p521", dns=("c.example",))
    cred = x509.load_credential((leaf.pem,), leaf.key_pem)
    a = signatures.sign(cred.key, b"octets", frozenset(), rsa_pss=cred.rsa_pss)
    assert a.method == 11 and len(a.data) == 132
    signatures.verify_signature(a, leaf.cert.public_key(), b"octets")  # type: ignore[arg-type]


def test_verify_rejects_key_type_and_malformed_algid(pki: Pki) -> None:
    rsa_leaf, ec_leaf = pki.leaf("a", "rsa-pss"), pki.leaf("a", "p256")
    cred = x509.load_credential((rsa_leaf.pem,), rsa_leaf.key_pem)
    a = signatures.sign(cred.key, b"m", frozenset(ALL), rsa_pss=cred.rsa_pss)
    with pytest.raises(AuthFailure, match="not ECDSA|not RSA"):
        signatures.verify_signature(a, ec_leaf.cert.public_key(), b"m")  # type: ignore[arg-type]
    for data in (b"", b"\x05\x30", b"\x02\x30\x00", bytes([10]) + bytes(10)):
        with pytest.raises(AuthFailure):
            signatures.verify_signature(
                Authentication(AuthMethod.DIGITAL_SIGNATURE, data),
                rsa_leaf.cert.public_key(),  # type: ignore[arg-type]
                b"m",
            )
    with pytest.raises(AuthFailure, match="method 3"):
        signatures.verify_signature(Authentication(3, b"x"), rsa_leaf.cert.public_key(), b"m")  # type: ignore[arg-type]


def test_peer_hints_and_certreq(pki: Pki) -> None:
    trust = x509.load_trust((pki.root.pem, pki.inter.pem))
    payloads = auth.init_payloads(True, [trust])
    certreq, notify = payloads
    assert isinstance(certreq, CertificateRequest) and certreq.encoding == 4
    assert certreq.data == x509.spki_sha1(pki.root.cert) + x509.spki_sha1(pki.inter.cert)
    assert isinstance(notify, Notify) and notify.type == NotifyType.SIGNATURE_HASH_ALGORITHMS
    assert notify.data == bytes.fromhex("0002000300040005")
    hints = auth.peer_hints(payloads)
    assert hints.hash_algorithms == frozenset(ALL)
    assert hints.ca_hashes == {x509.spki_sha1(pki.root.cert), x509.spki_sha1(pki.inter.cert)}
    assert auth.init_payloads(False) == []


def test_cert_payloads_stop_at_a_ca_the_peer_requested(pki: Pki) -> None:
    a, _ = pair_confs()
    leaf = pki.leaf("a", "p256")
    conn = compile_connection(pubkey_conf(a, leaf, pki))
    full = auth.cert_payloads(conn, PeerHints(), certreq=True)
    assert [type(p) for p in full] == [Certificate, Certificate, CertificateRequest]
    assert full[0].data == leaf.der and full[1].data == pki.inter.der  # type: ignore[union-attr]
    hints = PeerHints(ca_hashes=frozenset({x509.spki_sha1(pki.inter.cert)}))
    short = auth.cert_payloads(conn, hints, certreq=False)
    assert [p.data for p in short] == [leaf.der]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- X.509


def test_chain_validation(pki: Pki) -> None:
    trust = x509.load_trust((pki.root.pem,))
    leaf = pki.leaf("b", "p256")
    path = x509.validate_chain(trust, leaf.cert, [pki.inter.cert], NOW)
    assert path == [leaf.cert, pki.inter.cert, pki.root.cert]
    with pytest.raises(AuthFailure, match="not a trusted CA"):
        x509.validate_chain(trust, leaf.cert, [], NOW)  # the intermediate is missing
    with pytest.raises(AuthFailure, match="expired"):
        x509.validate_chain(trust, leaf.cert, [pki.inter.cert], 1_950_000_000.0)
    with pytest.raises(AuthFailure, match="not valid before"):
        x509.validate_chain(trust, leaf.cert, [pki.inter.cert], 1_700_000_000.0)
    with pytest.raises(AuthFailure, match="not a trusted CA"):
        x509.validate_chain(
            x509.load_trust((pki.other_root.pem,)), leaf.cert, [pki.inter.cert], NOW
        )


def test_issuer_must_be_a_ca_with_key_cert_sign(pki: Pki) -> None:
    trust = x509.load_trust((pki.root.pem,))
    not_ca = make_ca("Not A CA", "p256", issuer=pki.root, ca=False)
    leaf = make_leaf(not_ca, "x.example", dns=("x.example",))
    with pytest.raises(AuthFailure, match="not a CA"):
        x509.validate_chain(trust, leaf.cert, [not_ca.cert], NOW)
    # pathLenConstraint 0 on the root: no intermediate below it
    root0 = make_ca("Root pathlen 0", "p256", path_length=0)
    inter = make_ca("Inter", "p256", issuer=root0)
    leaf2 = make_leaf(inter, "y.example", dns=("y.example",))
    with pytest.raises(AuthFailure, match="path length"):
        x509.validate_chain(x509.load_trust((root0.pem,)), leaf2.cert, [inter.cert], NOW)
    # an end entity whose keyUsage does not allow signatures
    enc_only = make_leaf(pki.inter, "z.example", digital_signature=False)
    with pytest.raises(AuthFailure, match="may not sign"):
        x509.validate_chain(trust, enc_only.cert, [pki.inter.cert], NOW)
    # an expired intermediate
    old = make_ca(
        "Old Inter",
        "p256",
        issuer=pki.root,
        not_after=datetime.datetime(2026, 6, 1, tzinfo=UTC),
    )
    leaf3 = make_leaf(old, "w.example")
    with pytest.raises(AuthFailure, match="Old Inter.*expired"):
        x509.validate_chain(trust, leaf3.cert, [old.cert], NOW)


def test_forged_certificate_signature(pki: Pki) -> None:
    """A leaf naming our intermediate as issuer but signed by another key."""
    impostor = make_ca("Test Intermediate CA", "p256", issuer=pki.other_root)  # same name
    leaf = make_leaf(impostor, "evil.example", dns=("b.example",))
    trust = x509.load_trust((pki.root.pem,))
    with pytest.raises(AuthFailure, match="does not verify with its issuer"):
        x509.validate_chain(trust, leaf.cert, [pki.inter.cert], NOW)


def test_crl_revocation(pki: Pki) -> None:
    victim = make_leaf(pki.inter, "revoked.example", dns=("revoked.example",))
    good = pki.leaf("b", "p256")
    crl = make_crl(pki.inter, (victim,))
    trust = x509.load_trust((pki.root.pem,), crls=(crl,))
    x509.validate_chain(trust, good.cert, [pki.inter.cert], NOW)
    with pytest.raises(AuthFailure, match="revoked"):
        x509.validate_chain(trust, victim.cert, [pki.inter.cert], NOW)
    # the root revokes the intermediate: everything below it fails
    root_crl = make_crl(pki.root, (pki.inter,))
    trust2 = x509.load_trust((pki.root.pem,), crls=(root_crl,))
    with pytest.raises(AuthFailure, match="Intermediate.*revoked"):
        x509.validate_chain(trust2, good.cert, [pki.inter.cert], NOW)
    # a CRL not signed by the issuer in the path is ignored
    forged = make_crl(pki.inter, (good,), signer=pki.other_root)
    x509.validate_chain(
        x509.load_trust((pki.root.pem,), crls=(forged,)), good.cert, [pki.inter.cert], NOW
    )


def test_pinned_peer_certificate(pki: Pki) -> None:
    leaf = pki.leaf("b", "p256")
    trust = x509.load_trust((), peer_certs=(leaf.pem,))
    assert x509.validate_chain(trust, leaf.cert, [], NOW) == [leaf.cert]
    with pytest.raises(AuthFailure, match="not one of the trusted peer certs"):
        x509.validate_chain(trust, pki.leaf("a", "p256").cert, [], NOW)


def test_id_matching(pki: Pki) -> None:
    cert = pki.leaf("b", "p256").cert
    assert x509.id_in_certificate(*parse_identity("@b.example"), cert)
    assert x509.id_in_certificate(*parse_identity("@B.Example"), cert)
    assert x509.id_in_certificate(*parse_identity("gw@b.example"), cert)
    assert x509.id_in_certificate(*parse_identity(B_IP), cert)
    assert x509.id_in_certificate(IdType.ID_DER_ASN1_DN, cert.subject.public_bytes(), cert)
    assert not x509.id_in_certificate(*parse_identity("@a.example"), cert)
    assert not x509.id_in_certificate(*parse_identity(A_IP), cert)
    assert not x509.id_in_certificate(*parse_identity("gw@a.example"), cert)
    assert not x509.id_in_certificate(IdType.ID_IPV6_ADDR, ipaddress.ip_address("::1").packed, cert)
    assert not x509.id_in_certificate(*parse_identity("@#0102"), cert)
    # DNs in strongSwan's syntax (most significant first), compared by attribute
    assert x509.id_in_certificate(*parse_identity("C=CH, O=gateway tests, CN=b.example"), cert)
    assert x509.id_in_certificate(*parse_identity("C=ch,O=Gateway Tests,CN=B.example"), cert)
    assert not x509.id_in_certificate(*parse_identity("C=CH, O=gateway tests, CN=a.example"), cert)
    assert not x509.id_in_certificate(*parse_identity("CN=b.example, O=gateway tests, C=CH"), cert)


def test_dn_identities() -> None:
    dn = parse_identity("C=CH, O=Example\\, Inc., CN=gw")
    assert dn[0] == IdType.ID_DER_ASN1_DN
    assert format_identity(*dn) == "C=CH, O=Example\\, Inc., CN=gw"
    assert parse_identity(format_identity(*dn)) == dn
    # the same name with PrintableString instead of UTF8String values is the same ID
    der = pki_der.der  # building a differently encoded DER Name by hand

    def rdn(oid: str, tag: int, value: bytes) -> bytes:
        atv = der(0x06, bytes.fromhex(oid)) + der(tag, value)
        return der(0x31, der(0x30, atv))

    printable = der(
        0x30,
        rdn("550406", 0x13, b"CH")
        + rdn("55040a", 0x13, b"Example, Inc.")
        + rdn("550403", 0x13, b"gw"),
    )
    assert printable != dn[1]
    assert names.same_identity(dn, (IdType.ID_DER_ASN1_DN, printable))
    assert not names.same_identity(dn, (IdType.ID_DER_ASN1_DN, printable[:-1] + b"x"))
    assert not names.same_identity(dn, (IdType.ID_FQDN, b"gw"))
    for bad in ("CN=", "XYZ=1", "C=CH,,CN=x"):
        with pytest.raises(LocalError, match="identity"):
            parse_identity(bad)


def test_config_errors_never_show_the_key(pki: Pki) -> None:
    a, _ = pair_confs()
    leaf, other = pki.leaf("a", "p256"), pki.leaf("b", "p256")
    with pytest.raises(LocalError, match="does not belong"):
        compile_connection(pubkey_conf(a, leaf, pki, private_key=other.key_pem))
    garbage = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END PRIVATE KEY-----\n"
    with pytest.raises(LocalError) as exc:
        compile_connection(pubkey_conf(a, leaf, pki, private_key=garbage))
    assert "c2VjcmV0" not in str(exc.value) and "key:" in str(exc.value)
    with pytest.raises(LocalError, match="cacerts"):
        compile_connection(pubkey_conf(a, leaf, pki, cacerts=()))
    with pytest.raises(LocalError, match="not a PEM or DER"):
        compile_connection(pubkey_conf(a, leaf, pki, certs=(b"junk",)))
    with pytest.raises(LocalError, match="psk"):
        compile_connection(pubkey_conf(a, leaf, pki, remote_auth="psk"))
    conn = compile_connection(pubkey_conf(a, leaf, pki))
    assert "PRIVATE" not in repr(conn) and "private_key" not in repr(conn.config)
    # the default identity with a certificate is its subject DN
    no_id = compile_connection(pubkey_conf(a, leaf, pki, local_id=""))
    assert no_id.local_id == (IdType.ID_DER_ASN1_DN, leaf.cert.subject.public_bytes())


# --------------------------------------------------------------------------- engines


@pytest.mark.parametrize("kind", KINDS)
def test_engines_authenticate_with_certificates(pki: Pki, kind: str) -> None:
    net = pubkey_pair(pki, kind, a_remote_id="@b.example")
    run(net)
    for side, me, peer in (("a", "a.example", "b.example"), ("b", "b.example", "a.example")):
        (est,) = net.of(side, IkeSaEstablished)
        assert (est.local_id, est.remote_id) == (me, peer)
        assert len(net.of(side, ChildSaEstablished)) == 1
    assert net.a.stats.auth_failures == net.b.stats.auth_failures == 0


def test_mixed_key_types_and_dn_identities(pki: Pki) -> None:
    """RSA-PSS initiator, Ed25519 responder; both use their subject DN as identity."""
    net = pubkey_pair(pki, "rsa-pss", "ed25519", a_local_id="", b_local_id="")
    run(net)
    (est,) = net.of("a", IkeSaEstablished)
    assert est.remote_id == "C=CH, O=gateway tests, CN=b.example"
    assert est.local_id == "C=CH, O=gateway tests, CN=a.example"
    assert len(net.of("b", ChildSaEstablished)) == 1


def test_dn_remote_ids_in_both_directions(pki: Pki) -> None:
    """Each side expects the other's subject DN, written in strongSwan's syntax."""
    net = pubkey_pair(
        pki,
        "p384",
        a_local_id="",
        b_local_id="",
        a_remote_id="C=CH, O=gateway tests, CN=b.example",
        b_remote_id="c=ch, o=GATEWAY tests, cn=a.example",
    )
    run(net)
    assert len(net.of("a", ChildSaEstablished)) == len(net.of("b", ChildSaEstablished)) == 1
    wrong = pubkey_pair(pki, "p384", b_local_id="", a_remote_id="C=CH, CN=b.example")
    run(wrong)
    (fail,) = failures(wrong, "a")
    assert "responder's identity is not" in fail.detail


def test_certreq_lets_the_peer_omit_the_intermediate(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b trusts the intermediate itself and says so in its CERTREQ: a sends only its leaf.
    a trusts only the root and asks for it, so b sends its leaf and the intermediate."""
    sent: dict[bool, int] = {}
    real = auth.cert_payloads

    def spy(conn, hints, *, certreq):  # type: ignore[no-untyped-def]
        out = real(conn, hints, certreq=certreq)
        sent[certreq] = sum(isinstance(p, Certificate) for p in out)
        return out

    monkeypatch.setattr(auth, "cert_payloads", spy)
    b_conf = pubkey_conf(
        pair_confs(b_local_id="@b.example")[1],
        pki.leaf("b", "p256"),
        pki,
        cacerts=(pki.inter.pem,),
    )
    net = pubkey_pair(pki, "p256")
    net.b.set_connections([b_conf])
    run(net)
    assert len(net.of("a", IkeSaEstablished)) == len(net.of("b", IkeSaEstablished)) == 1
    assert sent == {True: 1, False: 2}  # a (initiator, sends CERTREQ): leaf; b: leaf + CA


def test_responder_picks_the_connection_by_auth_method(pki: Pki) -> None:
    """b has a PSK and a pubkey connection for the same peer: a's signature picks the second."""
    net = pubkey_pair(pki, "p256")
    _, psk_b = pair_confs()
    b_pub = pubkey_conf(pair_confs(b_local_id="@b.example")[1], pki.leaf("b", "p256"), pki)
    net.b.set_connections([dataclasses.replace(psk_b, name="psk"), b_pub])
    run(net)
    (est,) = net.of("b", IkeSaEstablished)
    assert est.connection == "b2a"


@pytest.mark.parametrize(
    "case,side,detail",
    [
        ("expired-responder", "a", "expired"),
        ("expired-initiator", "b", "expired"),
        ("wrong-ca", "b", "not a trusted CA"),
        ("revoked", "a", "revoked"),
        ("id-not-in-cert", "b", "identity is not in its certificate"),
        ("remote-id-mismatch", "a", "identity is not '@c.example'"),
        ("bad-signature", "b", "signature does not verify"),
        ("psk-vs-pubkey", "b", "no connection matches"),
    ],
)
def test_auth_failures(
    pki: Pki, case: str, side: str, detail: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw: dict[str, object] = {}
    past = datetime.datetime(2025, 1, 1, tzinfo=UTC)
    since = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    if case == "expired-responder":
        old = make_leaf(
            pki.inter, "b.example", dns=("b.example",), not_before=since, not_after=past
        )
        kw = {"b_certs": (old.pem, pki.inter.pem), "b_private_key": old.key_pem}
    elif case == "expired-initiator":
        old = make_leaf(
            pki.inter, "a.example", dns=("a.example",), not_before=since, not_after=past
        )
        kw = {"a_certs": (old.pem, pki.inter.pem), "a_private_key": old.key_pem}
    elif case == "wrong-ca":
        foreign = make_leaf(pki.other_root, "a.example", dns=("a.example",))
        kw = {"a_certs": (foreign.pem,), "a_private_key": foreign.key_pem}
    elif case == "revoked":
        kw = {"a_crls": (make_crl(pki.inter, (pki.leaf("b", "p256"),)),)}
    elif case == "id-not-in-cert":
        kw = {"a_local_id": "@c.example"}
    elif case == "remote-id-mismatch":
        kw = {"a_remote_id": "@c.example"}
    elif case == "psk-vs-pubkey":
        kw = {"a_local_auth": "psk", "a_psk": b"correct horse battery staple"}
    net = pubkey_pair(pki, "p256", None, **kw)
    if case == "bad-signature":
        # a signs with a key that is not its certificate's (a forger holding the cert)
        real_sign, a_key = auth.sign, pki.leaf("a", "p256").key
        wrong = pki.leaf("b", "p256").key

        def forged(key, octets, peer, **kw):  # type: ignore[no-untyped-def]
            same = key.private_numbers() == a_key.private_numbers()  # type: ignore[union-attr]
            return real_sign(wrong if same else key, octets, peer, **kw)

        monkeypatch.setattr(auth, "sign", forged)
    run(net)
    net.advance(60)
    (fail,) = failures(net, side)
    assert fail.reason == "AUTHENTICATION_FAILED"
    assert detail in fail.detail, fail
    assert not net.of(side, IkeSaEstablished)
    if side == "b":  # the responder refuses: the initiator reads the notify in the answer
        assert [f.reason for f in failures(net, "a")] == ["AUTHENTICATION_FAILED"]
        assert not net.of("a", IkeSaEstablished)
    else:  # the responder was done; the initiator's INFORMATIONAL closes it (§2.21.2)
        assert [e.reason for e in net.of("b", IkeSaDeleted)] == ["AUTHENTICATION_FAILED"]
    assert "PRIVATE" not in fail.detail
    assert net.a.stats.auth_failures + net.b.stats.auth_failures >= 1
    assert not net.a.ike_sas() and not net.b.ike_sas()


def test_classic_methods_towards_a_peer_without_rfc_7427(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that announces no SIGNATURE_HASH_ALGORITHMS gets method 1 / 9 (and takes
    them): both engines drop the notify here."""
    real = auth.init_payloads
    monkeypatch.setattr(
        auth,
        "init_payloads",
        lambda uses, trust=(): [
            p
            for p in real(uses, trust)
            if not (isinstance(p, Notify) and p.type == NotifyType.SIGNATURE_HASH_ALGORITHMS)
        ],
    )
    methods: list[int] = []
    real_sign = auth.sign

    def spy(key, octets, peer, **kw):  # type: ignore[no-untyped-def]
        a = real_sign(key, octets, peer, **kw)
        methods.append(a.method)
        return a

    monkeypatch.setattr(auth, "sign", spy)
    net = pubkey_pair(pki, "rsa-pkcs1", "p256")
    run(net)
    assert methods == [AuthMethod.RSA_DIGITAL_SIGNATURE, 9]
    assert len(net.of("a", IkeSaEstablished)) == len(net.of("b", IkeSaEstablished)) == 1


def test_psk_connections_send_no_certificate_payloads() -> None:
    a, b = pair_confs()
    net = Net.make(a, b)
    run(net)
    assert len(net.of("a", IkeSaEstablished)) == 1
    for _, d in net.log[:2]:  # IKE_SA_INIT request and response
        msg = codec.decode_message(d.data)
        assert not [p for p in msg.payloads if isinstance(p, CertificateRequest)]
        assert NotifyType.SIGNATURE_HASH_ALGORITHMS not in [
            p.type for p in msg.payloads if isinstance(p, Notify)
        ]


def test_signed_data_hides_sk_p_and_uses_the_prf() -> None:
    prf = PRF[next(iter(PRF))]
    sd = auth.SignedData(prf, b"msg", b"nonce", b"secret-sk-p", b"id")
    assert sd.octets() == b"msg" + b"nonce" + prf(b"secret-sk-p", b"id")
    assert "secret" not in repr(sd)


def test_engine_rejects_unknown_auth_values() -> None:
    a, _ = pair_confs()
    with pytest.raises(LocalError, match="local_auth"):
        IkeEngine([dataclasses.replace(a, local_auth="eap")])


# --------------------------------------------------------------------------- hostile peers


PeerAuth = tuple[CompiledConnection, list[Certificate], Authentication, auth.SignedData]


@pytest.fixture(scope="module")
def peer_auth(pki: Pki) -> PeerAuth:
    """b's compiled connection, and a's valid CERT payloads, AUTH and signed data."""
    a, b = pair_confs()
    conn = compile_connection(pubkey_conf(b, pki.leaf("b", "p256"), pki))
    leaf = pki.leaf("a", "p256")
    cred = x509.load_credential((leaf.pem,), leaf.key_pem)
    signed = auth.SignedData(PRF[next(iter(PRF))], b"RealMessage1", b"Nr", b"k" * 32, b"id")
    certs = [Certificate(4, leaf.der), Certificate(4, pki.inter.der)]
    return conn, certs, signatures.sign(cred.key, signed.octets(), frozenset(ALL)), signed


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_certificates_and_auth_only_fail_authentication(
    peer_auth: PeerAuth, data: st.DataObject
) -> None:
    """Whatever the peer puts in CERT and AUTH: success only for the real thing, else
    AuthFailure (never another exception, which would escape the engine)."""
    conn, certs, good, signed = peer_auth
    peer_id = parse_identity("@a.example")
    which = data.draw(st.integers(0, 2))
    if which == 2:
        blob = good.data
    else:
        blob = certs[which].data
    pos = data.draw(st.integers(0, len(blob) - 1))
    mode = data.draw(st.sampled_from(["flip", "cut", "junk"]))
    if mode == "flip":
        mutated = blob[:pos] + bytes([blob[pos] ^ data.draw(st.integers(1, 255))]) + blob[pos + 1 :]
    elif mode == "cut":
        mutated = blob[:pos]
    else:
        mutated = blob[:pos] + data.draw(st.binary(max_size=64)) + blob[pos:]
    payloads: list[Payload] = list(certs)
    a = good
    if which == 2:
        a = Authentication(data.draw(st.sampled_from([1, 9, 10, 11, 14])), mutated)
    else:
        payloads[which] = Certificate(4, mutated)
    try:
        auth.check_auth(conn, payloads, a, peer_id, signed, NOW)
    except AuthFailure:
        return


def test_path_search_is_bounded(pki: Pki, peer_auth: PeerAuth) -> None:
    """Many certificates named like our intermediate, none the leaf's real issuer: every
    candidate is tried once and the search ends in AuthFailure; more than 16 CERT
    payloads are refused before any work."""
    conn, _, good, signed = peer_auth
    peer_id = parse_identity("@a.example")
    impostor = make_ca("Test Intermediate CA", "p256")  # self-signed, the same name
    forged = make_leaf(impostor, "a.example", dns=("a.example",))
    fakes: list[Payload] = [
        Certificate(4, make_ca("Test Intermediate CA", "p256", issuer=pki.root).der)
        for _ in range(15)
    ]
    with pytest.raises(AuthFailure, match="does not verify with its issuer"):
        auth.check_auth(
            conn,
            [Certificate(4, forged.der), *fakes],
            good,
            peer_id,
            signed,
            NOW,
        )
    leaf = pki.leaf("a", "p256")
    too_many: list[Payload] = [Certificate(4, leaf.der), *[Certificate(4, pki.inter.der)] * 16]
    with pytest.raises(AuthFailure, match="at most 16"):
        auth.check_auth(conn, too_many, good, peer_id, signed, NOW)
