"""EAP-TLS (ike/eap/tls.py): our authenticator and our peer over TLS 1.2 and 1.3, with
and without fragmentation; the MSK per RFC 5216 §2.3 recomputed from the TLS 1.2 master
secret; certificate checks (CA, validity at the given time, CRL, identity)."""

from __future__ import annotations

import datetime
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ike.eap import packet as p
from ike.eap import tls
from ike.eap.errors import EapDecodeError
from ike.eap.packet import Code, EapType
from ike.eap.session import EapAuthenticator, EapPeer, Status
from ike.errors import LocalError
from ike.pki.x509 import LocalCredential, TrustAnchors, load_trust
from tests.support.pki import NOW, UTC, Issued, make_ca, make_crl, make_leaf
from tests.unit.ike.eap.helpers import advance, converse


class Pki:
    def __init__(self) -> None:
        self.root = make_ca("EAP Root CA", "p256")
        self.inter = make_ca("EAP Intermediate CA", "p256", issuer=self.root)
        self.server = make_leaf(self.inter, "vpn.example", "p256", dns=("vpn.example",))
        self.client = make_leaf(self.root, "alice", "p256", emails=("alice@example.org",))
        self.rogue_ca = make_ca("Rogue CA", "p256")


PKI = Pki()


def cred(leaf: Issued, *chain: Issued) -> LocalCredential:
    return LocalCredential((leaf.cert, *(c.cert for c in chain)), leaf.key)


def trust(*cas: Issued, crls: tuple[bytes, ...] = ()) -> TrustAnchors:
    return load_trust([c.pem for c in cas], crls=crls)


SERVER_CONFIG = {
    v: tls.EapTlsConfig(cred(PKI.server, PKI.inter), trust(PKI.root), min_version=v, max_version=v)
    for v in ("1.2", "1.3")
}


def pair(
    version: str = "1.3",
    *,
    client: tls.EapTlsConfig | None = None,
    server: tls.EapTlsConfig | None = None,
    fragment_size: int = tls.DEFAULT_FRAGMENT_SIZE,
    now: float = NOW,
    peer_check: tls.CertificateCheck | None = None,
    server_check: tls.CertificateCheck | None = None,
) -> tuple[EapAuthenticator, EapPeer]:
    server_cfg = server or SERVER_CONFIG[version]
    client_cfg = client or tls.EapTlsConfig(cred(PKI.client), trust(PKI.root))
    auth = EapAuthenticator(
        {
            EapType.TLS: lambda _identity: tls.EapTlsServer(
                server_cfg, now=now, peer_check=peer_check, fragment_size=fragment_size
            )
        }
    )
    peer = EapPeer(
        b"alice@example.org",
        {
            EapType.TLS: lambda: tls.EapTlsPeer(
                client_cfg, now=now, server_check=server_check, fragment_size=fragment_size
            )
        },
    )
    return auth, peer


def tls_messages(wire: list[bytes]) -> list[tls.TlsMessage]:
    out = []
    for w in wire:
        pkt = p.decode_eap(w)
        if pkt.type == EapType.TLS:
            out.append(tls.decode_tls(pkt.data))
    return out


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("fragment_size", [64, 300, 1024, 16384])
def test_handshake_succeeds_with_matching_msk(version: str, fragment_size: int) -> None:
    auth, peer = pair(version, fragment_size=fragment_size)
    wire = converse(auth, peer)
    assert auth.status is Status.SUCCESS, auth.failure_reason
    assert peer.status is Status.SUCCESS, peer.failure_reason
    assert auth.msk is not None and len(auth.msk) == 64 and auth.msk == peer.msk
    assert p.decode_eap(wire[-1]).code == Code.SUCCESS
    msgs = tls_messages(wire)
    assert msgs[0] == tls.TlsMessage(tls.FLAG_S)  # EAP-TLS Start
    assert all(len(m.data) <= fragment_size for m in msgs)
    fragmented = [m for m in msgs if m.flags & tls.FLAG_M]
    if fragment_size <= 300:
        assert fragmented, "a chain of two certificates must not fit in 300 bytes"
    # the first fragment of each fragmented message carries its total length (L)
    for i, m in enumerate(msgs):
        if m.flags & tls.FLAG_M and (i < 2 or not msgs[i - 2].flags & tls.FLAG_M):
            assert m.length is not None
    method = auth._method
    assert isinstance(method, tls.EapTlsServer)
    assert method.tls_version == f"TLSv{version}"
    assert method.peer_certificate == PKI.client.cert


