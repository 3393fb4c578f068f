"""How N workers share what must not collide: IKE SPIs, ESP SPIs, XFRM reqids and the
connections whose start actions each one runs (docs/daemon.md, "Workers").

Our IKE SPIs carry the worker index in their low 32 bits (bpf/reuseport.py steers every
later packet of an IKE SA back to its worker by it); our inbound ESP SPIs are the index
modulo N; each worker gets its own share of the reqid range; a connection belongs to
the worker its name hashes to (crc32: stable across processes and runs).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.xfrm.manager import OwnedRange


def connection_owner(name: str, workers: int) -> int:
    """The worker that runs a connection's start actions and `initiate` (stable across
    processes and runs: crc32, not Python's salted hash)."""
    return zlib.crc32(name.encode()) % workers


@dataclass(slots=True)
class WorkerIkeSpis:
    """Our IKE SPIs for worker `index` of `workers`: random, with the low 32 bits equal
    to `index` modulo `workers` (bpf.reuseport.owner_of_spi)."""

    index: int
    workers: int
    random: Callable[[int], bytes] = os.urandom

    def __call__(self) -> bytes:
        raw = self.random(8)
        low = int.from_bytes(raw[4:], "big")
        low = low - low % self.workers + self.index
        if low > 0xFFFF_FFFF:
            low -= self.workers
        return raw[:4] + low.to_bytes(4, "big")


@dataclass(slots=True)
class PartitionedSpis:
    """Inbound ESP SPIs of worker `index` of `workers` (ike.engine.InboundSpiAllocator):
    SPI modulo `workers` = `index`, so two workers never choose the same SPI."""

    index: int
    workers: int
    random: Callable[[int], bytes] = os.urandom
    _used: set[int] = field(default_factory=set)

    def allocate(self, replaces: int | None = None) -> int:
        while True:  # (`replaces`: a rekey's old SPI; nothing to keep here)
            spi = int.from_bytes(self.random(4), "big")
            spi = spi - spi % self.workers + self.index
            if 256 <= spi <= 0xFFFF_FFFF and spi not in self._used:  # RFC 4303 §2.1
                self._used.add(spi)
                return spi

    def release(self, spi: int) -> None:
        self._used.discard(spi)


def reqid_range(index: int, workers: int, whole: OwnedRange | None = None) -> OwnedRange:
    """Worker `index`'s share of our XFRM reqids (the last one takes the remainder)."""
    whole = whole or OwnedRange()
    size = whole.size // workers
    last = index == workers - 1
    return OwnedRange(whole.first + index * size, whole.size - index * size if last else size)
