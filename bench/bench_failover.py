"""Routing-driven failover between two route-based tunnels: how long traffic is lost.

The failover lab (gateway/lab/failover.py, `gateway lab up --failover`): gw-west with two
tunnels (XFRM interfaces, 0.0.0.0/0 selectors) to east-primary and east-backup, our
daemon and FRR (eBGP + BFD 100 ms x 3 over the tunnels) on all three. A numbered UDP
stream (100 datagrams/s) and a TCP stream run from the west host to the east host
through the primary tunnel; east-primary is killed (SIGKILL of its daemon, its WAN link
down), and once traffic runs over the backup it is restored. `--cycles` kill/restore
cycles on one lab. Printed per cycle: the UDP loss window of the switch to the backup and
of the switch back, when gw-west's route moved, when DPD took the dead tunnel down,
whether anything left gw-west's WAN link unencrypted (tcpdump, egress only, inner
addresses) and whether the TCP stream survived.

Needs kernel ESP: on a kernel without it (our development machines) the script re-runs
itself inside a virtme-ng VM (gateway.lab.vm, software emulation) and prints what it
printed there. `--host-frr` runs, on this host, the same FRR configurations over veth
links standing in for the tunnels (no IPsec: the routing part alone, for comparison).

    .venv/bin/python bench/bench_failover.py [--cycles N] [--host-frr]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import probe  # noqa: E402
from gateway.lab.failover import FRR_DAEMONS, FailoverLab, east_lan_next_hops, frr_config  # noqa: E402
from gateway.lab.local import LabOptions  # noqa: E402
from gateway.lab.pace import Pace  # noqa: E402
from gateway.lab.topology import BACKUP_TUNNEL, EAST_HOST, PRIMARY_TUNNEL, WEST_HOST  # noqa: E402
from gateway.netns import Netns, netns, veth  # noqa: E402
from tests.support.capture import Capture  # noqa: E402
from tests.support.failover import TcpStream, UdpStream  # noqa: E402
from tests.support.frr import Frr  # noqa: E402

INNER = (" 10.1.0.", " 10.2.0.", " 169.254.")


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, kernel "
        f"{platform.release()}, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: -"
    return (
        f"{name}: median {ms(statistics.median(values))}, min {ms(min(values))}, "
        f"max {ms(max(values))} (n={len(values)})"
    )


# ---------------------------------------------------------------------- real ESP


def run_lab(cycles: int) -> int:
    print(f"machine: {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gwb-", dir="/run" if os.access("/run", os.W_OK) else None))
    opts = LabOptions(
        directory=work / "lab",
        prefix=f"gwb{os.getpid() % 1000}-",
        xdp=False,
        traffic=False,
        failover=True,
    )
    lab = FailoverLab(opts)
    pace = Pace.measured()
    print(f"slowness {pace.factor:.1f} (1 = an idle reference machine)", flush=True)
    started = time.monotonic()
    away: list[float] = []
    back: list[float] = []
    moved: list[float] = []
    leaks = 0
    survived = 0
    try:
        lab.up(pace)
        print(f"lab up in {time.monotonic() - started:.0f} s", flush=True)
        west, east = lab.topo.ns("west").name, lab.topo.ns("east").name
        gw_west = lab.topo.ns("gw-west")
        for cycle in range(1, cycles + 1):
            time.sleep(3)  # BFD settled (it flaps while the machine is busy)
            lab.wait_routes({PRIMARY_TUNNEL}, pace.deadline("steady", 4.0))
            cap = Capture(gw_west, "wan0", work / f"wan{cycle}.pcap", out_only=True)
            cap.ready()
            udp = UdpStream(EAST_HOST, 5400, src=WEST_HOST, sender_netns=west, receiver_netns=east)
            tcp = TcpStream(EAST_HOST, src=WEST_HOST, client_netns=west, server_netns=east)
            udp.start()
            tcp.start()
            time.sleep(2)
            kill = time.monotonic()
            lab.kill_primary()
            moved.append(lab.wait_routes({BACKUP_TUNNEL}, pace.deadline("failover", 2.0)))
            time.sleep(2)
            restore = time.monotonic()
            lab.restore_primary(pace.deadline("restore", 12.0))
            lab.wait_routes({PRIMARY_TUNNEL}, pace.deadline("failback", 12.0))
            returned = time.monotonic() - restore
            time.sleep(2)
            u, t = udp.stop(drain=1.0), tcp.stop()
            wire = cap.stop()
            clear = [ln for ln in wire if any(p in ln for p in INNER)]
            leaks += len(clear)
            survived += t.survived
            first = [w for w in u.windows if w.start >= kill - 0.5 and w.start < restore]
            later = [w for w in u.windows if w.start >= restore]
            away.append(max((w.duration for w in first), default=0.0))
            back.append(max((w.duration for w in later), default=0.0))
            print(
                f"cycle {cycle}: route to the backup {ms(moved[-1])} after the kill; UDP "
                f"loss to the backup {ms(away[-1])} ({sum(w.count for w in first)} lost), back "
                f"to the primary {ms(back[-1])} ({sum(w.count for w in later)} lost; primary "
                f"in use again {returned:.1f} s after the restore began); sent {u.sent} "
                f"received {u.received}; TCP survived={t.survived} longest stall "
                f"{ms(t.longest_stall)}; cleartext packets on gw-west's WAN egress: "
                f"{len(clear)} (ESP packets: {sum('ESP(spi=' in ln for ln in wire)})",
                flush=True,
            )
    finally:
        lab.down()
    print(summary("loss window, switch to the backup", away))
    print(summary("loss window, switch back to the primary", back))
    print(summary("route moved to the backup after the kill", moved))
    print(f"cleartext packets leaving gw-west: {leaks}; TCP survived {survived}/{cycles}")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


# ---------------------------------------------------------------------- FRR alone, on the host


def run_host_frr(cycles: int) -> int:
    """The routing part alone: FRR over veth links (the host kernel has no ESP)."""
    print(f"machine: {machine()}", flush=True)
    away: list[float] = []
    moved: list[float] = []
    with netns("gwbw") as west, netns("gwbp") as pri, netns("gwbb") as bak, netns("gwbh") as host:
        _veth_tunnels(west, pri, bak, host)
        with (
            Frr(west, daemons=FRR_DAEMONS["gw-west"]) as fw,
            Frr(pri, daemons=FRR_DAEMONS["east-primary"]) as fp,
            Frr(bak, daemons=FRR_DAEMONS["east-backup"]) as fb,
        ):
            fw.start(frr_config("gw-west"))
            fp.start(frr_config("east-primary"))
            fb.start(frr_config("east-backup"))
            fw.wait_bgp([PRIMARY_TUNNEL, BACKUP_TUNNEL], timeout=60)
            fw.wait_bfd([PRIMARY_TUNNEL, BACKUP_TUNNEL], timeout=60)
            for cycle in range(1, cycles + 1):
                _until(lambda: east_lan_next_hops(west) == {PRIMARY_TUNNEL}, 30)
                time.sleep(2)
                udp = UdpStream(
                    EAST_HOST,
                    5400,
                    src="10.1.0.1",
                    sender_netns=west.name,
                    receiver_netns=host.name,
                ).start()
                time.sleep(1)
                start = time.monotonic()
                pri.ip("link", "set", "ipsec-west", "down")
                _until(lambda: east_lan_next_hops(west) == {BACKUP_TUNNEL}, 10)
                moved.append(time.monotonic() - start)
                time.sleep(1)
                pri.ip("link", "set", "ipsec-west", "up")
                _until(lambda: east_lan_next_hops(west) == {PRIMARY_TUNNEL}, 30)
                time.sleep(1)
                u = udp.stop(drain=0.5)
                away.append(u.longest)
                print(
                    f"cycle {cycle}: route to the backup {ms(moved[-1])}; UDP loss window "
                    f"{ms(u.longest)} ({u.lost} lost of {u.sent})",
                    flush=True,
                )
    print(summary("host, FRR over veth: loss window", away))
    print(summary("host, FRR over veth: route moved", moved))
    return 0


def _veth_tunnels(west: Netns, pri: Netns, bak: Netns, host: Netns) -> None:
    veth(west, "ipsec-pri", pri, "tun0")
    veth(west, "ipsec-bak", bak, "tun0")
    west.ip("addr", "add", "169.254.10.1/30", "dev", "ipsec-pri")
    west.ip("addr", "add", "169.254.20.1/30", "dev", "ipsec-bak")
    west.ip("addr", "add", "10.1.0.1/24", "dev", "lo")
    for ns, addr, lan, port in (
        (pri, PRIMARY_TUNNEL, "10.2.0.2/24", "to-pri"),
        (bak, BACKUP_TUNNEL, "10.2.0.3/24", "to-bak"),
    ):
        ns.ip("link", "add", "ipsec-west", "type", "bridge")
        ns.ip("link", "set", "tun0", "master", "ipsec-west")
        ns.ip("link", "set", "ipsec-west", "up")
        ns.ip("addr", "add", f"{addr}/30", "dev", "ipsec-west")
        veth(ns, "lan0", host, port)
        ns.ip("addr", "add", lan, "dev", "lan0")
    host.ip("link", "add", "br0", "type", "bridge")
    for port in ("to-pri", "to-bak"):
        host.ip("link", "set", port, "master", "br0")
    host.ip("link", "set", "br0", "up")
    host.ip("addr", "add", f"{EAST_HOST}/24", "dev", "br0")
    host.ip("route", "add", "default", "via", "10.2.0.2")


def _until(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout} s")
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--host-frr", action="store_true", help="FRR over veth on this host")
    parser.add_argument("--here", action="store_true", help="run on this kernel, no VM")
    args = parser.parse_args()
    if args.host_frr:
        return run_host_frr(args.cycles)
    if args.here or probe.kernel_esp().ok:
        return run_lab(args.cycles)
    from gateway.lab.vm import run_in_vm

    print(f"host: {machine()}", flush=True)
    print("host kernel has no ESP: running the benchmark in a virtme-ng VM (TCG)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gw-bench-failover-") as tmp:
        out = Path(tmp) / "out.txt"
        script = (
            f"cd {ROOT} && PYTHONDONTWRITEBYTECODE=1 TMPDIR=/run {sys.executable} "
            f"bench/bench_failover.py --here --cycles {args.cycles} > {out} 2>&1"
        )
        began = time.monotonic()
        result = run_in_vm(script, rwdirs=[Path(tmp)], timeout=3600)
        print(out.read_text() if out.exists() else result.console[-3000:])
        print(f"VM wall time {time.monotonic() - began:.0f} s, exit {result.returncode}")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
