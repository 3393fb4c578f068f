"""Inline-crypto offload on a real offload driver, and XFRM counters, in the VM.

netdevsim (built by scripts/setup.sh, loaded by tests/support/netdevsim.py) is the
kernel's simulated NIC: it takes crypto-offloaded SAs and counts the packets of each
offloaded SA it transmits. The tunnel's ESP is steered to it the way strongSwan's
`set_mark_out` does: the outbound SA sets a firewall mark and a policy route sends
marked packets through nsim0, while everything else stays on the veth. What netdevsim
transmits goes nowhere (6.1 has no peer device), so the offloaded tunnel only sends.

ONE test function (a VM boot and TCG emulation make each test expensive) checks:
offload capabilities, the route's device and trial installs for `gateway doctor`;
install, rekey and migrate with crypto offload read back from the kernel and counted
by the simulated NIC; every refusal (ESN, packet offload on 6.1, a veth) as a clear
error naming the device, or, for `auto`, a software SA with the reason; the one-dump
counters against GETSA, with replay, replay-window and integrity failures provoked on
a software SA; and the final counts of deleted SAs in the DELSA notifications.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.netns import Netns
from gateway.xfrm import (
    COUNTER_GROUPS,
    ChildSaSpec,
    SaDeleted,
    XfrmError,
    XfrmEvent,
    XfrmEventReader,
    XfrmManager,
    offload_capabilities,
    probe_offload,
    route_device,
)
from gateway.xfrm.channel import in_netns
from gateway.xfrm.manager import InstalledChildSa
from tests.support import netdevsim
from tests.support.xfrm import V4_TRANSPORT, V4_TUNNEL, Plan, setup_inner, spec_pair

MARK = 0x64  # the offloaded SA's output mark: policy-routed through nsim0
SIDE = Plan("192.0.2.1", "192.0.2.2", "10.1.1.1", "10.2.1.1", "10.1.1.0/24", "10.2.1.0/24")
ETH_P_ALL = 0x0003


def wait_for(reader: XfrmEventReader, cond: Callable[[list[XfrmEvent]], bool]) -> list[XfrmEvent]:
    seen: list[XfrmEvent] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen += reader.read_available()
        if cond(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"events never arrived: {seen}")


def deleted(events: list[XfrmEvent], spi: int) -> SaDeleted | None:
    return next((e for e in events if isinstance(e, SaDeleted) and e.sa.spi == spi), None)


def ping(ns: Netns, src: str, dst: str, count: int, interval: str = "0.2") -> None:
    """Echo requests; into nsim0 nothing comes back, so the exit status is not checked."""
    ns.run("ping", "-c", str(count), "-i", interval, "-W", "1", "-I", src, dst, check=False)


def packet_socket(ns: Netns, ifname: str) -> socket.socket:
    with in_netns(ns.name):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    s.settimeout(10)
    return s


def esp_frames(sock: socket.socket, spi: int) -> list[bytes]:
    """Every queued IPv4 ESP frame with `spi` (the socket is drained)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            frame = sock.recv(65535)
            if (
                frame[12:14] == b"\x08\x00"
                and frame[23] == 50
                and frame[34:38] == spi.to_bytes(4, "big")
            ):
                out.append(frame)
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)
    return out


def esp_seq(frame: bytes) -> int:
    return int.from_bytes(frame[38:42], "big")


