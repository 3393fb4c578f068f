"""The exporter over real kernel ESP (in the VM when the host kernel has none): two of our
daemons with the `xfrm` data plane, ping through the tunnel, and the daemon's /metrics
carries the kernel's counters: ipsec_child_sa_bytes/packets_total equal to what list-sas
reports (both from the kernel SAs), promtool clean. One test: VM time is expensive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.netns import Netns
from tests.support.daemon import Gateway, gateway_config, wait_for

WEST, EAST = "192.0.2.1", "192.0.2.2"
METRICS = "127.0.0.1:9810"
GET = (
    "import sys, urllib.request\n"
    "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=10).read())\n"
)


def config(sock: Path, me: str, peer: str, mine: str, theirs: str, metrics: str) -> str:
    return gateway_config(
        socket=sock,
        listen=[me],
        dataplane="xfrm",
        metrics=metrics,
        conns=[
            {
                "name": "peer",
                "local": me,
                "remote": peer,
                "local_id": f"gw-{me}",
                "remote_id": f"gw-{peer}",
                "start_action": "start" if metrics != "off" else "none",
                "local_ts": [f"{mine}.0.0/24"],
                "remote_ts": [f"{theirs}.0.0/24"],
            }
        ],
    )


def scrape(ns: Netns) -> str:
    return ns.run(sys.executable, "-c", GET, f"http://{METRICS}/metrics", timeout=120).stdout


def test_kernel_esp_counters_reach_the_exporter(
    netns_pair: tuple[Netns, Netns], tmp_path: Path, run_dir: Path
) -> None:
    a, b = netns_pair
    a.ip("addr", "add", "10.1.0.1/32", "dev", "lo")
    b.ip("addr", "add", "10.2.0.1/32", "dev", "lo")
    a.ip("route", "add", "10.2.0.0/24", "via", EAST)
    b.ip("route", "add", "10.1.0.0/24", "via", WEST)
    Gateway.start(
        b, tmp_path, "east", config(run_dir / "e.sock", EAST, WEST, "10.2", "10.1", "off")
    )
    west = Gateway.start(
        a, tmp_path, "west", config(run_dir / "w.sock", WEST, EAST, "10.1", "10.2", METRICS)
    )
    west.installed("peer")
    a.run("ping", "-c", "5", "-i", "0.2", "-W", "5", "-I", "10.1.0.1", "10.2.0.1", timeout=120)

    def counted() -> dict[str, Any] | None:
        (sa,) = [s for s in west.sas() if s["connection"] == "peer"]
        (child,) = sa["children"]
        return child if child["packets_out"] >= 5 and child["packets_in"] >= 5 else None

    child = wait_for("the kernel counters in list-sas", counted)
    text = scrape(a)
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=120
    )
    assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint
    got = {
        (s.name, s.labels.get("direction", "")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.labels.get("connection") == "peer" and s.labels.get("child") == "net"
    }
    for direction in ("in", "out"):
        assert got[("ipsec_child_sa_packets_total", direction)] == child[f"packets_{direction}"]
        assert got[("ipsec_child_sa_bytes_total", direction)] == child[f"bytes_{direction}"]
        assert child[f"bytes_{direction}"] >= 5 * 84  # 5 ICMP echo packets of 84 bytes
    assert got[("ipsec_child_sa_info", "")] == 1
    assert west.stop() == 0
