"""gateway/transport.py on loopback: the non-ESP marker on the NAT-T port, NAT-keepalives
and stray ESP dropped and counted, short datagrams dropped, and the local address of
datagrams on wildcard sockets (IP_PKTINFO) used as the source of the answer."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.transport import NON_ESP_MARKER, TransportError, UdpTransport

IKE = bytes(range(40))  # long enough to be an IKE message as far as the transport cares

Received = list[tuple[bytes, tuple[str, int], tuple[str, int]]]


def make(listen: list[str], got: Received) -> UdpTransport:
    t = UdpTransport(listen, 0, 0, lambda d, local, remote: got.append((d, local, remote)))
    t.start()
    return t


async def settle(got: Received, n: int) -> None:
    for _ in range(200):
        if len(got) >= n:
            return
        await asyncio.sleep(0.005)


async def test_ike_and_nat_t_ports() -> None:
    got: Received = []
    t = make(["127.0.0.1"], got)
    try:
        ports = t.local_ports()
        assert ports["ike"] != ports["nat_t"] and t.is_nat_t_port(ports["nat_t"])
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.sendto(IKE, ("127.0.0.1", ports["ike"]))
        peer.sendto(NON_ESP_MARKER + IKE, ("127.0.0.1", ports["nat_t"]))
        peer.sendto(b"\xff", ("127.0.0.1", ports["nat_t"]))  # NAT-keepalive
        peer.sendto(b"\x00\x00\x10\x01" + bytes(40), ("127.0.0.1", ports["nat_t"]))  # ESP
        peer.sendto(b"short", ("127.0.0.1", ports["ike"]))
        peer.sendto(NON_ESP_MARKER + b"short", ("127.0.0.1", ports["nat_t"]))
        await settle(got, 2)
        await asyncio.sleep(0.05)
        me = ("127.0.0.1", peer.getsockname()[1])
        assert got == [
            (IKE, ("127.0.0.1", ports["ike"]), me),
            (IKE, ("127.0.0.1", ports["nat_t"]), me),  # marker stripped
        ]
        c = t.counters
        assert (c.received, c.keepalives, c.esp_dropped, c.malformed) == (2, 1, 1, 2)

        # answers: the marker is added on the NAT-T socket only
        assert t.send(b"reply500", ("127.0.0.1", ports["ike"]), me)
        assert t.send(b"reply4500", ("127.0.0.1", ports["nat_t"]), me)
        assert t.send_keepalive(("127.0.0.1", ports["nat_t"]), me)
        peer.settimeout(2)
        assert peer.recvfrom(100) == (b"reply500", ("127.0.0.1", ports["ike"]))
        assert peer.recvfrom(100) == (NON_ESP_MARKER + b"reply4500", ("127.0.0.1", ports["nat_t"]))
        assert peer.recvfrom(100)[0] == b"\xff"
        assert t.counters.sent == 2
        # no socket for that local address: refused and counted, no exception
        assert not t.send(b"x", ("192.0.2.99", 500), me)
        assert t.counters.send_errors == 1
        peer.close()
    finally:
        t.close()


async def test_keep_marker_leaves_the_marker_to_the_engine() -> None:
    got: Received = []
    t = UdpTransport(
        ["127.0.0.1"], 0, 0, lambda d, lo, re: got.append((d, lo, re)), keep_marker=True
    )
    t.start()
    try:
        nat_t = t.local_ports()["nat_t"]
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.sendto(NON_ESP_MARKER + IKE, ("127.0.0.1", nat_t))
        peer.sendto(b"\xff", ("127.0.0.1", nat_t))
        await settle(got, 1)
        assert got[0][0] == NON_ESP_MARKER + IKE
        me = ("127.0.0.1", peer.getsockname()[1])
        assert t.send(NON_ESP_MARKER + b"reply", ("127.0.0.1", nat_t), me)
        peer.settimeout(2)
        assert peer.recvfrom(100)[0] == NON_ESP_MARKER + b"reply"
        await asyncio.sleep(0.05)
        assert t.counters.keepalives == 1
        peer.close()
    finally:
        t.close()


@pytest.mark.parametrize(
    ("wildcard", "family", "addr"),
    [
        ("0.0.0.0", socket.AF_INET, "127.0.0.1"),
        ("::", socket.AF_INET6, "::1"),
    ],
)
async def test_wildcard_socket_learns_and_answers_from_local_address(
    wildcard: str, family: int, addr: str
) -> None:
    got: Received = []
    t = make([wildcard], got)
    try:
        port = t.local_ports()["ike"]
        peer = socket.socket(family, socket.SOCK_DGRAM)
        peer.bind((addr, 0))
        peer.sendto(IKE, (addr, port))
        await settle(got, 1)
        data, local, remote = got[0]
        assert data == IKE and local == (addr, port)  # from IP_PKTINFO / IPV6_PKTINFO
        assert t.send(b"answer", local, remote)
        peer.settimeout(2)
        reply, source = peer.recvfrom(100)
        assert reply == b"answer" and source[0] == addr
        peer.close()
    finally:
        t.close()


async def test_bind_failure_is_a_clear_error() -> None:
    got: Received = []
    t = make(["127.0.0.1"], got)
    try:
        taken = t.local_ports()["ike"]
        clash = UdpTransport(["127.0.0.1"], taken, 0, lambda *a: None)
        with pytest.raises(TransportError, match="cannot open IKE socket"):
            clash.start()
        with pytest.raises(TransportError, match="192.0.2.123 port"):
            UdpTransport(["192.0.2.123"], 0, 0, lambda *a: None).start()
    finally:
        t.close()


async def test_after_batch_runs_once_per_batch_read() -> None:
    """Datagrams waiting together are read in one batch and after_batch (the daemon's
    pump) runs once after it; short ones that are dropped do not make a batch."""
    got: Received = []
    batches: list[int] = []
    t = UdpTransport(
        ["127.0.0.1"],
        0,
        0,
        lambda d, local, remote: got.append((d, local, remote)),
        after_batch=lambda: batches.append(len(got)),
    )
    t.start()
    try:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(5):  # queued before the loop runs: one readiness callback
            peer.sendto(IKE[:-1] + bytes([i]), ("127.0.0.1", t.local_ports()["ike"]))
        await settle(got, 5)
        assert [d[-1] for d, _, _ in got] == [0, 1, 2, 3, 4] and batches == [5]
        peer.sendto(b"short", ("127.0.0.1", t.local_ports()["ike"]))
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert batches == [5] and t.counters.malformed == 1
        peer.close()
    finally:
        t.close()
