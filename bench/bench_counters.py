"""Reading the counters of N Child SAs from XFRM: one GETSA dump vs two GETSA per Child.

What a scrape without XDP costs (docs/xfrm.md "Counters"): XfrmManager.dump_counters()
reads every ESP state of the namespace in one dump and child_counters() maps the table
onto the Childs; the old way is counters() per Child (two GETSA each). N Childs (2N
states; no policies: they do not change either read) are installed into a fresh
namespace. The host kernel has no ESP, so that part re-runs itself in a virtme-ng VM
(TCG, ~30x slower than the host); the Python side of the dump (scan_counters over 2N
messages) is also timed on the host with synthetic messages, for the real-CPU figure.

    .venv/bin/python bench/bench_counters.py [--children 100000] [--getsa-sample 5000]

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import netns, probe  # noqa: E402
from gateway.xfrm import ChildSaSpec, EspTransform, SaKeys, XfrmManager  # noqa: E402
from gateway.xfrm import netlink as nl  # noqa: E402
from gateway.xfrm.scan import scan_counters  # noqa: E402

GCM = EspTransform(aead="rfc4106(gcm(aes))", icv_bits=128)
LOCAL = ipaddress.ip_address("192.0.2.1")


def specs(n: int, first_reqid: int) -> list[ChildSaSpec]:
    """n transport-mode Childs to n peers (198.18.0.0/15), distinct SPIs."""
    out = []
    for i in range(n):
        remote = ipaddress.ip_address(int(ipaddress.ip_address("198.18.0.0")) + i + 1)
        out.append(
            ChildSaSpec(
                local=LOCAL,
                remote=remote,
                spi_in=0xC0000000 + 2 * i,
                spi_out=0xC0000001 + 2 * i,
                reqid=first_reqid + i % 65536,
                esp=GCM,
                keys_in=SaKeys(os.urandom(20)),
                keys_out=SaKeys(os.urandom(20)),
                mode="transport",
                replay_window=1024,
            )
        )
    return out


def median_time(fn: object, rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def parse_on_host(states: int) -> None:
    """The Python side of a dump: scan_counters over `states` GETSA replies."""
    body = nl.pack_fields(
        nl.USERSA_INFO, {"id_daddr": bytes(16), "saddr": bytes(16), "reqid": 0x4E470001}
    )
    body += bytes(280)  # the attributes of a GCM state with a 1024-packet window
    msg = struct.pack("=IHHII", 16 + len(body), nl.XFRM_MSG_NEWSA, 2, 1, 0) + body
    chunk = msg * 64  # ~32 KiB, what one recv() of a dump brings
    offsets = [i * len(msg) + 16 for i in range(64)]
    start = time.perf_counter()
    for _ in range(states // 64):
        for off in offsets:
            scan_counters(chunk, off)
    per = (time.perf_counter() - start) / (states // 64 * 64)
    total_ms = per * states * 1e3
    print(f"host: scan_counters, {states:,} messages: {total_ms:.1f} ms ({per * 1e9:.0f} ns each)")


def run(n: int, sample: int) -> None:
    print(
        f"machine: {platform.node()} {platform.machine()} kernel {platform.release()}, "
        f"{os.cpu_count()} vCPU, python {platform.python_version()}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {os.getloadavg()}")
    with netns.netns("gwbctr") as ns, XfrmManager(netns=ns.name) as mgr:
        children = specs(n, mgr.owned.first)
        start = time.perf_counter()
        for i in range(0, n, 2000):
            groups = [mgr._state_ops(s, None) for s in children[i : i + 2000]]
            assert not any(mgr._run_groups(groups))
        print(
            f"children: {n:,} ({2 * n:,} states) installed in {time.perf_counter() - start:.1f} s"
        )
        t_dump, table = median_time(mgr.dump_counters, 3)
        assert isinstance(table, dict)
        t_map, rows = median_time(lambda: mgr.child_counters(children, table), 3)
        assert isinstance(rows, list) and None not in rows
        print(f"dump_counters(): {t_dump:.2f} s for {len(table):,} states (one GETSA dump)")
        print(f"child_counters() over the table: {t_map:.2f} s for {n:,} Childs")
        part = children[:sample]
        start = time.perf_counter()
        for c in part:
            mgr.counters(c)
        per_child = (time.perf_counter() - start) / len(part)
        print(
            f"counters() per Child (2 GETSA): {per_child * 1e3:.2f} ms each, "
            f"{per_child * n:.1f} s for {n:,} (measured on {len(part):,})"
        )
        print(f"ratio per-Child / dump+map: {per_child * n / (t_dump + t_map):.1f}x")
        mgr.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--children", type=int, default=100_000)
    ap.add_argument("--getsa-sample", type=int, default=5_000)
    ap.add_argument("--here", action="store_true", help="run on this kernel, no VM")
    args = ap.parse_args()
    if args.here or probe.kernel_esp().ok:
        run(args.children, args.getsa_sample)
        return 0
    from gateway.vm import run_in_vm

    parse_on_host(2 * args.children)
    print("host kernel has no ESP: running the kernel part in a virtme-ng VM (TCG)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gw-bench-ctr-") as tmp:
        out = Path(tmp) / "out.txt"
        script = (
            f"cd {ROOT} && PYTHONDONTWRITEBYTECODE=1 {sys.executable} bench/bench_counters.py "
            f"--here --children {args.children} --getsa-sample {args.getsa_sample} > {out} 2>&1"
        )
        result = run_in_vm(script, rwdirs=[Path(tmp)], memory="3G", timeout=3600)
        print(out.read_text() if out.exists() else result.console[-3000:])
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
