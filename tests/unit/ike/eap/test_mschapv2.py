"""EAP-MSCHAPv2: MD4 (RFC 1320), MS-CHAPv2 (RFC 2759 §9.2 vectors), MPPE keys (RFC 3079
§3.5.3 vectors), and the two state machines against each other."""

from __future__ import annotations

import itertools

import pytest

from ike.eap import mschapv2 as m
from ike.eap.errors import EapDecodeError, EapFailure
from ike.eap.md4 import md4
from ike.eap.method import Done

H = bytes.fromhex

# RFC 2759 §9.2 "Hash Example" (also the input of RFC 3079 §3.5.3)
USER = b"User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = H("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = H("21402324255E262A28295F2B3A337C7E")
CHALLENGE = H("D02E4386BCE91226")
PASSWORD_HASH = H("44EBBA8D5312B8D611474411F56989AE")
NT_RESPONSE = H("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
PASSWORD_HASH_HASH = H("41C00C584BD2D91C4017A2A12FA59F3F")
AUTHENTICATOR_RESPONSE = b"S=407A5589115FD0D6209F510FE9C04566932CDA56"
# RFC 3079 §3.5.3 "Sample Key Derivations" (128-bit keys)
MASTER_KEY = H("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_128 = H("8B7CDC149B993A1BA118CB153F56DCCB")


@pytest.mark.parametrize(
    ("message", "digest"),
    [  # RFC 1320 §A.5 test suite
        (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
        (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        (
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "043f8582f241db351ce627e153e7f0e4",
        ),
        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ],
)
def test_md4_rfc1320_suite(message: bytes, digest: str) -> None:
    assert md4(message).hex() == digest


def test_rfc2759_hash_example() -> None:
    assert m.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == CHALLENGE
    assert m.nt_password_hash(PASSWORD) == PASSWORD_HASH
    assert m.challenge_response(CHALLENGE, PASSWORD_HASH) == NT_RESPONSE
    assert m.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD_HASH) == (
        NT_RESPONSE
    )
    assert m.hash_nt_password_hash(PASSWORD_HASH) == PASSWORD_HASH_HASH
    assert (
        m.authenticator_response(PASSWORD_HASH, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER)
        == AUTHENTICATOR_RESPONSE
    )


def test_domain_prefix_is_not_hashed() -> None:
    """RFC 2759 §8.2: the user name excludes a prepended domain."""
    assert m.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, b"ACME\\User") == CHALLENGE


def test_rfc3079_key_derivation_and_msk_layout() -> None:
    master = m.master_key(PASSWORD_HASH, NT_RESPONSE)
    assert master == MASTER_KEY
    server_send = m.asymmetric_start_key(master, send=True, server=True)
    assert server_send == SEND_START_KEY_128
    # the two ends agree: the server's send key is the client's receive key
    assert m.asymmetric_start_key(master, send=False, server=False) == server_send
    server_receive = m.asymmetric_start_key(master, send=False, server=True)
    assert server_receive == m.asymmetric_start_key(master, send=True, server=False)
    assert server_receive != server_send
    # MSK = MasterReceiveKey | MasterSendKey | 32 zero octets (strongSwan's eap-mschapv2)
    assert m.msk(PASSWORD_HASH, NT_RESPONSE) == server_receive + server_send + bytes(32)


def counter_random() -> m.RandomSource:
    counter = itertools.count(1)
    return lambda n: bytes(next(counter) & 0xFF for _ in range(n))


def users(**passwords: str) -> m.NtHashLookup:
    table = {k.encode(): m.nt_password_hash(v) for k, v in passwords.items()}
    return table.get


def run(server: m.MschapV2Server, peer: m.MschapV2Peer) -> list[bytes | Done]:
    """Drive the two methods until the server is done; every message on the way."""
    seen: list[bytes | Done] = []
    request: bytes | Done = server.start()
    while isinstance(request, bytes):
        seen.append(request)
        answer = peer.process(request)
        seen.append(answer)
        request = server.process(answer)
    seen.append(request)
    return seen


def test_methods_agree_on_success_and_msk() -> None:
    server = m.MschapV2Server(b"alice", users(alice="correct horse"), random=counter_random())
    peer = m.MschapV2Peer(b"alice", m.nt_password_hash("correct horse"), random=counter_random())
    seen = run(server, peer)
    assert seen[-1] == Done(True, "")
    assert peer.succeeded and server.msk is not None and len(server.msk) == 64
    assert peer.msk == server.msk
    # wire layout: Challenge, Response, Success "S=... M=...", the peer's bare Success OpCode
    challenge, response, success, ack = seen[:4]
    assert isinstance(challenge, bytes) and challenge[0] == m.OP_CHALLENGE
    assert challenge[4] == 16 and challenge[21:] == b"gateway"
    assert isinstance(response, bytes) and response[0] == m.OP_RESPONSE
    assert response[1] == challenge[1]  # MS-CHAPv2-ID echoed
    assert int.from_bytes(response[2:4], "big") == len(response)  # MS-Length = EAP Len - 5
    assert response[4] == 49 and response[-5:] == b"alice"
    assert isinstance(success, bytes) and success[4:6] == b"S="
    assert ack == bytes((m.OP_SUCCESS,))


def test_wrong_password_gets_failure_message_then_done_false() -> None:
    server = m.MschapV2Server(b"alice", users(alice="correct horse"))
    peer = m.MschapV2Peer(b"alice", m.nt_password_hash("wrong"))
    seen = run(server, peer)
    failure = seen[2]
    assert isinstance(failure, bytes) and failure[0] == m.OP_FAILURE
    fields = m.parse_failure(failure[4:])
    assert fields["E"] == "691" and fields["R"] == "0" and len(fields["C"]) == 32
    final = seen[-1]
    assert isinstance(final, Done) and not final.success
    assert final.reason == "EAP-MSCHAPv2: wrong password for 'alice'"
    assert "correct horse" not in final.reason and "wrong" != final.reason
    assert not peer.succeeded and peer.msk is None and server.msk is None
    assert peer.failure == "EAP-MSCHAPv2: the server refused (E=691)"


def test_unknown_user_looks_like_a_wrong_password_on_the_wire() -> None:
    server = m.MschapV2Server(b"mallory", users(alice="correct horse"))
    peer = m.MschapV2Peer(b"mallory", m.nt_password_hash("x"))
    seen = run(server, peer)
    assert isinstance(seen[2], bytes) and seen[2][0] == m.OP_FAILURE
    assert seen[-1] == Done(False, "EAP-MSCHAPv2: no secret for 'mallory'")


def test_name_must_be_the_eap_identity() -> None:
    server = m.MschapV2Server(b"alice", users(alice="pw", bob="pw"))
    peer = m.MschapV2Peer(b"bob", m.nt_password_hash("pw"))
    result = server.process(peer.process(server.start()))
    assert result == Done(False, "EAP-MSCHAPv2 name 'bob' is not the EAP identity")


def test_peer_rejects_a_forged_authenticator_response() -> None:
    """Mutual authentication: a server that does not know the password cannot fake S=."""
    peer = m.MschapV2Peer(b"alice", m.nt_password_hash("pw"))
    server = m.MschapV2Server(b"alice", users(alice="pw"))
    peer.process(server.start())
    forged = m._pack(m.OP_SUCCESS, 0, b"S=" + b"0" * 40 + b" M=hi")
    with pytest.raises(EapFailure, match="does not verify"):
        peer.process(forged)
    assert not peer.succeeded and peer.msk is None


def test_peer_accepts_a_success_without_message() -> None:
    """FreeRADIUS sends just "S=<40 hex>", no " M=" part."""
    server = m.MschapV2Server(b"alice", users(alice="pw"))
    peer = m.MschapV2Peer(b"alice", m.nt_password_hash("pw"))
    success = server.process(peer.process(server.start()))
    assert isinstance(success, bytes)
    bare = m._pack(m.OP_SUCCESS, success[1], success[4:46])
    assert peer.process(bare) == bytes((m.OP_SUCCESS,)) and peer.succeeded


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02",
        b"\x02\x01\x00\x09\x31",  # MS-Length 9 but 5 bytes
        b"\x02\x07\x00\x05\x31",  # Value-Size 49 with no value
        bytes((2, 0, 0, 5 + 49)) + b"\x31" + bytes(49),  # wrong MS-CHAPv2-ID (0 vs 7)
        b"\x01\x07\x00\x04",  # a Challenge sent to the server
    ],
)
def test_server_turns_malformed_responses_into_failure(data: bytes) -> None:
    server = m.MschapV2Server(b"alice", users(alice="pw"), ms_id=7)
    server.start()
    out = server.process(data)
    assert isinstance(out, Done) and not out.success and out.reason.startswith("EAP-MSCHAPv2")


def test_peer_raises_decode_error_on_malformed_challenge() -> None:
    peer = m.MschapV2Peer(b"alice", bytes(16))
    with pytest.raises(EapDecodeError):
        peer.process(b"\x01\x00\x00\x06\x10\x00")  # Value-Size 16, one byte of challenge
    with pytest.raises(EapFailure, match="OpCode 9"):
        peer.process(b"\x09\x00\x00\x04")
