"""Packet captures in a test's namespace: tcpdump on one interface (egress only where a
test must prove what leaves a gateway: ingress also shows decrypted tunnel packets
re-entering, PLATFORM.md), read back as tcpdump's text lines, and ESP counted by SPI."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import wait_for


class Capture:
    """tcpdump on one interface of a namespace, into a pcap on a VM-local path."""

    def __init__(self, ns: Netns, dev: str, path: Path, *, out_only: bool) -> None:
        self.path, self.err = path, path.with_suffix(".err")
        with open(self.err, "wb") as err:
            self.proc = ns.popen(
                "tcpdump",
                "-i",
                dev,
                *(("-Q", "out") if out_only else ()),
                "-nn",
                "-U",
                "--immediate-mode",  # no packets held back in the capture ring
                "-s",
                "128",
                "-Z",
                "root",
                "-w",
                str(path),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.ns, self.dev = ns, dev

    def ready(self) -> None:
        wait_for(
            f"tcpdump on {self.dev}",
            lambda: "listening on" in self.err.read_text() or self.proc.poll() is not None,
            timeout=60,
        )
        assert self.proc.poll() is None, self.err.read_text()

    def stop(self, settle: float = 1.0) -> list[str]:
        """Stop once the capture file has not grown for `settle` seconds (at most 30 s):
        on a slow machine tcpdump writes the last packets a while after they were sent,
        and what it has not written when it is stopped is lost."""
        size, since, deadline = -1, time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline:
            now = self.path.stat().st_size if self.path.exists() else 0
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
            time.sleep(0.1)
        self.ns.stop(self.proc)
        return subprocess.run(
            ["tcpdump", "-Z", "root", "-r", str(self.path), "-nn"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()


def esp_spis(lines: list[str], *, encap: bool) -> dict[int, int]:
    """ESP packets per SPI in a capture, only UDP-encapsulated (encap) or only plain."""
    count: dict[int, int] = {}
    for line in lines:
        m = re.search(r"ESP\(spi=0x([0-9a-f]+),", line)
        if m and ("UDP-encap" in line) is encap:
            spi = int(m.group(1), 16)
            count[spi] = count.get(spi, 0) + 1
    return count
