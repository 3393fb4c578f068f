"""The EAP conversation (ike/eap/session.py): identity, Nak, Success/Failure rules, and
both methods end to end between our authenticator and our peer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ike.eap import mschapv2 as ms
from ike.eap import packet as p
from ike.eap.packet import Code, EapType
from ike.eap.session import EapAuthenticator, EapPeer, Status
from ike.errors import LocalError
from tests.unit.ike.eap.helpers import advance, converse, counter_random

PW = "s3cret-horse"
USERS = {b"alice": ms.nt_password_hash(PW)}


def mschap_server(identity: bytes) -> ms.MschapV2Server:
    return ms.MschapV2Server(identity, USERS.get, random=counter_random(50))


def mschap_peer(name: bytes = b"alice", password: str = PW) -> EapPeer:
    return EapPeer(
        name,
        {EapType.MSCHAPV2: lambda: ms.MschapV2Peer(name, ms.nt_password_hash(password))},
    )


def test_identity_then_mschapv2_success() -> None:
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server}, random=counter_random())
    peer = mschap_peer()
    wire = converse(auth, peer)
    packets = [p.decode_eap(w) for w in wire]
    assert [(x.code, x.type) for x in packets] == [
        (Code.REQUEST, EapType.IDENTITY),
        (Code.RESPONSE, EapType.IDENTITY),
        (Code.REQUEST, EapType.MSCHAPV2),  # Challenge
        (Code.RESPONSE, EapType.MSCHAPV2),  # Response
        (Code.REQUEST, EapType.MSCHAPV2),  # Success S=...
        (Code.RESPONSE, EapType.MSCHAPV2),  # Success acknowledged
        (Code.SUCCESS, None),
    ]
    # every Response echoes its Request's Identifier; Success carries the last one (§4.2)
    for req, resp in zip(packets[0:6:2], packets[1:6:2], strict=True):
        assert resp.identifier == req.identifier
    assert packets[-1].identifier == packets[-2].identifier
    assert auth.status is Status.SUCCESS and peer.status is Status.SUCCESS
    assert auth.identity == b"alice" and auth.method_type == EapType.MSCHAPV2
    assert auth.msk is not None and auth.msk == peer.msk and len(auth.msk) == 64


def test_known_identity_skips_the_identity_round() -> None:
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server}, identity=b"alice")
    wire = converse(auth, mschap_peer())
    assert p.decode_eap(wire[0]).type == EapType.MSCHAPV2
    assert auth.status is Status.SUCCESS


def test_wrong_password_fails_on_both_sides_without_the_secret() -> None:
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server})
    peer = mschap_peer(password="not-it")
    wire = converse(auth, peer)
    assert p.decode_eap(wire[-1]).code == Code.FAILURE
    assert auth.status is Status.FAILURE and peer.status is Status.FAILURE
    assert auth.failure_reason == "EAP-MSCHAPv2: wrong password for 'alice'"
    assert peer.failure_reason == "EAP-MSCHAPv2: the server refused (E=691)"
    assert auth.msk is None and peer.msk is None
    for reason in (auth.failure_reason, peer.failure_reason):
        assert PW not in reason and "not-it" not in reason


def test_nak_switches_to_a_method_the_peer_has() -> None:
    class Refused:  # a server method the peer does not have (Type 4, MD5-Challenge)
        type = EapType.MD5_CHALLENGE
        msk = None

        def start(self) -> bytes:
            return b"\x10" + bytes(16)

        def process(self, data: bytes) -> bytes:
            raise AssertionError("never reached: the peer Naks")

    auth = EapAuthenticator(
        {EapType.MD5_CHALLENGE: lambda _i: Refused(), EapType.MSCHAPV2: mschap_server}
    )
    wire = converse(auth, mschap_peer())
    nak = p.decode_eap(wire[3])
    assert nak.type == EapType.NAK and p.nak_types(nak) == (EapType.MSCHAPV2,)
    assert auth.status is Status.SUCCESS and auth.method_type == EapType.MSCHAPV2


def test_nak_for_nothing_we_have_fails() -> None:
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server})
    peer = EapPeer(b"alice", {EapType.TLS: lambda: None})  # type: ignore[dict-item,return-value]
    converse(auth, peer)
    assert auth.status is Status.FAILURE
    assert auth.failure_reason == "the peer refused MSCHAPV2 and wants none of ours (TLS)"


def test_nak_after_the_first_round_is_a_type_mismatch() -> None:
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server}, identity=b"alice")
    peer = mschap_peer()
    challenge = auth.start()
    auth.receive(peer.receive(challenge) or b"")  # Response -> Success request
    late_nak = p.encode_eap(p.nak(auth._identifier, (EapType.TLS,)))
    out = p.decode_eap(auth.receive(late_nak))
    assert out.code == Code.FAILURE and auth.status is Status.FAILURE
    assert "Type 3 to a 26 Request" in (auth.failure_reason or "")


@pytest.mark.parametrize(
    ("index", "rewrite", "reason"),
    [
        (1, lambda d: d[:1] + bytes(((d[1] + 1) & 0xFF,)) + d[2:], "Identifier"),
        (1, lambda d: b"\x01" + d[1:], "expected an EAP Response"),
        (1, lambda d: d[:4] + b"\x02" + d[5:], "expected an EAP-Identity Response"),
        (1, lambda d: d[:3] + bytes((d[3] + 1,)) + d[4:], "malformed"),
        (1, lambda d: d[:2] + b"\x00\x05\x01", "empty EAP identity"),
    ],
)
def test_authenticator_fails_on_bad_responses(index: int, rewrite, reason: str) -> None:  # type: ignore[no-untyped-def]
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server})
    wire = converse(auth, mschap_peer(), lambda i, d: rewrite(d) if i == index else d)
    assert auth.status is Status.FAILURE and reason in (auth.failure_reason or "")
    assert p.decode_eap(wire[-1]).code == Code.FAILURE


def test_peer_refuses_success_before_mutual_authentication() -> None:
    """A rogue authenticator answering the identity with EAP-Success gets nothing."""
    peer = mschap_peer()
    peer.receive(p.encode_eap(p.request(1, EapType.IDENTITY)))
    assert peer.receive(p.encode_eap(p.success(1))) is None
    assert peer.status is Status.FAILURE and peer.msk is None
    assert peer.failure_reason == "EAP-Success before the method authenticated the server"


def test_peer_refuses_a_method_switch_and_answers_notification() -> None:
    peer = mschap_peer()
    note = peer.receive(p.encode_eap(p.request(1, EapType.NOTIFICATION, b"hello")))
    assert note == p.encode_eap(p.response(1, EapType.NOTIFICATION))
    server = mschap_server(b"alice")
    peer.receive(p.encode_eap(p.request(2, EapType.MSCHAPV2, server.start())))
    assert peer.receive(p.encode_eap(p.request(3, EapType.TLS, b"\x20"))) is None
    assert peer.failure_reason == "the authenticator switched from Type 26 to 13"
    with pytest.raises(LocalError):
        peer.receive(b"")


def test_peer_repeats_its_response_to_a_repeated_request() -> None:
    peer = mschap_peer()
    challenge = p.encode_eap(p.request(9, EapType.MSCHAPV2, mschap_server(b"alice").start()))
    first = peer.receive(challenge)
    assert first is not None and peer.receive(challenge) == first


def test_round_limit() -> None:
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server}, max_rounds=1)
    peer = mschap_peer()
    converse(auth, peer)
    assert auth.status is Status.FAILURE and auth.failure_reason == "more than 1 EAP rounds"


def test_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        EapAuthenticator({})
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server})
    with pytest.raises(LocalError):
        auth.receive(b"")
    auth.start()
    with pytest.raises(LocalError):
        auth.start()


@settings(max_examples=700, deadline=None)
@given(st.integers(0, 7), st.binary(max_size=80))
def test_fuzz_authenticator_never_raises_on_peer_input(rounds: int, junk: bytes) -> None:
    """Any bytes, after any number of honest rounds: a Request or Success/Failure back."""
    auth = EapAuthenticator({EapType.MSCHAPV2: mschap_server})
    if advance(auth, mschap_peer(), rounds) is None:
        return
    # give the junk a consistent EAP Length half of the time, so deeper layers see it
    if len(junk) >= 4 and junk[0] & 1:
        junk = junk[:2] + len(junk).to_bytes(2, "big") + junk[4:]
    out = p.decode_eap(auth.receive(junk))
    assert out.code in (Code.REQUEST, Code.SUCCESS, Code.FAILURE)


@settings(max_examples=700, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_peer_never_raises_on_authenticator_input(junk: bytes) -> None:
    peer = mschap_peer()
    if len(junk) >= 4 and junk[0] & 1:
        junk = junk[:2] + len(junk).to_bytes(2, "big") + junk[4:]
    out = peer.receive(junk)
    if out is not None:
        assert p.decode_eap(out).code == Code.RESPONSE