def test_offload_on_netdevsim_and_counters(netns_pair: tuple[Netns, Netns]) -> None:
    a, b = netns_pair
    with netdevsim.device(a, "nsim0") as nsim:
        a.ip("link", "set", "nsim0", "up")
        a.ip("addr", "add", "198.51.100.1/24", "dev", "eth0")
        b.ip("addr", "add", "198.51.100.2/24", "dev", "eth0")
        a.ip("rule", "add", "fwmark", hex(MARK), "lookup", "100")
        for peer in ("192.0.2.2", "198.51.100.2"):
            a.ip("route", "add", f"{peer}/32", "dev", "nsim0", "table", "100")
        setup_inner(a, b, V4_TUNNEL)

        # -- what gateway doctor -i DEV reports
        caps = offload_capabilities("nsim0", netns=a.name)
        assert (caps.crypto, caps.crypto_enabled, caps.tx_csum, caps.packet) == (
            True,
            True,
            True,
            "no",  # Linux 6.1 has no packet offload
        )
        assert offload_capabilities("eth0", netns=a.name).modes == ("no", "auto")
        assert route_device("192.0.2.2", "192.0.2.1", mark=MARK, netns=a.name) == "nsim0"
        assert route_device("192.0.2.2", "192.0.2.1", netns=a.name) == "eth0"
        assert route_device("203.0.113.9", netns=a.name) is None  # no default route
        trial = probe_offload("nsim0", "crypto", netns=a.name)
        assert trial.granted and trial.result == "crypto", trial
        trial = probe_offload("eth0", "crypto", netns=a.name)
        assert trial.result == "none" and "eth0 has no IPsec offload" in trial.reason
        trial = probe_offload("nsim0", "packet", netns=a.name)
        assert trial.result == "none" and "needs Linux >= 6.2" in trial.reason, trial
        assert nsim.ipsec().sa_count == 0  # the trials left nothing

        with XfrmManager(netns=a.name) as ma, XfrmManager(netns=b.name) as mb:
            events_a = XfrmEventReader(netns=a.name, groups=COUNTER_GROUPS)
            events_b = XfrmEventReader(netns=b.name, groups=COUNTER_GROUPS)
            try:
                child = offloaded_tunnel(a, nsim, ma, mb, events_a)
                refusals(ma)
                software_counters(a, b, ma, mb, events_b)
                # -- the offloaded Child goes: the NIC forgets its SAs, the DELSA
                # notification carries the final count of all its packets
                out_before = ma.counters(child).packets_out
                assert out_before == 5
                events_a.read_available()
                ma.delete(child)
                assert nsim.ipsec().sa_count == 0
                gone = wait_for(events_a, lambda ev: deleted(ev, child.spec.spi_out) is not None)
                final = deleted(gone, child.spec.spi_out)
                assert final is not None and final.sa.cur_packets == out_before
                assert ma.states() == [] and ma.policies() == []
            finally:
                events_a.close()
                events_b.close()


def offloaded_tunnel(
    a: Netns,
    nsim: netdevsim.Netdevsim,
    ma: XfrmManager,
    mb: XfrmManager,
    events: XfrmEventReader,
) -> InstalledChildSa:
    """Install, rekey and migrate with crypto offload; return the migrated Child."""
    sa, sb = spec_pair(V4_TUNNEL, ma.allocate_reqid(), mode="tunnel", encap=False, replay_window=32)
    # no offload_dev: the device the route to the peer uses, with the SA's mark: nsim0
    sa = dataclasses.replace(sa, offload="crypto", set_mark=MARK)
    child = ma.install(sa)
    mb.install(sb)
    assert (child.offload_in, child.offload_out, child.offload_dev) == ("crypto", "crypto", "nsim0")
    assert child.offload_reason == ""
    shown = a.ip("xfrm", "state").stdout
    assert shown.count("crypto offload parameters: dev nsim0") == 2, shown
    nic = nsim.ipsec()
    assert nic.sa_count == 2
    assert {(s.direction, s.spi) for s in nic.sas} == {("tx", sa.spi_out), ("rx", sa.spi_in)}

    ping(a, "10.1.0.1", "10.2.0.1", 5)
    assert nsim.ipsec().tx - nic.tx == 5  # the simulated NIC sent each one, offloaded
    counters = ma.child_counters([child])[0]
    assert counters is not None and counters.packets_out == 5
    assert counters == ma.counters(child)

    # -- rekey, make-before-break: the new pair is offloaded too, the old one leaves the NIC
    new = dataclasses.replace(sa, spi_in=sa.spi_in + 8, spi_out=sa.spi_out + 8)
    events.read_available()
    child = ma.replace(child, new)
    assert (child.offload_in, child.offload_out) == ("crypto", "crypto")
    nic = nsim.ipsec()
    assert nic.sa_count == 2 and {s.spi for s in nic.sas} == {new.spi_in, new.spi_out}
    gone = wait_for(events, lambda ev: deleted(ev, sa.spi_out) is not None)
    old_out = deleted(gone, sa.spi_out)
    assert old_out is not None and old_out.sa.cur_packets == 5  # nothing lost at the rekey
    ping(a, "10.1.0.1", "10.2.0.1", 3)
    assert nsim.ipsec().tx - nic.tx == 3

    # -- migrate (MOBIKE): offload is asked again on the new route's device and kept
    moved = ma.migrate(
        child, ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.2")
    )
    assert (moved.offload_in, moved.offload_out, moved.offload_dev) == ("crypto", "crypto", "nsim0")
    nic = nsim.ipsec()
    assert nic.sa_count == 2
    assert {(s.direction, s.ipaddr) for s in nic.sas} == {
        ("tx", "198.51.100.2"),
        ("rx", "198.51.100.1"),
    }
    ping(a, "10.1.0.1", "10.2.0.1", 2)
    assert nsim.ipsec().tx - nic.tx == 2
    assert ma.counters(moved).packets_out == 5  # 3 before the move (carried over) + 2
    return moved


