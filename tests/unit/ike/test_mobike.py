"""MOBIKE (RFC 4555) with two engines in memory and a fake clock: negotiation (and its
absence), the initiator moving to a new address with the loss of the request or of the
reply on the new path, COOKIE2 checking, a NAT appearing and going away (encapsulation
follows), additional addresses, UNACCEPTABLE_ADDRESSES and NO_NATS_ALLOWED, malformed
MOBIKE notifies, and no state left behind."""

from __future__ import annotations

import dataclasses

import pytest

from ike import mobike
from ike.codec import Message, Notify, Payload
from ike.config import ConnectionConfig, EngineSettings
from ike.constants import ExchangeType, NotifyType
from ike.engine import IkeEngine
from ike.errors import LocalError
from ike.events import (
    AdditionalAddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMigrated,
    IkeSaMigrateFailed,
)
from ike.sa import IkeSa
from tests.unit.ike.harness import (
    A_IP,
    B_IP,
    NAT_IP,
    Net,
    leftovers,
    pair_confs,
    sa_of,
)

A2 = "192.0.2.11"  # the initiator's second address
A6 = "2001:db8::1"


def _quiet(conf: ConnectionConfig, **kw: object) -> ConnectionConfig:
    """No lifetime timers (the tests drive everything), MOBIKE on unless told."""
    children = tuple(
        dataclasses.replace(c, rekey_time=0.0, life_time=0.0, rand_time=0.0) for c in conf.children
    )
    fields = {"mobike": True, **kw}
    return dataclasses.replace(conf, children=children, rekey_time=0.0, rand_time=0.0, **fields)  # type: ignore[arg-type]


def make(
    a_kw: dict[str, object] | None = None,
    b_kw: dict[str, object] | None = None,
    settings: EngineSettings | None = None,
) -> Net:
    a, b = pair_confs()
    net = Net.make(_quiet(a, **(a_kw or {})), _quiet(b, **(b_kw or {})), settings, settings)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert len(net.of("a", ChildSaEstablished)) == 1, net.events
    assert len(net.of("b", ChildSaEstablished)) == 1, net.events
    return net


def uid(eng: IkeEngine) -> int:
    return sa_of(eng).uid


def child_spis(eng: IkeEngine) -> set[tuple[int, int]]:
    return {(c.spi_in, c.spi_out) for c in sa_of(eng).children.values()}


def assert_clean(net: Net) -> None:
    """Delete the IKE SA: nothing of either engine is left (SAs, SPIs, MOBIKE state)."""
    for side in ("a", "b"):
        assert sa_of(getattr(net, side)).mobike_update is None
    net.a.delete_ike_sa(uid(net.a), net.now)
    net.pump()
    net.advance(100)
    for side in ("a", "b"):
        assert leftovers(getattr(net, side), net.spis[side]) == [], side


def from_a(net: Net) -> list[Datagram]:
    return [d for src, d in net.log if src == "a"]


# --------------------------------------------------------------------------- negotiation


def test_negotiated_moves_ike_to_the_nat_t_port_without_encapsulating_esp() -> None:
    net = make()
    for side in ("a", "b"):
        [est] = net.of(side, IkeSaEstablished)
        assert est.mobike and not est.nat_detected
        [info] = getattr(net, side).ike_sas()
        assert info.mobike and info.local[1] == 4500 and info.remote[1] == 4500
        [child] = net.of(side, ChildSaEstablished)
        assert child.encap is None  # no NAT: plain ESP although IKE floated (RFC 4555 §3.3)
    # the IKE_AUTH request already went to port 4500, with the non-ESP marker
    auth = from_a(net)[1]
    assert auth.remote == (B_IP, 4500) and auth.data[:4] == bytes(4)
    assert_clean(net)


@pytest.mark.parametrize("disabled", ["a", "b"])
def test_not_negotiated_when_one_side_disables_it(disabled: str) -> None:
    off: dict[str, object] = {"mobike": False}
    net = make(off if disabled == "a" else None, off if disabled == "b" else None)
    for side in ("a", "b"):
        [est] = net.of(side, IkeSaEstablished)
        assert not est.mobike and est.additional_addrs == ()
    [info] = net.a.ike_sas()
    # a peer that only offers MOBIKE still floats (strongSwan does too); one without stays
    assert info.remote[1] == (500 if disabled == "a" else 4500)
    with pytest.raises(LocalError, match="MOBIKE is not in use"):
        net.a.update_addresses(uid(net.a), A2, None, net.now)
    assert_clean(net)


