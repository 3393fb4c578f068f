"""What the daemon asks the XFRM manager to install: frozen, key-bearing value objects.

The IKE engine's ChildSaEstablished event maps onto ChildSaSpec: addresses, the two SPIs,
the negotiated ESP transform spelled the way the kernel's crypto API names it, the keys
of each direction (KEYMAT split per RFC 7296 §2.17), the traffic selectors and the local
policy (lifetimes, replay window, offload). Keys never appear in repr().
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Literal

from gateway.xfrm.netlink import XFRM_INF

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["tunnel", "transport"]
OffloadMode = Literal["auto", "crypto", "packet", "no"]
OffloadResult = Literal["none", "crypto", "packet"]

# Replay window rule (see docs/xfrm.md): the window must cover the packets that can be
# reordered in flight, i.e. rate x reordering time / packet size. For a 10 Gbit/s path
# with 1 ms of reordering (multipath backbones, RSS spreading over CPUs) and 1500-byte
# packets: 10e9 * 1e-3 / (8 * 1500) = 833 packets, rounded up to a multiple of 32 and
# to a power of two: 1024. The kernel's bitmap allows at most 4096 packets
# (bmp_len <= XFRMA_REPLAY_ESN_MAX / sizeof(u32) / 8 = 128 words of 32 bits).
REPLAY_WINDOW_MAX = 4096


def replay_window_for(rate_bps: float, reorder_seconds: float, packet_bytes: int = 1500) -> int:
    """The replay window (packets) for a path: next power of two >= rate*time/size."""
    packets = rate_bps * reorder_seconds / (8 * packet_bytes)
    window = 32
    while window < packets and window < REPLAY_WINDOW_MAX:
        window *= 2
    return window


DEFAULT_REPLAY_WINDOW = replay_window_for(10e9, 1e-3)  # 1024


@dataclass(frozen=True, slots=True)
class EspTransform:
    """The negotiated ESP transform, names as the kernel's crypto API spells them.

    Either `aead` ('rfc4106(gcm(aes))', 'rfc7539esp(chacha20,poly1305)') with `icv_bits`,
    or `crypt` ('cbc(aes)') plus `integ` ('hmac(sha256)') with `trunc_bits`.
    """

    aead: str | None = None
    icv_bits: int = 128
    crypt: str | None = None
    integ: str | None = None
    trunc_bits: int = 128

    def __post_init__(self) -> None:
        if self.aead is None and self.crypt is None:
            raise ValueError("an ESP transform needs an AEAD or an encryption algorithm")
        if self.aead is not None and (self.crypt is not None or self.integ is not None):
            raise ValueError("an AEAD transform takes no separate encryption/integrity")
        for name in (self.aead, self.crypt, self.integ):
            if name is not None and len(name.encode()) >= 64:
                raise ValueError(f"algorithm name too long for the kernel: {name!r}")

    @property
    def description(self) -> str:
        if self.aead:
            return f"{self.aead}/{self.icv_bits}"
        return f"{self.crypt}+{self.integ}/{self.trunc_bits}" if self.integ else f"{self.crypt}"


@dataclass(frozen=True, slots=True)
class SaKeys:
    """Keys of one direction: the encryption key (with salt for AEAD) and integrity key."""

    encr: bytes = field(repr=False)
    integ: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One side of a policy selector: a network, optionally one protocol and port."""

    net: IPNetwork
    proto: int = 0
    port: int | None = None
    # Precomputed for the encoders (10k Childs = 30k selectors): xfrm_address_t bytes.
    packed: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed", self.net.network_address.packed.ljust(16, b"\0"))

    @classmethod
    def parse(cls, text: str, proto: int = 0, port: int | None = None) -> TrafficSelector:
        return cls(ipaddress.ip_network(text, strict=False), proto, port)

    def __str__(self) -> str:
        return str(self.net)


