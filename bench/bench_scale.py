"""Our daemon holding N IKE SAs (one Child SA each, default 100,000) set up by real peers,
then its rekey wave while an operator polls it and new peers keep arriving.

Host run (the host kernel has no ESP): the daemon with `dataplane = "none"`, in its own
namespace, the load generator (our engine as N initiators, bench_daemon's) in another,
over UDP. The kernel's share of the same work is measured apart: bench_xfrm (installs)
and issue 14's scrape benchmark (counter reads), in the VM.

Phases and what is printed:
1. set-up: N handshakes, 64 in flight (below the daemon's cookie threshold), from 40
   source addresses, wall time and handshakes/s; the daemon's
   RSS before and after, per SA (goal <= 10 KiB for the whole daemon).
2. the rekey wave: the Child SAs have `rekey_time` --rekey (default 420 s, jitter 10 %),
   so they all rekey (the daemon initiates; the generator answers) about --rekey after
   they came up. Meanwhile, every --poll seconds: a full list-sas, stats, a /metrics
   scrape and a console poll (incremental list-sas + stats) are each timed, and a trickle
   of new handshakes (--trickle per second) measures IKE latency. Printed: rekeys per
   second (stats.rekeys sampled each second) and the busiest second, each poll kind's
   median/max, the trickle's latency p50/p99, failures.
The engine keeps one timer heap and the daemon one event-loop timer for all SAs
(docs/ike.md, Timers).

Usage (root): .venv/bin/python bench/bench_scale.py [-n 100000] [--rekey 420]
              [--trickle 20] [--poll 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_daemon import ESP, IKE, INNER_NET, OURS_IP, PSK, peer_connection  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def config(sock: Path, metrics_port: int, rekey: float) -> str:
    return f"""
