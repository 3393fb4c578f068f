"""A /metrics scrape and a console poll at N Child SAs (default 100,000), and the IKE
handshake latency while /metrics is scraped every second.

Topology (namespaces made and removed here): `lg` holds the load generator and the probe
(sources 192.0.2.10.. and 192.0.2.9), `rs` our daemon (`gateway run`, data plane `none`:
the host kernel has no ESP) at 192.0.2.1, with `[gateway.xdp]` on its eth0 (the slot
table is what a scrape reads) unless --no-xdp.

1. populate: bench_daemon's load generator establishes N IKE SAs with one Child SA each
   (real handshakes) and leaves them up;
2. scrape: GET /metrics --repeat times (wall time, size); console poll: list-sas + stats
   over the control socket --repeat times (what `gateway tui` does each tick); the
   daemon's own counter reads (stats.counter_reads);
3. IKE latency: a probe initiator does one handshake at a time (IKE_SA_INIT, IKE_AUTH
   with a Child SA; each deleted after) for --seconds, first without scrapes, then with a
   scrape every second: p50/p99/max of the handshake time.

Usage (root): .venv/bin/python bench/bench_scrape.py [--child-sas 100000] [--no-xdp]
              [--repeat 5] [--seconds 20] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_daemon import ESP, IKE, PSK, TARGET, generate, our_config  # noqa: E402

PROBE = "192.0.2.9"
METRICS = "127.0.0.1:9810"


# --------------------------------------------------------------------------- in lg


def populate_main(args: argparse.Namespace) -> None:
    """Inside lg: --procs generators, together --total handshakes, SAs left up."""
    ips = args.ips.split(",")
    per = -(-args.total // args.procs)
    pids = []
    for i in range(args.procs):
        pid = os.fork()
        if pid == 0:
            share = ips[i :: args.procs]
            load = argparse.Namespace(
                ips=",".join(share),
                target=TARGET,
                first=i * per,  # every handshake its own connection (identity, selectors)
                budget=per,
                retransmit=2.0,
                inflight=args.inflight,
                warmup=0.0,
                seconds=3600.0,
                tail=60.0,
            )
            res = asyncio.run(generate(load))
            print(json.dumps(res), flush=True)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


async def probe(seconds: float) -> list[float]:
    """One handshake at a time from PROBE for `seconds`: the time from IKE_SA_INIT to the
    Child SA, each IKE SA deleted after."""
    from gateway.transport import UdpTransport
    from ike.config import ChildConfig, ConnectionConfig, EngineSettings
    from ike.engine import IkeEngine
    from ike.events import ChildSaEstablished, IkeSaDeleted, IkeSaFailed

    conn = ConnectionConfig(
        name="probe",
        local_addrs=(PROBE,),
        remote_addrs=(TARGET,),
        local_id="probe",
        remote_id="",
        psk=PSK.encode(),
        ike_proposals=(IKE,),
        children=(ChildConfig("net", ("10.9.9.9/32",), ("10.1.0.0/16",), (ESP,)),),
    )
    engine = IkeEngine([conn], EngineSettings(retransmit_timeout=2.0, retransmit_tries=3))
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    ready = asyncio.Event()
    started = [0.0]
    end = time.monotonic() + seconds

    def pump() -> None:
        now = time.monotonic()
        while (event := engine.next_event()) is not None:
            if isinstance(event, ChildSaEstablished):
                latencies.append(now - started[0])
                engine.delete_ike_sa(event.ike_sa, now)
            elif isinstance(event, IkeSaDeleted | IkeSaFailed):
                ready.set()
        for dg in engine.datagrams_to_send():
            transport.send(dg.data, dg.local, dg.remote)

    def on_datagram(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        engine.receive_datagram(data, (local, remote), time.monotonic())
        pump()

    async def timers() -> None:
        while True:
            when = engine.next_timer()
            await asyncio.sleep(
                0.05 if when is None else max(0.0, min(0.05, when - time.monotonic()))
            )
            engine.handle_timer(time.monotonic())
            pump()

    transport = UdpTransport([PROBE], 500, 4500, on_datagram, keep_marker=True)
    transport.start(loop)
    ticker = loop.create_task(timers())
    while time.monotonic() < end:
        ready.clear()
        started[0] = time.monotonic()
        engine.initiate("probe", None, started[0])
        pump()
        await asyncio.wait_for(ready.wait(), 30)
    ticker.cancel()
    transport.close()
    return latencies


def probe_main(args: argparse.Namespace) -> None:
    print(json.dumps(asyncio.run(probe(args.seconds))))


# --------------------------------------------------------------------------- host side


def get_metrics(ns_name: str) -> tuple[float, int]:
    """One scrape from inside the daemon's namespace: (seconds, bytes)."""
    import socket

    from gateway.xfrm.channel import in_netns

    host, port = METRICS.split(":")
    t0 = time.perf_counter()
    with in_netns(ns_name):
        conn = socket.create_connection((host, int(port)), timeout=60)
    with conn:
        conn.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        size = 0
        while chunk := conn.recv(1 << 20):
            size += len(chunk)
    return time.perf_counter() - t0, size


