"""gateway/workers/xdpshare.py: `[gateway.xdp]` with workers. Two workers' XdpAdapters (each with
its share of slots and SPIs, bpf/spi.py) talk to the supervisor's XdpShare over real
socketpairs (the RemoteLoader blocks in its worker thread while the supervisor's loop
answers), against a recording stand-in for the bcc loader. Checks: the shares never
collide and agree with the ESP SPI partition (slot mod N = SPI mod N = worker), the
calls reach the one loader, counters come back, a slot outside the worker's share is
refused, a prefix excluded by two workers stays until both let go, and a worker whose
link closes leaves nothing in the maps. The real programs: tests/host/test_daemon_xdp.py."""

from __future__ import annotations

import asyncio
import json
import random
import socket

import pytest

from bpf.loader import BpfError
from bpf.spi import SlotAllocator, SpiError, make_inbound_spi, slot_of_spi
from gateway.config.schema import XdpConfig
from gateway.dataplane.xdp import SlotSpis, XdpAdapter
from gateway.workers.xdpshare import RemoteLoader, XdpShare
from ike.ts import ts_from_text
from tests.support.xdp import FakeLoader, child


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 64])
def test_slot_and_spi_shares_agree(workers: int) -> None:
    rng = random.Random(workers)
    seen_slots: set[int] = set()
    for index in range(workers):
        alloc = SlotAllocator(slot_bits=16, first=index, stride=workers)
        for _ in range(20):
            slot = alloc.allocate()
            assert slot % workers == index and slot not in seen_slots
            seen_slots.add(slot)
            spi = make_inbound_spi(slot, random=rng.randbytes, modulus=workers, remainder=index)
            assert spi % workers == index and slot_of_spi(spi) == slot and spi >= 256


def test_a_share_runs_out_on_its_own_slots() -> None:
    alloc = SlotAllocator(slot_bits=3, first=1, stride=3)
    assert [alloc.allocate() for _ in range(3)] == [1, 4, 7]
    with pytest.raises(SpiError, match="3 slots"):
        alloc.allocate()
    with pytest.raises(SpiError):
        SlotAllocator(slot_bits=2, first=5, stride=8).allocate()  # no slot 5 in 2 bits
    with pytest.raises(SpiError):
        make_inbound_spi(1, modulus=2, remainder=2)


def worker_adapter(link: socket.socket, index: int, workers: int = 2) -> XdpAdapter:
    a = XdpAdapter(
        XdpConfig(wan_interface="lo"),
        loader=lambda _c: RemoteLoader(link),
        spis=SlotSpis(slot_bits=8, random=random.Random(index).randbytes, share=(index, workers)),
        link_mtu=lambda name: 1500,
    )
    return a


async def test_two_workers_share_one_loader() -> None:
    loader = FakeLoader()
    supervisor = XdpAdapter(XdpConfig(wan_interface="lo"), loader=lambda _c: loader)
    await asyncio.to_thread(supervisor.open)
    share = XdpShare(supervisor, workers=2)
    links = []
    for index in (0, 1):
        theirs, ours = socket.socketpair()
        share.serve(index, theirs)
        links.append(ours)
    w0, w1 = worker_adapter(links[0], 0), worker_adapter(links[1], 1)
    # the workers' calls block: run them in threads while our loop serves them
    await asyncio.to_thread(w0.open)
    await asyncio.to_thread(w1.open)
    assert w0.loader is not None and w0.loader.attachments() == [("xdp", "lo", "link")]

    lan = (ts_from_text("10.1.0.0/24"),)
    wide = (ts_from_text("0.0.0.0/0"),)
    placed = []
    for w in (w0, w1, w0, w1):
        spi_in = w.spis.allocate()
        e = child(spi_in, 0x5000 + spi_in % 1000, local_ts=lan, remote_ts=wide)
        got = await asyncio.to_thread(w.child_established, e, offloaded=False)
        assert got is not None
        placed.append((w, spi_in, got.slot))
    for w, spi_in, slot in placed:
        index = w.spis.share[0]
        assert slot % 2 == index and spi_in % 2 == index and slot_of_spi(spi_in, 8) == slot
    assert len({slot for _, _, slot in placed}) == 4
    installs = [c for c in loader.calls if c[0] == "install"]
    assert sorted(c[1] for c in installs) == sorted(slot for _, _, slot in placed)
    # 10.1.0.0/24 inside 0.0.0.0/0: excluded once for both workers
    assert loader.calls.count(("exclude", "10.1.0.0/24")) == 1

    # counters come back through the link
    w, spi_in, slot = placed[1]
    counters = await asyncio.to_thread(w.child_counters, spi_in)
    assert counters is not None and counters["slot"] == slot
    assert counters["esp_in_packets"] == slot + 1
    # a worker's counter read: its share of the supervisor's one table read (the other
    # worker's slots read 0), and the steering CPU of its slots
    loader.settings["cpu_of"] = {slot: 1}
    table = await asyncio.to_thread(w.slot_table, w.spis.end)
    column = table.column("esp_in_packets")
    assert [column[s] for _, _, s in placed if s % 2 == 1] == [s + 1 for _, _, s in placed if s % 2]
    assert all(column[s] == 0 for _, _, s in placed if s % 2 == 0)
    assert w.slot_cpu(spi_in) == 1

    # a slot outside the worker's share is refused (never touches the loader)
    assert w0.loader is not None
    with pytest.raises(BpfError, match="not worker 0's"):
        await asyncio.to_thread(
            w0.loader.install_child_sa, 3, spi_in=0x103, spi_out=0x200, remote_ts=[], mtu=1400
        )
    # garbage on the link: an error reply, the link stays usable
    links[0].sendall(b"{not json\n")
    reply = await asyncio.to_thread(links[0].recv, 4096)
    assert json.loads(reply)["ok"] is False

    # worker 0 deletes one Child SA itself; the exclusion stays (the others hold it)
    w, spi_in, slot = placed[0]
    await asyncio.to_thread(w.child_deleted, spi_in)
    assert loader.calls[-1][0] == "remove" and loader.calls[-1][1] == slot
    assert ("unexclude", "10.1.0.0/24") not in loader.calls

    # worker 1's link closes (a crash): its two slots go, the prefix stays for worker 0
    before = len(loader.calls)
    links[1].shutdown(socket.SHUT_RDWR)  # (as the fd closing when a worker dies)
    for _ in range(100):
        if len(loader.calls) >= before + 2:
            break
        await asyncio.sleep(0.01)
    removed = sorted(c[1] for c in loader.calls[before:] if c[0] == "remove")
    assert removed == sorted(slot for w, _, slot in placed if w is w1)
    assert ("unexclude", "10.1.0.0/24") not in loader.calls
    # worker 0 goes too (its successor is started): the last exclusion goes
    share.forget(0)
    assert loader.calls[-1] == ("unexclude", "10.1.0.0/24")
    assert sum(1 for c in loader.calls if c[0] == "remove") == 4
    await share.close()
    links[0].close()
    supervisor.close()
    assert loader.calls[-1] == ("close",)
