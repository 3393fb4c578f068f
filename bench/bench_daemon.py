"""Responder handshakes per second: our daemon (data plane `none`) vs strongSwan's charon
(kernel-libipsec), side by side in one run, driven by the same load generator.

Topology (namespaces made and removed here): `lg` holds the load generator with
--sources addresses 192.0.2.10.. on one veth; `rs` holds the responder at 192.0.2.1.
The load generator is our IKE engine as initiator in --procs processes (each owning a
share of the source addresses), keeping --inflight handshakes open per process; every
handshake is a full IKE_SA_INIT + IKE_AUTH with one Child SA
(aes256gcm16-prfsha384-x25519 / aes256gcm16, PSK); established SAs are kept (not
deleted), as a gateway's population grows.

Reported per responder: handshakes/s over the measured window (after a warm-up), the
responder's CPU seconds in that window (all its threads, /proc/PID/stat), handshakes per
responder CPU-second (the fairer number on a busy shared machine), failures, and the load
generator's own CPU. The ratio line compares us with charon.

Our daemon runs once per --workers count (default 1 and 2: `[gateway] workers`, one
supervisor + N IKE worker processes; its CPU is the sum over all of them).

Usage (root): .venv/bin/python bench/bench_daemon.py [--seconds 15] [--warmup 3]
              [--sources 40] [--procs 1] [--inflight 32] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.strongswan import LIBIPSEC_PLUGINS, StrongSwan  # noqa: E402

PSK = "bench-psk-0123456789abcdef"
IKE, ESP = "aes256gcm16-prfsha384-x25519", "aes256gcm16"
TARGET = "192.0.2.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- load generator


def inner_address(source: str) -> str:
    return "10.9.0." + source.rsplit(".", 1)[1] + "/32"


async def generate(
    ips: list[str], seconds: float, warmup: float, inflight: int, total: int | None = None
) -> dict[str, Any]:
    """One load generator process: initiators on `ips`, counting established Child SAs
    (with `total`: until that many handshakes ended, bench/bench_scrape.py)."""
    from gateway.transport import UdpTransport
    from ike.config import ChildConfig, ConnectionConfig, EngineSettings
    from ike.engine import IkeEngine
    from ike.events import ChildSaEstablished, ChildSaFailed, IkeSaFailed

    conns = [
        ConnectionConfig(
            name=f"c{i}",
            local_addrs=(ip,),
            remote_addrs=(TARGET,),
            local_id=f"lg-{ip}",
            remote_id="",
            psk=PSK.encode(),
            ike_proposals=(IKE,),
            # an inner address per source: a selector that covers the IKE addresses would
            # make charon refuse the route ("conflicts with IKE traffic")
            children=(ChildConfig("net", (inner_address(ip),), ("10.1.0.0/16",), (ESP,)),),
        )
        for i, ip in enumerate(ips)
    ]
    engine = IkeEngine(conns, EngineSettings(retransmit_timeout=2.0, retransmit_tries=3))
    loop = asyncio.get_running_loop()
    state = {"open": 0, "done": 0, "failed": 0, "measured": 0, "next": 0}
    t0 = time.monotonic()
    measure_from = t0 + warmup
    end = measure_from + seconds
    timer: list[asyncio.TimerHandle | None] = [None]

    finished = asyncio.Event()

    def more() -> bool:
        return total is None or state["next"] < total

    def pump() -> None:
        now = time.monotonic()
        while state["open"] < inflight and now < end and more():
            name = conns[state["next"] % len(conns)].name
            state["next"] += 1
            engine.initiate(name, None, now)
            state["open"] += 1
        for dg in engine.datagrams_to_send():
            transport.send(dg.data, dg.local, dg.remote)
        while (event := engine.next_event()) is not None:
            if isinstance(event, ChildSaEstablished):
                state["open"] -= 1
                state["done"] += 1
                if measure_from <= now < end:
                    state["measured"] += 1
            elif isinstance(event, IkeSaFailed | ChildSaFailed):
                state["open"] -= 1
                state["failed"] += 1
        if total is not None and state["done"] + state["failed"] >= total:
            finished.set()
        if state["open"] < inflight and now < end and more():
            loop.call_soon(pump)
        if timer[0] is not None:
            timer[0].cancel()
        when = engine.next_timer()
        if when is not None:
            timer[0] = loop.call_later(max(0.0, when - now), on_timer)

    def on_timer() -> None:
        engine.handle_timer(time.monotonic())
        pump()

    def on_datagram(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        engine.receive_datagram(data, (local, remote), time.monotonic())
        pump()

    transport = UdpTransport(ips, 500, 4500, on_datagram, keep_marker=True)
    transport.start(loop)
    cpu0 = time.process_time()
    pump()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), end - time.monotonic())
    transport.close()
    return {
        "measured": state["measured"],
        "done": state["done"],
        "failed": state["failed"],
        "cpu": time.process_time() - cpu0,
    }


def loadgen_main(args: argparse.Namespace) -> None:
    """Child entry point (inside the lg namespace): fork --procs generators, sum results."""
    ips = args.ips.split(",")
    shares = [ips[i :: args.procs] for i in range(args.procs)]
    results: list[dict[str, Any]] = []
    readers = []
    for share in shares:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            res = asyncio.run(generate(share, args.seconds, args.warmup, args.inflight))
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.close(w)
        readers.append((pid, r))
    for pid, r in readers:
        with os.fdopen(r) as f:
            results.append(json.loads(f.read() or "{}"))
        os.waitpid(pid, 0)
    total = {k: sum(r.get(k, 0) for r in results) for k in ("measured", "done", "failed", "cpu")}
    print(json.dumps(total))


# --------------------------------------------------------------------------- responders


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all threads) and of its running children (our
    workers), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK + sum(proc_cpu(int(c)) for c in children)


def our_config(sock: Path, workers: int = 1, connections: str = "") -> str:
    """Our responder's config; `connections`: more TOML tables, matched before `lg`."""
    return f"""
[gateway]
listen = ["{TARGET}"]
control_socket = "{sock}"
metrics_listen = "off"
dataplane = "none"
log_level = "warning"
workers = {workers}
{connections}
[connections.lg]
local_addrs = ["{TARGET}"]
ike_proposals = ["{IKE}"]
local = {{ auth = "psk", id = "responder" }}
remote = {{ auth = "psk" }}
psk = "{PSK}"

[connections.lg.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.9.0.0/16"]
esp_proposals = ["{ESP}"]
"""


