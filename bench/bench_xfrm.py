"""Child SAs into the kernel the way the daemon does it vs `ip -batch` of the same SAs.

The daemon's path: each Child is a `ChildSaEstablished` event (as the IKE engine emits
it) with the Child config's defaults, turned into a ChildSaSpec by the data plane
(`child_sa_spec`: replay window, lifetimes, ESN as the daemon sets them) and installed
with `XfrmDataplane.install_many()`, which is what gateway/daemon/children.py calls for
the Child SAs that complete in one event-loop turn (a burst of peers). `ip -batch` then
installs the same states and policies (same keys, selectors, replay window, lifetime,
priorities), one request + ACK per line. Both into a fresh namespace with the kernel's
default SPD hash thresholds, which the daemon leaves as they are (`--hthresh` sets
24/24, as strongSwan's spdh_thresh can: labelled in the output).

Needs kernel ESP. When the running kernel has none (our development machines), the
script re-runs itself inside a virtme-ng VM (gateway.lab.vm) and prints what it printed
there; the VM runs under TCG (~30x slower than the host): the ratio is the point.

    .venv/bin/python bench/bench_xfrm.py [--children 1000] [--one-peer] [--hthresh]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import netns, probe  # noqa: E402
from gateway.config.reader import parse_config  # noqa: E402
from gateway.dataplane.xfrm import XfrmDataplane  # noqa: E402
from gateway.xfrm.manager import POLICY_PRIORITY_BASE  # noqa: E402
from ike import events as ev  # noqa: E402
from ike.ts import ts_from_text  # noqa: E402

LOCAL = "192.0.2.1"
CHILD_CONFIG = (
    parse_config(
        '[connections.c]\nlocal = { auth = "psk" }\nremote = { auth = "psk" }\n'
        'psk = "bench-secret-123456"\n[connections.c.children.net]\n'
    )
    .connections[0]
    .children[0]
)


def events(n: int, *, one_peer: bool) -> list[ev.ChildSaEstablished]:
    """n Child SAs as the engine reports them: 10.hi.lo.0/24 <-> 11.hi.lo.0/24, each to
    its own peer (or all to one), AES-GCM-128 (rfc4106, 128-bit ICV)."""
    out = []
    for i in range(n):
        hi, lo = divmod(i, 256)
        out.append(
            ev.ChildSaEstablished(
                ike_sa=i + 1,
                connection="c",
                child="net",
                initiator=False,
                spi_in=0xC0000000 + 2 * i,
                spi_out=0xC0000001 + 2 * i,
                mode="tunnel",
                local_addr=LOCAL,
                remote_addr="192.0.2.2" if one_peer else f"198.18.{hi}.{lo}",
                encap=None,
                local_ts=(ts_from_text(f"10.{hi}.{lo}.0/24"),),
                remote_ts=(ts_from_text(f"11.{hi}.{lo}.0/24"),),
                proposal="aes128gcm16",
                encr_alg="rfc4106(gcm(aes))",
                icv_bits=128,
                integ_alg=None,
                integ_trunc_bits=0,
                esn=False,
                encr_key_in=os.urandom(20),
                encr_key_out=os.urandom(20),
                integ_key_in=b"",
                integ_key_out=b"",
            )
        )
    return out


def ip_batch_lines(children: list[Any]) -> str:
    """The same states and policies as `ip xfrm` lines (specs as the data plane built them)."""
    lines = []
    for s in children:
        limit = f" limit time-hard {s.lifetime.hard_seconds}" if s.lifetime.hard_seconds else ""
        flag = " flag esn" if s.esn else ""
        for src, dst, spi, key in (
            (s.remote, s.local, s.spi_in, s.keys_in),
            (s.local, s.remote, s.spi_out, s.keys_out),
        ):
            lines.append(
                f"xfrm state add src {src} dst {dst} proto esp spi {spi:#010x} "
                f"reqid {s.reqid} mode tunnel replay-window {s.replay_window}{flag} "
                f"aead rfc4106(gcm(aes)) 0x{key.encr.hex()} 128{limit}"
            )
        lt, rt = s.local_ts[0], s.remote_ts[0]
        prio = POLICY_PRIORITY_BASE - 4 * (lt.net.prefixlen + rt.net.prefixlen)  # as ours
        for d, sel_src, sel_dst, t_src, t_dst in (
            ("in", rt, lt, s.remote, s.local),
            ("fwd", rt, lt, s.remote, s.local),
            ("out", lt, rt, s.local, s.remote),
        ):
            lines.append(
                f"xfrm policy add src {sel_src} dst {sel_dst} dir {d} priority {prio} "
                f"tmpl src {t_src} dst {t_dst} proto esp reqid {s.reqid} mode tunnel"
            )
    return "\n".join(lines) + "\n"


def count_objects(ns: netns.Netns) -> tuple[int, int]:
    """(states, policies): 'SAD count N' and 'SPD IN a OUT b FWD c' (first line)."""
    states = int(ns.ip("xfrm", "state", "count").stdout.split()[-1])
    spd = ns.ip("xfrm", "policy", "count").stdout.splitlines()[0].split()
    return states, sum(int(w) for w in spd if w.isdigit())


def run(n: int, one_peer: bool, hthresh: bool) -> None:
    print(
        f"machine: {platform.node()} {platform.machine()} kernel {platform.release()}, "
        f"{os.cpu_count()} vCPU, python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(
        f"scenario: {n} Child SAs, {'one peer' if one_peer else 'one peer each'}, "
        f"/24 <-> /24 selectors, SPD hash threshold "
        f"{'24/24 (set by this benchmark, not by the daemon)' if hthresh else 'kernel default'}"
    )
    children = events(n, one_peer=one_peer)
    # warm-up: the kernel loads the AEAD's modules and builds its template on first use
    # (seconds under TCG); neither method should pay for that
    with netns.netns("gwwarm") as ns:
        dataplane = XfrmDataplane(netns=ns.name)
        try:
            dataplane.install_many([(e, CHILD_CONFIG) for e in events(20, one_peer=False)])
            dataplane.manager.flush()
        finally:
            dataplane.close()
    # each method into a namespace of its own: the kernel's SA and policy hash tables
    # grow as objects come and never shrink, so a method run after another would find
    # them grown already
    with netns.netns("gwbench") as ns:
        if hthresh:
            ns.ip("xfrm", "policy", "set", "hthresh4", "24", "24")
        dataplane = XfrmDataplane(netns=ns.name)
        try:
            dataplane.start()
            t0 = time.perf_counter()
            results = dataplane.install_many([(e, CHILD_CONFIG) for e in children])
            t_ours = time.perf_counter() - t0
            failed = sum(1 for r in results if not hasattr(r, "handle"))
            objs = count_objects(ns)
            specs = [r.handle.spec for r in results if hasattr(r, "handle")]
            t0 = time.perf_counter()
            dataplane.manager.flush()
            t_flush = time.perf_counter() - t0
        finally:
            dataplane.close()
        left = count_objects(ns)
    with netns.netns("gwbench") as ns:  # one install per Child, as before batching
        if hthresh:
            ns.ip("xfrm", "policy", "set", "hthresh4", "24", "24")
        dataplane = XfrmDataplane(netns=ns.name)
        try:
            t0 = time.perf_counter()
            for e in children:
                dataplane.install(e, CHILD_CONFIG)
            t_single = time.perf_counter() - t0
        finally:
            dataplane.close()
    with netns.netns("gwbench") as ns:
        if hthresh:
            ns.ip("xfrm", "policy", "set", "hthresh4", "24", "24")
        batch = ip_batch_lines(specs)
        with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
            f.write(batch)
        try:
            t0 = time.perf_counter()
            proc = subprocess.run(
                ["ip", "-n", ns.name, "-batch", f.name], capture_output=True, text=True
            )
            t_ip = time.perf_counter() - t0
        finally:
            os.unlink(f.name)
        ip_objs = count_objects(ns)
    total = n * 5
    print(f"children: {n} ({total} objects: {2 * n} states + {3 * n} policies)")
    print(
        f"daemon path, XfrmDataplane.install_many: {t_ours:.2f} s ({n / t_ours:,.0f} Child SAs/s, "
        f"{total / t_ours:,.0f} objects/s), {failed} failed, kernel had {objs[0]} states / "
        f"{objs[1]} policies"
    )
    print(f"one install() per Child SA (before batching): {t_single:.2f} s ({n / t_single:,.0f}/s)")
    print(f"flush (dump + delete ours): {t_flush:.2f} s, left {left}")
    print(
        f"ip -batch: {t_ip:.2f} s ({n / t_ip:,.0f} Child SAs/s), exit {proc.returncode}, "
        f"kernel has {ip_objs[0]} states / {ip_objs[1]} policies"
    )
    print(
        f"ratio ip -batch / install_many: {t_ip / t_ours:.2f}x; "
        f"one-by-one / install_many: {t_single / t_ours:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument(
        "--one-peer", action="store_true", help="all Childs to one peer (default: one each)"
    )
    parser.add_argument(
        "--hthresh", action="store_true", help="SPD hash threshold 24/24 (the daemon sets none)"
    )
    parser.add_argument("--here", action="store_true", help="run on this kernel, no VM")
    args = parser.parse_args()
    if args.here or probe.kernel_esp().ok:
        run(args.children, args.one_peer, args.hthresh)
        return 0
    from gateway.lab.vm import run_in_vm

    print("host kernel has no ESP: running the benchmark in a virtme-ng VM (TCG)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gw-bench-xfrm-") as tmp:
        out = Path(tmp) / "out.txt"
        script = (
            f"cd {ROOT} && PYTHONDONTWRITEBYTECODE=1 {sys.executable} "
            f"bench/bench_xfrm.py --here --children {args.children}"
            f"{' --one-peer' if args.one_peer else ''}{' --hthresh' if args.hthresh else ''}"
            f" > {out} 2>&1"
        )
        result = run_in_vm(script, rwdirs=[Path(tmp)], timeout=3600)
        print(out.read_text() if out.exists() else result.console[-3000:])
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