@dataclass(frozen=True, slots=True)
class UdpEncap:
    """NAT-T ESP-in-UDP (RFC 3948): our port and the peer's port."""

    local_port: int = 4500
    remote_port: int = 4500


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Kernel-enforced limits per SA; soft raises EXPIRE(soft), hard EXPIRE(hard) + delete."""

    soft_bytes: int = XFRM_INF
    hard_bytes: int = XFRM_INF
    soft_packets: int = XFRM_INF
    hard_packets: int = XFRM_INF
    soft_seconds: int = 0  # 0: no time limit (the daemon's own timers usually rule)
    hard_seconds: int = 0


@dataclass(frozen=True, slots=True)
class Mark:
    value: int
    mask: int = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ChildSaSpec:
    """A Child SA to install: inbound + outbound ESP state and in/out(/fwd) policies."""

    local: IPAddress
    remote: IPAddress
    spi_in: int
    spi_out: int
    reqid: int
    esp: EspTransform
    keys_in: SaKeys
    keys_out: SaKeys
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    mode: Mode = "tunnel"
    encap: UdpEncap | None = None
    lifetime: Lifetime = Lifetime()
    replay_window: int = DEFAULT_REPLAY_WINDOW
    esn: bool = False
    offload: OffloadMode = "no"
    offload_dev: str | None = None  # None: the device the route to `remote` uses
    mark: Mark | None = None
    set_mark: int | None = None
    # route-based (XFRM interfaces, docs/routing.md): the if_id of the inbound state and
    # the in/fwd policies, and of the outbound ones unless `if_id_out` differs (swanctl's
    # if_id_in / if_id_out)
    if_id: int | None = None
    if_id_out: int | None = None
    fwd_policy: bool | None = None  # None: install fwd in tunnel mode only
    priority: int | None = None  # None: derived from the selectors' specificity
    family: int = field(init=False, repr=False, compare=False)  # AF_INET / AF_INET6
    local_packed: bytes = field(init=False, repr=False, compare=False)
    remote_packed: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", 2 if self.local.version == 4 else 10)
        object.__setattr__(self, "local_packed", self.local.packed.ljust(16, b"\0"))
        object.__setattr__(self, "remote_packed", self.remote.packed.ljust(16, b"\0"))
        if self.local.version != self.remote.version:
            raise ValueError("local and remote addresses must be of one family")
        for spi in (self.spi_in, self.spi_out):
            if not 256 <= spi <= 0xFFFFFFFF:  # RFC 4303 §2.1: 1..255 are reserved
                raise ValueError(f"SPI out of range: {spi:#x}")
        if not 0 <= self.replay_window <= REPLAY_WINDOW_MAX:
            raise ValueError(f"replay window must be 0..{REPLAY_WINDOW_MAX}")
        if self.esn and self.replay_window == 0:
            raise ValueError("ESN needs a replay window > 0")
        if self.offload not in ("no", "auto", "crypto", "packet"):
            raise ValueError(f"unknown offload mode {self.offload!r}")
        if self.mode not in ("tunnel", "transport"):
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.mode == "tunnel" and not (self.local_ts and self.remote_ts):
            raise ValueError("a tunnel-mode Child SA needs local_ts and remote_ts")
        for ts in (*self.local_ts, *self.remote_ts):
            if ts.port is not None and ts.proto == 0:
                raise ValueError("a selector port needs a protocol")
        for if_id in (self.if_id, self.if_id_out):
            if if_id is not None and not 1 <= if_id <= 0xFFFFFFFF:
                raise ValueError(f"if_id must be 1..4294967295, not {if_id}")
        if self.if_id_out is not None and self.if_id is None:
            raise ValueError("if_id_out needs if_id (the inbound one)")

    def direction_if_id(self, inbound: bool) -> int | None:
        """The if_id of the inbound state and in/fwd policies, or of the outbound ones."""
        if inbound or self.if_id_out is None:
            return self.if_id
        return self.if_id_out

    @property
    def selectors(self) -> list[tuple[TrafficSelector, TrafficSelector]]:
        """(local, remote) pairs; default host-to-host (transport) or any (tunnel)."""
        if self.local_ts and self.remote_ts:
            return [
                (lt, rt)
                for lt in self.local_ts
                for rt in self.remote_ts
                if lt.net.version == rt.net.version
            ]
        if self.mode == "transport":
            return [
                (
                    TrafficSelector(ipaddress.ip_network(self.local)),
                    TrafficSelector(ipaddress.ip_network(self.remote)),
                )
            ]
        raise ValueError("a tunnel-mode Child SA needs local_ts and remote_ts")

    @property
    def installs_fwd(self) -> bool:
        return self.mode == "tunnel" if self.fwd_policy is None else self.fwd_policy


def bitmap_words(window: int) -> int:
    return math.ceil(window / 32)
