"""ESP throughput through a tunnel our daemons negotiated vs one strongSwan negotiated,
on the same kernel, with the same suite.

The lab's topology (gateway/lab/topology.py: west -- gw-west == wan router == gw-east --
east) in a VM with Debian's kernel (the host kernel has no ESP; gateway/lab/vm.py, TCG:
~30x slower than the host, so absolute rates are the emulator's and the ratio is the
point). In alternating rounds the two gateways run either our daemon on both (the lab's
configs, `dataplane = "xfrm"`, no XDP) or charon with kernel-netlink on both (the lab's
swanctl config for gw-east and its mirror for gw-west), IKE aes256gcm16-prfsha384-x25519,
ESP aes256gcm16, tunnel mode. Once a ping crosses, iperf3 from west to east: TCP, and UDP
with 64, 512 and 1400-byte payloads (unlimited rate; the receiver's rate and loss).

Printed: each test's rate per implementation (median over rounds), the ratio ours /
strongSwan, and the SA parameters each implementation set on gw-west's outbound SA (the
kernel's own words, `ip -s xfrm state`): replay window, ESN, flags, marks, lifetimes.

Usage (root): .venv/bin/python bench/bench_esp.py [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TESTS = (("TCP", None), ("UDP 64 B", 64), ("UDP 512 B", 512), ("UDP 1400 B", 1400))


def west_swanctl(east_conf: str) -> str:
    """gw-west as charon: the lab's gw-east swanctl config mirrored, initiating."""
    from gateway.lab import topology as t

    conf = east_conf.replace("west {", "east {", 1)
    conf = conf.replace(f"local_addrs = {t.GW_EAST_WAN}", f"local_addrs = {t.GW_WEST_WAN}")
    conf = conf.replace("remote_addrs = %any", f"remote_addrs = {t.GW_EAST_WAN}")
    conf = conf.replace("id = gw-east", "id = @@EAST@@").replace("id = gw-west", "id = gw-east")
    conf = conf.replace("id = @@EAST@@", "id = gw-west")
    conf = conf.replace("local_ts = 10.2.0.0/24", "local_ts = @@L@@")
    conf = conf.replace("remote_ts = 10.1.0.0/24", "remote_ts = 10.2.0.0/24")
    conf = conf.replace("local_ts = @@L@@", "local_ts = 10.1.0.0/24")
    return conf.replace("start_action = none", "start_action = start")


class Side:
    """One implementation on both gateways, for one round."""

    def __init__(self, kind: str, topo: Any, work: Path) -> None:
        self.kind, self.topo, self.work = kind, topo, work
        self.procs: list[tuple[Any, Any]] = []
        self.swans: list[Any] = []

    def start(self) -> None:
        from gateway.lab.local import config_text
        from gateway.lab.strongswan import NETLINK_PLUGINS, StrongSwan

        if self.kind == "ours":
            for node in ("gw-east", "gw-west"):  # the responder first
                d = self.work / node
                d.mkdir(mode=0o700)
                text = config_text(f"{node}.toml")
                text = re.sub(r'^control_socket = ".*"$', f'control_socket = "{d}/c.sock"',
                              text, flags=re.M)  # fmt: skip
                text = re.sub(r"^metrics_listen = .*$", 'metrics_listen = "off"', text, flags=re.M)
                (d / "gw.toml").write_text(text)
                ns = self.topo.ns(node)
                log = open(d / "gw.log", "wb")  # noqa: SIM115 (closed in stop)
                proc = ns.popen(sys.executable, "-m", "gateway", "run", "-c", str(d / "gw.toml"),
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))  # fmt: skip
                self.procs.append((ns, proc))
                deadline = time.monotonic() + 300
                while not (d / "c.sock").exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"{node} did not start: {(d / 'gw.log').read_text()}")
                    time.sleep(0.2)
        else:
            east_conf = config_text("gw-east.swanctl.conf")
            for node, conf in (("gw-east", east_conf), ("gw-west", west_swanctl(east_conf))):
                d = self.work / node
                d.mkdir(mode=0o700)
                sw = StrongSwan(self.topo.ns(node), plugins=NETLINK_PLUGINS, workdir=d)
                sw.start(conf, timeout=120)
                self.swans.append(sw)

    def stop(self) -> None:
        for ns, proc in reversed(self.procs):
            ns.stop(proc, timeout=60)
        for sw in reversed(self.swans):
            sw.close()
        self.procs.clear()
        self.swans.clear()


def wait_tunnel(topo: Any, timeout: float = 300) -> None:
    from gateway.lab import topology as t

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ping = topo.ns("west").run("ping", "-c", "1", "-W", "2", t.EAST_HOST, check=False)
        if ping.returncode == 0:
            return
        time.sleep(1)
    raise SystemExit("no ping crossed the tunnel")


