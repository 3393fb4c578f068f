"""Run the benchmarks in turn; each prints its own numbers (`make bench` runs them all).

Benchmarks measure, they do not assert: results are recorded in docs/benchmarks/.
`python bench/run.py NAME...` runs only the named ones; a name also selects every
benchmark it is the start of (`ike` runs ike-handshake and ike-scale, `daemon` both
daemon comparisons). `python bench/run.py --list` lists them. The ones marked VM need
kernel ESP and run inside a virtme-ng VM through gateway/lab/vm.py when the host
kernel has none (under TCG, ~30x slower: ratios are the point there).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, arguments, what it measures); in the order `make bench` runs them
BENCHMARKS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "ike-handshake": ("bench_ike_handshake.py", (), "engine: responder hs/s, crypto vs Python"),
    "ike-scale": ("bench_ike_scale.py", (), "engine: 100,000 SAs on a simulated clock"),
    "daemon-host": ("bench_daemon.py", (), "daemon vs charon on the host (control planes)"),
    "daemon-vm": ("bench_daemon.py", ("--vm",), "VM: ours (xfrm) vs charon (netlink), burst"),
    "xfrm": ("bench_xfrm.py", (), "VM: the daemon's batched installs vs ip -batch"),
    "esp": ("bench_esp.py", (), "VM: ESP throughput, our tunnel vs strongSwan's"),
    "scale": ("bench_scale.py", (), "daemon with 100,000 SAs: memory, rekey wave, polls"),
    "tui": ("bench_tui.py", (), "console tick at 10,000 Child SAs"),
    "metrics": ("bench_metrics.py", (), "/metrics scrape at 10,000 Child SAs"),
    "xdp": ("bench_xdp.py", (), "XDP/TC programs, BPF_PROG_TEST_RUN"),
}  # fmt: skip


def select(names: list[str]) -> list[str]:
    if not names:
        return list(BENCHMARKS)
    chosen = [b for b in BENCHMARKS if any(b == n or b.startswith(n) for n in names)]
    unknown = [n for n in names if not any(b == n or b.startswith(n) for b in BENCHMARKS)]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; --list lists them")
    return chosen


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        for name, (script, args, what) in BENCHMARKS.items():
            print(f"{name:14s} {what}  ({' '.join((script, *args))})")
        return 0
    failed = []
    for name in select(argv):
        script, args, _ = BENCHMARKS[name]
        print(f"== {name} ({' '.join((script, *args))}) ==", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, str(HERE / script), *args], cwd=HERE.parent)
        print(f"== {name}: exit {rc}, {time.monotonic() - start:.1f} s wall ==\n", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
