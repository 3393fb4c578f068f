"""The data plane attached in namespaces, with real traffic over veth.

    L (LAN host) eth0 10.9.1.2 ── lan0 10.9.1.1  G (gateway)  wan0 192.0.2.1 ── eth0 192.0.2.2 R

The programs are attached in G: xdp_wan + tc_wan_egress on wan0, tc_lan_ingress on lan0.
Attachments are removed by the AttachedPrograms context manager (checked by several tests) and
in any case by the namespaces' removal in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bpf import packets as pk
from bpf.links import BPF_TCX_EGRESS, BPF_TCX_INGRESS, tcx_prog_ids
from bpf.loader import (
    AttachedPrograms,
    AttachMethod,
    BpfError,
    IkeShield,
    Programs,
    in_netns,
)
from bpf.syscall import BpfSyscallError
from gateway import netns as netns_mod

REPO = Path(__file__).resolve().parents[2]
TCP_SAVE_SYN = 27  # linux/tcp.h
TCP_SAVED_SYN = 28
SLOT = 3
SPI = (0x5151 << 16) | SLOT
OUT_SPI = 0xDEADBEEF


@dataclass
class Topology:
    lan: netns_mod.Netns
    gw: netns_mod.Netns
    remote: netns_mod.Netns


@pytest.fixture
def topo(make_netns: Callable[[str], netns_mod.Netns]) -> Topology:
    lan, gw, remote = make_netns("bpl"), make_netns("bpg"), make_netns("bpr")
    netns_mod.veth(lan, "eth0", gw, "lan0")
    netns_mod.veth(gw, "wan0", remote, "eth0")
    lan.ip("addr", "add", "10.9.1.2/24", "dev", "eth0")
    gw.ip("addr", "add", "10.9.1.1/24", "dev", "lan0")
    gw.ip("addr", "add", "192.0.2.1/24", "dev", "wan0")
    remote.ip("addr", "add", "192.0.2.2/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", "10.9.1.1")
    remote.ip("route", "add", "10.9.1.0/24", "via", "192.0.2.1")
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    return Topology(lan, gw, remote)


def _have_tcx() -> bool:
    """Does this kernel have tcx (Linux >= 6.6)? A read-only query on lo."""
    try:
        tcx_prog_ids(1, BPF_TCX_INGRESS)
    except BpfSyscallError:
        return False
    return True


HAVE_TCX = _have_tcx()
needs_tcx = pytest.mark.skipif(not HAVE_TCX, reason="kernel without tcx links (< 6.6)")


def tcx_count(ns: netns_mod.Netns, ifname: str) -> int:
    """Programs on the tcx ingress + egress hooks of `ifname` (BPF_PROG_QUERY)."""
    if not HAVE_TCX:
        return 0
    with in_netns(ns.name):
        idx = socket.if_nametoindex(ifname)
        return sum(len(tcx_prog_ids(idx, hook)) for hook in (BPF_TCX_INGRESS, BPF_TCX_EGRESS))


def attachments(ns: netns_mod.Netns, ifname: str) -> dict[str, object]:
    """What is attached to `ifname`: XDP program id, clsact qdisc, TC filters, tcx links."""
    link = json.loads(ns.run("ip", "-j", "-d", "link", "show", ifname).stdout)[0]
    qdiscs = json.loads(ns.run("tc", "-j", "qdisc", "show", "dev", ifname).stdout)
    filters = []
    for hook in ("ingress", "egress"):
        out = ns.run("tc", "-j", "filter", "show", "dev", ifname, hook, check=False).stdout
        filters += [f for f in json.loads(out or "[]") if "options" in f]
    return {
        "xdp": link.get("xdp", {}).get("prog", {}).get("id"),
        "clsact": any(q["kind"] == "clsact" for q in qdiscs),
        "filters": len(filters),
        "tcx": tcx_count(ns, ifname),
    }


def assert_clean(topo: Topology) -> None:
    for ifname in ("wan0", "lan0"):
        assert attachments(topo.gw, ifname) == CLEAN


CLEAN = {"xdp": None, "clsact": False, "filters": 0, "tcx": 0}


@pytest.fixture(scope="module")
def programs() -> Iterator[Programs]:
    """One compile for the module; each test starts from zeroed counters."""
    progs = Programs()
    try:
        yield progs
    finally:
        progs.close()


@pytest.fixture
def dataplane(topo: Topology, programs: Programs) -> Iterator[AttachedPrograms]:
    programs.reset_verdicts()
    programs.reset_ike_buckets()
    with AttachedPrograms(
        "wan0",
        "lan0",
        netns=topo.gw.name,
        drop_unknown_spi=True,
        ike_shield=IkeShield(rate=0.1, burst=3),
        programs=programs,
    ) as dp:
        wan = attachments(topo.gw, "wan0")
        assert wan["xdp"] is not None
        if HAVE_TCX:  # XDP and tcx links: nothing can survive the process
            assert {a[2] for a in dp.attachments()} == {"link"}
            assert wan["tcx"] == 1 and not wan["clsact"]
            assert attachments(topo.gw, "lan0") == CLEAN | {"tcx": 2}
        else:  # TC falls back to clsact filters
            assert wan["clsact"] and wan["filters"] == 1
            assert attachments(topo.gw, "lan0") == CLEAN | {"clsact": True, "filters": 2}
        try:
            yield dp
        finally:
            dp.clear()
    assert_clean(topo)


def rows_of(dp: AttachedPrograms) -> dict[tuple[str, str, str], int]:
    return {(v.interface, v.action, v.reason): v.packets for v in dp.verdicts()}


def saved_syn_mss(conn: socket.socket) -> int:
    """MSS option of the SYN the kernel saved for an accepted connection (TCP_SAVE_SYN)."""
    syn = conn.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 512)
    ihl = (syn[0] & 0x0F) * 4
    tcp = syn[ihl:]
    opts, i = tcp[20 : (tcp[12] >> 4) * 4], 0
    while i < len(opts):
        if opts[i] == 0:
            break
        if opts[i] == 1:
            i += 1
            continue
        if opts[i] == 2:
            return int(struct.unpack("!H", opts[i + 2 : i + 4])[0])
        i += opts[i + 1]
    raise AssertionError("SYN without MSS")


def tcp_exchange(topo: Topology, payload: bytes) -> tuple[int, int, bytes]:
    """Connect L -> R:5001, send `payload`; return (MSS of the SYN R got, L's send MSS
    after the handshake (from R's SYN-ACK), bytes R read)."""
    with in_netns(topo.remote.name):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with in_netns(topo.lan.name):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    result: dict[str, Any] = {}

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            result["mss"] = saved_syn_mss(conn)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            result["data"] = b"".join(chunks)

    with server, client:
        server.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
        server.bind(("192.0.2.2", 5001))
        server.listen(1)
        server.settimeout(20)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        client.settimeout(20)
        client.connect(("192.0.2.2", 5001))
        client_mss = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        t.join(20)
    assert not t.is_alive(), "server did not finish"
    return int(result["mss"]), client_mss, bytes(result["data"])


@pytest.mark.parametrize("offload", [True, False], ids=["csum-offload", "full-csum"])
def test_tcp_through_the_lan_program_gets_the_clamped_mss(
    topo: Topology, dataplane: AttachedPrograms, offload: bool
) -> None:
    if not offload:
        # Full checksums on the wire, and R checks them in software: a wrong checksum
        # update would lose the SYN and the connection.
        topo.lan.run("ethtool", "-K", "eth0", "tx", "off")
        topo.gw.run("ethtool", "-K", "lan0", "rx", "off")
        topo.remote.run("ethtool", "-K", "eth0", "rx", "off")
    # Without timestamps L's TCP_MAXSEG is exactly the MSS R's SYN-ACK offered.
    topo.lan.run("sysctl", "-qw", "net.ipv4.tcp_timestamps=0")
    payload = bytes(range(256)) * 800
    assert tcp_exchange(topo, b"")[:2] == (1460, 1460)  # no prefix yet: 1500-byte MTU
    dataplane.set_clamp_prefix("192.0.2.2/32", SLOT, 1400)
    server_mss, client_mss, got = tcp_exchange(topo, payload)
    assert server_mss == 1360  # L's SYN, clamped on lan0 ingress
    assert client_mss == 1360  # R's SYN-ACK, clamped on lan0 egress
    assert got == payload
    assert dataplane.mss_clamped() == {"lan0": 2}
    c = dataplane.slot_counters(SLOT)
    assert c.clear_to_tunnel_packets > 1 and c.clear_from_tunnel_packets > 1


def test_counters_match_the_packets_sent(topo: Topology, dataplane: AttachedPrograms) -> None:
    dataplane.add_inbound_spi(SLOT, SPI)
    dataplane.add_outbound_spi(SLOT, OUT_SPI)
    dataplane.set_clamp_prefix("192.0.2.2/32", SLOT, 1400)
    # R -> G: 25 ESP packets for our SPI, 7 for an unknown one (dropped), over AF_PACKET.
    known = pk.esp4(SPI, size=300, src="192.0.2.2", dst="192.0.2.1")
    unknown = pk.esp4(SPI + (1 << 16), size=300, src="192.0.2.2", dst="192.0.2.1")
    send_to_wan(topo, [known] * 25 + [unknown] * 7)

    # G -> R: 11 ESP packets through a raw IP socket: TC egress counts them.
    with in_netns(topo.gw.name):
        esp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    body = pk.esp_payload(OUT_SPI, size=200)
    with esp:
        for _ in range(11):
            esp.sendto(body, ("192.0.2.2", 0))

    # L -> R: 9 UDP datagrams through G's LAN ingress.
    with in_netns(topo.lan.name):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        for _ in range(9):
            udp.sendto(b"x" * 100, ("192.0.2.2", 9))

    def settled() -> bool:
        c = dataplane.slot_counters(SLOT)
        return c.esp_in_packets >= 25 and c.esp_out_packets >= 11 and c.clear_to_tunnel_packets >= 9

    _wait(settled)
    c = dataplane.slot_counters(SLOT)
    assert (c.esp_in_packets, c.esp_in_bytes) == (25, 25 * (len(known) - 14))
    assert (c.esp_out_packets, c.esp_out_bytes) == (11, 11 * (20 + len(body)))
    assert (c.clear_to_tunnel_packets, c.clear_to_tunnel_bytes) == (9, 9 * (20 + 8 + 100))
    rows = rows_of(dataplane)
    assert rows[("wan0", "pass", "esp")] == 25
    assert rows[("wan0", "drop", "esp_unknown_spi")] == 7
    assert rows[("wan0", "pass", "out_esp")] == 11
    assert rows[("lan0", "pass", "tunnel")] == 9


def test_ike_sa_init_flood_is_cut_before_the_socket(
    topo: Topology, dataplane: AttachedPrograms
) -> None:
    with in_netns(topo.gw.name):
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(topo.remote.name):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    init = pk.ike_header(pk.IKE_SA_INIT, body=bytes(100))
    with listener, sender:
        listener.bind(("192.0.2.1", 500))
        listener.settimeout(0.5)
        sender.bind(("192.0.2.2", 500))
        for _ in range(10):
            sender.sendto(init, ("192.0.2.1", 500))
        received = 0
        with pytest.raises(TimeoutError):
            while True:
                listener.recv(2048)
                received += 1
    assert received == 3  # the burst; rate 0.1/s adds none within the test
    rows = rows_of(dataplane)
    assert rows[("wan0", "pass", "ike")] == 3
    assert rows[("wan0", "drop", "ike_rate_limited")] == 7


@pytest.mark.parametrize("method", [pytest.param("link", marks=needs_tcx), "netlink"])
def test_everything_detached_when_the_body_raises(
    topo: Topology, programs: Programs, method: AttachMethod
) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with AttachedPrograms("wan0", "lan0", netns=topo.gw.name, programs=programs, attach=method):
            lan = attachments(topo.gw, "lan0")
            if method == "link":
                assert lan == CLEAN | {"tcx": 2}
            else:  # the fallback for kernels without tcx: a clsact qdisc with 2 filters
                assert lan == CLEAN | {"clsact": True, "filters": 2}
            assert attachments(topo.gw, "wan0")["xdp"] is not None
            raise RuntimeError("boom")
    assert_clean(topo)


@pytest.mark.parametrize(
    "first_method, second_method",
    [
        pytest.param("link", "auto", marks=needs_tcx),
        ("netlink", "auto"),
        pytest.param("link", "netlink", marks=needs_tcx),
    ],
)
def test_an_existing_xdp_program_is_never_replaced(
    topo: Topology, programs: Programs, first_method: AttachMethod, second_method: AttachMethod
) -> None:
    with AttachedPrograms(
        "wan0", None, netns=topo.gw.name, xdp_mode="native", attach=first_method, programs=programs
    ) as first:
        before = attachments(topo.gw, "wan0")
        with pytest.raises(BpfError, match="attaching XDP to wan0"):
            with AttachedPrograms(
                "wan0", None, netns=topo.gw.name, programs=programs, attach=second_method
            ):
                pass
        assert attachments(topo.gw, "wan0") == before
        assert first.xdp_flags == 4  # native mode on veth
    assert_clean(topo)


def test_missing_interface_is_a_clear_error_and_leaves_nothing(
    topo: Topology, programs: Programs
) -> None:
    with pytest.raises(BpfError, match="'nope0' does not exist"):
        AttachedPrograms("wan0", "nope0", netns=topo.gw.name, programs=programs).open()
    assert_clean(topo)
    with pytest.raises(BpfError, match="namespace"):
        AttachedPrograms("wan0", netns="no-such-netns-here", programs=programs).open()


@needs_tcx
def test_sigkill_leaves_nothing_attached(topo: Topology) -> None:
    """With BPF links the kernel detaches when the process dies, even by SIGKILL."""
    proc = start_attached(topo)
    try:
        assert attachments(topo.gw, "lan0")["tcx"] == 2
        proc.kill()
        assert proc.wait(20) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _wait(lambda: attachments(topo.gw, "wan0")["xdp"] is None)  # fds close as it exits
    assert_clean(topo)


def start_attached(topo: Topology, method: AttachMethod = "auto") -> subprocess.Popen[str]:
    """A separate Python process that attaches everything in G and waits."""
    script = (
        "import sys, time\n"
        "from bpf.loader import AttachedPrograms\n"
        f"with AttachedPrograms('wan0', 'lan0', netns={topo.gw.name!r}, attach={method!r}):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise AssertionError("the attaching process did not get ready")
    return proc


def test_sigterm_detaches_everything(topo: Topology) -> None:
    """Netlink attachments outlive a process: SIGTERM must unwind the `with` to remove
    them (the loader turns it into SystemExit while the handler is the default)."""
    proc = start_attached(topo, "netlink")
    try:
        assert attachments(topo.gw, "lan0")["filters"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_clean(topo)


def send_to_wan(topo: Topology, frames: list[bytes]) -> None:
    """Send Ethernet frames from R's eth0 to G's wan0 over AF_PACKET (fixing the MAC)."""
    gw_mac = json.loads(topo.gw.run("ip", "-j", "link", "show", "wan0").stdout)[0]["address"]
    dst = bytes.fromhex(gw_mac.replace(":", ""))
    with in_netns(topo.remote.name):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with raw:
        raw.bind(("eth0", 0))
        for frame in frames:
            raw.send(dst + frame[6:])


def send_pinned(topo: Topology, frames: list[bytes], cpu: int) -> None:
    """send_to_wan() from this thread pinned to `cpu` (where XDP then runs)."""
    os.sched_setaffinity(0, {cpu})
    send_to_wan(topo, frames)


def ip_in_unknown_protos(ns: netns_mod.Netns) -> int:
    """Ip InUnknownProtos of /proc/net/snmp inside `ns` (ESP reaching a kernel without ESP)."""
    lines = [ln.split() for ln in ns.run("cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Ip:"][:2]
    return int(values[names.index("InUnknownProtos")])


def test_steered_esp_reaches_the_stack_on_another_cpu(topo: Topology, programs: Programs) -> None:
    programs.reset_verdicts()
    with AttachedPrograms(
        "wan0", None, netns=topo.gw.name, steer_cpus=[0, 1], programs=programs
    ) as dp:
        try:
            dp.add_inbound_spi(SLOT, SPI)
            before = ip_in_unknown_protos(topo.gw)
            frame = pk.esp4(SPI, size=300, src="192.0.2.2", dst="192.0.2.1")
            # sent from the other CPU than the slot's: ESP arriving on its own CPU is
            # not redirected (no hop needed)
            other = 1 - (dp.slot_cpu(SLOT) or 0)
            sender = threading.Thread(target=send_pinned, args=(topo, [frame] * 20, other))
            sender.start()
            sender.join()
            _wait(lambda: ip_in_unknown_protos(topo.gw) - before >= 20)
            # All 20 went through the cpumap into G's stack (which has no ESP: "unknown").
            assert ip_in_unknown_protos(topo.gw) - before == 20
            assert rows_of(dp)[("wan0", "redirect", "esp")] == 20
            assert dp.slot_counters(SLOT).esp_in_packets == 20
        finally:
            dp.clear()
    assert_clean(topo)


def _wait(cond: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def test_close_after_the_namespace_is_gone(topo: Topology, programs: Programs) -> None:
    """Teardown order must not matter: links are closed, nothing raises."""
    dp = AttachedPrograms("wan0", "lan0", netns=topo.gw.name, programs=programs)
    dp.open()
    assert len(dp.attachments()) == 4
    topo.gw.close()  # the fixture's own close later is a no-op
    dp.close()
    assert dp.attachments() == []
    with pytest.raises(BpfError, match="not open"):
        dp.slot_counters(0)


def test_open_twice_is_refused(topo: Topology, programs: Programs) -> None:
    with AttachedPrograms(None, "lan0", netns=topo.gw.name, programs=programs) as dp:
        with pytest.raises(BpfError, match="already open"):
            dp.open()
    assert_clean(topo)
