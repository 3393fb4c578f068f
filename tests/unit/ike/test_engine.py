"""Two engines negotiate in memory with a fake clock: suites, errors, loss, duplication."""

from __future__ import annotations

import dataclasses

import pytest

from ike.config import ConnectionConfig, EngineSettings
from ike.constants import NotifyType
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    Datagram,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from tests.unit.ike.harness import A_IP, B_IP, Net, all_sas, any_sa, pair_confs, sa_of

IKE_SUITES = [
    "aes256gcm16-prfsha384-x25519",
    "aes128-sha256-ecp256",
    "aes128gcm16-prfsha256-ecp384",
    "chacha20poly1305-prfsha512-x448",
    "aes256-sha384-ecp521",
    "aes192-sha512-modp2048",
]
ESP_SUITES = {
    "aes256gcm16": ("rfc4106(gcm(aes))", None, 36, 0),
    "aes128gcm16": ("rfc4106(gcm(aes))", None, 20, 0),
    "chacha20poly1305": ("rfc7539esp(chacha20,poly1305)", None, 36, 0),
    "aes128-sha256": ("cbc(aes)", "hmac(sha256)", 16, 32),
    "aes256-sha384-esn": ("cbc(aes)", "hmac(sha384)", 32, 48),
    "aes192-sha512": ("cbc(aes)", "hmac(sha512)", 24, 64),
}


def established(net: Net) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    for side in "ab":
        assert len(net.of(side, IkeSaEstablished)) == 1, net.events[side]
        assert len(net.of(side, ChildSaEstablished)) == 1, net.events[side]
    ca, cb = net.of("a", ChildSaEstablished)[0], net.of("b", ChildSaEstablished)[0]
    # the two ends agree: one's outbound SA is the other's inbound SA
    assert (ca.spi_out, ca.encr_key_out, ca.integ_key_out) == (
        cb.spi_in,
        cb.encr_key_in,
        cb.integ_key_in,
    )
    assert (cb.spi_out, cb.encr_key_out, cb.integ_key_out) == (
        ca.spi_in,
        ca.encr_key_in,
        ca.integ_key_in,
    )
    assert ca.encr_key_in != ca.encr_key_out
    return ca, cb


def start(net: Net, child: str | None = None) -> int:
    uid = net.a.initiate("a2b", child, net.now)
    net.pump()
    return uid


@pytest.mark.parametrize("ike", IKE_SUITES)
@pytest.mark.parametrize("esp", list(ESP_SUITES))
def test_suites_negotiate(ike: str, esp: str) -> None:
    net = Net.make(*pair_confs(ike=(ike,), esp=(esp,)))
    start(net)
    ca, cb = established(net)
    encr, integ, ekey, akey = ESP_SUITES[esp]
    for c in (ca, cb):
        assert c.encr_alg == encr and c.integ_alg == integ
        assert len(c.encr_key_in) == ekey and len(c.integ_key_in) == akey
        assert c.icv_bits == (128 if integ is None else 0)
        assert c.esn == esp.endswith("-esn")
        assert c.mode == "tunnel" and c.encap is None
    ia, ib = net.of("a", IkeSaEstablished)[0], net.of("b", IkeSaEstablished)[0]
    assert ia.proposal == ib.proposal and ia.initiator and not ib.initiator
    assert (ia.spi_i, ia.spi_r) == (ib.spi_i, ib.spi_r)
    assert ia.local_id == A_IP and ia.remote_id == B_IP
    assert [str(t.start_addr) for t in ca.local_ts] == ["10.1.0.0"]
    assert [str(t.start_addr) for t in cb.local_ts] == ["10.2.0.0"]
    assert len(net.log) == 4  # IKE_SA_INIT + IKE_AUTH, nothing else


def test_roles_swapped_and_transport_mode() -> None:
    a, b = pair_confs(mode="transport", local_ts=(), remote_ts=())
    net = Net.make(a, b)
    net.b.initiate("b2a", None, net.now)
    net.pump()
    ca, cb = established(net)
    assert ca.mode == cb.mode == "transport"
    assert not ca.initiator and cb.initiator
    assert [str(t.start_addr) for t in ca.local_ts] == [A_IP]  # dynamic selectors


