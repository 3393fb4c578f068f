"""netdevsim, the kernel's simulated NIC, as an ESP offload device for kernel tests.

Debian's kernel does not ship the module; scripts/setup.sh builds it out of tree from
linux-source-6.1 into .work/netdevsim/<release>/netdevsim.ko of the checkout (the VM
sees the checkout read-only). Inside the VM:

    with netdevsim.device(ns, "nsim0") as nsim:   # loads psample + the module first
        ...                                        # nsim0 is in namespace ns, down
        nsim.ipsec()                               # IpsecCounters(sa_count, tx, sas)

Its devices report `esp-hw-offload: on [fixed]`, accept crypto offload of
`rfc4106(gcm(aes))` SAs with a 128-bit ICV and a 128-bit key (no ESN, no UDP
encapsulation on 6.1), count every transmitted packet of an offloaded SA in debugfs
(`/sys/kernel/debug/netdevsim/netdevsimN/ports/0/ipsec`: "SA count=2 tx=5") and drop
everything they transmit (6.1's netdevsim has no peer device). It holds at most 33 SAs.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.netns import Netns

ROOT = Path(__file__).resolve().parents[2]
BUS = Path("/sys/bus/netdevsim")
DEBUGFS = Path("/sys/kernel/debug")


class NetdevsimError(RuntimeError):
    pass


def module_path(release: str | None = None) -> Path:
    return ROOT / ".work" / "netdevsim" / (release or platform.release()) / "netdevsim.ko"


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise NetdevsimError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")


def load() -> None:
    """psample, then our netdevsim.ko, then debugfs; each only when not there yet."""
    if not BUS.exists():
        ko = module_path()
        if not ko.exists():
            raise NetdevsimError(
                f"{ko} missing: scripts/setup.sh builds netdevsim for {platform.release()}"
            )
        _run("modprobe", "psample")
        _run("insmod", str(ko))
    if not (DEBUGFS / "netdevsim").exists():
        _run("mount", "-t", "debugfs", "none", str(DEBUGFS))


@dataclass(frozen=True, slots=True)
class IpsecSa:
    index: int
    direction: str  # "tx" | "rx"
    ipaddr: str  # the SA's destination
    spi: int


@dataclass(frozen=True, slots=True)
class IpsecCounters:
    """The simulated NIC's view: SAs it holds and packets of offloaded SAs it sent."""

    sa_count: int
    tx: int
    sas: tuple[IpsecSa, ...]


def parse_ipsec(text: str) -> IpsecCounters:
    head = re.search(r"SA count=(\d+) tx=(\d+)", text)
    if head is None:
        raise NetdevsimError(f"unexpected netdevsim ipsec file: {text[:200]!r}")
    sas = []
    for idx, direction, ipaddr in re.findall(r"sa\[(\d+)\] ([rt]x) ipaddr=(\S+)", text):
        spi = re.search(rf"sa\[{idx}\]\s+spi=0x([0-9a-f]+)", text)
        sas.append(IpsecSa(int(idx), direction, ipaddr, int(spi.group(1), 16) if spi else 0))
    return IpsecCounters(int(head.group(1)), int(head.group(2)), tuple(sas))


@dataclass
class Netdevsim:
    dev_id: int
    ifname: str
    netns: Netns

    @property
    def debugfs(self) -> Path:
        return DEBUGFS / "netdevsim" / f"netdevsim{self.dev_id}" / "ports" / "0"

    def ipsec(self) -> IpsecCounters:
        return parse_ipsec((self.debugfs / "ipsec").read_text())

    def close(self) -> None:
        """Remove the device (the kernel drops the SAs offloaded to it first)."""
        if (BUS / "devices" / f"netdevsim{self.dev_id}").exists():
            (BUS / "del_device").write_text(f"{self.dev_id}\n")


def _free_id() -> int:
    used = {
        int(p.name.removeprefix("netdevsim"))
        for p in (BUS / "devices").glob("netdevsim*")
        if p.name.removeprefix("netdevsim").isdigit()
    }
    base = 100 + os.getpid() % 800
    return next(i for i in range(base, base + 1000) if i not in used)


def _take(dev_id: int, ifname: str, ns: Netns) -> None:
    """Rename the device's netdev and move it into `ns`. udev may be renaming it at the
    same moment (eth0 -> eni<id>np1), so look its name up again until the move works."""
    net = BUS / "devices" / f"netdevsim{dev_id}" / "net"
    error = "no netdev appeared"
    for _ in range(50):
        names = sorted(p.name for p in net.iterdir()) if net.exists() else []
        if len(names) == 1:
            try:
                _run("ip", "link", "set", names[0], "name", ifname, "netns", ns.name)
                return
            except NetdevsimError as exc:
                error = str(exc)
        time.sleep(0.1)
    raise NetdevsimError(f"netdevsim{dev_id}: {error}")


@contextmanager
def device(ns: Netns, ifname: str) -> Iterator[Netdevsim]:
    """A netdevsim device with one port, renamed `ifname` and moved into `ns`; removed
    on exit, also when the body fails."""
    load()
    dev_id = _free_id()
    (BUS / "new_device").write_text(f"{dev_id} 1\n")
    nsim = Netdevsim(dev_id, ifname, ns)
    try:
        _take(dev_id, ifname, ns)
        yield nsim
    finally:
        nsim.close()
