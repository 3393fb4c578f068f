"""Responder handshakes: our daemon vs strongSwan's charon, side by side in one run,
alternating, driven by the same load generator; and (in the VM) a burst of peers.

Two comparisons, each labelled in the output for what it compares:

- host (default; the host kernel has no ESP): our daemon with `dataplane = "none"`
  (nothing installed) vs charon with kernel-libipsec (userspace ESP: a TUN device and a
  route per Child SA). Control planes only, and unlike work on the data-plane side.
- `--vm` (through gateway/lab/vm.py, a virtme-ng VM with Debian's kernel under TCG):
  our daemon with `dataplane = "xfrm"` vs charon with kernel-netlink, both installing
  real kernel SAs and policies (charon with `install_routes = no`: neither side installs
  routes). The like-for-like comparison. Then a burst: 1,000 peers connecting at once to
  a fresh daemon of ours, the Child SAs' installs timed inside the daemon and `ip -batch`
  of the very same SAs timed into a fresh namespace.

Method (what earlier versions of this benchmark got wrong, docs/benchmarks/daemon.md):
- both responders run at once, each in its own namespace (ours 192.0.2.1, charon
  192.0.2.3, bridged to the generator), so SAs pile up on both as the run goes; the
  generator drives one at a time in slices that alternate (ours, charon, charon, ours,
  ...), so load from other users of the machine hits both alike;
- in-flight handshakes (default 16) stay below both daemons' cookie thresholds (ours
  100 half-open SAs, charon's `cookie_threshold` 30 in 5.9.8), and charon's
  `block_threshold` (half-open SAs per peer address) is raised to match ours (none), so
  neither is challenged with COOKIEs or refuses peers the other accepts;
- every handshake has its own inner address (10.16.0.0/12, one /32 each: the Child's
  selectors never collide, so kernel installs cannot fail with EEXIST), its own
  identity, and comes from one of --sources addresses;
- established SAs are kept; handshakes/s counts Child SAs the generator saw established
  in the measured window (after --warmup), CPU is the responder process's (user and
  system, all threads, /proc/PID/stat; with workers the supervisor and every worker)
  over that same window; before the rounds each side gets a short unmeasured slice
  (lazy imports, kernel modules loaded on first use).

The load generator is our IKE engine as initiator (one process per slice).

Usage (root): .venv/bin/python bench/bench_daemon.py [--vm] [--seconds 15] [--warmup 3]
              [--rounds 2] [--sources 40] [--inflight 16] [--workers 1] [--burst 1000]
"""

from __future__ import annotations

import argparse
import asyncio
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

PSK = "bench-psk-0123456789abcdef"
IKE, ESP = "aes256gcm16-prfsha384-x25519", "aes256gcm16"
OURS_IP, CHARON_IP = "192.0.2.1", "192.0.2.3"
TARGET = OURS_IP  # where --loadgen sends by default (tests/host/test_daemon_workers.py)
CLK_TCK = os.sysconf("SC_CLK_TCK")
INNER_NET = "10.16.0.0/12"  # the generator's inner addresses: one /32 per handshake


def inner_address(i: int) -> str:
    return f"10.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"


def peer_connection(i: int, local: str, target: str) -> Any:
    """The generator's peer i (an initiator's ConnectionConfig toward `target`): its own
    identity and inner /32, so no two Child SAs' selectors collide in the kernel."""
    from ike.config import ChildConfig, ConnectionConfig

    return ConnectionConfig(
        name=f"c{i}",
        local_addrs=(local,),
        remote_addrs=(target,),
        local_id=f"lg-{i}.example",
        remote_id="",
        psk=PSK.encode(),
        ike_proposals=(IKE,),
        children=(ChildConfig("net", (inner_address(i),), ("10.1.0.0/16",), (ESP,)),),
    )