def test_ts_narrowing_by_responder() -> None:
    net = Net.make(
        *pair_confs(
            a_local_ts=("10.1.0.0/16",),
            a_remote_ts=("10.0.0.0/8",),
            b_local_ts=("10.2.3.0/24",),
            b_remote_ts=("10.1.0.0/17",),
        )
    )
    start(net)
    ca, cb = established(net)
    assert [str(t.end_addr) for t in ca.local_ts] == ["10.1.127.255"]
    assert [str(t.end_addr) for t in ca.remote_ts] == ["10.2.3.255"]


def test_no_proposal_chosen_for_ike() -> None:
    net = Net.make(
        *pair_confs(a_ike=("aes128-sha256-ecp256",), b_ike=("aes256gcm16-prfsha384-x25519",))
    )
    start(net)
    [fail] = net.of("a", IkeSaFailed)
    assert fail.reason == "NO_PROPOSAL_CHOSEN" and fail.connection == "a2b"
    assert net.b.ike_sas() == [] and net.a.ike_sas() == []
    assert net.events["b"] == []


@pytest.mark.parametrize(
    "kw,reason",
    [
        ({"a_esp": ("aes128-sha256",), "b_esp": ("aes256gcm16",)}, "NO_PROPOSAL_CHOSEN"),
        ({"b_remote_ts": ("10.9.0.0/16",)}, "TS_UNACCEPTABLE"),
        ({"a_mode": "transport", "a_local_ts": (), "a_remote_ts": ()}, "TS_UNACCEPTABLE"),
    ],
)
def test_child_errors_keep_the_ike_sa(kw: dict, reason: str) -> None:  # type: ignore[type-arg]
    net = Net.make(*pair_confs(**kw))
    start(net)
    for side in "ab":
        assert len(net.of(side, IkeSaEstablished)) == 1
        assert net.of(side, ChildSaEstablished) == []
        [fail] = net.of(side, ChildSaFailed)
        assert fail.reason == reason
        # the responder names the Child config it tried (none if no selectors matched)
        assert fail.child == ("" if side == "b" and reason == "TS_UNACCEPTABLE" else "net")
    assert net.a.ike_sas()[0].state == "ESTABLISHED" and net.a.ike_sas()[0].children == ()


def test_wrong_psk_is_authentication_failed_on_both_sides() -> None:
    net = Net.make(*pair_confs(b_psk=b"another secret"))
    start(net)
    assert [e.reason for e in net.of("a", IkeSaFailed)] == ["AUTHENTICATION_FAILED"]
    assert [e.reason for e in net.of("b", IkeSaFailed)] == ["AUTHENTICATION_FAILED"]
    assert net.a.stats.auth_failures == 1 and net.b.stats.auth_failures == 1
    assert not net.of("a", IkeSaEstablished) and not net.of("b", IkeSaEstablished)
    net.advance(60)
    assert net.a.ike_sas() == [] and net.b.ike_sas() == []


def test_initiator_rejects_unexpected_responder_identity() -> None:
    net = Net.make(*pair_confs(a_remote_id="@moon.example", b_local_id="@sun.example"))
    start(net)
    assert [e.reason for e in net.of("a", IkeSaFailed)] == ["AUTHENTICATION_FAILED"]
    # the responder had established; the initiator's INFORMATIONAL tells it to drop the SA
    assert [e.reason for e in net.of("b", IkeSaDeleted)] == ["AUTHENTICATION_FAILED"]
    assert net.a.ike_sas() == []


def test_identities_are_checked_by_the_responder() -> None:
    net = Net.make(*pair_confs(a_local_id="@carol", b_remote_id="@dave"))
    start(net)
    assert [e.reason for e in net.of("b", IkeSaFailed)] == ["AUTHENTICATION_FAILED"]
    ok = Net.make(*pair_confs(a_local_id="carol@example.org", b_remote_id="carol@example.org"))
    start(ok)
    assert ok.of("b", IkeSaEstablished)[0].remote_id == "carol@example.org"