def test_only_the_initiator_moves_the_sa() -> None:
    net = make()
    with pytest.raises(LocalError, match="only its initiator"):
        net.b.update_addresses(uid(net.b), None, A_IP, net.now)
    with pytest.raises(LocalError, match="address family"):
        net.a.update_addresses(uid(net.a), A6, None, net.now)
    with pytest.raises(LocalError, match="not an IP address"):
        net.a.update_addresses(uid(net.a), "nowhere", None, net.now)
    with pytest.raises(LocalError, match="unknown IKE SA"):
        net.a.update_addresses(999, A2, None, net.now)
    assert_clean(net)


def test_additional_addresses_are_exchanged() -> None:
    net = make(a_kw={"local_addrs": (A_IP, A2, A6)}, b_kw={"local_addrs": (B_IP, "192.0.2.22")})
    [est_b] = net.of("b", IkeSaEstablished)
    [est_a] = net.of("a", IkeSaEstablished)
    assert est_b.additional_addrs == (A2, A6)
    assert est_a.additional_addrs == ("192.0.2.22",)
    [info] = net.b.ike_sas()
    assert info.additional_addrs == (A2, A6)
    assert_clean(net)


# --------------------------------------------------------------------------- moves


def test_initiator_moves_and_the_peer_follows() -> None:
    net = make(a_kw={"local_addrs": (A_IP, A2)})
    spis = child_spis(net.a)
    net.log.clear()
    net.a.update_addresses(uid(net.a), A2, None, net.now)
    net.pump()
    [request, reply] = [d for _, d in net.log]
    assert request.local == (A2, 4500) and request.remote == (B_IP, 4500)
    assert reply.local == (B_IP, 4500) and reply.remote == (A2, 4500)
    for side, eng in (("a", net.a), ("b", net.b)):
        [moved] = net.of(side, IkeSaMigrated)
        assert moved.encap is None and not moved.nat_detected
        assert set(moved.children) == child_spis(eng)
    [moved_a] = net.of("a", IkeSaMigrated)
    assert (moved_a.old_local, moved_a.local) == ((A_IP, 4500), (A2, 4500))
    assert set(moved_a.children) == spis
    [moved_b] = net.of("b", IkeSaMigrated)
    assert (moved_b.old_remote, moved_b.remote) == ((A_IP, 4500), (A2, 4500))
    # the update announced the address a left as its other one (RFC 4555 §3.6)
    [listed] = net.of("b", AdditionalAddressesUpdated)
    assert listed.additional_addrs == (A_IP,)
    assert net.b.ike_sas()[0].remote == (A2, 4500)
    # later exchanges use the new path both ways
    net.log.clear()
    net.a.check_liveness(uid(net.a), net.now)
    net.pump()
    assert [(d.local[0], d.remote[0]) for _, d in net.log] == [(A2, B_IP), (B_IP, A2)]
    # and a Child SA made now is installed on it
    net.a.create_child_sa(uid(net.a), "net", net.now)
    net.pump()
    new = net.of("b", ChildSaEstablished)[-1]
    assert new.remote_addr == A2
    assert net.a.stats.mobike_updates_sent == 1 and net.b.stats.mobike_updates_received == 1
    assert_clean(net)


def test_loss_of_the_request_on_the_new_path_is_retransmitted_there() -> None:
    net = make(a_kw={"local_addrs": (A_IP, A2)})
    net.log.clear()
    net.a.update_addresses(uid(net.a), A2, None, net.now)
    net.pump(lambda i, d: 0 if i == 0 else 1)  # the first request is lost
    assert not net.of("a", IkeSaMigrated) and not net.of("b", IkeSaMigrated)
    net.advance(5)
    sent = from_a(net)
    assert len(sent) == 2 and all(d.local == (A2, 4500) for d in sent)
    assert net.a.stats.retransmits == 1
    assert len(net.of("a", IkeSaMigrated)) == 1 and len(net.of("b", IkeSaMigrated)) == 1
    assert_clean(net)