# --------------------------------------------------------------------------- load generator


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    """One slice: initiators on --ips toward --target, one connection (inner address,
    identity) per handshake, numbered from --first; counts established Child SAs."""
    from gateway.transport import UdpTransport
    from ike.config import EngineSettings
    from ike.engine import IkeEngine
    from ike.events import ChildSaEstablished, ChildSaFailed, IkeSaFailed

    ips = args.ips.split(",")
    conns = [
        peer_connection(i, ips[i % len(ips)], args.target)
        for i in range(args.first, args.first + args.budget)
    ]
    engine = IkeEngine(
        conns, EngineSettings(retransmit_timeout=args.retransmit, retransmit_tries=3)
    )
    loop = asyncio.get_running_loop()
    state = {"open": 0, "done": 0, "failed": 0, "measured": 0, "next": 0}
    latencies: list[float] = []
    started: dict[int, float] = {}
    t0 = time.monotonic()
    measure_from = t0 + args.warmup
    end = measure_from + args.seconds
    timer: list[asyncio.TimerHandle | None] = [None]
    done = loop.create_future()

    def pump() -> None:
        now = time.monotonic()
        while state["open"] < args.inflight and now < end and state["next"] < len(conns):
            ike_sa = engine.initiate(conns[state["next"]].name, None, now)
            started[ike_sa] = now
            state["next"] += 1
            state["open"] += 1
        for dg in engine.datagrams_to_send():
            transport.send(dg.data, dg.local, dg.remote)
        while (event := engine.next_event()) is not None:
            if isinstance(event, ChildSaEstablished):
                state["open"] -= 1
                state["done"] += 1
                latencies.append(now - started.pop(event.ike_sa, now))
                if measure_from <= now < end:
                    state["measured"] += 1
            elif isinstance(event, IkeSaFailed | ChildSaFailed):
                state["open"] -= 1
                state["failed"] += 1
                started.pop(event.ike_sa, None)
        if (now >= end or state["next"] >= len(conns)) and state["open"] <= 0:
            if not done.done():
                done.set_result(None)
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

    transport = UdpTransport(ips, 500, 4500, on_datagram, after_batch=pump, keep_marker=True)
    transport.start(loop)
    cpu0 = time.process_time()
    # the parent samples the responder's CPU over the measured window from this line on
    print(json.dumps({"phase": "started"}), flush=True)
    pump()
    # after the window: wait for the handshakes in flight (bounded), then stop
    with_tail = end - time.monotonic() + args.tail
    try:
        await asyncio.wait_for(done, max(0.1, with_tail))
    except TimeoutError:
        pass
    transport.close()
    latencies.sort()
    return {
        "measured": state["measured"],
        "done": state["done"],
        "failed": state["failed"],
        "unfinished": state["open"],
        "used": state["next"],
        "cpu": time.process_time() - cpu0,
        "p50": latencies[len(latencies) // 2] if latencies else 0.0,
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
        "span": time.monotonic() - t0,
    }


# --------------------------------------------------------------------------- responders


def our_config(sock: Path, workers: int = 1, connections: str = "", dataplane: str = "none") -> str:
    """Our responder's config; `connections`: more TOML tables, matched before `lg`."""
    return f"""
[gateway]
listen = ["{OURS_IP}"]
control_socket = "{sock}"
metrics_listen = "off"
dataplane = "{dataplane}"
log_level = "warning"
workers = {workers}
{connections}
[connections.lg]
local_addrs = ["{OURS_IP}"]
ike_proposals = ["{IKE}"]
local = {{ auth = "psk", id = "responder" }}
remote = {{ auth = "psk" }}
psk = "{PSK}"

[connections.lg.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["{INNER_NET}"]
esp_proposals = ["{ESP}"]
"""


SWANCTL = f"""connections {{
  lg {{
    version = 2
    local_addrs = {CHARON_IP}
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
        remote_ts = {INNER_NET}
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


def quiet_strongswan(ns: Any, plugins: str, workdir: Path, kernel_netlink: bool) -> Any:
    """charon configured for throughput and parity: no logging, 16 threads, the cookie
    threshold of our engine (100 half-open SAs), no per-peer half-open limit (ours has
    none), and with kernel-netlink no routes (our daemon installs none either)."""
    from gateway.lab.strongswan import StrongSwan
    from ike.config import COOKIE_THRESHOLD

    class Quiet(StrongSwan):
        def strongswan_conf(self) -> str:
            routes = "  install_routes = no\n" if kernel_netlink else ""
            return (
                "charon-systemd {\n"
                f"  load = {self.plugins}\n"
                "  threads = 16\n"
                f"  cookie_threshold = {COOKIE_THRESHOLD}\n"
                "  block_threshold = 1000000\n"
                f"{routes}"
                "  plugins {\n"
                f"    vici {{\n      socket = {self.uri}\n    }}\n"
                "  }\n"
                "  journal {\n    default = -1\n  }\n"
                "  filelog {\n"
                f"    charon {{\n      path = {self.log_path}\n      default = -1\n    }}\n"
                "  }\n"
                "}\n"
            )

    return Quiet(ns, plugins=plugins, workdir=workdir)


class Responders:
    """Both responders up for the whole run, each in its own namespace."""

    def __init__(self, r1: Any, r2: Any, args: argparse.Namespace, work: Path) -> None:
        from gateway.lab.strongswan import LIBIPSEC_PLUGINS, NETLINK_PLUGINS

        dataplane = "xfrm" if args.vm else "none"
        (work / "gw.toml").write_text(our_config(work / "c.sock", args.workers, "", dataplane))
        self.log = open(work / "gw.log", "wb")  # noqa: SIM115 (closed in close)
        self.r1 = r1
        self.ours = r1.popen(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "-c",
            str(work / "gw.toml"),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
        (work / "swan").mkdir()
        self.charon = quiet_strongswan(
            r2, NETLINK_PLUGINS if args.vm else LIBIPSEC_PLUGINS, work / "swan", args.vm
        )
        self.charon.start(SWANCTL, timeout=120)
        deadline = time.monotonic() + 300
        while not (work / "c.sock").exists():
            if self.ours.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"our daemon did not start: {(work / 'gw.log').read_text()}")
            time.sleep(0.1)
        self.work = work

    def pid(self, side: str) -> int:
        return int(self.ours.pid if side == "ours" else self.charon.proc.pid)

    def close(self) -> None:
        self.r1.stop(self.ours, timeout=60)
        self.log.close()
        self.charon.close()


def proc_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its running children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        u, s = proc_times(int(child))
        user, system = user + u, system + s
    return user, system


def slice_(
    lg: Any, side: str, first: int, args: argparse.Namespace, ips: list[str], pid: int = 0
) -> dict[str, Any]:
    """One slice of the generator against `side`; with `pid`, the responder's CPU
    (user, system) over the measured window only (warm-up and the tail excluded)."""
    target = OURS_IP if side == "ours" else CHARON_IP
    proc = lg.popen(
        sys.executable, str(Path(__file__).resolve()), "--loadgen", "--ips", ",".join(ips),
        "--target", target, "--first", str(first), "--budget", str(args.budget),
        "--seconds", str(args.seconds), "--warmup", str(args.warmup),
        "--inflight", str(args.inflight), "--tail", str(args.tail),
        "--retransmit", str(args.retransmit),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    started = proc.stdout.readline()
    window = (0.0, 0.0)
    if pid and started:
        time.sleep(args.warmup)
        u0, s0 = proc_times(pid)
        time.sleep(args.seconds)
        u1, s1 = proc_times(pid)
        window = (u1 - u0, s1 - s0)
    out, _ = proc.communicate(timeout=args.seconds + args.warmup + args.tail + 600)
    result = dict(json.loads(out.decode().strip().splitlines()[-1]))
    result["window_user"], result["window_system"] = window
    return result


def topology(args: argparse.Namespace) -> tuple[Any, Any, Any, list[str]]:
    """lg (the generator, --sources addresses on a bridge), r1 (ours), r2 (charon)."""
    from gateway import netns

    lg, r1, r2 = netns.create("bgl"), netns.create("bgr"), netns.create("bgc")
    lg.ip("link", "add", "br0", "type", "bridge")
    netns.veth(lg, "p1", r1, "eth0")
    netns.veth(lg, "p2", r2, "eth0")
    for port in ("p1", "p2"):
        lg.ip("link", "set", port, "master", "br0")
    lg.ip("link", "set", "br0", "up")
    r1.ip("addr", "add", f"{OURS_IP}/24", "dev", "eth0")
    r2.ip("addr", "add", f"{CHARON_IP}/24", "dev", "eth0")
    if not args.vm:  # kernel-libipsec needs a local address inside charon's local_ts
        r2.ip("addr", "add", "10.1.0.1/32", "dev", "lo")
    ips = [f"192.0.2.{10 + i}" for i in range(args.sources)]
    for ip in ips:
        lg.ip("addr", "add", f"{ip}/24", "dev", "br0")
    return lg, r1, r2, ips


def compare(args: argparse.Namespace) -> None:
    lg, r1, r2, ips = topology(args)
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    kind = (
        "VM: ours dataplane=xfrm vs charon kernel-netlink (real kernel SAs on both sides)"
        if args.vm
        else "host: ours dataplane=none (installs nothing) vs charon kernel-libipsec "
        "(userspace ESP, TUN + route per Child): control planes, unlike data-plane work"
    )
    print(f"# {kind}")
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, kernel "
        f"{platform.release()}, load average {os.getloadavg()[0]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"# {args.sources} sources, {args.inflight} in flight, {args.rounds} rounds of "
        f"{args.warmup:g}s warm-up + {args.seconds:g}s per side, alternating; workers="
        f"{args.workers}"
    )
    resp = None
    try:
        resp = Responders(r1, r2, args, work)
        totals = {
            s: dict.fromkeys(("measured", "done", "failed", "cpu", "system", "window"), 0.0)
            for s in ("ours", "charon")
        }
        lat: dict[str, list[float]] = {"ours": [], "charon": []}
        first = 0
        # one short unmeasured slice each first: lazy imports, kernel modules, caches
        prime = argparse.Namespace(**vars(args))
        prime.seconds, prime.warmup, prime.budget = args.warmup, 0.0, 200
        for side in ("ours", "charon"):
            first += slice_(lg, side, first, prime, ips)["used"]
        for r in range(args.rounds):
            for side in ("ours", "charon") if r % 2 == 0 else ("charon", "ours"):
                res = slice_(lg, side, first, args, ips, resp.pid(side))
                cpu = res["window_user"] + res["window_system"]
                first += res["used"]
                t = totals[side]
                t["measured"] += res["measured"]
                t["done"] += res["done"]
                t["failed"] += res["failed"] + res["unfinished"]
                t["cpu"] += cpu
                t["system"] += res["window_system"]
                t["window"] += args.seconds
                lat[side].append(res["p99"])
                each = cpu / max(res["measured"], 1) * 1e3
                print(
                    f"  round {r + 1} {side:6s} {res['measured'] / args.seconds:8.1f} hs/s  "
                    f"responder CPU in the window {cpu:6.2f}s (system "
                    f"{res['window_system']:5.2f}s) = {each:6.2f} ms per handshake  failed "
                    f"{res['failed']}+{res['unfinished']}  latency p50 "
                    f"{res['p50'] * 1e3:.0f} ms p99 {res['p99'] * 1e3:.0f} ms  load "
                    f"{os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if res["used"] >= args.budget:
                    print("  (this slice used its whole --budget of connections)")
        rows = {}
        for side, t in totals.items():
            rate = t["measured"] / t["window"]
            per_cpu = t["measured"] / t["cpu"] if t["cpu"] else 0.0
            rows[side] = (rate, per_cpu)
            print(
                f"{side:6s} {rate:8.1f} handshakes/s  {per_cpu:8.1f} handshakes/CPU-s "
                f"({t['cpu'] / max(t['measured'], 1) * 1e3:.2f} ms CPU each, of it system "
                f"{t['system'] / max(t['measured'], 1) * 1e3:.2f} ms)  failed "
                f"{int(t['failed'])}  p99 latency (worst slice) {max(lat[side]) * 1e3:.0f} ms"
            )
        ours, charon = rows["ours"], rows["charon"]
        if charon[0] and charon[1]:
            print(
                f"ratio ours/charon: {ours[0] / charon[0]:.2f} (handshakes/s), "
                f"{ours[1] / charon[1]:.2f} (per responder CPU-second)"
            )
    finally:
        if resp is not None:
            resp.close()
        for ns in (lg, r1, r2):
            ns.close()


# --------------------------------------------------------------------------- the burst


def burst_responder(args: argparse.Namespace) -> None:
    """Inside r1: our Daemon in this process (dataplane xfrm), its data plane's install
    calls timed, until --burst Child SAs are installed; then `ip -batch` of the same SAs
    into a fresh namespace. Prints one JSON line."""
    from gateway.config.reader import parse_config
    from gateway.daemon import Daemon
    from gateway.dataplane.none import NoneDataplane
    from gateway.dataplane.xfrm import XfrmDataplane

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_xfrm import count_objects, ip_batch_lines

    work = Path(args.work)
    text = our_config(work / "b.sock", dataplane=args.burst_dataplane)
    config = parse_config(text, str(work / "b.toml"), work)
    dataplane: Any = XfrmDataplane() if args.burst_dataplane == "xfrm" else NoneDataplane()
    spent = [0.0]
    installed: list[Any] = []
    calls = {"install": 0, "install_many": 0}

    def timed(name: str) -> Any:
        inner = getattr(dataplane, name)

        def call(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = inner(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0
            calls[name] += 1
            for r in result if isinstance(result, list) else [result]:
                if getattr(r, "handle", None) is not None:
                    installed.append(r.handle.spec)
                elif hasattr(r, "spi_in"):
                    installed.append(r)  # `none`: nothing to replay with ip -batch
            return result

        return call

    dataplane.install = timed("install")  # type: ignore[method-assign]
    dataplane.install_many = timed("install_many")  # type: ignore[method-assign]

    async def serve() -> None:
        daemon = Daemon(config, dataplane=dataplane)
        await daemon.start()
        (work / "ready").write_text("1")
        deadline = time.monotonic() + args.seconds
        stop = work / "stop"  # the generator is done (the parent says so)
        while len(installed) < args.burst and time.monotonic() < deadline and not stop.exists():
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        stats = daemon.stats()
        await daemon.shutdown()
        result["batches"] = stats.get("install_batches", 0)
        result["install_failures"] = stats["install_failures"]

    result: dict[str, Any] = {}
    asyncio.run(serve())
    n = len(installed)
    result |= {"children": n, "seconds": spent[0], "calls": calls}
    from gateway import netns

    specs = [x for x in installed if hasattr(x, "keys_in")]
    with netns.netns("gwburst") as ns, tempfile.NamedTemporaryFile("w", suffix=".b") as f:
        f.write(ip_batch_lines(specs))
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.run(["ip", "-n", ns.name, "-batch", f.name], capture_output=True)
        result["ip_seconds"] = time.perf_counter() - t0
        result["ip_exit"] = proc.returncode
        result["ip_objects"] = count_objects(ns)
    print(json.dumps(result))


def burst(args: argparse.Namespace) -> None:
    print(
        f"# burst: {args.burst} peers at once to a fresh daemon of ours (dataplane xfrm), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    lg, r1, r2, ips = topology(args)
    work = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    try:
        responder = r1.popen(
            sys.executable,
            str(Path(__file__).resolve()),
            "--burst-responder",
            "--work",
            str(work),
            "--burst",
            str(args.burst),
            "--seconds",
            str(args.burst_seconds),
            "--burst-dataplane",
            args.burst_dataplane,
            stdout=subprocess.PIPE,
            cwd=str(REPO),
        )
        while not (work / "ready").exists():
            if responder.poll() is not None:
                raise SystemExit("the burst responder did not start")
            time.sleep(0.1)
        gen = argparse.Namespace(**vars(args))
        gen.inflight, gen.budget, gen.warmup = args.burst, args.burst, 0.0
        gen.seconds, gen.tail = 0.5, args.burst_seconds
        gen.retransmit = 60.0  # TCG: the responder needs long for 1,000 at once
        res = slice_(lg, "ours", 0, gen, ips)
        (work / "stop").write_text("1")
        out, _ = responder.communicate(timeout=args.burst_seconds + 600)
        r = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        for ns in (lg, r1, r2):
            ns.close()
    n = r["children"]
    print(
        f"burst: {res['done']} handshakes done in {res['span']:.1f}s "
        f"({res['failed']} failed, {res['unfinished']} unfinished), latency p50 "
        f"{res['p50'] * 1e3:.0f} ms p99 {res['p99'] * 1e3:.0f} ms"
    )
    print(
        f"daemon installs: {n} Child SAs in {r['seconds']:.2f}s inside the data plane "
        f"({n / max(r['seconds'], 1e-9):,.0f}/s), {r['batches']} batched sends "
        f"(calls: {r['calls']}), {r['install_failures']} failed"
    )
    print(
        f"ip -batch of the same {n} SAs: {r['ip_seconds']:.2f}s "
        f"({n / max(r['ip_seconds'], 1e-9):,.0f}/s), exit {r['ip_exit']}, kernel had "
        f"{r['ip_objects'][0]} states / {r['ip_objects'][1]} policies"
    )
    print(f"ratio ip -batch / daemon installs: {r['ip_seconds'] / max(r['seconds'], 1e-9):.2f}x")


# --------------------------------------------------------------------------- main


def in_vm(args: argparse.Namespace) -> int:
    from gateway import probe
    from gateway.lab.vm import run_in_vm

    if probe.kernel_esp().ok:
        if not args.only_burst:
            compare(args)
        if args.burst:
            burst(args)
        return 0
    print("host kernel has no ESP: running in a virtme-ng VM (TCG)", flush=True)
    passed = [a for a in sys.argv[1:] if a != "--vm"]
    with tempfile.TemporaryDirectory(prefix="gw-bench-daemon-") as tmp:
        out = Path(tmp) / "out.txt"
        script = (
            f"cd {REPO} && PYTHONDONTWRITEBYTECODE=1 TMPDIR=/run {sys.executable} "
            f"bench/bench_daemon.py --vm --here {' '.join(passed)} > {out} 2>&1"
        )
        result = run_in_vm(script, rwdirs=[Path(tmp)], timeout=args.vm_timeout)
        print(out.read_text() if out.exists() else result.console[-3000:])
        return result.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vm", action="store_true", help="kernel SAs on both sides, in the VM")
    p.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per slice")
    p.add_argument("--warmup", type=float, default=None)
    p.add_argument("--rounds", type=int, default=2, help="rounds of one slice per side")
    p.add_argument("--sources", type=int, default=40)
    p.add_argument("--inflight", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--burst", type=int, default=None, help="peers at once (VM; default 1000)")
    p.add_argument("--burst-seconds", type=float, default=None)
    p.add_argument("--burst-dataplane", default="xfrm", help=argparse.SUPPRESS)
    p.add_argument("--only-burst", action="store_true", help="the burst alone")
    p.add_argument("--budget", type=int, default=None, help="connections per slice")
    p.add_argument("--tail", type=float, default=10.0, help="s to finish what is in flight")
    p.add_argument("--retransmit", type=float, default=4.0, help="generator's first RTO, s")
    p.add_argument("--vm-timeout", type=float, default=5400)
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--burst-responder", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ips", help=argparse.SUPPRESS)
    p.add_argument("--target", default=TARGET, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    # TCG runs ~30x slower: longer slices, fewer connections per slice
    args.seconds = args.seconds or (60.0 if args.vm else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (10.0 if args.vm else 3.0)
    # connections the generator compiles per slice: what the slice can use, bounded
    args.budget = args.budget or (
        4000 if args.vm else int((args.warmup + args.seconds) * 1500) + args.inflight
    )
    if args.burst is None:
        args.burst = 1000 if args.vm else 0
    args.burst_seconds = args.burst_seconds or (1800.0 if args.vm else 120.0)
    if args.loadgen:
        print(json.dumps(asyncio.run(generate(args))))
        return 0
    if args.burst_responder:
        burst_responder(args)
        return 0
    if args.vm:
        return in_vm(args)
    if not args.only_burst:
        compare(args)
    if args.burst:
        burst(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