def test_invalid_ke_payload_retry_with_the_peers_group() -> None:
    net = Net.make(
        *pair_confs(
            a_ike=("aes256gcm16-prfsha384-x25519-ecp256",), b_ike=("aes256gcm16-prfsha384-ecp256",)
        )
    )
    start(net)
    established(net)
    assert len(net.log) == 6  # INIT, INVALID_KE, INIT again, INIT resp, AUTH req/resp
    assert net.of("a", IkeSaEstablished)[0].proposal == "aes256gcm16-prfsha384-ecp256"


def test_responder_takes_the_ke_group_sent_when_acceptable() -> None:
    net = Net.make(
        *pair_confs(
            a_ike=("aes256gcm16-prfsha384-x25519-ecp256",),
            b_ike=("aes256gcm16-prfsha384-ecp256-x25519",),
        )
    )
    # the responder prefers ecp256, but x25519 (the KE sent) is acceptable: no retry
    start(net)
    established(net)
    assert len(net.log) == 4
    assert net.of("b", IkeSaEstablished)[0].proposal == "aes256gcm16-prfsha384-x25519"


def test_invalid_ke_without_common_group_fails() -> None:
    net = Net.make(
        *pair_confs(
            a_ike=("aes256gcm16-prfsha384-x25519-ecp384",),
            b_ike=("aes256gcm16-prfsha384-ecp256-x448",),
        )
    )
    start(net)
    assert [e.reason for e in net.of("a", IkeSaFailed)] == ["NO_PROPOSAL_CHOSEN"]


def test_cookie_round_trip_under_load() -> None:
    net = Net.make(*pair_confs(), b_settings=EngineSettings(cookie_threshold=0))
    start(net)
    established(net)
    assert net.b.stats.cookies_sent == 1
    assert len(net.log) == 6


def test_cookie_that_does_not_verify_is_asked_again() -> None:
    net = Net.make(*pair_confs(), b_settings=EngineSettings(cookie_threshold=0))
    net.a.initiate("a2b", None, net.now)

    def corrupt_cookie(i: int, d: Datagram) -> int:
        if d.remote[0] == A_IP and len(d.data) < 80:  # a COOKIE notify: corrupt it for a
            net.a.receive_datagram(
                d.data[:-1] + bytes([d.data[-1] ^ 1]), (d.remote, d.local), net.now
            )
            return 0
        return 1

    net.pump(corrupt_cookie)
    assert net.b.stats.cookies_sent == 4
    # a retries a bounded number of times, then gives up
    assert [e.reason for e in net.of("a", IkeSaFailed)] == ["COOKIE"]


@pytest.mark.parametrize("lost", [0, 1, 2, 3])
def test_each_message_lost_once_is_retransmitted(lost: int) -> None:
    net = Net.make(*pair_confs())
    net.a.initiate("a2b", None, net.now)
    net.pump(lambda i, d: 0 if i == lost else 1)
    assert not net.of("a", IkeSaEstablished)
    net.advance(5)  # first retransmission after 4 s
    established(net)
    assert net.a.stats.retransmits == 1
    if lost in (1, 3):  # a response was lost: the responder answered from its cache
        assert net.b.stats.duplicates_answered == 1


@pytest.mark.parametrize("dup", [0, 1, 2, 3])
def test_each_message_duplicated(dup: int) -> None:
    net = Net.make(*pair_confs())
    net.a.initiate("a2b", None, net.now)
    net.pump(lambda i, d: 2 if i == dup else 1)
    established(net)
    assert len(net.b.ike_sas()) == 1 and len(net.a.ike_sas()) == 1
    if dup in (0, 2):
        assert net.b.stats.duplicates_answered == 1
        assert net.a.stats.unexpected == 1  # the second copy of the answer
    else:
        assert net.a.stats.unexpected == 1


