"""Dead Peer Detection in the engine (RFC 7296 §2.4, strongSwan's idle-time DPD), two
engines in memory with a fake clock: an idle IKE SA is checked every dpd_delay, any
valid IKE message from the peer or ESP on its Child SAs (InboundTraffic) postpones the
check, lost checks and lost answers end in DpdFailed (carrying each Child's dpd_action)
after the retransmission schedule, and one lost datagram is only a retransmission."""

from __future__ import annotations

import dataclasses
import random

import pytest

from ike.config import ChildConfig, ConnectionConfig, EngineSettings
from ike.engine import IkeEngine
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    DpdFailed,
    IkeSaDeleted,
    IkeSaRekeyed,
)
from tests.unit.ike.harness import Net, pair_confs

DELAY = 30.0
# retransmissions after 1, 2, 4 s: a dead peer is declared 1 + 2 + 4 + 8 = 15 s after a check
FAST = EngineSettings(retransmit_timeout=1.0, retransmit_base=2.0, retransmit_tries=3)


def _conf(conf: ConnectionConfig, dpd_delay: float, action: str) -> ConnectionConfig:
    children = tuple(
        dataclasses.replace(c, dpd_action=action, rekey_time=0.0, life_time=0.0, rand_time=0.0)
        for c in conf.children
    )
    return dataclasses.replace(
        conf, children=children, dpd_delay=dpd_delay, rekey_time=0.0, rand_time=0.0
    )


def make(a_delay: float = DELAY, b_delay: float = 0.0, action: str = "clear") -> Net:
    a, b = pair_confs()
    net = Net.make(_conf(a, a_delay, action), _conf(b, b_delay, "clear"), FAST, FAST)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    assert len(net.of("a", ChildSaEstablished)) == 1
    net.log.clear()
    return net


def probes(net: Net, side: str = "a") -> int:
    return int(getattr(net, side).stats.dpd_probes)


def handle(net: Net, side: str) -> int:
    [info] = getattr(net, side).ike_sas()
    return info.ike_sa


def test_idle_sa_is_checked_every_dpd_delay() -> None:
    net = make()
    net.advance(DELAY - 1)
    assert probes(net) == 0 and net.log == []
    net.advance(1)
    assert probes(net) == 1 and len(net.log) == 2  # empty INFORMATIONAL and its answer
    net.advance(2 * DELAY + 5)
    assert probes(net) == 3 and net.b.stats.dpd_probes == 0  # b has DPD off
    assert not net.of("a", DpdFailed) and len(net.a.ike_sas()) == 1


def test_responder_checks_too() -> None:
    net = make(a_delay=0.0, b_delay=DELAY)
    net.advance(DELAY + 1)
    assert probes(net, "b") == 1 and probes(net, "a") == 0


def test_ike_traffic_from_the_peer_postpones_the_check() -> None:
    """b's own requests (here its liveness checks every 20 s) are inbound traffic for a:
    a never sends a check of its own; once b stops, a checks dpd_delay later."""
    net = make()
    for _ in range(5):
        net.advance(20)
        net.b.check_liveness(handle(net, "b"), net.now)
        net.pump()
    assert probes(net) == 0
    last = net.now
    net.advance(DELAY - 1)
    assert probes(net) == 0
    net.advance(1)
    assert probes(net) == 1 and net.now == last + DELAY


class Counters:
    """InboundTraffic: packets per inbound SPI, as the daemon reads them from the kernel."""

    def __init__(self) -> None:
        self.packets: dict[int, int] = {}
        self.asked = 0

    def packets_in(self, ike_sa: int, spi_in: int) -> int:
        self.asked += 1
        return self.packets.get(spi_in, 0)


def test_esp_traffic_postpones_the_check_and_is_read_only_when_due() -> None:
    a, b = pair_confs()
    counters = Counters()
    net = Net.make(_conf(a, DELAY, "clear"), _conf(b, 0.0, "clear"), FAST, FAST)
    net.a = IkeEngine(
        [_conf(a, DELAY, "clear")], FAST, random=random.Random(7).randbytes, traffic=counters
    )
    net.a.initiate("a2b", None, net.now)
    net.pump()
    [child] = net.of("a", ChildSaEstablished)
    for _ in range(4):  # ESP keeps arriving: no check, counters read once per dpd_delay
        counters.packets[child.spi_in] = counters.packets.get(child.spi_in, 0) + 100
        net.advance(DELAY)
    assert probes(net) == 0 and counters.asked == 4
    net.advance(DELAY)  # the counter stood still for dpd_delay: check
    assert probes(net) == 1


@pytest.mark.parametrize("lost", ["checks", "answers", "both"])
def test_dead_peer_after_the_retransmissions(lost: str) -> None:
    net = make(action="restart")
    net.advance(DELAY - 1)

    def drop(i: int, d: Datagram) -> int:
        to_b = d.remote[0] == "192.0.2.2"
        if lost == "both":
            return 0
        return 0 if to_b == (lost == "checks") else 1

    net.advance(1 + 14.9, drop)  # the check at DELAY and its 3 retransmissions
    assert probes(net) == 1 and not net.of("a", DpdFailed)
    assert net.a.stats.retransmits == 3
    net.advance(0.2, drop)  # the last retransmission timed out
    [dead] = net.of("a", DpdFailed)
    assert dead.actions == (("net", "restart"),) and dead.connection == "a2b"
    assert dead.remote == ("192.0.2.2", 500) and dead.time == 1000 + DELAY + 15
    names = [type(e).__name__ for e in net.events["a"]][-3:]
    assert names == ["ChildSaDeleted", "DpdFailed", "IkeSaDeleted"]
    assert net.of("a", IkeSaDeleted)[-1].reason == "dead peer"
    assert net.of("a", ChildSaDeleted)[-1].reason == "dead peer"
    assert net.a.ike_sas() == [] and net.a.stats.dead_peers == 1
    if lost == "answers":  # b saw the checks: for b the peer is alive
        assert len(net.b.ike_sas()) == 1 and not net.of("b", DpdFailed)