def test_loss_of_the_reply_on_the_new_path_is_answered_from_the_cache() -> None:
    net = make(a_kw={"local_addrs": (A_IP, A2)})
    net.log.clear()
    net.a.update_addresses(uid(net.a), A2, None, net.now)
    net.pump(lambda i, d: 0 if d.local[0] == B_IP and i == 1 else 1)  # b's answer is lost
    assert len(net.of("b", IkeSaMigrated)) == 1 and not net.of("a", IkeSaMigrated)
    net.advance(5)
    assert net.b.stats.duplicates_answered == 1
    replies = [d for src, d in net.log if src == "b"]
    assert len(replies) == 2 and all(d.remote == (A2, 4500) for d in replies)
    assert len(net.of("a", IkeSaMigrated)) == 1 and len(net.of("b", IkeSaMigrated)) == 1
    assert_clean(net)


def test_cookie2_mismatch_closes_the_ike_sa(monkeypatch: pytest.MonkeyPatch) -> None:
    net = make(a_kw={"local_addrs": (A_IP, A2)})
    real = mobike.on_informational  # b's MOBIKE answer, through its public hook

    def wrong_cookie(*args: object) -> list[Payload]:
        out = real(*args)  # type: ignore[arg-type]
        return [
            Notify(NotifyType.COOKIE2, b"\x00" * 16)
            if isinstance(p, Notify) and p.type == NotifyType.COOKIE2
            else p
            for p in out
        ]

    monkeypatch.setattr(mobike, "on_informational", wrong_cookie)
    net.a.check_liveness(uid(net.a), net.now)  # queued behind the update: dropped with it
    net.a.update_addresses(uid(net.a), A2, None, net.now)
    net.pump()
    assert net.a.stats.cookie2_mismatches == 1
    assert not net.of("a", IkeSaMigrated)
    [gone] = net.of("a", IkeSaDeleted)  # RFC 4555 §3.7: the IKE SA MUST be closed
    assert gone.reason == "COOKIE2 mismatch"
    assert [c.reason for c in net.of("a", ChildSaDeleted)] == ["COOKIE2 mismatch"]
    assert leftovers(net.a, net.spis["a"]) == [] and net.a.datagrams_to_send() == []


def test_nat_detection_in_any_informational_is_answered() -> None:
    """RFC 4555 §3.8: e.g. a liveness check carrying NAT_DETECTION gets ours back."""
    net = make()
    sa = sa_of(net.a)
    got = _send_informational(net, mobike.nat_notifies(sa))
    assert [p.type for p in got if isinstance(p, Notify)] == [
        NotifyType.NAT_DETECTION_SOURCE_IP,
        NotifyType.NAT_DETECTION_DESTINATION_IP,
    ]
    assert got == mobike.nat_notifies(sa_of(net.b))  # over the same path, seen from b
    assert not net.of("b", IkeSaMigrated)
    assert_clean(net)


def test_nat_appears_and_disappears_and_encapsulation_follows() -> None:
    net = make(b_kw={"remote_addrs": ()})  # b takes the peer from any address
    a_uid = uid(net.a)
    net.nat = True  # a's new network sits behind a NAT
    net.a.update_addresses(a_uid, A_IP, None, net.now)
    net.pump()
    [moved_a] = net.of("a", IkeSaMigrated)
    [moved_b] = net.of("b", IkeSaMigrated)
    assert moved_a.nat_detected and moved_a.encap == (4500, 4500)
    assert moved_b.nat_detected and moved_b.remote == (NAT_IP, 14500)
    assert moved_b.encap == (4500, 14500)
    assert [c.encap for c in net.b.ike_sas()[0].children] == [True]
    # behind the NAT, a keeps the mapping open with NAT-T keepalives (RFC 3948 §2.3)
    net.advance(45)
    assert net.a.stats.keepalives_sent == 2 and net.b.stats.keepalives == 2
    # the NAT goes away again
    net.nat = False
    net.a.update_addresses(a_uid, A_IP, None, net.now)
    net.pump()
    back_a, back_b = net.of("a", IkeSaMigrated)[-1], net.of("b", IkeSaMigrated)[-1]
    assert not back_a.nat_detected and back_a.encap is None
    assert not back_b.nat_detected and back_b.encap is None and back_b.remote == (A_IP, 4500)
    net.advance(45)
    assert net.a.stats.keepalives_sent == 2  # no more keepalives
    assert_clean(net)


# --------------------------------------------------------------------------- refusals