def _tls12_prf(secret: bytes, label: bytes, seed: bytes, n: int, hash_name: str) -> bytes:
    """P_<hash> of RFC 5246 §5, written out to check the exporter independently."""
    out, a = b"", label + seed
    while len(out) < n:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + label + seed, hash_name).digest()
    return out[:n]


def test_tls12_msk_is_rfc5216_prf_of_the_master_secret() -> None:
    auth, peer = pair("1.2")
    converse(auth, peer)
    method = auth._method
    assert isinstance(method, tls.EapTlsServer)
    conn = method._tls._conn
    cipher = conn.get_cipher_name() or ""
    hash_name = "sha384" if cipher.endswith("SHA384") else "sha256"
    master, client_random, server_random = (
        conn.master_key(),
        conn.client_random(),
        conn.server_random(),
    )
    assert master and client_random and server_random
    expected = _tls12_prf(
        master, b"client EAP encryption", client_random + server_random, 64, hash_name
    )
    assert auth.msk == expected and hashlib.sha256(expected).digest() != bytes(32)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_client_from_an_untrusted_ca_is_refused(version: str) -> None:
    rogue = make_leaf(PKI.rogue_ca, "alice", "p256")
    client = tls.EapTlsConfig(cred(rogue), trust(PKI.root))
    auth, peer = pair(version, client=client)
    wire = converse(auth, peer)
    assert auth.status is Status.FAILURE and peer.status is Status.FAILURE
    assert "is not a trusted CA" in (auth.failure_reason or "")
    assert p.decode_eap(wire[-1]).code == Code.FAILURE
    assert auth.msk is None and peer.msk is None


def test_server_from_an_untrusted_ca_is_refused_by_the_peer() -> None:
    client = tls.EapTlsConfig(cred(PKI.client), trust(PKI.rogue_ca))
    auth, peer = pair("1.3", client=client)
    converse(auth, peer)
    assert peer.status is Status.FAILURE and "not a trusted CA" in (peer.failure_reason or "")
    assert peer.msk is None and auth.status is not Status.SUCCESS


def test_validity_is_checked_at_the_given_time() -> None:
    late = datetime.datetime(2031, 1, 1, tzinfo=UTC).timestamp()
    auth, peer = pair("1.3", now=late)
    converse(auth, peer)
    assert peer.status is Status.FAILURE and "expired" in (peer.failure_reason or "")


def test_revoked_client_is_refused() -> None:
    revoked = make_leaf(PKI.root, "mallory", "p256")
    server = tls.EapTlsConfig(
        cred(PKI.server, PKI.inter), trust(PKI.root, crls=(make_crl(PKI.root, (revoked,)),))
    )
    auth, peer = pair("1.2", server=server, client=tls.EapTlsConfig(cred(revoked), trust(PKI.root)))
    converse(auth, peer)
    assert auth.status is Status.FAILURE and "revoked" in (auth.failure_reason or "")


def test_identity_checks_on_both_sides() -> None:
    def is_alice(c: object) -> bool:
        return "alice" in c.subject.rfc4514_string()  # type: ignore[attr-defined]

    auth, peer = pair("1.3", peer_check=is_alice, server_check=lambda c: True)
    converse(auth, peer)
    assert auth.status is Status.SUCCESS
    auth, peer = pair("1.3", server_check=lambda c: False)
    converse(auth, peer)
    assert peer.status is Status.FAILURE
    assert "CN=vpn.example" in (peer.failure_reason or "")
    assert "is not the expected identity" in (peer.failure_reason or "")