SWANCTL = f"""connections {{
  lg {{
    version = 2
    local_addrs = {TARGET}
    proposals = {IKE}
    local {{
      auth = psk
      id = responder
    }}
    remote {{
      auth = psk
    }}
    children {{
      net {{
        local_ts = 10.1.0.0/16
        remote_ts = 10.9.0.0/16
        esp_proposals = {ESP}
      }}
    }}
  }}
}}
secrets {{
  ike-lg {{
    secret = "{PSK}"
  }}
}}
"""


def run_round(
    name: str, lg: Any, rs: Any, args: argparse.Namespace, ips: list[str], workers: int = 1
) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    sw = None
    proc = None
    try:
        if name == "ours":
            (work / "gw.toml").write_text(our_config(work / "c.sock", workers))
            log = open(work / "gw.log", "wb")  # noqa: SIM115
            proc = rs.popen(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "-c",
                str(work / "gw.toml"),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
            )
            deadline = time.monotonic() + 60
            while not (work / "c.sock").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"our daemon did not start: {(work / 'gw.log').read_text()}")
                time.sleep(0.1)
            pid = proc.pid  # `ip netns exec` execs: the same process
        else:
            sw = QuietStrongSwan(rs, plugins=LIBIPSEC_PLUGINS, workdir=work)
            sw.start(SWANCTL)
            assert sw.proc is not None
            pid = sw.proc.pid
        cpu0 = proc_cpu(pid)
        out = lg.run(
            sys.executable,
            str(Path(__file__).resolve()),
            "--loadgen",
            "--ips",
            ",".join(ips),
            "--seconds",
            str(args.seconds),
            "--warmup",
            str(args.warmup),
            "--procs",
            str(args.procs),
            "--inflight",
            str(args.inflight),
            timeout=args.seconds + args.warmup + 120,
        )
        cpu = proc_cpu(pid) - cpu0
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["responder_cpu"] = cpu
        return res
    finally:
        if proc is not None:
            rs.stop(proc, timeout=30)
        if sw is not None:
            sw.close()


class QuietStrongSwan(StrongSwan):
    """charon configured for throughput: no logging, a generous thread pool."""

    def strongswan_conf(self) -> str:
        return (
            "charon-systemd {\n"
            f"  load = {self.plugins}\n"
            "  threads = 16\n"
            "  plugins {\n"
            f"    vici {{\n      socket = {self.uri}\n    }}\n"
            "  }\n"
            "  journal {\n    default = -1\n  }\n"
            "  filelog {\n"
            f"    charon {{\n      path = {self.log_path}\n      default = -1\n    }}\n"
            "  }\n"
            "}\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--sources", type=int, default=40)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2],
        help="our daemon's worker counts to run, e.g. 1,2 (default)",
    )
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ips", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return

    from gateway import netns

    ips = [f"192.0.2.{10 + i}" for i in range(args.sources)]
    with netns.netns("bgl") as lg, netns.netns("bgr") as rs:
        netns.veth(lg, "eth0", rs, "eth0")
        rs.ip("addr", "add", f"{TARGET}/24", "dev", "eth0")
        rs.ip("addr", "add", "10.1.0.1/32", "dev", "lo")  # libipsec: an address in local_ts
        for ip in ips:
            lg.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        print(
            f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}"
        )
        print(
            f"# {args.sources} sources, {args.procs} generator process(es), "
            f"{args.inflight} in flight each, {args.warmup:g}s warm-up + {args.seconds:g}s"
        )
        rows = {}
        rounds = [(f"ours-w{n}", "ours", n) for n in args.workers] + [("charon", "charon", 1)]
        for label, name, workers in rounds:
            res = run_round(name, lg, rs, args, ips, workers)
            rate = res["measured"] / args.seconds
            # CPU was measured over the whole load (warm-up included): divide all handshakes
            per_cpu = res["done"] / res["responder_cpu"] if res["responder_cpu"] else 0.0
            rows[label] = (rate, per_cpu)
            print(
                f"{label:8s} {rate:8.1f} handshakes/s  responder CPU {res['responder_cpu']:6.2f}s"
                f"  {per_cpu:8.1f} handshakes/CPU-s  failed {res['failed']}"
                f"  generator CPU {res['cpu']:.2f}s"
            )
        charon = rows["charon"]
        for label, (rate, per_cpu) in rows.items():
            if label != "charon" and charon[0] and charon[1]:
                print(
                    f"ratio {label}/charon: {rate / charon[0]:.2f} (throughput), "
                    f"{per_cpu / charon[1]:.2f} (per responder CPU-second)"
                )


if __name__ == "__main__":
    main()