[gateway]
listen = ["{OURS_IP}"]
control_socket = "{sock}"
metrics_listen = "127.0.0.1:{metrics_port}"
dataplane = "none"
log_level = "warning"

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
rekey_time = "{rekey:g}s"
"""


# --------------------------------------------------------------------------- generator


async def generator(args: argparse.Namespace) -> None:
    """In the lg namespace: set up N, report, then a trickle of new handshakes until
    told to stop (stdin closes), answering the daemon's rekeys all along."""
    from gateway.transport import UdpTransport
    from ike.config import EngineSettings
    from ike.engine import IkeEngine
    from ike.events import ChildSaEstablished, ChildSaFailed, IkeSaFailed

    ips = args.ips.split(",")
    total = args.n + args.trickle_max
    t_build = time.monotonic()
    conns = [peer_connection(i, ips[i % len(ips)], OURS_IP) for i in range(total)]
    engine = IkeEngine(conns, EngineSettings(retransmit_timeout=8.0, retransmit_tries=4))
    emit({"phase": "built", "seconds": time.monotonic() - t_build})
    loop = asyncio.get_running_loop()
    st = {"open": 0, "done": 0, "failed": 0, "next": 0, "inflight": args.inflight}
    started: dict[int, float] = {}
    lat: list[float] = []
    timer: list[asyncio.TimerHandle | None] = [None]
    setup_done = loop.create_future()

    def pump() -> None:
        now = time.monotonic()
        limit = args.n if not setup_done.done() else st["next"]
        while st["open"] < st["inflight"] and st["next"] < min(limit, total):
            started[engine.initiate(conns[st["next"]].name, None, now)] = now
            st["next"] += 1
            st["open"] += 1
        for dg in engine.datagrams_to_send():
            transport.send(dg.data, dg.local, dg.remote)
        while (event := engine.next_event()) is not None:
            if isinstance(event, ChildSaEstablished) and event.ike_sa in started:
                st["open"] -= 1
                st["done"] += 1
                lat.append(now - started.pop(event.ike_sa))
            elif isinstance(event, IkeSaFailed | ChildSaFailed) and event.ike_sa in started:
                st["open"] -= 1
                st["failed"] += 1
                started.pop(event.ike_sa)
        if not setup_done.done() and st["done"] + st["failed"] >= args.n:
            setup_done.set_result(None)
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
    t0 = time.monotonic()
    pump()
    await setup_done
    emit(
        {
            "phase": "setup",
            "seconds": time.monotonic() - t0,
            "done": st["done"],
            "failed": st["failed"],
            "p99": percentile(lat, 0.99),
        }
    )
    # the trickle: one new handshake every 1/rate s, latency of each
    lat.clear()
    st["done"] = st["failed"] = 0
    stop = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
    while not stop.done() and st["next"] < total:
        now = time.monotonic()
        started[engine.initiate(conns[st["next"]].name, None, now)] = now
        st["next"] += 1
        st["open"] += 1
        pump()
        await asyncio.sleep(1 / args.trickle)
    transport.close()
    emit(
        {
            "phase": "trickle",
            "done": st["done"],
            "failed": st["failed"],
            "p50": percentile(lat, 0.5),
            "p99": percentile(lat, 0.99),
            "max": max(lat, default=0.0),
        }
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# --------------------------------------------------------------------------- the operator


async def timed(what: str, call: Any, into: dict[str, list[float]]) -> Any:
    t0 = time.perf_counter()
    result = await call
    into.setdefault(what, []).append(time.perf_counter() - t0)
    return result


async def operate(
    sock: Path, rs: Any, port: int, args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    """Poll the daemon through the rekey wave: rekeys per second, poll times."""
    from gateway.control.client import ControlClient

    polls: dict[str, list[float]] = {}
    rekeys_per_s: list[tuple[float, int]] = []
    cursor = None
    async with await ControlClient.connect(sock, timeout=60) as client:
        last = (await client.stats())["rekeys"]
        t_end = args.until
        next_poll = time.monotonic()
        peak_rss = 0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            stats = await client.stats()
            rekeys_per_s.append((t0, stats["rekeys"] - last))
            last = stats["rekeys"]
            peak_rss = max(peak_rss, rss_kib(pid))
            if t0 >= next_poll:
                next_poll = t0 + args.poll
                await timed("list-sas (full)", client.list_sas(), polls)
                await timed("stats", client.stats(), polls)
                reply = await timed("console poll", client.sa_changes(cursor), polls)
                cursor = {"epoch": reply["epoch"], "version": reply["version"]}
                await timed("console poll", client.stats(), {})
                seconds = await asyncio.to_thread(scrape, rs, port)
                polls.setdefault("scrape /metrics", []).append(seconds)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    return {"polls": polls, "rekeys": rekeys_per_s, "peak_rss": peak_rss}


SCRAPE = (
    "import sys, time, urllib.request as u\n"
    "t = time.perf_counter()\n"
    "n = len(u.urlopen(sys.argv[1], timeout=300).read())\n"
    "print(time.perf_counter() - t, n)\n"
)


def scrape(rs: Any, port: int) -> float:
    """GET /metrics inside the daemon's namespace (it listens on its loopback); the
    time is the request's own, measured in that process."""
    out = rs.run(sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{port}/metrics")
    return float(out.stdout.split()[0])


def main_bench(args: argparse.Namespace) -> None:
    from gateway import netns

    print(
        f"# {platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}, load average "
        f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"# {args.n} IKE SAs (one Child SA each), dataplane none, Child rekey_time "
        f"{args.rekey:g}s; polls every {args.poll:g}s; trickle {args.trickle:g} handshakes/s"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    sock = work / "c.sock"
    port = 19000 + os.getpid() % 1000
    (work / "gw.toml").write_text(config(sock, port, args.rekey))
    with netns.netns("bsl") as lg, netns.netns("bsr") as rs:
        netns.veth(lg, "eth0", rs, "eth0")
        rs.ip("addr", "add", f"{OURS_IP}/24", "dev", "eth0")
        ips = [f"192.0.2.{10 + i}" for i in range(args.sources)]
        for ip in ips:
            lg.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        log = open(work / "gw.log", "wb")  # noqa: SIM115
        daemon = rs.popen(
            sys.executable, "-m", "gateway", "run", "-c", str(work / "gw.toml"),
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
        )  # fmt: skip
        while not sock.exists():
            if daemon.poll() is not None:
                raise SystemExit((work / "gw.log").read_text())
            time.sleep(0.1)
        time.sleep(1)
        rss0 = rss_kib(daemon.pid)
        t_start = time.monotonic()
        gen = lg.popen(
            sys.executable, __file__, "--generator", "--ips", ",".join(ips),
            "-n", str(args.n), "--inflight", str(args.inflight),
            "--trickle", str(args.trickle), "--trickle-max", str(args.trickle_max),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO),
        )  # fmt: skip
        assert gen.stdout is not None and gen.stdin is not None
        built = json.loads(gen.stdout.readline())
        print(f"generator: {built['seconds']:.1f}s to build its {args.n} connections")
        setup = json.loads(gen.stdout.readline())
        rss1 = rss_kib(daemon.pid)
        print(
            f"set-up: {setup['done']} IKE SAs in {setup['seconds']:.1f}s "
            f"({setup['done'] / setup['seconds']:.0f} handshakes/s), {setup['failed']} "
            f"failed, handshake latency p99 {setup['p99'] * 1e3:.0f} ms"
        )
        print(
            f"daemon RSS: {rss0 / 1024:.0f} MiB idle -> {rss1 / 1024:.0f} MiB with "
            f"{setup['done']} SAs: {(rss1 - rss0) / max(setup['done'], 1):.2f} KiB per IKE SA "
            f"with its Child SA (whole daemon)"
        )
        # the wave runs from 0.9 x rekey after the first SA to rekey after the last
        args.until = t_start + built["seconds"] + setup["seconds"] + args.rekey + 15
        watched = asyncio.run(operate(sock, rs, port, args, daemon.pid))
        gen.stdin.close()
        trickle = json.loads(gen.stdout.readline())
        final = json.loads(
            rs.run(sys.executable, "-m", "gateway", "ctl", "--socket", str(sock), "--json",
                   "stats", check=False).stdout or "{}"
        )  # fmt: skip
        rs.stop(daemon, timeout=120)
        lg.stop(gen, timeout=30)
        log.close()
    per_s = watched["rekeys"]
    busiest = max(per_s, key=lambda x: x[1], default=(0.0, 0))
    rekeyed = sum(n for _, n in per_s)
    print(
        f"rekey wave: {rekeyed} Child rekeys seen in {len(per_s)} s of watching; busiest "
        f"second {busiest[1]} rekeys; mean over seconds with rekeys "
        f"{rekeyed / max(1, sum(1 for _, n in per_s if n)):.0f}/s"
    )
    for what, times in watched["polls"].items():
        print(
            f"poll {what:16s} median {statistics.median(times) * 1e3:8.1f} ms  max "
            f"{max(times) * 1e3:8.1f} ms  ({len(times)} polls)"
        )
    print(
        f"IKE latency of {trickle['done']} new handshakes during the wave and the polls: "
        f"p50 {trickle['p50'] * 1e3:.0f} ms, p99 {trickle['p99'] * 1e3:.0f} ms, max "
        f"{trickle['max'] * 1e3:.0f} ms; {trickle['failed']} failed"
    )
    print(
        f"daemon peak RSS during the wave {watched['peak_rss'] / 1024:.0f} MiB; IKE SAs at "
        f"the end {final.get('ike_sas')}, Child SAs {final.get('child_sas')}, rekeys "
        f"{final.get('rekeys')}, install failures {final.get('install_failures')}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--rekey", type=float, default=420.0, help="Child rekey_time, seconds")
    p.add_argument("--poll", type=float, default=5.0)
    p.add_argument("--trickle", type=float, default=20.0)
    p.add_argument("--trickle-max", type=int, default=20_000)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--sources", type=int, default=40)
    p.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ips", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.generator:
        asyncio.run(generator(args))
        return
    main_bench(args)


if __name__ == "__main__":
    main()
