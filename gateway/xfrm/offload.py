"""ESP offload of a network device: what it offers, which device a route uses, a trial.

- `offload_capabilities(ifname)`: the ethtool features (`esp-hw-offload`: crypto
  offload, `esp-tx-csum-hw-offload`, `tx-esp-segmentation`) and what they mean for the
  modes `crypto` and `packet` (for `gateway doctor -i DEV`).
- `route_device(dst, src, mark)`: the device the kernel's route to the peer uses, the
  default offload device of a Child SA (an RTM_GETROUTE of our own: pyroute2's sync
  API cannot run inside the daemon's event loop).
- `probe_offload(ifname, mode)`: the definitive answer, by installing a throw-away SA
  with that offload on the device and reading back what the kernel did. Packet offload
  cannot be told from ethtool at all, only by trying (and needs Linux >= 6.2).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import platform
import re
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Literal

from gateway.errors import GatewayError
from gateway.xfrm.channel import in_netns

ESP_FEATURES = (
    "esp-hw-offload",  # NETIF_F_HW_ESP: the device can do ESP crypto (crypto offload)
    "esp-tx-csum-hw-offload",  # NETIF_F_HW_ESP_TX_CSUM
    "tx-esp-segmentation",  # NETIF_F_GSO_ESP
)
PACKET_OFFLOAD_KERNEL = (6, 2)  # XFRM_OFFLOAD_PACKET appeared in Linux 6.2

PacketSupport = Literal["no", "unknown"]


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel (or of `release`)."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def packet_offload_kernel(release: str | None = None) -> bool:
    """Whether the kernel knows packet offload at all (XFRM_OFFLOAD_PACKET, Linux 6.2)."""
    return kernel_version(release) >= PACKET_OFFLOAD_KERNEL


@dataclass(frozen=True, slots=True)
class Feature:
    enabled: bool
    fixed: bool  # "[fixed]": the driver does not let it change

    @property
    def available(self) -> bool:
        return self.enabled or not self.fixed


@dataclass(frozen=True, slots=True)
class OffloadCapabilities:
    ifname: str
    features: dict[str, Feature]
    kernel: str = ""  # the kernel release the answer is for ("" = the running one)

    @property
    def crypto(self) -> bool:
        """Crypto offload possible: the device exposes esp-hw-offload (on or switchable)."""
        f = self.features.get("esp-hw-offload")
        return f is not None and f.available

    @property
    def crypto_enabled(self) -> bool:
        """esp-hw-offload is switched on: the kernel will offload SAs that ask for it."""
        f = self.features.get("esp-hw-offload")
        return f is not None and f.enabled

    @property
    def tx_csum(self) -> bool:
        """The device also computes the inner checksum of offloaded ESP (esp-tx-csum)."""
        f = self.features.get("esp-tx-csum-hw-offload")
        return f is not None and f.enabled

    @property
    def packet(self) -> PacketSupport:
        """Packet (full) offload: "no" when the kernel predates it or the device has no
        ESP offload at all, else "unknown": ethtool does not tell, only a trial does
        (`probe_offload(ifname, "packet")`)."""
        if not self.crypto or not packet_offload_kernel(self.kernel or None):
            return "no"
        return "unknown"

    @property
    def modes(self) -> tuple[str, ...]:
        """The `offload` settings worth trying on this device, strongest last."""
        out = ["no", "auto"]
        if self.crypto:
            out.append("crypto")
        if self.packet != "no":
            out.append("packet")
        return tuple(out)

    @property
    def summary(self) -> str:
        if not self.crypto:
            return "none (ESP runs in software)"
        state = "on" if self.crypto_enabled else "off (ethtool -K DEV esp-hw-offload on)"
        csum = "with" if self.tx_csum else "without"
        if self.packet == "no":
            packet = (
                f"packet offload: no (needs Linux >= {'.'.join(map(str, PACKET_OFFLOAD_KERNEL))})"
            )
        else:
            packet = "packet offload: only known by trying (gateway doctor probes it)"
        return f"crypto offload possible, esp-hw-offload {state}, {csum} ESP tx checksum; {packet}"


def parse_ethtool_features(text: str) -> dict[str, Feature]:
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.strip().partition(":")
        if not sep or name not in ESP_FEATURES:
            continue
        words = rest.split()
        if words:
            out[name] = Feature(words[0] == "on", "[fixed]" in rest)
    return out


def offload_capabilities(ifname: str, netns: str | None = None) -> OffloadCapabilities:
    argv = ["ethtool", "-k", ifname]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except FileNotFoundError as exc:
        raise GatewayError("ethtool is not installed") from exc
    if proc.returncode != 0:
        raise GatewayError(f"ethtool -k {ifname}: {proc.stderr.strip() or 'failed'}")
    return OffloadCapabilities(ifname, parse_ethtool_features(proc.stdout))


# --------------------------------------------------------------------------- routing

RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST, RTA_SRC, RTA_OIF, RTA_MARK = 1, 2, 4, 16
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")


def _rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def route_device(
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | str,
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | str | None = None,
    *,
    mark: int | None = None,
    netns: str | None = None,
) -> str | None:
    """Name of the device the kernel routes packets to `dst` through (from `src`, with
    firewall mark `mark`, as the ESP packets of an SA with that output mark are routed),
    or None when there is no route. `ip route get DST from SRC mark MARK`, in `netns`."""
    dst_ip = ipaddress.ip_address(dst)
    family = socket.AF_INET if dst_ip.version == 4 else socket.AF_INET6
    bits = dst_ip.max_prefixlen
    attrs = _rta(RTA_DST, dst_ip.packed)
    src_len = 0
    if src is not None:
        src_ip = ipaddress.ip_address(src)
        attrs += _rta(RTA_SRC, src_ip.packed)
        src_len = bits
    if mark:
        attrs += _rta(RTA_MARK, struct.pack("=I", mark))
    body = _RTMSG.pack(family, bits, src_len, 0, 0, 0, 0, 0, 0) + attrs
    msg = _NLMSG.pack(16 + len(body), RTM_GETROUTE, NLM_F_REQUEST, 1, 0) + body
    with in_netns(netns):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.settimeout(5)
            s.send(msg)
            data = s.recv(65536)
        pos = 0
        while pos + 16 <= len(data):
            length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, pos)
            if length < 16:
                break
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, pos + 16)
                if err in (-errno.ENETUNREACH, -errno.EHOSTUNREACH, -errno.ENETDOWN):
                    return None
                raise GatewayError(f"route lookup for {dst_ip}: {os.strerror(-err)}")
            if mtype == RTM_NEWROUTE:
                apos, end = pos + 16 + _RTMSG.size, pos + length
                while apos + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, apos)
                    if alen < 4:
                        break
                    if atype == RTA_OIF:
                        (ifindex,) = struct.unpack_from("=I", data, apos + 4)
                        try:
                            return socket.if_indextoname(ifindex)
                        except OSError:
                            return None
                    apos += (alen + 3) & ~3
            pos += (length + 3) & ~3
    return None


# --------------------------------------------------------------------------- trial

ProbeResult = Literal["none", "crypto", "packet"]


@dataclass(frozen=True, slots=True)
class OffloadProbe:
    """What the kernel did with a throw-away SA asking for `mode` on `ifname`."""

    ifname: str
    mode: str
    result: ProbeResult  # what the kernel installed
    reason: str  # why less than asked ("" when it was granted)

    @property
    def granted(self) -> bool:
        return self.result == self.mode