def sa_parameters(topo: Any) -> str:
    """gw-west's outbound SA as the kernel holds it, keys blanked."""
    from gateway.lab import topology as t

    out = topo.ns("gw-west").ip("-s", "xfrm", "state", "list", "dst", t.GW_EAST_WAN).stdout
    out = re.sub(r"0x[0-9a-f]{16,}", "<key>", out)
    keep = [
        line.strip()
        for line in out.splitlines()
        if re.match(
            r"\s*(replay-window|flag|anti-replay|output-mark|mark|if_id|"
            r"lifetime config|limit|proto esp|aead|src)",
            line,
        )  # fmt: skip
    ]
    return "\n    ".join(keep[:12])


def iperf(topo: Any, payload: int | None, seconds: float) -> tuple[float, float]:
    """(receiver's bit/s, loss %) of one iperf3 run west -> east."""
    from gateway.lab import topology as t

    east, west = topo.ns("east"), topo.ns("west")
    server = east.popen("iperf3", "-s", "-1", "-J", stdout=subprocess.PIPE)
    time.sleep(1.0)
    args = ["iperf3", "-c", t.EAST_HOST, "-t", str(seconds), "-J"]
    if payload is not None:
        args += ["-u", "-b", "0", "-l", str(payload)]
    client = west.run(*args, check=False, timeout=seconds + 60)
    srv_out, _ = server.communicate(timeout=60)
    report = json.loads(client.stdout or "{}")
    end = report.get("end", {})
    if payload is None:
        return float(end.get("sum_received", {}).get("bits_per_second", 0.0)), 0.0
    # UDP: what the server received (the client's own report counts what it sent)
    server_end = json.loads(srv_out or b"{}").get("end", {}).get("sum", {})
    return float(server_end.get("bits_per_second", 0.0)), float(server_end.get("lost_percent", 0.0))


def run(args: argparse.Namespace) -> None:
    from gateway.lab.topology import Topology

    print(
        f"# {platform.node()} kernel {platform.release()}, {os.cpu_count()} vCPU, load average "
        f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"# IKE aes256gcm16-prfsha384-x25519, ESP aes256gcm16 tunnel; iperf3 {args.seconds:g}s "
        f"per test; {args.rounds} rounds per implementation, alternating"
    )
    results: dict[str, dict[str, list[tuple[float, float]]]] = {"ours": {}, "strongswan": {}}
    params: dict[str, str] = {}
    topo = Topology(prefix=f"gwesp{os.getpid() % 10000}-")
    topo.create()
    try:
        for r in range(args.rounds):
            for kind in ("ours", "strongswan") if r % 2 == 0 else ("strongswan", "ours"):
                side = Side(kind, topo, Path(tempfile.mkdtemp(prefix=f"esp-{kind}-", dir="/run")))
                try:
                    side.start()
                    wait_tunnel(topo)
                    params[kind] = sa_parameters(topo)
                    for name, payload in TESTS:
                        rate, loss = iperf(topo, payload, args.seconds)
                        results[kind].setdefault(name, []).append((rate, loss))
                        print(
                            f"  round {r + 1} {kind:10s} {name:10s} {rate / 1e6:8.2f} Mbit/s"
                            f"  loss {loss:5.1f} %  load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
                finally:
                    side.stop()
    finally:
        topo.destroy()
    for name, _ in TESTS:
        ours = statistics.median(x[0] for x in results["ours"][name])
        theirs = statistics.median(x[0] for x in results["strongswan"][name])
        print(
            f"{name:10s} ours {ours / 1e6:8.2f} Mbit/s  strongSwan {theirs / 1e6:8.2f} Mbit/s"
            f"  ratio {ours / theirs if theirs else 0:.2f}"
        )
    for kind, text in params.items():
        print(f"gw-west outbound SA ({kind}):\n    {text}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--here", action="store_true", help="run on this kernel, no VM")
    args = p.parse_args()
    from gateway import probe

    if args.here or probe.kernel_esp().ok:
        run(args)
        return 0
    from gateway.lab.vm import run_in_vm

    print("host kernel has no ESP: running in a virtme-ng VM (TCG)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gw-bench-esp-") as tmp:
        out = Path(tmp) / "out.txt"
        script = (
            f"cd {REPO} && PYTHONDONTWRITEBYTECODE=1 TMPDIR=/run {sys.executable} "
            f"bench/bench_esp.py --here --seconds {args.seconds} --rounds {args.rounds} "
            f"> {out} 2>&1"
        )
        result = run_in_vm(script, rwdirs=[Path(tmp)], timeout=3600)
        print(out.read_text() if out.exists() else result.console[-3000:])
        return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
