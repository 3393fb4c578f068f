"""CREATE_CHILD_SA in memory with a fake clock: more Child SAs, Child and IKE SA rekeying
(with and without PFS), lifetimes with jitter, collisions (RFC 7296 §2.8.1/§2.8.2) in
every ordering and with the loss of each message, and no leaked SAs or SPIs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from ike.config import ChildConfig, ConnectionConfig, EngineSettings
from ike.engine import IkeEngine, RandomSpis
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaOutboundSwitched,
    ChildSaRekeyed,
    Datagram,
    IkeSaDeleted,
    IkeSaRekeyed,
)
from tests.unit.ike.harness import (
    A_IP,
    B_IP,
    Filter,
    Net,
    all_sas,
    leftovers,
    pair_confs,
    sa_of,
    sa_table,
)


def _no_timers(conf: ConnectionConfig) -> ConnectionConfig:
    children = tuple(
        dataclasses.replace(c, rekey_time=0.0, life_time=0.0, rand_time=0.0) for c in conf.children
    )
    return dataclasses.replace(conf, children=children, rekey_time=0.0, rand_time=0.0)


def make(**kw: object) -> Net:
    """An established pair without lifetime timers (tests drive rekeys themselves)."""
    a, b = pair_confs(**kw)
    net = Net.make(_no_timers(a), _no_timers(b))
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert len(net.of("a", ChildSaEstablished)) == 1, net.events
    return net


def uid(net: Net, side: str) -> int:
    [info] = getattr(net, side).ike_sas()
    return info.ike_sa


def current(net: Net, side: str) -> dict[int, ChildSaEstablished]:
    """The side's installed Child SAs by inbound SPI, replayed from its events the way
    the daemon does it (established, rekeyed: new replaces old, deleted)."""
    out: dict[int, ChildSaEstablished] = {}
    for e in net.events[side]:
        if isinstance(e, ChildSaEstablished):
            out[e.spi_in] = e
        elif isinstance(e, ChildSaRekeyed):
            out.pop(e.old_spi_in, None)
            out[e.new.spi_in] = e.new
        elif isinstance(e, ChildSaDeleted):
            out.pop(e.spi_in, None)
    return out


def engine_children(eng: IkeEngine) -> dict[int, int]:
    return {c.spi_in: c.spi_out for sa in all_sas(eng) if sa.current for c in sa.children.values()}


def assert_settled(net: Net, children: int = 1) -> None:
    """One IKE SA and `children` Child SA pairs on both sides, agreeing on SPIs and keys,
    as the engines hold them and as their events tell it; no SPI or SA leaked."""
    net.advance(200)  # past retransmissions and the lingering of superseded SAs
    for side in "ab":
        eng: IkeEngine = getattr(net, side)
        assert len(all_sas(eng)) == 1 and len(sa_table(eng)) == 1, (side, all_sas(eng))
        spis = net.spis[side]
        assert len(spis) == children and set(engine_children(eng)) == spis._used, side
        assert {k: (v.spi_in, v.spi_out) for k, v in current(net, side).items()} == {
            k: (k, v) for k, v in engine_children(eng).items()
        }, side
    ca, cb = current(net, "a"), current(net, "b")
    assert len(ca) == len(cb) == children
    for spi_in, e in ca.items():
        peer = cb[e.spi_out]
        assert peer.spi_out == spi_in
        assert (e.encr_key_out, e.integ_key_out) == (peer.encr_key_in, peer.integ_key_in)
        assert (e.encr_key_in, e.integ_key_in) == (peer.encr_key_out, peer.integ_key_out)
    ia, ib = net.a.ike_sas()[0], net.b.ike_sas()[0]
    assert (ia.spi_i, ia.spi_r) == (ib.spi_i, ib.spi_r)
    assert not net.of("a", IkeSaDeleted) and not net.of("b", IkeSaDeleted)


def only_child(net: Net, side: str) -> ChildSaEstablished:
    [c] = current(net, side).values()
    return c


class DataPlane:
    """One side's kernel as the daemon leaves it, replayed from the engine's events as
    they come: the inbound SAs, and per Child SA (by its newest inbound SPI) the
    outbound SPI it sends on. Old inbound SAs go at their ChildSaDeleted at once (the
    daemon keeps them 2 s longer), so the model is stricter than the real thing.
    `fresh`: outbound SPIs of new Child SAs (ChildSaEstablished): before them there was
    no tunnel to lose packets from, so both ends install them at once (as strongSwan)."""

    def __init__(self) -> None:
        self.inbound: set[int] = set()
        self.sending: dict[int, int] = {}
        self.fresh: set[int] = set()
        self.seen = 0

    def replay(self, events: Sequence[object]) -> None:
        for e in events[self.seen :]:
            if isinstance(e, ChildSaEstablished):
                self.inbound.add(e.spi_in)
                self.sending[e.spi_in] = e.spi_out
                self.fresh.add(e.spi_out)
            elif isinstance(e, ChildSaRekeyed):
                self.inbound.add(e.new.spi_in)
                in_use = self.sending.pop(e.old_spi_in, None)
                out = e.new.spi_out if e.outbound or in_use is None else in_use
                self.sending[e.new.spi_in] = out
            elif isinstance(e, ChildSaOutboundSwitched):
                assert self.sending.get(e.spi_in) == e.old_spi_out, (e, self.sending)
                self.sending[e.spi_in] = e.spi_out
            elif isinstance(e, ChildSaDeleted):
                self.inbound.discard(e.spi_in)
                self.sending.pop(e.spi_in, None)
        self.seen = len(events)


def no_loss_window(net: Net, planes: dict[str, DataPlane]) -> None:
    """Every SA a side sends on is installed inbound at its peer right now: no packet
    can be dropped for want of an SA, at any point of a rekey (RFC 7296 §2.8)."""
    net.collect()
    for side in "ab":
        planes[side].replay(net.events[side])
    for side, peer in (("a", "b"), ("b", "a")):
        lost = set(planes[side].sending.values()) - planes[peer].inbound - planes[side].fresh
        assert not lost, f"{side} sends on {sorted(map(hex, lost))}, {peer} cannot receive it"


def step(net: Net, planes: dict[str, DataPlane], filt: Filter | None = None) -> list[str]:
    """Deliver what is in flight one datagram at a time, checking no_loss_window after
    each; returns which side sent each datagram delivered."""
    senders: list[str] = []
    while True:
        batch = [("a", d) for d in net.a.datagrams_to_send()]
        batch += [("b", d) for d in net.b.datagrams_to_send()]
        if not batch:
            return senders
        for src, d in batch:
            n = len(net.log)
            net.log.append((src, d))
            if filt is not None and not filt(n, d):
                continue
            senders.append(src)
            (net.b if src == "a" else net.a).receive_datagram(d.data, (d.remote, d.local), net.now)
            no_loss_window(net, planes)


# --------------------------------------------------------------------------- Child rekey


@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.parametrize("esp", ["aes256gcm16", "aes256gcm16-x25519", "aes128-sha256-modp2048"])
def test_child_rekey(side: str, esp: str) -> None:
    net = make(esp=(esp,))
    before_a, before_b = only_child(net, "a"), only_child(net, "b")
    eng = getattr(net, side)
    mine = only_child(net, side)
    eng.rekey_child_sa(uid(net, side), mine.spi_in, net.now)
    net.pump()
    for s, before in (("a", before_a), ("b", before_b)):
        [r] = net.of(s, ChildSaRekeyed)
        assert (r.old_spi_in, r.old_spi_out) == (before.spi_in, before.spi_out)
        assert r.new.spi_in != before.spi_in and r.new.encr_key_in != before.encr_key_in
        assert r.new.proposal == esp and r.child == "net"
        assert r.new.local_ts == before.local_ts and r.new.remote_ts == before.remote_ts
        [d] = net.of(s, ChildSaDeleted)
        assert (d.spi_in, d.reason) == (before.spi_in, "rekeyed")
    assert_settled(net)


@pytest.mark.parametrize("side", ["a", "b"])
def test_rekey_responder_sends_on_the_new_sa_after_the_delete(side: str) -> None:
    """The rekey initiator sends on the new SA once it has the answer; the responder
    installs the new inbound SA when it answers but keeps sending on the old one until
    the initiator's Delete of the old SA arrives: at no step does either side send on an
    SA the other cannot receive yet (RFC 7296 §2.8, strongSwan's order)."""
    net = make()
    planes = {"a": DataPlane(), "b": DataPlane()}
    no_loss_window(net, planes)
    peer = "b" if side == "a" else "a"
    n_before = len(net.events[peer])
    getattr(net, side).rekey_child_sa(uid(net, side), only_child(net, side).spi_in, net.now)
    assert step(net, planes) == [side, peer, side, peer]  # CREATE_CHILD_SA, Delete
    [ri], [rr] = net.of(side, ChildSaRekeyed), net.of(peer, ChildSaRekeyed)
    assert ri.outbound and not rr.outbound
    assert [type(e) for e in net.events[peer][n_before:]] == [
        ChildSaRekeyed,
        ChildSaOutboundSwitched,
        ChildSaDeleted,
    ]
    [sw] = net.of(peer, ChildSaOutboundSwitched)
    assert (sw.spi_in, sw.spi_out, sw.old_spi_in, sw.old_spi_out, sw.reason) == (
        rr.new.spi_in,
        rr.new.spi_out,
        rr.old_spi_in,
        rr.old_spi_out,
        "old SA deleted",
    )
    assert not net.of(side, ChildSaOutboundSwitched)
    assert planes[side].sending == {ri.new.spi_in: ri.new.spi_out}
    assert planes[peer].sending == {rr.new.spi_in: rr.new.spi_out}
    assert_settled(net)


def run(net: Net, planes: dict[str, DataPlane], seconds: float, filt: Filter) -> None:
    """Like Net.advance, delivering through step() (no_loss_window after each datagram)."""
    end = net.now + seconds
    step(net, planes, filt)
    while net.fire_timers(end):
        no_loss_window(net, planes)
        step(net, planes, filt)
    net.now = end


def test_rekey_responder_switches_after_a_timeout_when_no_delete_comes() -> None:
    """The initiator's Delete is lost three times: the responder switches once the
    initiator's whole retransmission span has passed (here b's: 4 s + 7.2 s), then the
    late Delete removes the old SA without a second switch."""
    a, b = pair_confs()
    net = Net.make(_no_timers(a), _no_timers(b), b_settings=EngineSettings(retransmit_tries=1))
    net.a.initiate("a2b", None, net.now)
    net.pump()
    planes = {"a": DataPlane(), "b": DataPlane()}
    start = net.now
    net.a.rekey_child_sa(uid(net, "a"), only_child(net, "a").spi_in, net.now)
    dropped: list[float] = []

    def drop_deletes(n: int, d: Datagram) -> int:
        informational = d.data[18] == 37  # IKE header: exchange type (RFC 7296 §3.1)
        if d.local[0] == A_IP and informational and len(dropped) < 3:
            dropped.append(net.now)
            return 0
        return 1

    run(net, planes, 60, drop_deletes)
    assert [t - start for t in dropped] == pytest.approx([0, 4, 11.2])
    [sw] = net.of("b", ChildSaOutboundSwitched)
    assert sw.reason == "timeout" and sw.time - start == pytest.approx(11.2)
    [d] = net.of("b", ChildSaDeleted)
    assert d.reason == "rekeyed" and d.time > sw.time
    assert_settled(net)


def test_pfs_group_retry_after_invalid_ke() -> None:
    """We offer ecp256 and x25519 for PFS (KE ecp256); the responder wants x25519:
    INVALID_KE_PAYLOAD, then a second request with a x25519 KE."""
    net = make(a_esp=("aes256gcm16-ecp256-x25519",), b_esp=("aes256gcm16-x25519",))
    net.a.rekey_child_sa(uid(net, "a"), only_child(net, "a").spi_in, net.now)
    n = len(net.log)
    net.pump()
    [r] = net.of("a", ChildSaRekeyed)
    assert r.new.proposal == "aes256gcm16-x25519"
    assert len(net.log) - n == 6  # 2 x CREATE_CHILD_SA + the Delete of the old SA
    assert not net.of("b", ChildSaFailed)
    assert_settled(net)


def test_rekey_keeps_traffic_keys_per_exchange() -> None:
    """Two rekeys in a row: each generation has fresh SPIs and keys."""
    net = make()
    seen = {only_child(net, "a").encr_key_in}
    for _ in range(3):
        net.a.rekey_child_sa(uid(net, "a"), only_child(net, "a").spi_in, net.now)
        net.pump()
        seen.add(only_child(net, "a").encr_key_in)
    assert len(seen) == 4
    assert_settled(net)


def test_rekey_unknown_child_is_local_error() -> None:
    from ike.errors import LocalError

    net = make()
    with pytest.raises(LocalError):
        net.a.rekey_child_sa(uid(net, "a"), 12345, net.now)


# --------------------------------------------------------------------------- more Children


def test_additional_child_sa() -> None:
    a, b = pair_confs()
    extra_a = ChildConfig("voice", ("10.5.0.0/16",), ("10.6.0.0/16",), ("aes128gcm16-x25519",))
    extra_b = ChildConfig("voice", ("10.6.0.0/16",), ("10.5.0.0/16",), ("aes128gcm16-x25519",))
    a = dataclasses.replace(a, children=a.children + (extra_a,))
    b = dataclasses.replace(b, children=b.children + (extra_b,))
    net = Net.make(_no_timers(a), _no_timers(b))
    net.a.initiate("a2b", None, net.now)
    net.pump()
    net.b.create_child_sa(uid(net, "b"), "voice", net.now)
    net.pump()
    voice = [e for e in net.of("a", ChildSaEstablished) if e.child == "voice"]
    assert len(voice) == 1 and voice[0].proposal == "aes128gcm16-x25519"
    assert voice[0].initiator is True  # the IKE SA's role (a initiated it)
    assert_settled(net, children=2)


def test_additional_child_refused_by_ts() -> None:
    a, b = pair_confs()
    a = dataclasses.replace(
        a, children=a.children + (ChildConfig("x", ("10.7.0.0/16",), ("10.8.0.0/16",)),)
    )
    net = Net.make(_no_timers(a), _no_timers(b))
    net.a.initiate("a2b", None, net.now)
    net.pump()
    net.a.create_child_sa(uid(net, "a"), "x", net.now)
    net.pump()
    [fa] = net.of("a", ChildSaFailed)
    [fb] = net.of("b", ChildSaFailed)
    assert fa.reason == fb.reason == "TS_UNACCEPTABLE" and fa.child == "x"
    assert_settled(net)


# --------------------------------------------------------------------------- IKE SA rekey


@pytest.mark.parametrize("side", ["a", "b"])
def test_ike_rekey_moves_children(side: str) -> None:
    net = make()
    old = net.a.ike_sas()[0]
    handle_a, handle_b = uid(net, "a"), uid(net, "b")
    getattr(net, side).rekey_ike_sa(uid(net, side), net.now)
    net.pump()
    [ra], [rb] = net.of("a", IkeSaRekeyed), net.of("b", IkeSaRekeyed)
    assert (ra.old_spi_i, ra.old_spi_r) == (old.spi_i, old.spi_r)
    assert (ra.spi_i, ra.spi_r) == (rb.spi_i, rb.spi_r) != (old.spi_i, old.spi_r)
    assert (ra.ike_sa, rb.ike_sa) == (handle_a, handle_b)  # the handle stays
    # the rekey's initiator is the new IKE SA's original initiator (RFC 7296 §2.18)
    assert (ra.initiator, rb.initiator) == (side == "a", side == "b")
    new = net.a.ike_sas()[0]
    assert new.ike_sa == handle_a and (new.spi_i, new.spi_r) == (ra.spi_i, ra.spi_r)
    assert new.initiator == (side == "a") and len(new.children) == 1
    # the new IKE SA works: a Child rekey over it agrees on keys from the new SK_d
    net.b.rekey_child_sa(handle_b, only_child(net, "b").spi_in, net.now)
    net.pump()
    assert len(net.of("a", ChildSaRekeyed)) == 1
    net.a.check_liveness(handle_a, net.now)
    net.pump()
    assert_settled(net)


def test_ike_rekey_four_times_alternating() -> None:
    net = make(
        a_ike=("aes256gcm16-prfsha384-ecp256-x25519",), b_ike=("aes256gcm16-prfsha384-x25519",)
    )
    for side in "abab":
        getattr(net, side).rekey_ike_sa(uid(net, side), net.now)
        net.pump()
    assert len(net.of("a", IkeSaRekeyed)) == len(net.of("b", IkeSaRekeyed)) == 4
    assert_settled(net)


# --------------------------------------------------------------------------- lifetimes


def timed(
    child_rekey: float = 100.0, ike_rekey: float = 500.0
) -> tuple[ConnectionConfig, ConnectionConfig]:
    a, b = pair_confs()
    out = []
    for c in (a, b):
        ch = tuple(
            dataclasses.replace(
                x, rekey_time=child_rekey, life_time=child_rekey * 1.2, rand_time=child_rekey * 0.1
            )
            for x in c.children
        )
        out.append(
            dataclasses.replace(
                c,
                children=ch,
                rekey_time=ike_rekey,
                over_time=ike_rekey * 0.1,
                rand_time=ike_rekey * 0.1,
            )
        )
    return out[0], out[1]


def test_lifetimes_rekey_children_and_ike_sa_with_jitter() -> None:
    net = Net.make(*timed())
    net.a.initiate("a2b", None, net.now)
    net.pump()
    t0 = net.now
    net.advance(1000)
    rekeys = net.of("a", ChildSaRekeyed)
    # a child rekey every 90..100 s (whichever side's timer fires first), IKE every 450..500
    assert 10 <= len(rekeys) <= 12, [r.time - t0 for r in rekeys]
    gaps = [b.time - a.time for a, b in zip(rekeys, rekeys[1:], strict=False)]
    assert all(89 <= g <= 100.5 for g in gaps), gaps
    ike = net.of("a", IkeSaRekeyed)
    assert 2 <= len(ike) <= 3
    assert not net.of("a", ChildSaFailed) and not net.of("b", ChildSaFailed)
    assert_settled(net)


def test_jitter_spreads_rekeys() -> None:
    """100 SAs set up in the same second rekey over the whole rand_time window."""
    a, b = timed(child_rekey=1000.0, ike_rekey=100000.0)
    a = dataclasses.replace(a, local_addrs=(), remote_addrs=())
    eng = IkeEngine([b], random=__import__("random").Random(5).randbytes)
    peers = []
    for i in range(100):
        pa = IkeEngine(
            [dataclasses.replace(a, local_addrs=("192.0.2.1",), remote_addrs=("192.0.2.2",))],
            random=__import__("random").Random(i).randbytes,
        )
        peers.append(pa)
    times = []
    for pa in peers:
        net = Net(pa, eng)
        pa.initiate("a2b", None, net.now)
        net.pump()
    for info in eng.ike_sas():
        sa = sa_of(eng, info.ike_sa)
        for c in sa.children.values():
            assert c.rekey_at is not None
            times.append(c.rekey_at - c.installed_at)
    assert len(times) == 100
    assert min(times) >= 900 and max(times) <= 1000
    seconds = {int(t) for t in times}
    assert len(seconds) >= 40  # spread over the 100 s window, not bunched


def test_child_hard_expiry_when_rekey_fails() -> None:
    """Rekeys go unanswered (CREATE_CHILD_SA is dropped): each side removes the Child SA
    at life_time ("expired") and the IKE SA lives on."""
    a, b = timed(child_rekey=100.0, ike_rekey=0.0)
    net = Net.make(a, b)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    t0 = net.now
    dropped = 0

    def drop_create(i: int, d: Datagram) -> int:
        nonlocal dropped
        if d.data[18] == 36:  # the exchange type byte of the IKE header: CREATE_CHILD_SA
            dropped += 1
            return 0
        return 1

    net.advance(125, drop_create)
    assert dropped
    for side in "ab":
        [d] = net.of(side, ChildSaDeleted)
        assert d.reason == "expired" and d.time - t0 == pytest.approx(120)
        assert not net.of(side, IkeSaDeleted)
        assert getattr(net, side).ike_sas()[0].children == ()
        assert len(net.spis[side]) == 1  # the rekey attempt still retransmitting
    net.advance(300, drop_create)  # it gives up: the peer is dead, nothing is left
    for side in "ab":
        assert leftovers(getattr(net, side), net.spis[side]) == [], side


# --------------------------------------------------------------------------- collisions


def shuffle_run(
    net: Net,
    seed: int,
    drop: float,
    horizon: float = 400.0,
    planes: dict[str, DataPlane] | None = None,
) -> None:
    """Deliver in-flight datagrams in a random order (reordering across directions and
    within one), dropping each with probability `drop`; fire timers when nothing is in
    flight, until quiet or `horizon` seconds have passed. With `planes`, no_loss_window
    is checked after every delivery and every timer."""
    import random

    rng = random.Random(seed)
    inflight: list[tuple[str, Datagram]] = []
    end = net.now + horizon
    for _ in range(2000):
        inflight += [("a", d) for d in net.a.datagrams_to_send()]
        inflight += [("b", d) for d in net.b.datagrams_to_send()]
        if not inflight:
            if not net.fire_timers(end):
                break
        else:
            src, d = inflight.pop(rng.randrange(len(inflight)))
            if rng.random() < drop:
                continue
            dst = net.b if src == "a" else net.a
            dst.receive_datagram(d.data, (d.remote, d.local), net.now)
        if planes is not None:
            no_loss_window(net, planes)
    net.collect()


CASES = {
    # name: (what a does, what b does, Child SA pairs left)
    "child rekey x child rekey": ("rekey_child", "rekey_child", 1),
    "ike rekey x ike rekey": ("rekey_ike", "rekey_ike", 1),
    "child rekey x child delete": ("rekey_child", "delete_child", 0),
    "ike rekey x child rekey": ("rekey_ike", "rekey_child", 1),
    "child rekey x ike rekey x2": ("rekey_child+rekey_ike", "rekey_ike+rekey_child", 1),
    "new child x ike rekey": ("create_child", "rekey_ike", 2),
}


def act(net: Net, side: str, what: str) -> None:
    eng: IkeEngine = getattr(net, side)
    for w in what.split("+"):
        handle = uid(net, side)
        if w == "rekey_child":
            eng.rekey_child_sa(handle, only_child(net, side).spi_in, net.now)
        elif w == "delete_child":
            eng.delete_child_sa(handle, only_child(net, side).spi_in, net.now)
        elif w == "rekey_ike":
            eng.rekey_ike_sa(handle, net.now)
        elif w == "create_child":
            eng.create_child_sa(handle, "net", net.now)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("drop", [0.0, 0.15])
def test_collisions_in_every_order_and_with_loss(case: str, drop: float) -> None:
    a_does, b_does, left = CASES[case]
    for seed in range(25):
        net = make()
        # a plain Child delete drops traffic by design: the window check is for rekeys
        planes = None if "delete" in case else {"a": DataPlane(), "b": DataPlane()}
        if planes is not None:
            no_loss_window(net, planes)
        act(net, "a", a_does)
        act(net, "b", b_does)
        shuffle_run(net, seed, drop, planes=planes)
        try:
            assert_settled(net, children=left)
        except AssertionError as exc:
            raise AssertionError(f"{case} seed {seed} drop {drop}: {exc}") from exc


@pytest.mark.parametrize("case", ["child rekey x child rekey", "ike rekey x ike rekey"])
def test_collision_loses_each_message_once(case: str) -> None:
    """Simultaneous rekeys, delivered in order, with datagram number k lost (each k)."""
    a_does, b_does, left = CASES[case]
    k = 0
    while True:
        net = make()
        act(net, "a", a_does)
        act(net, "b", b_does)
        seen = net.pump(lambda i, d, k=k: 0 if i == k else 1)  # type: ignore[misc]
        net.advance(300)
        assert_settled(net, children=left)
        if seen <= k:
            break
        k += 1
    assert k >= 6


def test_lowest_nonce_decides_child_rekey_collision() -> None:
    """Both rekey the same Child SA at once: both exchanges complete, the SA made by the
    exchange holding the lowest of the four nonces is deleted by its initiator, the old
    one by the other initiator (RFC 7296 §2.8.1)."""
    outcomes = set()
    for seed in range(1, 9):  # different nonces: either exchange may hold the lowest
        a, b = pair_confs()
        net = Net.make(_no_timers(a), _no_timers(b), seed=seed)
        net.a.initiate("a2b", None, net.now)
        net.pump()
        old = only_child(net, "a")
        sent: dict[str, list[bytes]] = {"a": [], "b": []}  # Ni and Nr of each exchange
        for side in "ab":
            net.randoms[side].taken = sent[side]  # what each side draws in nonce sizes
        act(net, "a", "rekey_child")
        act(net, "b", "rekey_child")
        x_spi = sa_of(net.a, uid(net, "a")).child_requests[0].spi_in  # a's new inbound SPI
        net.pump()
        # a's exchange: a's first nonce (Ni) and b's second (Nr); b's: the reverse
        x, y = (sent["a"][0], sent["b"][1]), (sent["b"][0], sent["a"][1])
        a_lost = min(x + y) in x
        outcomes.add(a_lost)
        survivor = only_child(net, "a")
        assert (survivor.spi_in == x_spi) is not a_lost
        assert (old.spi_in, "rekeyed") in {
            (d.spi_in, d.reason) for d in net.of("a", ChildSaDeleted)
        }
        assert survivor.spi_in not in {d.spi_in for d in net.of("a", ChildSaDeleted)}
        assert_settled(net)
    assert outcomes == {True, False}


def test_ike_rekey_crossing_ike_delete() -> None:
    net = make()
    act(net, "a", "rekey_ike")
    net.b.delete_ike_sa(uid(net, "b"), net.now)
    net.pump()
    net.advance(200)
    for side in "ab":
        assert leftovers(getattr(net, side), net.spis[side]) == [], side
        [d] = net.of(side, IkeSaDeleted)
        assert len(net.of(side, ChildSaDeleted)) == 1


# --------------------------------------------------------------------------- NAT-T keepalives


def test_nat_keepalives_from_the_side_behind_the_nat() -> None:
    """a sits behind a NAT: every 20 s it sends a 1-byte 0xFF datagram on port 4500 (RFC
    3948 §2.3), b (not translated) sends none; an IKE rekey keeps them going."""
    a, b = pair_confs()
    net = Net.make(_no_timers(a), dataclasses.replace(_no_timers(b), remote_addrs=()), nat=True)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert net.of("a", ChildSaEstablished)[0].encap is not None
    start = len(net.log)
    net.advance(65)
    keepalives = [(src, d) for src, d in net.log[start:] if d.data == b"\xff"]
    assert len(keepalives) == 3 and all(src == "a" for src, _ in keepalives)
    assert all(d.local[1] == 4500 and d.remote[1] == 4500 for _, d in keepalives)
    assert net.b.stats.keepalives == 3 and net.a.stats.keepalives_sent == 3
    assert net.b.stats.keepalives_sent == 0
    net.b.rekey_ike_sa(uid(net, "b"), net.now)
    net.pump()
    start = len(net.log)
    net.advance(40)
    assert sum(d.data == b"\xff" for _, d in net.log[start:]) == 2
    assert_settled(net)


# --------------------------------------------------------------------------- hostile input


def test_authenticated_garbage_create_child_sa_never_raises() -> None:
    """Authenticated (correctly encrypted) CREATE_CHILD_SA requests and responses with
    random payload mixes: every one is answered with a NOTIFY or dropped and counted,
    the engine never raises and its SPI bookkeeping stays exact."""
    import random

    from ike.codec import (
        KeyExchange,
        Nonce,
        Notify,
        Proposal,
        SecurityAssociation,
        TrafficSelectors,
        Transform,
    )
    from ike.constants import ExchangeType, NotifyType, PayloadType, ProtocolId
    from ike.ts import ts_from_text

    rng = random.Random(7)
    net = make(esp=("aes256gcm16-x25519",))
    a_sa = sa_of(net.a, uid(net, "a"))
    b_sa = sa_of(net.b, uid(net, "b"))
    child_b = only_child(net, "b")
    ts = (ts_from_text("10.1.0.0/16"),)

    def payloads() -> list[object]:
        out: list[object] = []
        for _ in range(rng.randrange(6)):
            kind = rng.randrange(7)
            if kind == 0:
                proto = rng.choice([ProtocolId.IKE, ProtocolId.ESP, 7])
                spi = rng.choice([b"", rng.randbytes(4), child_b.spi_out.to_bytes(4, "big")])
                out.append(Notify(NotifyType.REKEY_SA, b"", proto, spi))
            elif kind == 1:
                proto = rng.choice([ProtocolId.IKE, ProtocolId.ESP])
                spi = rng.randbytes(rng.choice([0, 4, 8, 3]))
                tf = tuple(
                    Transform(rng.randrange(1, 6), rng.choice([12, 20, 31, 19, 2, 0]), None)
                    for _ in range(rng.randrange(4))
                )
                props = tuple(Proposal(i + 1, proto, spi, tf) for i in range(rng.randrange(3)))
                out.append(SecurityAssociation(props))
            elif kind == 2:
                out.append(Nonce(rng.randbytes(rng.choice([16, 32, 1]))))
            elif kind == 3:
                out.append(KeyExchange(rng.choice([31, 19, 14, 99]), rng.randbytes(32)))
            elif kind == 4:
                out.append(TrafficSelectors(rng.choice([PayloadType.TSi, PayloadType.TSr]), ts))
            elif kind == 5:
                out.append(Notify(rng.choice([NotifyType.USE_TRANSPORT_MODE, 16384, 43])))
            else:
                out.append(Notify(NotifyType.INVALID_KE_PAYLOAD, rng.randbytes(2)))
        return out

    answered = 0
    for _ in range(400):
        # as a request from a (next message ID), and as a response to b's outstanding one
        data = a_sa.sk.protect(  # type: ignore[union-attr]
            a_sa.spi_i,
            a_sa.spi_r,
            ExchangeType.CREATE_CHILD_SA,
            is_initiator=True,
            is_response=False,
            message_id=b_sa.peer_next_id,
            payloads=payloads(),  # type: ignore[arg-type]
        )
        malformed = net.b.stats.malformed
        net.b.receive_datagram(data, ((B_IP, 500), (A_IP, 500)), net.now)
        # answered, or (a payload our codec refuses, e.g. a 1-byte nonce) dropped and counted
        got = len(net.b.datagrams_to_send())
        assert got == 1 or (got == 0 and net.b.stats.malformed == malformed + 1)
        answered += got
        if rng.random() < 0.3 and b_sa.outstanding is None:
            net.b.rekey_child_sa(uid(net, "b"), only_child(net, "b").spi_in, net.now)
            net.b.datagrams_to_send()  # lost on the way: a never sees it
        if b_sa.outstanding is not None:
            resp = a_sa.sk.protect(  # type: ignore[union-attr]
                a_sa.spi_i,
                a_sa.spi_r,
                b_sa.outstanding.exchange,
                is_initiator=True,
                is_response=True,
                message_id=b_sa.outstanding.message_id,
                payloads=payloads(),  # type: ignore[arg-type]
            )
            net.b.receive_datagram(resp, ((B_IP, 500), (A_IP, 500)), net.now)
            net.b.datagrams_to_send()
        net.collect()
    assert answered >= 200
    # whatever b made of it, its bookkeeping holds: every allocated SPI belongs to a Child
    # SA or to a request of its own under way, and the IKE SA is up
    held = {c.spi_in for sa in all_sas(net.b) for c in sa.children.values()}
    held |= {r.spi_in for sa in all_sas(net.b) for r in sa.child_requests}
    spis = net.spis["b"]
    assert isinstance(spis, RandomSpis) and spis._used == held
    assert net.b.ike_sas()[0].state == "ESTABLISHED"


class SlotSpis(RandomSpis):
    """Records which Child SA each new inbound SPI replaces (the XDP allocator keeps the
    Child's counter slot with it: gateway/xdp.py)."""

    def __init__(self, random: object) -> None:
        super().__init__(random)  # type: ignore[arg-type]
        self.replaces: dict[int, int | None] = {}

    def allocate(self, replaces: int | None = None) -> int:
        spi = super().allocate(replaces)
        self.replaces[spi] = replaces
        return spi


@pytest.mark.parametrize("case", ["a", "b", "child rekey x child rekey", "ike rekey x child rekey"])
def test_rekey_tells_the_allocator_which_spi_it_replaces(case: str) -> None:
    """Every new inbound SPI of a Child SA rekey, on the initiator and the responder and
    in collisions, is allocated with `replaces` = the old SA's inbound SPI; a new Child SA
    and an IKE SA rekey (the Child SAs move, their SPIs stay) allocate none with it. In a
    collision the survivor may replace the peer's new SA, itself made for the old one:
    every SPI still leads back to the first Child SA (one XDP slot for all of them)."""
    import random

    a, b = pair_confs()
    spis_a = SlotSpis(random.Random(5).randbytes)
    spis_b = SlotSpis(random.Random(6).randbytes)
    net = Net.make(_no_timers(a), _no_timers(b), a_spis=spis_a, b_spis=spis_b)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert list(spis_a.replaces.values()) == [None] and list(spis_b.replaces.values()) == [None]
    if case in CASES:
        act(net, "a", CASES[case][0])
        act(net, "b", CASES[case][1])
    else:
        act(net, case, "rekey_child")
    net.pump()
    assert_settled(net)
    for side, spis in (("a", spis_a), ("b", spis_b)):

        def root(spi: int, spis: SlotSpis = spis) -> int:
            while (up := spis.replaces[spi]) is not None:
                spi = up
            return spi

        [first] = net.of(side, ChildSaEstablished)
        rekeys = net.of(side, ChildSaRekeyed)
        assert rekeys, side
        if case in ("a", "b"):
            [r] = rekeys
            assert spis.replaces[r.new.spi_in] == r.old_spi_in == first.spi_in
        assert {root(s) for s in spis.replaces} == {first.spi_in}, side
