"""Inbound SPI layout: the SPI carries its counter slot in its low bits.

We choose our own inbound SPIs (RFC 7296 §3.3.1: the recipient picks the SPI it will
receive with), so the XDP program can find a Child SA's counters by masking the SPI
instead of a hash lookup:

    bit 31 ............ SLOT_BITS | SLOT_BITS-1 ........ 0
        random, never all zero    |  slot (stable per Child SA)

The non-zero high part keeps every SPI >= 2**slot_bits > 255, outside the range
RFC 4303 §2.1 reserves (0 and 1..255). The old and the new Child SA of a rekey share the
slot (counters survive the rekey) and differ in the random part. SPIs not made here
(e.g. chosen by another IKE daemon) still work through the loader's fallback hash map.

With N IKE worker processes (`[gateway] workers`, docs/daemon.md) sharing one set of
programs, worker k owns the slots k, k + N, k + 2N, ... (`SlotAllocator(first=k,
stride=N)`) and makes SPIs with SPI mod N = k (`make_inbound_spi(..., modulus=N,
remainder=k)`), the same rule as its SPIs without XDP: slot mod N = SPI mod N = k, so
two workers never share a slot or an SPI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bpf.abi import SLOT_BITS_DEFAULT, SLOT_BITS_MAX

RandomSource = Callable[[int], bytes]


class SpiError(ValueError):
    """A slot or SPI outside the layout."""


class SlotsExhausted(SpiError):
    """Every slot of the allocator's share is in use: one more Child SA does not fit.
    `capacity` is the share's size; the daemon turns this into its metric and, at
    configuration time, compares expected Child SAs against `capacity`."""

    def __init__(self, capacity: int, slot_bits: int) -> None:
        self.capacity = capacity
        self.slot_bits = slot_bits
        super().__init__(
            f"all {capacity} slots of this share are in use "
            f"(slot_bits={slot_bits}: raise it, up to {SLOT_BITS_MAX}, for more Child SAs)"
        )


def slot_mask(slot_bits: int = SLOT_BITS_DEFAULT) -> int:
    return (1 << slot_bits) - 1


def slot_of_spi(spi: int, slot_bits: int = SLOT_BITS_DEFAULT) -> int:
    """The slot an inbound SPI made by make_inbound_spi() belongs to."""
    if not 0 <= spi <= 0xFFFFFFFF:
        raise SpiError(f"SPI {spi:#x} is not a 32-bit value")
    return spi & slot_mask(slot_bits)


def make_inbound_spi(
    slot: int,
    *,
    slot_bits: int = SLOT_BITS_DEFAULT,
    random: RandomSource = os.urandom,
    avoid: Iterable[int] = (),
    modulus: int = 1,
    remainder: int = 0,
) -> int:
    """A fresh inbound SPI for `slot`: random non-zero high part, slot in the low bits.

    `avoid` lists SPIs that must not be returned (the slot's current SPIs during a
    rekey), so the new SPI differs from the old one in the shared slot. `modulus` and
    `remainder` (a worker's share): the SPI modulo `modulus` is `remainder` (random
    high parts are drawn until one fits: about `modulus` draws).
    """
    if not 1 <= slot_bits <= 24:
        raise SpiError(f"slot_bits must be 1..24, not {slot_bits}")
    if not 0 <= slot <= slot_mask(slot_bits):
        raise SpiError(f"slot {slot} does not fit in {slot_bits} bits")
    if not 0 <= remainder < modulus:
        raise SpiError(f"remainder {remainder} is outside 0..{modulus - 1}")
    taken = set(avoid)
    high_bits = 32 - slot_bits
    for _ in range(64 * modulus):
        high = int.from_bytes(random(4), "big") >> (32 - high_bits)
        if high == 0:
            continue
        spi = (high << slot_bits) | slot
        if spi not in taken and spi % modulus == remainder:
            return spi
    raise SpiError("random source keeps returning unusable SPIs")


@dataclass(slots=True)
class SlotAllocator:
    """Hands out stable per-Child-SA slots (0 .. 2**slot_bits - 1), reusing freed ones first.

    The daemon keeps one slot per Child SA across rekeys and frees it when the Child SA
    is deleted for good. A worker's share: `first` = its index, `stride` = the number of
    workers (slots first, first + stride, ...).
    """

    slot_bits: int = SLOT_BITS_DEFAULT
    first: int = 0
    stride: int = 1
    _free: list[int] = field(default_factory=list)
    _next: int | None = None
    _used: set[int] = field(default_factory=set)

    def allocate(self) -> int:
        if self._next is None:
            if not 0 <= self.first < self.stride or self.first > slot_mask(self.slot_bits):
                raise SpiError(f"no slots {self.first} mod {self.stride} in {self.slot_bits} bits")
            self._next = self.first
        if self._free:
            slot = self._free.pop()
        elif self._next <= slot_mask(self.slot_bits):
            slot = self._next
            self._next += self.stride
        else:
            raise SlotsExhausted(self.capacity, self.slot_bits)
        self._used.add(slot)
        return slot

    @property
    def capacity(self) -> int:
        """Slots in this share: first, first + stride, ... up to 2**slot_bits - 1."""
        top = slot_mask(self.slot_bits)
        return 0 if self.first > top else (top - self.first) // self.stride + 1

    @property
    def free(self) -> int:
        return self.capacity - len(self._used)

    @property
    def end(self) -> int:
        """One past the highest slot handed out so far (freed slots are reused first,
        so slots stay dense: a bulk read of 0 .. end-1 covers every slot in use)."""
        return 0 if self._next is None else min(self._next, slot_mask(self.slot_bits) + 1)

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise SpiError(f"slot {slot} is not allocated")
        self._used.remove(slot)
        self._free.append(slot)

    def __len__(self) -> int:
        return len(self._used)