def test_retransmission_backoff_and_give_up() -> None:
    net = Net.make(*pair_confs())
    net.a.initiate("a2b", None, net.now)
    t0 = net.now
    sent: list[float] = []

    def drop_all(i: int, d: Datagram) -> int:
        sent.append(net.now - t0)
        return 0

    net.pump(drop_all)
    net.advance(400, drop_all)
    expect = [0.0]
    for n in range(1, 6):
        expect.append(expect[-1] + 4.0 * 1.8 ** (n - 1))
    assert sent == pytest.approx(expect)
    [fail] = net.of("a", IkeSaFailed)
    assert fail.reason == "peer not responding"
    assert fail.time - t0 == pytest.approx(expect[-1] + 4.0 * 1.8**5)
    assert net.a.next_timer() is None and net.a.ike_sas() == []


def test_responder_half_open_timeout() -> None:
    net = Net.make(*pair_confs())
    net.a.initiate("a2b", None, net.now)
    net.pump(lambda i, d: 1 if i == 0 else 0)  # only the first request gets through
    assert net.b.ike_sas()[0].state == "CONNECTING"
    net.advance(31, lambda i, d: 0)
    assert [e.reason for e in net.of("b", IkeSaFailed)] == ["half-open timeout"]
    assert net.b.ike_sas() == []


@pytest.mark.parametrize("who", ["a", "b"])
def test_delete_child_then_ike_from_either_side(who: str) -> None:
    net = Net.make(*pair_confs())
    start(net)
    ca, cb = established(net)
    eng, child = (net.a, ca) if who == "a" else (net.b, cb)
    eng.delete_child_sa(child.ike_sa, child.spi_in, net.now)
    net.pump()
    for side, c in (("a", ca), ("b", cb)):
        [d] = net.of(side, ChildSaDeleted)
        assert (d.spi_in, d.spi_out) == (c.spi_in, c.spi_out)
        assert d.reason == ("deleted" if side == who else "deleted by peer")
    eng.delete_ike_sa(child.ike_sa, net.now)
    net.pump()
    for side in "ab":
        [d2] = net.of(side, IkeSaDeleted)
        assert d2.reason == ("deleted" if side == who else "deleted by peer")
    net.advance(60)
    assert net.a.ike_sas() == [] and net.b.ike_sas() == []


def test_delete_ike_reports_children_first() -> None:
    net = Net.make(*pair_confs())
    start(net)
    ca, _ = established(net)
    net.a.delete_ike_sa(ca.ike_sa, net.now)
    net.pump()
    kinds = [type(e).__name__ for e in net.events["b"]][-2:]
    assert kinds == ["ChildSaDeleted", "IkeSaDeleted"]


def test_lost_delete_response_is_answered_from_cache() -> None:
    net = Net.make(*pair_confs())
    start(net)
    ca, _ = established(net)
    net.a.delete_ike_sa(ca.ike_sa, net.now)
    net.pump(lambda i, d: 0 if i == 1 else 1)
    assert net.of("b", IkeSaDeleted) and not net.of("a", IkeSaDeleted)
    net.advance(5)
    assert [e.reason for e in net.of("a", IkeSaDeleted)] == ["deleted"]
    assert net.b.stats.duplicates_answered == 1


def test_liveness_check_and_dead_peer() -> None:
    net = Net.make(*pair_confs())
    start(net)
    ca, _ = established(net)
    net.a.check_liveness(ca.ike_sa, net.now)
    assert net.pump() == 2
    assert not net.of("a", IkeSaDeleted)
    net.a.check_liveness(ca.ike_sa, net.now)
    net.pump(lambda i, d: 0)
    net.advance(200, lambda i, d: 0)
    [d] = net.of("a", IkeSaDeleted)
    assert d.reason == "dead peer" and net.a.stats.dead_peers == 1
    names = [type(e).__name__ for e in net.events["a"]][-3:]
    assert names == ["ChildSaDeleted", "DpdFailed", "IkeSaDeleted"]


def test_requests_queue_behind_the_outstanding_one() -> None:
    net = Net.make(*pair_confs())
    start(net)
    ca, _ = established(net)
    net.a.check_liveness(ca.ike_sa, net.now)
    net.a.delete_child_sa(ca.ike_sa, ca.spi_in, net.now)
    assert len(net.a.datagrams_to_send()) == 1  # window of one (re-sent below by timer)
    net.advance(5)
    assert net.of("a", ChildSaDeleted) and net.of("b", ChildSaDeleted)


