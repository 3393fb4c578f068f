"""Inbound SPI layout: slot in the low bits, random non-zero high part."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpf.spi import SlotAllocator, SpiError, make_inbound_spi, slot_of_spi


@given(
    slot=st.integers(0, 0xFFFF),
    seed=st.binary(min_size=4, max_size=4).filter(lambda b: b[:2] != bytes(2)),
)
def test_spi_carries_its_slot_and_is_never_reserved(slot: int, seed: bytes) -> None:
    spi = make_inbound_spi(slot, random=lambda n: seed)
    assert slot_of_spi(spi) == slot
    assert 1 << 16 <= spi <= 0xFFFFFFFF  # high part non-zero: never 0..255 (RFC 4303 §2.1)


@given(bits=st.integers(1, 24), data=st.data())
def test_other_slot_widths(bits: int, data: st.DataObject) -> None:
    slot = data.draw(st.integers(0, (1 << bits) - 1))
    spi = make_inbound_spi(slot, slot_bits=bits)
    assert slot_of_spi(spi, bits) == slot and spi >> bits != 0


def test_zero_high_part_is_redrawn_and_avoid_is_honoured() -> None:
    draws = iter([bytes(4), b"\x00\x01\x00\x00", b"\x00\x02\x00\x00"])
    spi = make_inbound_spi(7, random=lambda n: next(draws), avoid=[(1 << 16) | 7])
    assert spi == (2 << 16) | 7


def test_a_broken_random_source_is_an_error_not_a_hang() -> None:
    with pytest.raises(SpiError, match="random"):
        make_inbound_spi(1, random=lambda n: bytes(n))


@pytest.mark.parametrize("slot, bits", [(-1, 16), (1 << 16, 16), (0, 0), (0, 25)])
def test_bad_slots_are_refused(slot: int, bits: int) -> None:
    with pytest.raises(SpiError):
        make_inbound_spi(slot, slot_bits=bits)
    with pytest.raises(SpiError):
        slot_of_spi(1 << 32)


def test_allocator_reuses_freed_slots_and_knows_its_limit() -> None:
    alloc = SlotAllocator(slot_bits=2)
    got = [alloc.allocate() for _ in range(4)]
    assert got == [0, 1, 2, 3] and len(alloc) == 4
    with pytest.raises(SpiError, match="in use"):
        alloc.allocate()
    alloc.release(2)
    assert alloc.allocate() == 2
    with pytest.raises(SpiError, match="not allocated"):
        alloc.release(9)


def test_rekey_spis_differ_but_share_the_slot() -> None:
    spis = {make_inbound_spi(42) for _ in itertools.repeat(None, 50)}
    assert len(spis) > 45 and {slot_of_spi(s) for s in spis} == {42}
