"""What the engine's caller injects: our inbound ESP SPIs and the ESP traffic counters.

The daemon gives its own (bpf/spi.py's counter-slot SPIs, the data plane's packet
counts); `RandomSpis` is the default allocator.
"""

from __future__ import annotations

from typing import Protocol

from ike.crypto import RandomSource


class InboundSpiAllocator(Protocol):
    """Chooses the SPIs we receive ESP with (RFC 7296 §3.3.1: the recipient picks them).

    The daemon may inject one that encodes a counter slot in the SPI (bpf/spi.py).
    `allocate` returns a 32-bit SPI >= 256 not in use, or raises ike.errors.SpiExhausted;
    `replaces` is the inbound SPI of the Child SA that the new one rekeys (None for a new
    Child SA), so an allocator can keep per-Child state such as the XDP counter slot.
    `release` is called exactly once for every allocated SPI when it is no longer used.
    """

    def allocate(self, replaces: int | None = None) -> int: ...

    def release(self, spi: int) -> None: ...


class InboundTraffic(Protocol):
    """Tells the engine whether ESP arrived on our inbound Child SAs (the data plane's
    counters): an IKE SA whose Child SAs receive traffic needs no liveness check.

    `packets_in(ike_sa, spi_in)` is the packet count of the inbound SA with that SPI on
    that IKE SA (handle): any count, only changes matter. Called only when a check is due.
    """

    def packets_in(self, ike_sa: int, spi_in: int) -> int: ...


class RandomSpis:
    """The default allocator: random SPIs, unique among the live ones."""

    __slots__ = ("_random", "_used")

    def __init__(self, random: RandomSource) -> None:
        self._random = random
        self._used: set[int] = set()

    def allocate(self, replaces: int | None = None) -> int:
        while True:
            spi = int.from_bytes(self._random(4), "big")
            if spi >= 256 and spi not in self._used:  # 1..255 are reserved (RFC 4303 §2.1)
                self._used.add(spi)
                return spi

    def release(self, spi: int) -> None:
        self._used.discard(spi)

    def __len__(self) -> int:
        return len(self._used)