def test_nat_detected_floats_to_4500_with_marker() -> None:
    a, b = pair_confs()
    net = Net.make(a, dataclasses.replace(b, remote_addrs=()), nat=True)  # b accepts any peer
    start(net)
    ca, cb = established(net)
    assert ca.encap == (4500, 4500) and cb.encap == (4500, 14500)
    assert net.of("a", IkeSaEstablished)[0].nat_detected
    auth = [d for _, d in net.log[2:]]
    assert all(d.data[:4] == b"\0\0\0\0" for d in auth)
    assert all(4500 in (d.local[1], d.remote[1]) for d in auth)
    # b talks to the NAT's mapping
    assert net.b.ike_sas()[0].remote == ("198.51.100.7", 14500)
    # keepalives and ESP on the NAT-T port are not IKE: counted, not crashing
    net.b.receive_datagram(b"\xff", (("192.0.2.2", 4500), ("198.51.100.7", 14500)), net.now)
    net.b.receive_datagram(
        b"\x01\x02\x03\x04" + bytes(40), (("192.0.2.2", 4500), ("198.51.100.7", 14500)), net.now
    )
    assert net.b.stats.keepalives == 1 and net.b.stats.malformed == 1


def test_out_of_window_and_forged_messages_are_dropped() -> None:
    net = Net.make(*pair_confs())
    start(net)
    established(net)
    sa_b = net.b.ike_sas()[0]
    # a random message with b's SPIs and an unexpected message ID
    from ike.codec import Encrypted, Message, encode_message
    from ike.constants import ExchangeType, PayloadType

    forged = encode_message(
        Message(
            sa_b.spi_i,
            sa_b.spi_r,
            ExchangeType.INFORMATIONAL,
            True,
            False,
            7,
            (Encrypted(PayloadType.NONE, bytes(40)),),
        )
    )
    net.b.receive_datagram(forged, ((B_IP, 500), (A_IP, 500)), net.now)
    assert net.b.stats.unexpected == 1
    forged2 = forged[:20] + (2).to_bytes(4, "big") + forged[24:]
    net.b.receive_datagram(forged2, ((B_IP, 500), (A_IP, 500)), net.now)
    assert net.b.stats.integrity_failures == 1
    assert net.b.datagrams_to_send() == []


def test_unsupported_critical_payload_is_answered() -> None:
    from ike.codec import UnknownPayload, decode_message
    from ike.constants import ExchangeType

    net = Net.make(*pair_confs())
    start(net)
    established(net)
    sa = any_sa(net.a)  # the test forges an authentic request with a's keys
    assert sa.sk is not None
    data = sa.sk.protect(
        sa.spi_i,
        sa.spi_r,
        ExchangeType.INFORMATIONAL,
        is_initiator=True,
        is_response=False,
        message_id=sa.my_next_id,
        payloads=[UnknownPayload(222, True, b"x")],
    )
    net.b.receive_datagram(data, ((B_IP, 500), (A_IP, 500)), net.now)
    [resp] = net.b.datagrams_to_send()
    msg = decode_message(resp.data)
    inner = sa.sk.unprotect(resp.data, msg.payloads[-1])  # type: ignore[arg-type]
    assert inner[0].type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD  # type: ignore[union-attr]
    assert inner[0].data == bytes([222])  # type: ignore[union-attr]


def test_create_child_sa_without_payloads_is_invalid_syntax() -> None:
    from ike.codec import decode_message
    from ike.constants import ExchangeType

    net = Net.make(*pair_confs())
    start(net)
    sa = any_sa(net.a)
    assert sa.sk is not None
    data = sa.sk.protect(
        sa.spi_i,
        sa.spi_r,
        ExchangeType.CREATE_CHILD_SA,
        is_initiator=True,
        is_response=False,
        message_id=sa.my_next_id,
        payloads=[],
    )
    net.b.receive_datagram(data, ((B_IP, 500), (A_IP, 500)), net.now)
    [resp] = net.b.datagrams_to_send()
    inner = sa.sk.unprotect(resp.data, decode_message(resp.data).payloads[-1])  # type: ignore[arg-type]
    assert inner[0].type == NotifyType.INVALID_SYNTAX  # type: ignore[union-attr]