def test_unacceptable_address_puts_the_sa_back_on_its_old_path() -> None:
    net = make()  # a announces no other address, and b only accepts A_IP
    a_uid = uid(net.a)
    net.a.update_addresses(a_uid, A2, None, net.now)
    net.pump()
    [failed] = net.of("a", IkeSaMigrateFailed)
    assert failed.reason == "UNACCEPTABLE_ADDRESSES" and failed.local == (A2, 4500)
    assert not net.of("a", IkeSaMigrated) and not net.of("b", IkeSaMigrated)
    assert net.a.ike_sas()[0].local == (A_IP, 4500)
    assert net.b.ike_sas()[0].remote == (A_IP, 4500)
    net.log.clear()
    net.a.check_liveness(a_uid, net.now)  # still working on the old path
    net.pump()
    assert [d.local[0] for _, d in net.log] == [A_IP, B_IP]
    assert_clean(net)


def test_no_nats_allowed() -> None:
    net = make(a_kw={"mobike_no_nats": True}, b_kw={"remote_addrs": ()})
    a_uid = uid(net.a)
    net.a.update_addresses(a_uid, A_IP, None, net.now)  # no NAT: accepted
    net.pump()
    assert len(net.of("a", IkeSaMigrated)) == 1
    net.nat = True  # now a NAT rewrites the header: refused (RFC 4555 §3.9)
    net.a.update_addresses(a_uid, A_IP, None, net.now)
    net.pump()
    [failed] = net.of("a", IkeSaMigrateFailed)
    assert failed.reason == "UNEXPECTED_NAT_DETECTED"
    assert len(net.of("b", IkeSaMigrated)) == 1
    assert net.b.ike_sas()[0].remote == (A_IP, 4500)
    net.nat = False
    assert_clean(net)


# --------------------------------------------------------------------------- robustness


def _send_informational(net: Net, payloads: list[Payload]) -> list[Payload]:
    """Send an authenticated INFORMATIONAL from a; return b's answer payloads."""
    answers: list[Payload] = []

    def on_response(
        h: IkeEngine, s: IkeSa, m: Message, p: tuple[Payload, ...], d: bytes, n: float
    ) -> None:
        answers.extend(p)

    net.a.send_request(sa_of(net.a), ExchangeType.INFORMATIONAL, payloads, on_response, net.now)
    net.pump()
    return answers


@pytest.mark.parametrize(
    ("payloads", "answer"),
    [
        ([Notify(NotifyType.UPDATE_SA_ADDRESSES), Notify(NotifyType.COOKIE2, b"abc")], 7),
        ([Notify(NotifyType.UPDATE_SA_ADDRESSES), Notify(NotifyType.COOKIE2, bytes(65))], 7),
        ([Notify(NotifyType.UPDATE_SA_ADDRESSES), Notify(NotifyType.NO_NATS_ALLOWED, b"x")], 7),
        ([Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, b"\x01\x02\x03")], None),
        ([Notify(NotifyType.ADDITIONAL_IP6_ADDRESS, bytes(4))], None),
    ],
)
def test_malformed_mobike_notifies_are_answered_or_counted(
    payloads: list[Payload], answer: int | None
) -> None:
    net = make()
    got = _send_informational(net, payloads)
    errors = [p.type for p in got if isinstance(p, Notify) and p.type < 16384]
    assert errors == ([answer] if answer else [])
    assert net.b.stats.mobike_malformed == 1
    assert not net.of("b", IkeSaMigrated)
    assert sa_of(net.b).remote == (A_IP, 4500) and sa_of(net.b).peer_addrs == ()
    assert_clean(net)


def test_mobike_notifies_without_mobike_are_ignored() -> None:
    net = make(b_kw={"mobike": False})
    got = _send_informational(
        net, [Notify(NotifyType.UPDATE_SA_ADDRESSES), Notify(NotifyType.COOKIE2, bytes(16))]
    )
    assert got == []  # an empty answer: the exchange is fine, nothing moved
    assert not net.of("b", IkeSaMigrated) and net.b.stats.unexpected == 1
    assert_clean(net)


def test_a_rekeyed_ike_sa_keeps_mobike() -> None:
    net = make(a_kw={"local_addrs": (A_IP, A2)})
    net.a.rekey_ike_sa(uid(net.a), net.now)
    net.pump()
    net.a.update_addresses(uid(net.a), A2, None, net.now)
    net.pump()
    assert len(net.of("a", IkeSaMigrated)) == 1 and len(net.of("b", IkeSaMigrated)) == 1
    net.advance(100)  # the superseded SAs go
    assert_clean(net)
