"""Scrape cost of the Prometheus exporter at scale: /metrics text for N Child SAs.

Run: .venv/bin/python bench/bench_metrics.py [--child-sas N] [--repeat R]
Prints the median and worst wall time, and the median CPU time, of `render_text` over R
scrapes (each scrape reads a fresh snapshot whose counters moved), per-child and
per-connection aggregation, and the exposition size. Results are recorded in
docs/benchmarks/observability.md.
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
    mode = "per-connection" if aggregate else "per-child"
    median, worst = statistics.median(times) * 1e3, max(times) * 1e3
    print(
        f"metrics {mode:15s} child_sas={child_sas:6d} scrape median={median:7.1f} ms"
        f" max={worst:7.1f} ms cpu median={statistics.median(cpu) * 1e3:7.1f} ms"
        f" body={size / 1024:7.0f} KiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child-sas", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=7)
    a = p.parse_args()
    for aggregate in (False, True):
        run(a.child_sas, a.repeat, aggregate)


if __name__ == "__main__":
    main()