def test_secrets_stay_out_of_reprs() -> None:
    a, b = pair_confs()
    assert b"correct horse" not in repr(a).encode() and "correct horse" not in repr(a)
    net = Net.make(a, b)
    start(net)
    ca, _ = established(net)
    text = repr(net.events["a"]) + repr(net.a.ike_sas()) + repr(all_sas(net.a))
    for secret in (ca.encr_key_in, ca.encr_key_out):
        assert secret.hex() not in text and repr(secret) not in text


def test_config_errors_are_local_errors() -> None:
    from ike.engine import IkeEngine
    from ike.errors import LocalError

    a, _ = pair_confs()
    with pytest.raises(LocalError, match="unknown or unsupported algorithm 'des'"):
        IkeEngine([ConnectionConfig("x", psk=b"k", ike_proposals=("des-sha1-modp1024",))])
    with pytest.raises(LocalError, match="psk"):
        IkeEngine([ConnectionConfig("x")])
    eng = IkeEngine([a])
    with pytest.raises(LocalError, match="unknown connection"):
        eng.initiate("nope", None, 0.0)
    with pytest.raises(LocalError, match="no child"):
        eng.initiate("a2b", "nope", 0.0)
    with pytest.raises(LocalError, match="unknown IKE SA"):
        eng.delete_ike_sa(99, 0.0)


def test_set_connections_is_all_or_nothing_and_keeps_sas() -> None:
    from ike.errors import LocalError

    a, b = pair_confs()
    net = Net.make(a, b)
    start(net)
    established(net)
    with pytest.raises(LocalError, match="twice"):
        net.a.set_connections([a, a])
    assert net.a.connections == ("a2b",)
    net.a.set_connections([dataclasses.replace(a, name="other")])
    assert net.a.connections == ("other",)
    assert net.a.ike_sas()[0].connection == "a2b"
    net.a.check_liveness(net.a.ike_sas()[0].ike_sa, net.now)
    assert net.pump() == 2


def test_crossing_deletes_end_with_one_event_per_side() -> None:
    net = Net.make(*pair_confs())
    start(net)
    ca, cb = established(net)
    # both delete the Child at the same moment: each answers the other's request
    net.a.delete_child_sa(ca.ike_sa, ca.spi_in, net.now)
    net.b.delete_child_sa(cb.ike_sa, cb.spi_in, net.now)
    net.pump()
    for side in "ab":
        assert len(net.of(side, ChildSaDeleted)) == 1
    # then both delete the IKE SA at the same moment
    net.a.delete_ike_sa(ca.ike_sa, net.now)
    net.b.delete_ike_sa(cb.ike_sa, net.now)
    net.pump()
    net.advance(300)
    for side in "ab":
        assert len(net.of(side, IkeSaDeleted)) == 1, net.events[side]
    assert net.a.ike_sas() == [] and net.b.ike_sas() == []
    assert net.a.next_timer() is None and net.b.next_timer() is None


def test_ike_sas_snapshot_for_list_sas() -> None:
    net = Net.make(*pair_confs(a_local_id="@moon.example"))
    uid = net.a.initiate("a2b", None, net.now)
    [info] = net.a.ike_sas()
    assert info.state == "CONNECTING" and info.ike_sa == uid and info.proposal is None
    net.pump()
    [info] = net.a.ike_sas()
    assert info.state == "ESTABLISHED" and info.connection == "a2b" and info.initiator
    assert info.local_id == "moon.example" and info.remote_id == B_IP
    assert info.established_at == net.now and info.proposal == "aes256gcm16-prfsha384-x25519"
    [child] = info.children
    assert child.name == "net" and child.mode == "tunnel" and not child.encap
    [binfo] = net.b.ike_sas()
    assert binfo.remote_id == "moon.example" and not binfo.initiator
    assert binfo.children[0].spi_in == child.spi_out
    net.a.delete_ike_sa(uid, net.now)
    assert net.a.ike_sas()[0].state == "DELETING"


