"""Host layer foundation: namespaces, veth, a bcc XDP program counting real packets,
and `gateway doctor` reading XDP features of a veth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns as pr_netns

from gateway import netns as netns_mod
from gateway.netns import Netns

COUNT_PROGRAM = r"""
#include <uapi/linux/bpf.h>
BPF_PERCPU_ARRAY(seen, u64, 1);
int xdp_count(struct xdp_md *ctx) {
    int key = 0;
    u64 *v = seen.lookup(&key);
    if (v)
        *v += 1;
    return XDP_PASS;
}
"""


@contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run the enclosed code in `ns` (bcc attaches by name in the current namespace)."""
    pr_netns.pushns(ns.name)
    try:
        yield
    finally:
        pr_netns.popns()


def xdp_attached(ns: Netns, dev: str) -> bool:
    return "xdp" in ns.ip("-d", "link", "show", "dev", dev).stdout.split()


def test_bcc_xdp_program_counts_pings_on_a_veth(netns_pair: tuple[Netns, Netns]) -> None:
    from bcc import BPF

    a, b = netns_pair
    bpf = BPF(text=COUNT_PROGRAM)
    fn = bpf.load_func("xdp_count", BPF.XDP)
    with inside(b):
        bpf.attach_xdp("eth0", fn, 0)
    try:
        assert xdp_attached(b, "eth0")
        a.run("ping", "-c", "5", "-i", "0.05", "-W", "2", "192.0.2.2")
        seen = sum(bpf["seen"][0])
        # 5 echo requests, plus possibly ARP/ND frames: at least the pings, never fewer.
        assert 5 <= seen <= 12, seen
    finally:
        with inside(b):
            bpf.remove_xdp("eth0", 0)
        bpf.cleanup()
    assert not xdp_attached(b, "eth0")


def test_namespaces_are_removed_after_use() -> None:
    with netns_mod.netns("gwgone") as ns:
        name = ns.name
        assert name in netns_mod.list_ours("gwgone")
        ns.popen("sleep", "30")
    assert name not in netns_mod.list_ours("gwgone")


def test_doctor_reports_native_xdp_on_veth(netns_pair: tuple[Netns, Netns]) -> None:
    a, _ = netns_pair
    proc = a.run(
        sys.executable,
        "-m",
        "gateway",
        "doctor",
        "--no-compile",
        "--json",
        "-i",
        "eth0",
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["xdp-native[eth0]"]["status"] == "ok"
    assert "redirect" in checks["xdp-native[eth0]"]["detail"]
    assert checks["esp-offload[eth0]"]["status"] == "info"  # veth has no IPsec offload
    assert checks["esp-offload[eth0]"]["detail"].startswith("offload modes: no, auto;")


def test_doctor_names_a_missing_interface(netns_pair: tuple[Netns, Netns]) -> None:
    a, _ = netns_pair
    proc = a.run(
        sys.executable, "-m", "gateway", "doctor", "--no-compile", "-i", "nope0", check=False
    )
    assert proc.returncode == 1
    assert "no interface nope0" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_kernel_esp_probe_agrees_with_ip_xfrm(make_netns) -> None:  # type: ignore[no-untyped-def]
    from gateway import probe

    ns = make_netns("gwesp")
    proc = ns.ip(
        "xfrm",
        "state",
        "add",
        "src",
        "198.51.100.1",
        "dst",
        "198.51.100.2",
        "proto",
        "esp",
        "spi",
        "0x200",
        "mode",
        "tunnel",
        "aead",
        "rfc4106(gcm(aes))",
        "0x" + "22" * 20,
        "128",
        check=False,
    )
    assert probe.kernel_esp().ok == (proc.returncode == 0)
    # the probe leaves no namespace behind
    assert netns_mod.list_ours("gwprobe") == []
    subprocess.run(["true"], check=True)
