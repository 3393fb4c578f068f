"""The failover measurement streams (tests/support/failover.py) on loopback in a
namespace, with outages made by nftables rules: the UDP stream reports exactly the
window that was dropped, the TCP stream survives a blackout (and reports the stall) but
not a reset."""

from __future__ import annotations

import time

import pytest

from gateway.netns import Netns
from tests.support.failover import TcpStream, UdpStream
from tests.support.fixtures import NetnsFactory

ADDR = "127.0.0.1"


def nft(ns: Netns, *rules: str) -> None:
    ns.run("nft", "-f", "-", input="\n".join(rules) + "\n")


def blackout(ns: Netns, match: str, verdict: str = "drop") -> None:
    nft(
        ns,
        "table inet outage {",
        "  chain out { type filter hook output priority 0; " + f"{match} {verdict}; }}",
        "}",
    )


def restore(ns: Netns) -> None:
    nft(ns, "delete table inet outage")


@pytest.fixture
def ns(make_netns: NetnsFactory) -> Netns:
    return make_netns("gwfs")


def test_udp_stream_reports_the_loss_window(ns: Netns) -> None:
    with UdpStream(ADDR, 5301, sender_netns=ns.name, receiver_netns=ns.name) as udp:
        time.sleep(0.5)
        blackout(ns, "udp dport 5301")
        dropped_at = time.monotonic()
        time.sleep(0.3)
        restore(ns)
        restored_at = time.monotonic()
        time.sleep(0.5)
    r = udp.report
    assert r is not None
    assert 120 <= r.sent <= 140  # 1.3 s at 100/s
    assert r.duplicates == 0 and r.reordered == 0
    (w,) = r.windows
    assert w.count == r.sent - r.received
    # The window is the outage, to an interval or so: nft takes a moment to apply, and
    # on a loaded machine the sender thread may start late (it then catches up).
    assert dropped_at - 0.05 <= w.start <= dropped_at + 0.15
    assert restored_at - 0.05 <= w.end <= restored_at + 0.15
    assert 0.15 <= w.duration <= 0.45 and 15 <= w.count <= 45
    assert r.longest == w.duration and r.lost == w.count


def test_udp_stream_without_loss(ns: Netns) -> None:
    udp = UdpStream(ADDR, 5302, sender_netns=ns.name, receiver_netns=ns.name, rate=200).start()
    time.sleep(0.5)
    r = udp.stop(drain=0.2)
    assert 90 <= r.sent <= 110 and r.received == r.sent and r.windows == ()


def test_tcp_stream_survives_a_blackout_and_reports_the_stall(ns: Netns) -> None:
    with TcpStream(ADDR, client_netns=ns.name, server_netns=ns.name) as tcp:
        time.sleep(0.5)
        port = tcp.address[1]
        blackout(ns, f"tcp dport {port}")
        time.sleep(0.6)
        restore(ns)
        time.sleep(1.5)  # TCP's retransmission timer brings it back
    r = tcp.report
    assert r is not None and r.survived, r.error
    assert r.received == r.sent > 100_000
    assert len(r.stalls) == 1 and 0.5 <= r.longest_stall <= 3.0


def test_tcp_stream_does_not_survive_a_reset(ns: Netns) -> None:
    tcp = TcpStream(ADDR, client_netns=ns.name, server_netns=ns.name, timeout=10).start()
    time.sleep(0.3)
    blackout(ns, f"tcp dport {tcp.address[1]}", "reject with tcp reset")
    time.sleep(0.3)
    r = tcp.stop(drain=1)
    assert not r.survived and "Connection reset" in r.error
    assert r.received < r.sent