def test_version_mismatch_ends_with_an_alert_and_failure() -> None:
    client = tls.EapTlsConfig(cred(PKI.client), trust(PKI.root), min_version="1.3")
    auth, peer = pair("1.2", client=client)
    wire = converse(auth, peer)
    assert auth.status is Status.FAILURE and peer.status is Status.FAILURE
    assert "handshake failed" in (auth.failure_reason or "")
    assert p.decode_eap(wire[-1]).code == Code.FAILURE


def test_config_errors_are_local_errors() -> None:
    with pytest.raises(LocalError, match="1.4"):
        tls.EapTlsConfig(cred(PKI.client), trust(PKI.root), max_version="1.4")
    with pytest.raises(LocalError, match="above"):
        tls.EapTlsConfig(cred(PKI.client), trust(PKI.root), min_version="1.3", max_version="1.2")
    with pytest.raises(LocalError, match="unusable"):
        tls.EapTlsConfig(LocalCredential((PKI.client.cert,), PKI.server.key), trust(PKI.root))
    with pytest.raises(LocalError, match="fragment_size"):
        tls.EapTlsPeer(SERVER_CONFIG["1.2"], now=NOW, fragment_size=10)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "without Flags"),
        (b"\x80\x00\x00", "without a TLS Message Length"),
        (b"\x80\x7f\x00\x00\x00", "at most"),
    ],
)
def test_malformed_type_data(data: bytes, match: str) -> None:
    with pytest.raises(EapDecodeError, match=match):
        tls.decode_tls(data)


def test_reassembly_checks_the_announced_length() -> None:
    f = tls._Fragments(64)
    assert f.receive(tls.TlsMessage(tls.FLAG_M, b"ab", 3)) is None
    with pytest.raises(EapDecodeError, match="exceed 3"):
        f.receive(tls.TlsMessage(tls.FLAG_M, b"cd"))
    f = tls._Fragments(64)
    f.receive(tls.TlsMessage(tls.FLAG_M, b"ab", 5))
    with pytest.raises(EapDecodeError, match="L field said 5"):
        f.receive(tls.TlsMessage(0, b"c"))
    # strongSwan sends L in unfragmented messages too (include_length = yes)
    assert tls._Fragments(64).receive(tls.decode_tls(b"\x80\x00\x00\x00\x03abc")) == b"abc"
    with pytest.raises(EapDecodeError, match="L field said 4"):
        tls._Fragments(64).receive(tls.decode_tls(b"\x80\x00\x00\x00\x04abc"))
    # FreeRADIUS repeats L in every fragment: the same total is fine, another is not
    f = tls._Fragments(64)
    assert f.receive(tls.TlsMessage(tls.FLAG_M, b"ab", 4)) is None
    assert f.receive(tls.TlsMessage(0, b"cd", 4)) == b"abcd"
    f.receive(tls.TlsMessage(tls.FLAG_M, b"ab", 4))
    with pytest.raises(EapDecodeError, match="announces 9 bytes, the first said 4"):
        f.receive(tls.TlsMessage(0, b"cd", 9))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 12), st.binary(max_size=120))
def test_fuzz_server_method_turns_junk_into_done_or_a_request(rounds: int, junk: bytes) -> None:
    auth, peer = pair("1.3", fragment_size=200)
    request = advance(auth, peer, rounds)
    if request is None:
        return
    last = p.decode_eap(request)
    junk_packet = p.encode_eap(p.response(last.identifier, EapType.TLS, junk))
    out = p.decode_eap(auth.receive(junk_packet))
    assert out.code in (Code.REQUEST, Code.SUCCESS, Code.FAILURE)
    if out.code == Code.SUCCESS:  # only an acknowledgement of our final flight ends well
        assert tls.decode_tls(junk).is_ack
