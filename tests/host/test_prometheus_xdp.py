"""`ipsec_xdp_packets_total` from the real XDP program: the data plane (bpf.loader) is
attached in a namespace, ESP frames for a known and an unknown SPI arrive over veth, and
the exporter, fed by `AttachedPrograms.verdicts()`, reports exactly those packets."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bpf import packets as pk
from bpf.loader import AttachedPrograms, in_netns
from gateway.metrics import MetricsSnapshot, start_exporter
from gateway.netns import Netns

SLOT = 5
SPI = (0x7A7A << 16) | SLOT


class DataplaneSource:
    def __init__(self, dp: AttachedPrograms) -> None:
        self.dp = dp

    def metrics_snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(xdp=self.dp.verdicts(), mss_clamped=self.dp.mss_clamped())


def send_frames(src: Netns, dst: Netns, frames: list[bytes]) -> None:
    """Ethernet frames from src's eth0 to dst's eth0 over AF_PACKET (fixing the MAC)."""
    mac = json.loads(dst.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
    with in_netns(src.name):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with raw:
        raw.bind(("eth0", 0))
        for frame in frames:
            raw.send(bytes.fromhex(mac.replace(":", "")) + frame[6:])


def scrape(url: str) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint
    return {
        (s.labels["interface"], s.labels["action"], s.labels["reason"]): s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "ipsec_xdp_packets"
        for s in fam.samples
    }


def test_xdp_verdicts_reach_prometheus(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    gw, remote = netns_pair
    with AttachedPrograms("eth0", None, netns=gw.name, drop_unknown_spi=True) as dp:
        dp.add_inbound_spi(SLOT, SPI)
        known = pk.esp4(SPI, size=200, src="192.0.2.2", dst="192.0.2.1")
        unknown = pk.esp4(SPI + (1 << 16), size=200, src="192.0.2.2", dst="192.0.2.1")
        with start_exporter(DataplaneSource(dp), "127.0.0.1:0") as exp:
            send_frames(remote, gw, [known] * 5 + [unknown] * 3)
            deadline = time.monotonic() + 10
            rows = scrape(exp.url)
            while rows.get(("eth0", "drop", "esp_unknown_spi"), 0) < 3:
                if time.monotonic() > deadline:
                    pytest.fail(f"verdicts never arrived: {rows}")
                time.sleep(0.1)
                rows = scrape(exp.url)
            assert rows[("eth0", "pass", "esp")] == 5
            assert rows[("eth0", "drop", "esp_unknown_spi")] == 3
            # The exposition is the data plane's own counters. Stray link traffic (IPv6
            # MLD, ...) may still arrive between the scrape and this read, so the later
            # read may only have grown, and the ESP rows, which only the test sends, match.
            later = {(v.interface, v.action, v.reason): v.packets for v in dp.verdicts()}
            assert all(later[key] >= value for key, value in rows.items()), (rows, later)
            for key in (("eth0", "pass", "esp"), ("eth0", "drop", "esp_unknown_spi")):
                assert later[key] == rows[key]
        dp.clear()
