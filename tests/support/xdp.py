"""A recording stand-in for the bcc loader (bpf.loader.AttachedPrograms) and engine events
for it, for the unit tests of the XDP adapter (gateway/dataplane/xdp.py) and its share
across workers (gateway/workers/xdpshare.py); raw IPv4 frames (IKE_SA_INIT, ESP) sent
over AF_PACKET for the tests of the programs in a running daemon."""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
from collections.abc import Sequence
from typing import Any

from bpf.loader import BpfError, SlotCounters, in_netns
from gateway.netns import Netns
from ike import events as ev
from ike.ts import ts_from_text


class FakeLoader:
    def __init__(self, fail_install: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_install = fail_install
        self.opened = False
        self.settings: dict[str, Any] = {}

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.opened = False
        self.calls.append(("close",))

    def attachments(self) -> list[tuple[str, str, str]]:
        return [("xdp", "lo", "link")]

    def install_child_sa(
        self,
        slot: int,
        *,
        spi_in: int,
        spi_out: int,
        remote_ts: Sequence[str],
        mtu: int,
        offloaded: bool = False,
    ) -> None:
        if self.fail_install:
            raise BpfError("map slot_table: update failed: No space left on device")
        self.calls.append(("install", slot, spi_in, spi_out, tuple(remote_ts), mtu, offloaded))

    def remove_child_sa_spis(self, *, spi_in: int, spi_out: int) -> None:
        self.calls.append(("remove_spis", spi_in, spi_out))

    def remove_child_sa(
        self, slot: int, *, spi_in: int, spi_out: int, remote_ts: Sequence[str]
    ) -> None:
        self.calls.append(("remove", slot, spi_in, spi_out, tuple(remote_ts)))

    def exclude_prefix(self, prefix: str) -> None:
        self.calls.append(("exclude", prefix))

    def remove_clamp_prefix(self, prefix: str) -> None:
        self.calls.append(("unexclude", prefix))

    def slot_counters(self, slot: int) -> SlotCounters:
        return SlotCounters(esp_in_packets=slot + 1)

    def slot_counters_bulk(self, upto: int | None = None) -> Any:
        from bpf.loader import SLOT_FIELDS, SlotTable

        n = upto or 0
        return SlotTable(
            [[slot + 1 if f == "esp_in_packets" else 0 for slot in range(n)] for f in SLOT_FIELDS]
        )

    def slot_cpu(self, slot: int) -> int | None:
        return self.settings.get("cpu_of", {}).get(slot)

    def steered(self) -> dict[int, int]:
        return {1: 7}

    def update_settings(self, **settings: Any) -> None:
        self.calls.append(("settings", tuple(sorted(settings))))
        self.settings.update(settings)

    def verdicts(self) -> list[Any]:
        from bpf.loader import XdpVerdict

        return [XdpVerdict("lo", "pass", "ike", 4)]

    def mss_clamped(self) -> dict[str, int]:
        return {"lan0": 2}


def child(spi_in: int, spi_out: int, **kw: Any) -> ev.ChildSaEstablished:
    e = ev.ChildSaEstablished(
        1,
        "east",
        "net",
        True,
        spi_in,
        spi_out,
        "tunnel",
        "192.0.2.1",
        "192.0.2.2",
        None,
        (ts_from_text("10.1.0.0/24"),),
        (ts_from_text("10.2.0.0/24"),),
        "aes256gcm16",
        "rfc4106(gcm(aes))",
        128,
        None,
        0,
        False,
        b"k" * 36,
        b"K" * 36,
        b"",
        b"",
        0.0,
    )
    return dataclasses.replace(e, **kw)


# --------------------------------------------------------------------------- raw frames
# Built with struct, not scapy (bpf/packets.py): a flood test makes thousands, and under
# the VM's emulation scapy takes milliseconds per packet.


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_frame(dst_mac: bytes, src: str, dst: str, proto: int, payload: bytes) -> bytes:
    """An Ethernet frame (source MAC zero: the kernel does not check it) with an IPv4
    packet of `proto` carrying `payload`."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0x4000,  # don't fragment
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return dst_mac + bytes(6) + b"\x08\x00" + header + payload


def ike_init_frame(dst_mac: bytes, src: str, dst: str, spi_i: bytes) -> bytes:
    """An IKE_SA_INIT request (header only: what the XDP shield looks at) on UDP 500;
    UDP checksum 0 (none, RFC 768)."""
    ike = spi_i + bytes(8) + struct.pack("!BBBBII", 0, 0x20, 34, 0x08, 0, 28)
    udp = struct.pack("!HHHH", 500, 500, 8 + len(ike), 0) + ike
    return ipv4_frame(dst_mac, src, dst, socket.IPPROTO_UDP, udp)


def esp_frame(dst_mac: bytes, src: str, dst: str, spi: int, seq: int = 1) -> bytes:
    return ipv4_frame(dst_mac, src, dst, 50, struct.pack("!II", spi, seq) + bytes(64))


def send_frames(ns: Netns, ifname: str, frames: Sequence[bytes]) -> None:
    """Send Ethernet frames out of `ifname` in `ns` over AF_PACKET."""
    with in_netns(ns.name):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with raw:
        raw.bind((ifname, 0))
        for frame in frames:
            raw.send(frame)


def mac_of(ns: Netns, ifname: str) -> bytes:
    address = json.loads(ns.run("ip", "-j", "link", "show", ifname).stdout)[0]["address"]
    return bytes.fromhex(address.replace(":", ""))