def request(sock: Path, cmd: str) -> bytes:
    """One control API request; the raw reply line (read in linear time: list-sas of
    100,000 Child SAs is about 100 MB)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(600)
        s.connect(str(sock))
        s.sendall(json.dumps({"id": 1, "cmd": cmd, "args": {}}).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise SystemExit(f"control API {cmd}: connection closed")
            data += chunk
    return bytes(data)


def poll_console(sock: Path) -> tuple[float, int]:
    """list-sas + stats over the control socket and decoded, as the console's tick:
    (seconds, bytes)."""
    t0 = time.perf_counter()
    replies = [request(sock, "list-sas"), request(sock, "stats")]
    for reply in replies:
        if not json.loads(reply)["ok"]:
            raise SystemExit(f"control API: {reply[:200]!r}")
    return time.perf_counter() - t0, sum(map(len, replies))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_line(what: str, values: list[float]) -> str:
    ms = [v * 1e3 for v in values]
    return (
        f"IKE handshake {what:22s} n={len(ms):4d} p50={pct(ms, 0.5):6.1f} ms "
        f"p99={pct(ms, 0.99):7.1f} ms max={max(ms):7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child-sas", type=int, default=100_000)
    parser.add_argument("--no-xdp", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="scrape interval, s")
    parser.add_argument("--sources", type=int, default=40)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--populate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ips", help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.populate:
        populate_main(args)
        return
    if args.probe:
        probe_main(args)
        return

    from gateway import netns

    ips = [f"192.0.2.{10 + i}" for i in range(args.sources)]
    work = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    sock = work / "c.sock"
    slots = max(2, args.child_sas + 1000)
    xdp = (
        "" if args.no_xdp else f'\n[gateway.xdp]\nwan_interface = "eth0"\nmax_child_sas = {slots}\n'
    )
    config = our_config(sock).replace('metrics_listen = "off"', f'metrics_listen = "{METRICS}"')
    config = config.replace('log_level = "warning"', 'log_level = "warning"\ncounters_interval = 1')
    config = config.replace("\n[connections.lg]", xdp + "\n[connections.lg]")
    (work / "gw.toml").write_text(config)
    mode = "XFRM-less (dataplane none, no XDP)" if args.no_xdp else "XDP on (slot table)"
    print(f"mode: {mode}; {args.child_sas} Child SAs; load average {os.getloadavg()[0]:.1f}")
    with netns.netns("bsl") as lg, netns.netns("bsr") as rs:
        netns.veth(lg, "eth0", rs, "eth0")
        rs.ip("addr", "add", f"{TARGET}/24", "dev", "eth0")
        for ip in [*ips, PROBE]:
            lg.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        log = open(work / "gw.log", "wb")  # noqa: SIM115
        daemon = rs.popen(
            sys.executable, "-m", "gateway", "run", "-c", str(work / "gw.toml"),
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not sock.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not start: {(work / 'gw.log').read_text()}")
                time.sleep(0.2)
            t0 = time.monotonic()
            out = lg.run(
                sys.executable, str(Path(__file__).resolve()), "--populate",
                "--ips", ",".join(ips), "--total", str(args.child_sas),
                "--procs", str(args.procs), "--inflight", str(args.inflight),
                timeout=7200,
            )  # fmt: skip
            done = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            took = time.monotonic() - t0
            established = sum(d["done"] for d in done)
            print(
                f"populated: {established} Child SAs ({sum(d['failed'] for d in done)} failed) "
                f"in {took:.0f} s ({established / took:.0f}/s)"
            )
            from tests.support.daemon import api

            stats = api(sock, "stats")
            print(f"daemon: child_sas={stats['child_sas']} xdp_slots={stats.get('xdp_slots')}")
            scrapes = [get_metrics(rs.name) for _ in range(args.repeat)]
            polls = [poll_console(sock) for _ in range(args.repeat)]
            stats = api(sock, "stats")
            reads = stats["counter_reads"]
            for what, rows in (("scrape /metrics", scrapes), ("console poll", polls)):
                times = [t * 1e3 for t, _ in rows]
                print(
                    f"{what:15s} median={statistics.median(times):7.1f} ms "
                    f"max={max(times):7.1f} ms size={rows[-1][1] / 1e6:.1f} MB"
                )
            print(
                f"counter reads    {reads['reads']} reads, "
                f"{reads['seconds'] / max(1, reads['reads']) * 1e3:.1f} ms each (off the loop)"
            )

            def run_probe() -> list[float]:
                res = lg.run(
                    sys.executable, str(Path(__file__).resolve()), "--probe",
                    "--seconds", str(args.seconds), timeout=args.seconds + 120,
                )  # fmt: skip
                return list(json.loads(res.stdout.strip().splitlines()[-1]))

            quiet = run_probe()
            print(latency_line("without scrapes", quiet))
            stop = threading.Event()
            during: list[float] = []

            def scraper() -> None:
                while not stop.is_set():
                    took_s, _ = get_metrics(rs.name)
                    during.append(took_s)
                    stop.wait(max(0.0, args.interval - took_s))

            thread = threading.Thread(target=scraper, name="scraper")
            thread.start()
            try:
                busy = run_probe()
            finally:
                stop.set()
                thread.join()
            print(latency_line(f"scraping every {args.interval:g} s", busy))
            print(
                f"scrapes meanwhile: {len(during)}, median "
                f"{statistics.median(during) * 1e3:.1f} ms, max {max(during) * 1e3:.1f} ms"
            )
        finally:
            rs.stop(daemon, timeout=120)
            log.close()


if __name__ == "__main__":
    main()