def refusals(ma: XfrmManager) -> None:
    """What the kernel refuses names the device and the reason; `auto` runs in software
    and says why. Nothing refused is left behind."""

    def spec(seed: int, **kw: Any) -> ChildSaSpec:
        s, _ = spec_pair(
            SIDE,
            ma.allocate_reqid(),
            mode="tunnel",
            encap=False,
            spi_base=0xC0001000 + 16 * seed,
            **kw,
        )
        return s

    before = {s.spi for s in ma.states()}
    # netdevsim has no ESN offload (no xdo_dev_state_advance_esn): the kernel says so
    with pytest.raises(XfrmError) as info:
        ma.install(spec(1, esn=True, offload="crypto", offload_dev="nsim0"))
    assert info.value.errno == errno.EINVAL
    assert "crypto offload on nsim0" in info.value.operation
    assert "nsim0 refused crypto offload: Device doesn't support offload with ESN" in str(
        info.value
    )
    auto = ma.install(spec(2, esn=True, offload="auto", offload_dev="nsim0"))
    assert auto.offload == "none" and "with ESN" in auto.offload_reason
    ma.delete(auto)
    # packet offload does not exist in 6.1
    with pytest.raises(XfrmError) as info:
        ma.install(spec(3, offload="packet", offload_dev="nsim0"))
    assert "nsim0 refused packet offload" in str(info.value) and "Linux >= 6.2" in str(info.value)
    # a veth has no IPsec offload: the kernel installs in software without a word
    auto = ma.install(spec(4, offload="auto", offload_dev="eth0"))
    assert (auto.offload, auto.offload_dev) == ("none", "eth0")
    assert "eth0 has no IPsec offload" in auto.offload_reason
    ma.delete(auto)
    with pytest.raises(XfrmError) as info:
        ma.install(spec(5, offload="crypto", offload_dev="eth0"))
    assert info.value.errno == errno.EOPNOTSUPP and "offload crypto on eth0" in str(info.value)
    assert {s.spi for s in ma.states()} == before


def software_counters(
    a: Netns, b: Netns, ma: XfrmManager, mb: XfrmManager, events: XfrmEventReader
) -> None:
    """A software transport SA a -> b over the veth: replayed, too old and forged ESP
    provoke each error counter of b's inbound state; one dump reads what GETSA reads;
    the deletion's notification carries the final counts."""
    sa, sb = spec_pair(
        V4_TRANSPORT,
        ma.allocate_reqid(),
        mode="transport",
        encap=False,
        spi_base=0xC0002000,
        replay_window=32,
    )
    ma.install(sa)
    cb = mb.install(sb)
    tap_b = packet_socket(b, "eth0")
    inject_a = packet_socket(a, "eth0")
    try:
        esp_frames(tap_b, sb.spi_in)  # drop what was queued before
        ping(a, "192.0.2.1", "192.0.2.2", 1)
        first = esp_frames(tap_b, sb.spi_in)
        ping(a, "192.0.2.1", "192.0.2.2", 40, interval="0.01")
        later = esp_frames(tap_b, sb.spi_in)
        assert esp_seq(first[0]) == 1 and esp_seq(later[-1]) == 41, (first, later)
        last = later[-1]
        forged = bytearray(last)
        forged[38:42] = (esp_seq(last) + 5).to_bytes(4, "big")  # fresh sequence number
        forged[-1] ^= 0xFF  # ...and a broken ICV
        for frame in (first[0], last, bytes(forged)):  # too old, replayed, forged
            inject_a.send(frame)
        deadline = time.monotonic() + 10
        while mb.counters(cb).integrity_failed == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        tap_b.close()
        inject_a.close()
    table = mb.dump_counters()
    (dumped,) = mb.child_counters([cb], table)
    assert dumped == mb.counters(cb)  # one dump reads what two GETSA read
    assert dumped is not None
    assert (dumped.replay_window_errors, dumped.replay_errors, dumped.integrity_failed) == (1, 1, 1)
    assert dumped.packets_in == 41 and dumped.packets_out == 41  # echo replies
    assert {(sb.local_packed, sb.spi_in), (sb.remote_packed, sb.spi_out)} <= set(table)
    events.read_available()
    mb.delete(cb)
    gone = wait_for(events, lambda ev: deleted(ev, sb.spi_in) is not None)
    final = deleted(gone, sb.spi_in)
    assert final is not None
    assert (final.sa.cur_packets, final.sa.cur_bytes) == (dumped.packets_in, dumped.bytes_in)
    assert (final.sa.replay_window_errors, final.sa.replay_errors, final.sa.integrity_failed) == (
        1,
        1,
        1,
    )
    ma.delete(sa)
