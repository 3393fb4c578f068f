"""Scrape cost of the Prometheus exporter at scale: /metrics text for N Child SAs.

Run: .venv/bin/python bench/bench_metrics.py [--child-sas N] [--repeat R]
Two parts, labelled in the output:
- `scrape`: the real path. Our daemon in its own process holding N real IKE SAs
  (bench/population.py: real handshakes, data plane `none` whose counters move) with its
  exporter on a loopback port; R HTTP GETs of /metrics, wall time of each (snapshot on
  the daemon's loop, rendering in the exporter's thread, transfer), and the body size.
  The kernel's counter reads are not in it (no kernel data plane on the host; the
  XFRM dump per scrape is issue 14's path and bench, run in the VM).
- `render`: `render_text` alone over a prebuilt snapshot (the exporter's own cost), per
  child and aggregated per connection, median/worst wall and median CPU.
Results are recorded in docs/benchmarks/observability.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from gateway.metrics import MetricsSnapshot, XdpCounter, make_registry, render_text  # noqa: E402
from tests.support.observability import synthetic_ike_sas  # noqa: E402


class MovingSource:
    """Counters advance at every snapshot, like a gateway under traffic. The snapshots are
    built before timing: copying the daemon's state is the source's cost, measured apart."""

    def __init__(self, child_sas: int, repeat: int) -> None:
        self.snaps = [
            MetricsSnapshot(
                ike_sas=synthetic_ike_sas(child_sas, tick=t),
                xdp=[XdpCounter("eth0", "pass", "esp", t)],
            )
            for t in range(repeat)
        ]
        self.tick = 0

    def metrics_snapshot(self) -> MetricsSnapshot:
        snap = self.snaps[self.tick % len(self.snaps)]
        self.tick += 1
        return snap


def run(child_sas: int, repeat: int, aggregate: bool) -> None:
    source = MovingSource(child_sas, repeat)
    registry = make_registry(source, aggregate_per_connection=aggregate)
    times, cpu, size = [], [], 0
    for _ in range(repeat):
        # the snapshot copy is the source's cost, not the exporter's: build it outside
        c0, t0 = time.process_time(), time.perf_counter()
        body = render_text(registry)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        size = len(body)
    mode = "render per-conn" if aggregate else "render per-child"
    median, worst = statistics.median(times) * 1e3, max(times) * 1e3
    print(
        f"metrics {mode:15s} child_sas={child_sas:6d} scrape median={median:7.1f} ms"
        f" max={worst:7.1f} ms cpu median={statistics.median(cpu) * 1e3:7.1f} ms"
        f" body={size / 1024:7.0f} KiB"
    )


def scrape(child_sas: int, repeat: int) -> None:
    """GET /metrics from our populated daemon (another process), R times."""
    import socket
    import subprocess
    import tempfile
    import urllib.request

    with socket.socket() as probe:  # a free loopback port for the exporter
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve().parent / "population.py"),
                "--serve",
                str(Path(tmp) / "ctl.sock"),
                "-n",
                str(child_sas),
                "--metrics",
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            ready = server.stdout.readline()
            if not ready.startswith("ready"):
                raise SystemExit(f"the populated daemon did not start: {ready!r}")
            times, size = [], 0
            for _ in range(repeat):
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
                    size = len(r.read())
                times.append(time.perf_counter() - t0)
        finally:
            server.terminate()
            server.wait(10)
    median, worst = statistics.median(times) * 1e3, max(times) * 1e3
    print(
        f"metrics scrape (daemon, HTTP) child_sas={child_sas:6d} median={median:7.1f} ms"
        f" max={worst:7.1f} ms body={size / 1024:7.0f} KiB   ({ready.strip()})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child-sas", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=7)
    a = p.parse_args()
    scrape(a.child_sas, a.repeat)
    for aggregate in (False, True):
        run(a.child_sas, a.repeat, aggregate)


if __name__ == "__main__":
    main()
