"""What the engine's caller injects: our inbound ESP SPIs, the ESP traffic counters, the
EAP users' secrets and the virtual-IP address pools.

The daemon gives its own (bpf/spi.py's counter-slot SPIs, the data plane's packet
counts, the users file, gateway/pools.py); `RandomSpis` is the default allocator.
Without secrets or pools, EAP-MSCHAPv2 finds no user and no address is handed out.
"""

from __future__ import annotations

from typing import Protocol

from ike.cp import VirtualIpAssignment, VirtualIpRequest
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


class EapSecrets(Protocol):
    """The EAP users (swanctl's `secrets { eap-NAME {...} }`): the NT password hash
    (MD4 of the UTF-16LE password, RFC 2759 §8.3) of an EAP identity, for EAP-MSCHAPv2 on
    either side, or None when there is no such user. Asked once per conversation."""

    def nt_hash(self, identity: bytes) -> bytes | None: ...


class AddressAssigner(Protocol):
    """Virtual IPs for peers that ask for them (CFG_REQUEST, RFC 7296 §2.19).

    `assign` is called once per IKE SA, when its IKE_AUTH succeeded: an address of each
    family asked for from the connection's `pools` (in order; RADIUS_POOL: the one in
    `offered`, what the RADIUS server named), leased to `identity` (the EAP identity, else
    the IKE identity) and held by the IKE SA `ike_sa` until the caller releases it when
    that SA ends (IkeSaDeleted / IkeSaFailed). A family it cannot serve stays None in the
    answer; DNS servers go with it. The handle stays the same across IKE rekeys."""

    def assign(
        self,
        ike_sa: int,
        connection: str,
        pools: tuple[str, ...],
        identity: str,
        request: VirtualIpRequest,
        offered: VirtualIpAssignment | None,
    ) -> VirtualIpAssignment: ...