def test_cookie_threshold_caps_half_open_state_under_a_flood() -> None:
    from ike.engine import IkeEngine

    a, b = pair_confs()
    b = dataclasses.replace(b, remote_addrs=())
    responder = IkeEngine([b], EngineSettings(cookie_threshold=10))
    sources = [IkeEngine([dataclasses.replace(a, name=f"a{i}")]) for i in range(40)]
    for i, src in enumerate(sources):
        src.initiate(f"a{i}", None, 0.0)
        [d] = src.datagrams_to_send()
        responder.receive_datagram(d.data, ((B_IP, 500), (f"198.18.0.{i}", 500)), 0.0)
    assert len(responder.ike_sas()) == 10
    assert responder.stats.cookies_sent == 30
    # half-open SAs expire; then new peers get state again without a cookie
    responder.handle_timer(31.0)
    assert responder.ike_sas() == []


class CountingSpis:
    """An injected allocator that checks the engine's bookkeeping: every SPI handed out is
    released exactly once, never twice, never one we did not hand out."""

    def __init__(self, capacity: int = 1000, base: int = 0x1000) -> None:
        self.free = [base + i for i in range(capacity)]
        self.live: set[int] = set()
        self.allocated = 0

    def allocate(self, replaces: int | None = None) -> int:
        from ike.errors import SpiExhausted

        if not self.free:
            raise SpiExhausted("no slots")
        spi = self.free.pop(0)
        self.live.add(spi)
        self.allocated += 1
        return spi

    def release(self, spi: int) -> None:
        assert spi in self.live, f"release of {spi:#x} that is not live"
        self.live.remove(spi)
        self.free.append(spi)


def _net_with_spis(sa: CountingSpis, sb: CountingSpis, **kw: object) -> Net:
    import random

    from ike.engine import IkeEngine

    a_conf, b_conf = pair_confs(**kw)
    net = Net.make(a_conf, b_conf)
    net.a = IkeEngine([a_conf], random=random.Random(3).randbytes, spis=sa)
    net.b = IkeEngine([b_conf], random=random.Random(4).randbytes, spis=sb)
    return net


@pytest.mark.parametrize(
    "kw",
    [{}, {"b_remote_ts": ("10.9.0.0/16",)}, {"b_psk": b"other"}, {"a_esp": ("aes128-sha256",)}],
    ids=["ok", "ts-unacceptable", "auth-failed", "no-proposal"],
)
def test_injected_spi_allocator_never_leaks(kw: dict) -> None:  # type: ignore[type-arg]
    sa, sb = CountingSpis(), CountingSpis(base=0x2000)
    net = _net_with_spis(sa, sb, **kw)
    uid = net.a.initiate("a2b", None, net.now)
    net.pump()
    children = net.of("a", ChildSaEstablished)
    if children:
        assert children[0].spi_in in sa.live and children[0].spi_out in sb.live
    if net.a.ike_sas():
        net.a.delete_ike_sa(uid, net.now)
        net.pump()
    net.advance(300)
    assert sa.live == set() and sb.live == set()
    assert net.a.ike_sas() == [] and net.b.ike_sas() == []


def test_spi_exhaustion_fails_the_child_not_the_engine() -> None:
    sa, sb = CountingSpis(), CountingSpis(capacity=0)
    net = _net_with_spis(sa, sb)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert [e.reason for e in net.of("b", ChildSaFailed)] == ["NO_ADDITIONAL_SAS"]
    assert [e.reason for e in net.of("a", ChildSaFailed)] == ["NO_ADDITIONAL_SAS"]
    assert len(net.of("a", IkeSaEstablished)) == 1 and sa.live == set()
    # and on the initiator: no SPI for the Child, so no IKE_AUTH
    net2 = _net_with_spis(CountingSpis(capacity=0), CountingSpis())
    net2.a.initiate("a2b", None, net2.now)
    net2.pump()
    assert [e.reason for e in net2.of("a", IkeSaFailed)] == ["TEMPORARY_FAILURE"]


