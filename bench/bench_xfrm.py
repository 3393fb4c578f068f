"""Install 10,000 Child SAs (2 states + 3 policies each) with gateway.xfrm vs `ip -batch`.

Needs kernel ESP. When the running kernel has none (our development machines), the
script re-runs itself inside a virtme-ng VM (gateway.lab.vm) and prints what it printed
there. Both methods install the same objects (AES-GCM-128, tunnel mode, replay window
1024, distinct /24 selectors) into a fresh namespace; printed numbers, no assertions.

    .venv/bin/python bench/bench_xfrm.py [--children N]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import netns, probe  # noqa: E402
from gateway.xfrm import (  # noqa: E402
    ChildSaSpec,
    EspTransform,
    SaKeys,
    TrafficSelector,
    XfrmManager,
)
from gateway.xfrm.manager import POLICY_PRIORITY_BASE  # noqa: E402

GCM = EspTransform(aead="rfc4106(gcm(aes))", icv_bits=128)
LOCAL = ipaddress.ip_address("192.0.2.1")
REMOTE = ipaddress.ip_address("192.0.2.2")


def specs(n: int, first_reqid: int, *, one_peer: bool) -> list[ChildSaSpec]:
    """n site-to-site Childs: 10.hi.lo.0/24 <-> 11.hi.lo.0/24, to one peer or n peers."""
    out = []
    for i in range(n):
        hi, lo = divmod(i, 256)
        remote = REMOTE if one_peer else ipaddress.ip_address(f"198.18.{hi}.{lo}")
        out.append(
            ChildSaSpec(
                local=LOCAL,
                remote=remote,
                spi_in=0xC0000000 + 2 * i,
                spi_out=0xC0000001 + 2 * i,
                reqid=first_reqid + i,
                esp=GCM,
                keys_in=SaKeys(os.urandom(20)),
                keys_out=SaKeys(os.urandom(20)),
                local_ts=(TrafficSelector.parse(f"10.{hi}.{lo}.0/24"),),
                remote_ts=(TrafficSelector.parse(f"11.{hi}.{lo}.0/24"),),
                replay_window=1024,
            )
        )
    return out


def ip_batch_lines(children: list[ChildSaSpec]) -> str:
    lines = []
    for s in children:
        for src, dst, spi, key in (
            (s.remote, s.local, s.spi_in, s.keys_in),
            (s.local, s.remote, s.spi_out, s.keys_out),
        ):
            lines.append(
                f"xfrm state add src {src} dst {dst} proto esp spi {spi:#010x} "
                f"reqid {s.reqid} mode tunnel replay-window {s.replay_window} "
                f"aead rfc4106(gcm(aes)) 0x{key.encr.hex()} 128"
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
        f"{os.cpu_count()} vCPU, python {platform.python_version()}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(
        f"scenario: {'one peer' if one_peer else f'{n} peers'}, /24 <-> /24 selectors, "
        f"SPD hash threshold {'24/24 (hashed)' if hthresh else 'default 32/32 (inexact)'}"
    )
    with netns.netns("gwbench") as ns:
        if hthresh:
            # Policies with both prefixes >= /24 go to the SPD hash instead of the
            # inexact list (the same for both methods; strongSwan: spdh_thresh).
            ns.ip("xfrm", "policy", "set", "hthresh4", "24", "24")
        with XfrmManager(netns=ns.name) as mgr:
            children = specs(n, mgr.owned.first, one_peer=one_peer)
            t0 = time.perf_counter()
            groups = [mgr._state_ops(s, None) + mgr._policy_ops(s) for s in children]
            t_build = time.perf_counter() - t0
            del groups
            t0 = time.perf_counter()
            results = mgr.install_many(children)
            t_ours = time.perf_counter() - t0
            failed = sum(1 for r in results if not hasattr(r, "spec"))
            objs = count_objects(ns)
            t0 = time.perf_counter()
            mgr.flush()
            t_flush = time.perf_counter() - t0
        left = count_objects(ns)
        batch = ip_batch_lines(children)
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
        f"gateway.xfrm install_many: {t_ours:.2f} s ({total / t_ours:,.0f} objects/s), "
        f"{failed} failed, kernel has {objs[0]} states / {objs[1]} policies"
    )
    print(f"  of which message encoding alone: {t_build:.2f} s")
    print(f"gateway.xfrm flush (dump + delete ours): {t_flush:.2f} s, left {left}")
    print(
        f"ip -batch: {t_ip:.2f} s ({total / t_ip:,.0f} objects/s), exit {proc.returncode}, "
        f"kernel has {ip_objs[0]} states / {ip_objs[1]} policies"
    )
    print(f"ratio ip -batch / gateway.xfrm: {t_ip / t_ours:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument(
        "--one-peer", action="store_true", help="all Childs to one peer (default: one each)"
    )
    parser.add_argument(
        "--inexact", action="store_true", help="default SPD hash thresholds (inexact list)"
    )
    parser.add_argument("--here", action="store_true", help="run on this kernel, no VM")
    args = parser.parse_args()
    if args.here or probe.kernel_esp().ok:
        run(args.children, args.one_peer, not args.inexact)
        return 0
    from gateway.lab.vm import run_in_vm

    print("host kernel has no ESP: running the benchmark in a virtme-ng VM (TCG)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gw-bench-xfrm-") as tmp:
        out = Path(tmp) / "out.txt"
        script = (
            f"cd {ROOT} && PYTHONDONTWRITEBYTECODE=1 {sys.executable} "
            f"bench/bench_xfrm.py --here --children {args.children}"
            f"{' --one-peer' if args.one_peer else ''}{' --inexact' if args.inexact else ''}"
            f" > {out} 2>&1"
        )
        result = run_in_vm(script, rwdirs=[Path(tmp)], timeout=3600)
        print(out.read_text() if out.exists() else result.console[-3000:])
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