def test_one_lost_check_is_only_a_retransmission() -> None:
    net = make()
    net.advance(DELAY, lambda i, d: 0)  # the check is lost
    net.advance(1)  # retransmitted, answered
    assert probes(net) == 1 and net.a.stats.retransmits == 1
    net.advance(100)
    assert not net.of("a", DpdFailed) and len(net.a.ike_sas()) == 1


@pytest.mark.parametrize("action", ["clear", "restart", "trap"])
def test_each_childs_dpd_action_is_reported(action: str) -> None:
    a, b = pair_confs()
    extra = ChildConfig("more", ("10.1.9.0/24",), ("10.2.9.0/24",), dpd_action="clear")
    a = dataclasses.replace(
        _conf(a, DELAY, action), children=(*_conf(a, 0, action).children, extra)
    )
    b_extra = ChildConfig("more", ("10.2.9.0/24",), ("10.1.9.0/24",))
    b = dataclasses.replace(_conf(b, 0, "clear"), children=(*b.children, b_extra))
    net = Net.make(a, b, FAST, FAST)
    uid = net.a.initiate("a2b", None, net.now)
    net.pump()
    net.a.create_child_sa(uid, "more", net.now)
    net.pump()
    assert len(net.of("a", ChildSaEstablished)) == 2
    net.advance(DELAY + 16, lambda i, d: 0)
    [dead] = net.of("a", DpdFailed)
    assert dead.actions == (("net", action), ("more", "clear"))


def test_dpd_continues_after_an_ike_rekey_and_an_exchange_under_way_is_the_check() -> None:
    net = make()
    net.a.rekey_ike_sa(handle(net, "a"), net.now)
    net.pump()
    assert net.of("a", IkeSaRekeyed)
    net.advance(DELAY)
    assert probes(net) == 1
    # a request of ours is outstanding when the check falls due: it is not doubled
    net.advance(DELAY - 1)
    net.a.rekey_ike_sa(handle(net, "a"), net.now)
    net.advance(1 + 16, lambda i, d: 0)
    assert probes(net) == 1
    assert [e.reason for e in net.of("a", IkeSaDeleted)] == ["dead peer"]
    assert len(net.of("a", DpdFailed)) == 1


def test_off_by_default_and_negative_delay_refused() -> None:
    net = make(a_delay=0.0)
    net.advance(1000)
    assert probes(net) == 0 and net.log == []
    from ike.config import compile_connection
    from ike.errors import LocalError

    a, _ = pair_confs()
    with pytest.raises(LocalError, match="dpd_delay and dpd_timeout must not be negative"):
        compile_connection(dataclasses.replace(a, dpd_delay=-1))
    bad = dataclasses.replace(a, children=(dataclasses.replace(a.children[0], dpd_action="hold"),))
    with pytest.raises(LocalError, match="dpd_action: 'hold'"):
        compile_connection(bad)


def test_dpd_timeout_bounds_the_check_in_seconds() -> None:
    """dpd_timeout (per connection): the check is retransmitted on the connection's own
    schedule (here every 0.5 s, not FAST's 1-2-4-8 s) and the peer is dead once it went
    unanswered for dpd_timeout, however many retransmissions that took."""
    a, b = pair_confs()
    fast = dataclasses.replace(
        _conf(a, 1.0, "restart"), dpd_timeout=2.0, retransmit_timeout=0.5, retransmit_base=1.0
    )
    net = Net.make(fast, _conf(b, 0.0, "clear"), FAST, FAST)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    net.log.clear()
    net.advance(1.0)  # the first check, answered
    assert probes(net) == 1 and not net.of("a", DpdFailed)
    net.advance(1.0, lambda i, d: 0)  # the next check, lost with every retransmission
    assert probes(net) == 2
    net.advance(1.9, lambda i, d: 0)
    assert not net.of("a", DpdFailed) and net.a.stats.retransmits == 3
    net.advance(0.2, lambda i, d: 0)
    [dead] = net.of("a", DpdFailed)
    assert dead.time == 1000 + 2.0 + 2.0  # the second check at +2 s, given up 2 s later
    assert net.of("a", ChildSaDeleted)[-1].reason == "dead peer"


def test_connection_retransmission_schedule_overrides_the_engine() -> None:
    """retransmit_* per connection: 0.25 s x 2**n, 2 tries: 0.25 + 0.5 + 1 = 1.75 s."""
    a, b = pair_confs()
    own = dataclasses.replace(
        _conf(a, DELAY, "clear"), retransmit_timeout=0.25, retransmit_base=2.0, retransmit_tries=2
    )
    net = Net.make(own, _conf(b, 0.0, "clear"), FAST, FAST)
    net.a.initiate("a2b", None, net.now)
    net.pump()
    net.advance(DELAY + 1.7, lambda i, d: 0)
    assert not net.of("a", DpdFailed) and net.a.stats.retransmits == 2
    net.advance(0.1, lambda i, d: 0)
    [dead] = net.of("a", DpdFailed)
    assert dead.time == 1000 + DELAY + 1.75
    from ike.config import compile_connection
    from ike.errors import LocalError

    for key, bad in (("retransmit_timeout", 0.0), ("retransmit_base", 0.5), ("dpd_timeout", -1)):
        with pytest.raises(LocalError, match=key):
            compile_connection(dataclasses.replace(a, **{key: bad}))