def test_cookie_secret_rotates_and_the_previous_one_stays_valid() -> None:
    net = Net.make(*pair_confs(), b_settings=EngineSettings(cookie_threshold=0))
    net.a.initiate("a2b", None, net.now)
    # b answers the first request with a COOKIE; a's request with the cookie is held back
    net.pump(lambda i, d: 1 if i < 2 else 0)
    assert net.b.stats.cookies_sent == 1
    with_cookie = net.log[2][1]
    addr = (with_cookie.remote, with_cookie.local)
    # one secret lifetime later the secret rotates; the cookie made with the previous
    # secret is still accepted
    net.now += 301
    net.b.receive_datagram(with_cookie.data, addr, net.now)
    assert len(net.b.ike_sas()) == 1 and net.b.stats.cookies_sent == 1
    net.now += 31
    net.b.handle_timer(net.now)  # that half-open SA expires
    assert net.b.ike_sas() == []
    # after the next rotation the first secret is gone: the same cookie is refused
    net.now += 301
    net.b.receive_datagram(with_cookie.data, addr, net.now)
    assert net.b.ike_sas() == [] and net.b.stats.cookies_sent == 2


def test_late_duplicate_ike_sa_init_after_establishment_is_dropped() -> None:
    net = Net.make(*pair_confs())
    start(net)
    established(net)
    first = net.log[0][1]
    net.b.receive_datagram(first.data, (first.remote, first.local), net.now)
    assert net.b.datagrams_to_send() == [] and len(net.b.ike_sas()) == 1
    assert net.b.stats.unexpected == 1
    # once the SA is gone, the SPI is free again
    net.a.delete_ike_sa(net.a.ike_sas()[0].ike_sa, net.now)
    net.pump()
    net.advance(60)
    assert net.b.ike_sas() == []
    net.b.receive_datagram(first.data, (first.remote, first.local), net.now)
    assert len(net.b.ike_sas()) == 1


def test_packet_selectors_go_first_and_the_responder_drops_covered_ones() -> None:
    """An initiation for a packet (a kernel ACQUIRE) proposes the packet's addresses as
    the first TSi/TSr, then the configured ones (RFC 7296 §2.9); a responder whose
    configuration covers both answers the subnet alone (intersections inside another
    one are dropped, as strongSwan does), and one configured for that host only answers
    the host: both are inside what was proposed."""
    import ipaddress

    from ike.events import ChildSaEstablished as Est
    from ike.ts import narrow, ts_for_address, ts_from_text

    host = ts_for_address(ipaddress.ip_address("10.1.0.5"))
    peer = ts_for_address(ipaddress.ip_address("10.2.0.7"))
    for b_remote, want in (("10.1.0.0/16", "10.1.0.0/16"), ("10.1.0.5/32", "10.1.0.5/32")):
        a, b = pair_confs(b_remote_ts=(b_remote,))
        net = Net.make(a, b)
        handle = net.a.initiate("a2b", None, net.now, packet_ts=(host, peer))
        net.pump(limit=2)  # IKE_SA_INIT: IKE_AUTH is queued with the selectors
        sa = sa_of(net.a, handle)
        assert sa.pending_child is not None
        assert sa.pending_child.tsi == (host, ts_from_text("10.1.0.0/16"))
        assert sa.pending_child.tsr == (peer, ts_from_text("10.2.0.0/16"))
        net.pump()
        [ea], [eb] = net.of("a", Est), net.of("b", Est)
        assert [str(t.start_addr) for t in (ea.local_ts[0], eb.remote_ts[0])] == [
            want.split("/")[0]
        ] * 2
        assert len(ea.local_ts) == 1 and ea.local_ts == eb.remote_ts
        assert ea.local_ts == (ts_from_text(want),)
        assert sa.state.public == "ESTABLISHED"
    wide, narrow_one = ts_from_text("10.1.0.0/24"), ts_from_text("10.1.0.0/25")
    assert narrow([host, wide], [wide]) == (wide,)
    assert narrow([narrow_one, wide], [wide, narrow_one]) == (wide,)
    assert narrow([ts_from_text("10.9.0.0/24"), host], [wide]) == (host,)
