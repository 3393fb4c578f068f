"""`[gateway.xdp]`: the daemon's adapter to the XDP/TC programs (bpf/, docs/bpf.md).

Theory of operation
-------------------
The daemon owns one `XdpAdapter` when its config has `[gateway.xdp]`. At start `open()`
checks the interface names, compiles the programs and attaches them (the bcc loader does
that all or nothing); `close()` detaches them at shutdown and on every error path.

Counters and MSS clamping work per *slot*: a small integer that stays with a Child SA
for its whole life, rekeys included, so its counters survive rekeys. Our inbound SPIs
carry the slot in their low bits (bpf/spi.py) so the XDP program finds the slot by
masking the SPI, with no hash lookup. The engine chooses inbound SPIs through the
allocator hook docs/ike.md describes; `SlotSpis` is that allocator:

- `allocate()` takes a fresh slot and returns an SPI in it;
  `allocate(replaces=old_spi_in)` (a rekey) returns a new SPI in the old SA's slot.
- a slot is held by each live SPI in it and by the Child SA registered in it, and is
  free again when the last holder lets go.

Engine events become loader calls:

    ChildSaEstablished -> install_child_sa(slot of spi_in, SPIs, remote selectors, MTU)
                          + exclude_prefix() for local selectors inside a remote one
    ChildSaRekeyed     -> install_child_sa(the same slot, new SPIs)
    ChildSaDeleted     -> remove_child_sa_spis() while the Child has another SA in the
                          slot (rekeyed away), else remove_child_sa() (slot released)

The engine passes `replaces` on every Child SA rekey (as initiator and responder), so a
rekeyed SA's SPI lands in its Child's slot and XDP finds it by masking, like the first
one. An SPI that does not carry the Child's slot (another allocator's) still joins it:
the loader then counts it through its fallback hash map (correct, one lookup slower).

The tunnel MTU for the clamp comes from bpf/mtu.py: the WAN interface's MTU minus the
real overhead of the negotiated ESP suite, outer IP version and UDP encapsulation.

Settings from `[gateway.xdp]` (docs/config.md): ESP steering to a CPU set, unknown-SPI
drop and the IKE_SA_INIT shield go to the loader at attach and again on a reload
(`update_settings`); `max_child_sas` sets the slot space (2**slot_bits slots, up to
2**20). When every slot is taken a new Child SA cannot be counted: the engine answers
its peer TEMPORARY_FAILURE (RFC 7296 §2.9), and that is logged (`xdp-slots-exhausted`,
once per run of refusals) and counted (`exhausted`, ipsec_xdp_slot_exhausted_total).

Counters: a Child SA's slot counts its ESP from its first SA to its last, rekeys
included. `slot_table()` reads every slot in one bpf(2) call (the daemon calls it off
its event loop, gateway/daemon/traffic.py); `child_ended()` reads a Child's slot one
last time before it is released, so nothing it counted is lost.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.config.schema import XdpConfig
from gateway.errors import GatewayError
from ike import events as ev
from ike.errors import SpiExhausted
from ike.ts import to_cidrs

log = logging.getLogger("gateway.daemon")

DEFAULT_LINK_MTU = 1500  # used for the clamp when only a LAN interface is configured


class XdpError(GatewayError):
    """The XDP/TC programs cannot be set up as configured (bpf's BpfError, for the user)."""


class XdpLoader(Protocol):
    """What the adapter uses of bpf.loader.AttachedPrograms (a fake stands in for unit
    tests, a RemoteLoader in a worker); its methods raise bpf.loader.BpfError."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def attachments(self) -> list[tuple[str, str, str]]: ...

    def install_child_sa(
        self,
        slot: int,
        *,
        spi_in: int,
        spi_out: int,
        remote_ts: Sequence[str],
        mtu: int,
        offloaded: bool = False,
    ) -> None: ...

    def remove_child_sa_spis(self, *, spi_in: int, spi_out: int) -> None: ...

    def remove_child_sa(
        self, slot: int, *, spi_in: int, spi_out: int, remote_ts: Sequence[str]
    ) -> None: ...

    def exclude_prefix(self, prefix: str) -> None: ...

    def remove_clamp_prefix(self, prefix: str) -> None: ...

    def slot_counters(self, slot: int) -> Any: ...

    def slot_counters_bulk(self, upto: int | None = None) -> Any:
        """bpf.loader.SlotTable of slots 0 .. upto-1 in one read. Called from a thread
        of its own (never two at once): it must not touch what the other methods
        change."""

    def slot_cpu(self, slot: int) -> int | None: ...

    def steered(self) -> dict[int, int]: ...

    def update_settings(
        self,
        *,
        drop_unknown_spi: bool | None = None,
        ike_shield: Any = False,
        steer_cpus: Sequence[int] | None = None,
    ) -> None: ...

    def verdicts(self) -> Sequence[Any]: ...

    def mss_clamped(self) -> dict[str, int]: ...


LoaderFactory = Callable[[XdpConfig], XdpLoader]


def bcc_loader(config: XdpConfig) -> XdpLoader:
    """The real thing: bpf.loader.AttachedPrograms (imports bcc only when XDP is configured)."""
    from bpf.loader import AttachedPrograms

    clamp: bool | int = False if config.mss_clamp is None else config.mss_clamp
    return AttachedPrograms(
        config.wan_interface,
        config.lan_interface,
        mss_clamp=clamp,
        slot_bits=config.slot_bits,
        nic_decrypts=nic_decrypts(config.wan_interface),
        **runtime_settings(config),
    )


def runtime_settings(config: XdpConfig) -> dict[str, Any]:
    """The loader settings a reload can change in place: unknown-SPI drop, the
    IKE_SA_INIT shield (bpf.loader.IkeShield, None: off) and the steering CPU set."""
    from bpf.loader import IkeShield

    shield = None
    if config.ike_init_rate is not None or config.ike_init_budget is not None:
        shield = IkeShield(
            rate=config.ike_init_rate,
            burst=config.ike_init_burst or _one_second(config.ike_init_rate),
            budget_rate=config.ike_init_budget,
            budget_burst=config.ike_init_budget_burst or _one_second(config.ike_init_budget),
        )
    return {
        "drop_unknown_spi": config.drop_unknown_spi,
        "ike_shield": shield,
        "steer_cpus": steer_cpu_set(config.steer_cpus),
    }


def steer_cpu_set(cpus: tuple[int, ...] | str) -> tuple[int, ...]:
    """The steering CPU set: "all" = every CPU this process may run on."""
    if isinstance(cpus, str):  # "all" (the reader accepts no other word)
        return tuple(sorted(os.sched_getaffinity(0)))
    return cpus


def nic_decrypts(wan: str | None) -> bool:
    """The WAN NIC decrypts ESP itself (esp-hw-offload on): its ESP is never steered
    (steering would only move already decrypted packets)."""
    if wan is None:
        return False
    from gateway.xfrm.offload import offload_capabilities

    try:
        return offload_capabilities(wan).crypto_enabled
    except GatewayError:  # no ethtool, or it cannot tell: assume not
        return False


def _one_second(rate: float | None) -> int:
    return max(1, math.ceil(rate or 1))


# --------------------------------------------------------------------------- SPIs


class SlotSpis:
    """The engine's inbound SPI allocator (ike.engine.InboundSpiAllocator) for XDP:
    every SPI carries a counter slot in its low bits (bpf/spi.py)."""

    __slots__ = (
        "_slots",
        "_holds",
        "_by_slot",
        "_random",
        "slot_bits",
        "share",
        "exhausted",
        "_refusing",
    )

    def __init__(
        self,
        slot_bits: int | None = None,
        random: Callable[[int], bytes] = os.urandom,
        share: tuple[int, int] = (0, 1),
    ):
        """`share` = (worker index, workers): slots and SPIs equal to the index modulo
        the number of workers (bpf/spi.py), so workers sharing the programs never
        collide."""
        from bpf.abi import SLOT_BITS_DEFAULT, SLOT_BITS_MAX
        from bpf.spi import SlotAllocator

        self.slot_bits = SLOT_BITS_DEFAULT if slot_bits is None else slot_bits
        if not 1 <= self.slot_bits <= SLOT_BITS_MAX:
            raise XdpError(f"slot bits {self.slot_bits} out of range 1..{SLOT_BITS_MAX}")
        self.share = share
        self._slots = SlotAllocator(self.slot_bits, first=share[0], stride=share[1])
        self._holds: dict[int, int] = {}  # slot -> live SPIs + registered Child SA
        self._by_slot: dict[int, set[int]] = {}  # slot -> live SPIs made in it
        self._random = random
        self.exhausted = 0  # Child SAs refused because every slot was taken
        self._refusing = False  # refusing since the last slot was handed out

    def allocate(self, replaces: int | None = None) -> int:
        from bpf.spi import make_inbound_spi

        slot = self.slot_of(replaces) if replaces is not None else None
        if slot is None or slot not in self._holds:
            slot = self.new_slot()
        else:
            self.hold(slot)
        live = self._by_slot.setdefault(slot, set())
        spi = make_inbound_spi(
            slot,
            slot_bits=self.slot_bits,
            random=self._random,
            avoid=live,
            modulus=self.share[1],
            remainder=self.share[0],
        )
        live.add(spi)
        return spi

    def release(self, spi: int) -> None:
        slot = self.slot_of(spi)
        live = self._by_slot.get(slot)
        if live is None or spi not in live:
            return  # not ours (or released twice): nothing to give back
        live.discard(spi)
        if not live:
            del self._by_slot[slot]
        self.drop(slot)

    def owns(self, spi: int) -> bool:
        return spi in self._by_slot.get(self.slot_of(spi), ())

    def slot_of(self, spi: int) -> int:
        return spi & ((1 << self.slot_bits) - 1)

    def new_slot(self) -> int:
        from bpf.spi import SpiError

        try:
            slot = self._slots.allocate()
        except SpiError:
            self.exhausted += 1
            if not self._refusing:  # one line per run of refusals, not one per peer
                self._refusing = True
                log.warning(
                    "event=xdp-slots-exhausted capacity=%d detail=new Child SAs get "
                    "TEMPORARY_FAILURE until one goes (raise [gateway.xdp] max_child_sas)",
                    self.capacity,
                )
            raise SpiExhausted(f"all {len(self._slots)} XDP counter slots are in use") from None
        self._refusing = False
        self._holds[slot] = 1
        return slot

    @property
    def capacity(self) -> int:
        """Slots of this share (a worker's: every `workers`-th slot)."""
        return self._slots.capacity

    @property
    def end(self) -> int:
        """One past the highest slot handed out so far (a bulk read covers 0 .. end-1)."""
        return self._slots.end

    def hold(self, slot: int) -> None:
        self._holds[slot] += 1

    def drop(self, slot: int) -> None:
        left = self._holds[slot] - 1
        if left:
            self._holds[slot] = left
        else:
            del self._holds[slot]
            self._slots.release(slot)

    def __len__(self) -> int:
        """Slots in use."""
        return len(self._holds)


# --------------------------------------------------------------------------- Child SAs


@dataclass(slots=True)
class _ChildSlot:
    """One Child SA (across its rekeys) as the programs know it."""

    slot: int
    connection: str
    child: str
    remote: tuple[str, ...]
    excluded: tuple[str, ...]
    spis: dict[int, int] = field(default_factory=dict)  # spi_in -> spi_out of its live SAs


@dataclass(frozen=True, slots=True)
class XdpChild:
    """What the daemon learns back: the slot (for list-sas/debugging)."""

    slot: int


@dataclass(frozen=True, slots=True)
class SlotFinal:
    """What a Child SA's slot counted over its whole life, read just before release."""

    connection: str
    child: str
    counters: Any  # bpf.loader.SlotCounters


class XdpAdapter:
    """The XDP/TC programs driven by the daemon's engine events."""

    def __init__(
        self,
        config: XdpConfig,
        *,
        loader: LoaderFactory = bcc_loader,
        spis: SlotSpis | None = None,
        link_mtu: Callable[[str], int] | None = None,
    ) -> None:
        self.config = config
        # (an empty one is falsy)
        self.spis = spis if spis is not None else SlotSpis(config.slot_bits)
        self._make_loader = loader
        self._link_mtu = link_mtu or interface_mtu
        self._dp: XdpLoader | None = None
        self._by_spi: dict[int, _ChildSlot] = {}
        self._excluded: dict[str, int] = {}  # local prefix -> Child SAs excluding it
        self.wan_mtu = DEFAULT_LINK_MTU

    # lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Check the interfaces, compile, attach (all or nothing); XdpError if not."""
        names = [
            (key, name)
            for key, name in (
                ("wan_interface", self.config.wan_interface),
                ("lan_interface", self.config.lan_interface),
            )
            if name is not None
        ]
        for key, name in names:  # before the compile: a typo fails fast and clearly
            try:
                socket.if_nametoindex(name)
            except OSError:
                raise XdpError(
                    f"[gateway.xdp] {key} = {name!r}: no such network interface"
                ) from None
        if self.config.wan_interface is not None:
            self.wan_mtu = self._link_mtu(self.config.wan_interface)
        log.info(  # compiling takes seconds (a minute or more under emulation)
            "event=xdp-loading wan=%s lan=%s",
            self.config.wan_interface or "-",
            self.config.lan_interface or "-",
        )
        from bpf.loader import BpfError

        try:
            dp = self._make_loader(self.config)
            _held_signals(lambda: _off_loop(dp.open), lambda: _off_loop(dp.close))
        except BpfError as exc:
            raise XdpError(str(exc)) from None
        self._dp = dp
        log.info(
            "event=xdp-attached wan=%s lan=%s mss_clamp=%s wan_mtu=%d attachments=%s "
            "steer_cpus=%s drop_unknown_spi=%s shield=%s slots=%d",
            self.config.wan_interface or "-",
            self.config.lan_interface or "-",
            "off" if self.config.mss_clamp is None else self.config.mss_clamp,
            self.wan_mtu,
            ",".join(f"{kind}:{ifname}:{how}" for kind, ifname, how in dp.attachments()),
            ",".join(map(str, steer_cpu_set(self.config.steer_cpus))) or "off",
            "yes" if self.config.drop_unknown_spi else "no",
            _shield_text(self.config),
            self.spis.capacity,
        )

    def close(self) -> None:
        """Detach everything (safe to call twice, and when open() failed)."""
        dp, self._dp = self._dp, None
        if dp is None:
            return
        for child in {id(c): c for c in self._by_spi.values()}.values():
            self.spis.drop(child.slot)
        self._by_spi.clear()
        self._excluded.clear()
        from bpf.loader import BpfError

        try:
            _off_loop(dp.close)
        except BpfError as exc:
            log.error("event=xdp-detach-failed error=%s", exc)
            return
        log.info("event=xdp-detached")

    @property
    def attached(self) -> bool:
        return self._dp is not None

    @property
    def loader(self) -> XdpLoader | None:
        """The open loader (the supervisor applies its workers' map updates to it:
        gateway/workers/xdpshare.py)."""
        return self._dp

    # engine events ---------------------------------------------------------------------

    def child_established(
        self,
        e: ev.ChildSaEstablished,
        *,
        offloaded: bool,
        lan_prefixes: Sequence[str] | None = None,
    ) -> XdpChild | None:
        """Register a new Child SA: its SPIs, selectors and tunnel MTU. A Child the
        programs cannot take is logged and left to the kernel (None).

        `lan_prefixes`: a route-based Child's (docs/routing.md): the prefixes routed into
        its XFRM interface stand for its remote selectors (which may be 0.0.0.0/0: every
        LAN packet would be this Child's, and of two such Childs the later one's);
        its ESP packets are counted by SPI all the same."""
        if self._dp is None:
            return None
        if self.spis.owns(e.spi_in):
            slot = self.spis.slot_of(e.spi_in)
            self.spis.hold(slot)
        else:  # an SPI we did not choose (another allocator): a slot of its own
            try:
                slot = self.spis.new_slot()
            except SpiExhausted as exc:
                self._install_failed(e, exc)
                return None
        remote = _prefixes(e.remote_ts) if lan_prefixes is None else tuple(lan_prefixes)
        child = _ChildSlot(slot, e.connection, e.child, remote, ())
        if not self._install(child, e, offloaded):
            self.spis.drop(slot)
            return None
        if lan_prefixes is None:  # routes are not selectors: nothing to carve out
            child.excluded = self._exclude(_prefixes(e.local_ts), child.remote)
        return XdpChild(slot)

    def child_rekeyed(
        self,
        old_spi_in: int,
        new: ev.ChildSaEstablished,
        *,
        offloaded: bool,
        lan_prefixes: Sequence[str] | None = None,
    ) -> XdpChild | None:
        """The new SA of a rekey joins the old one's slot (counters carry on)."""
        if self._dp is None:
            return None
        child = self._by_spi.get(old_spi_in)
        if child is None:
            return self.child_established(new, offloaded=offloaded, lan_prefixes=lan_prefixes)
        if not self._install(child, new, offloaded):
            return None
        return XdpChild(child.slot)

    def child_deleted(self, spi_in: int) -> SlotFinal | None:
        """One SA gone: its SPIs go; with the Child's last SA, its prefixes and slot
        (then the slot's final counters are returned)."""
        from bpf.loader import BpfError

        child = self._by_spi.pop(spi_in, None)
        if child is None or self._dp is None:
            return None
        spi_out = child.spis.pop(spi_in)
        final = None
        try:
            if child.spis:
                self._dp.remove_child_sa_spis(spi_in=spi_in, spi_out=spi_out)
                return None
            final = SlotFinal(child.connection, child.child, self._dp.slot_counters(child.slot))
            self._dp.remove_child_sa(
                child.slot, spi_in=spi_in, spi_out=spi_out, remote_ts=child.remote
            )
            self._unexclude(child.excluded)
        except BpfError as exc:
            log.warning(
                "event=xdp-remove-failed connection=%s child=%s error=%s",
                child.connection,
                child.child,
                exc,
            )
        if not child.spis:
            self.spis.drop(child.slot)
        return final

    def child_ended(self, spi_in: int) -> SlotFinal | None:
        """The Child SA of `spi_in` is gone for good: every SPI it still has in its slot
        (an old SA in its rekey grace too) goes with the slot; its final counters."""
        child = self._by_spi.get(spi_in)
        if child is None:
            return None
        final = None
        for spi in list(child.spis):
            final = self.child_deleted(spi) or final
        return final

    # counters --------------------------------------------------------------------------

    def known_spis(self) -> list[int]:
        """The inbound SPIs of every SA the programs know (rekeyed-away ones included)."""
        return list(self._by_spi)

    def slot(self, spi_in: int) -> int | None:
        child = self._by_spi.get(spi_in)
        return child.slot if child is not None else None

    def child_counters(self, spi_in: int) -> dict[str, int] | None:
        """list-sas `xdp` of a Child SA: its slot and the programs' counters for it
        (bpf.loader.SlotCounters: esp_in_*, esp_out_*, clear_to_tunnel_*,
        clear_from_tunnel_*), None when the programs do not know the SA."""
        child = self._by_spi.get(spi_in)
        if child is None or self._dp is None:
            return None
        return {"slot": child.slot, **dataclasses.asdict(self._dp.slot_counters(child.slot))}

    def slot_cpu(self, spi_in: int) -> int | None:
        """The CPU the Child SA's ESP is steered to (None: not steered)."""
        child = self._by_spi.get(spi_in)
        if child is None or self._dp is None:
            return None
        return self._dp.slot_cpu(child.slot)

    def slot_table(self, upto: int) -> Any:
        """Every slot's counters up to `upto` (bpf.loader.SlotTable) in one read. Runs in
        a thread off the event loop: touches nothing but the loader's map read."""
        dp = self._dp
        if dp is None or upto <= 0:
            return None
        from bpf.loader import BpfError

        try:
            return dp.slot_counters_bulk(upto)
        except BpfError as exc:
            raise XdpError(f"reading the XDP slot counters: {exc}") from None

    def steered(self) -> dict[int, int]:
        """ESP packets redirected per CPU (ipsec_xdp_steered_packets_total{cpu})."""
        return self._dp.steered() if self._dp is not None else {}

    def slot_usage(self) -> dict[str, int]:
        """`stats.xdp_slots`: slots in use, this process's capacity, Child SAs refused
        for want of a slot."""
        return {
            "used": len(self.spis),
            "capacity": self.spis.capacity,
            "exhausted": self.spis.exhausted,
        }

    def update_settings(self, config: XdpConfig) -> None:
        """A reload: steering, unknown-SPI drop and the shield take effect at once (the
        interfaces, MSS clamp and slot space need a restart)."""
        from bpf.loader import BpfError

        if self._dp is None:
            self.config = config
            return
        try:
            self._dp.update_settings(**runtime_settings(config))
        except BpfError as exc:
            raise XdpError(f"[gateway.xdp]: {exc}") from None
        self.config = config
        log.info(
            "event=xdp-settings-changed steer_cpus=%s drop_unknown_spi=%s shield=%s",
            ",".join(map(str, steer_cpu_set(config.steer_cpus))) or "off",
            "yes" if config.drop_unknown_spi else "no",
            _shield_text(config),
        )

    def verdict_rows(self) -> list[dict[str, Any]]:
        """`stats.xdp` rows and ipsec_xdp_packets_total{interface,action,reason}."""
        if self._dp is None:
            return []
        return [
            {"interface": v.interface, "action": v.action, "reason": v.reason, "packets": v.packets}
            for v in self._dp.verdicts()
        ]

    def mss_clamped(self) -> dict[str, int]:
        """ipsec_mss_clamped_total{interface} (empty without a LAN interface)."""
        return self._dp.mss_clamped() if self._dp is not None else {}

    # helpers ---------------------------------------------------------------------------

    def _install(self, child: _ChildSlot, e: ev.ChildSaEstablished, offloaded: bool) -> bool:
        from bpf.loader import BpfError
        from bpf.mtu import EspOverhead, MtuError, tunnel_mtu

        assert self._dp is not None
        try:
            mtu = tunnel_mtu(
                self.wan_mtu,
                EspOverhead.of_proposal(e.proposal),
                outer_ipv6=":" in e.local_addr,
                udp_encap=e.encap is not None,
                mode="transport" if e.mode == "transport" else "tunnel",
            )
            self._dp.install_child_sa(
                child.slot,
                spi_in=e.spi_in,
                spi_out=e.spi_out,
                remote_ts=child.remote,
                mtu=mtu,
                offloaded=offloaded,
            )
        except (BpfError, MtuError) as exc:
            self._install_failed(e, exc)
            return False
        child.spis[e.spi_in] = e.spi_out
        self._by_spi[e.spi_in] = child
        log.info(
            "event=xdp-child-installed connection=%s child=%s slot=%d spi_in=%08x mtu=%d",
            e.connection,
            e.child,
            child.slot,
            e.spi_in,
            mtu,
        )
        return True

    @staticmethod
    def _install_failed(e: ev.ChildSaEstablished, exc: Exception) -> None:
        log.warning(
            "event=xdp-install-failed connection=%s child=%s error=%s", e.connection, e.child, exc
        )

    def _exclude(self, local: Sequence[str], remote: Sequence[str]) -> tuple[str, ...]:
        """Local selectors strictly inside a remote one (a 0.0.0.0/0 tunnel seen from the
        10.1.0.0/24 LAN) are carved out: LAN-internal traffic is neither counted nor
        clamped, as an XFRM bypass policy would keep it out of the tunnel."""
        from bpf.loader import BpfError

        assert self._dp is not None
        done: list[str] = []
        remote_nets = [ipaddress.ip_network(r) for r in remote]
        for prefix in local:
            net = ipaddress.ip_network(prefix)
            inside = any(
                net != r and net.version == r.version and net.subnet_of(r)  # type: ignore[arg-type]
                for r in remote_nets
            )
            if not inside or prefix in remote:
                continue
            if prefix not in self._excluded:
                try:
                    self._dp.exclude_prefix(prefix)
                except BpfError as exc:
                    log.warning("event=xdp-exclude-failed prefix=%s error=%s", prefix, exc)
                    continue
            self._excluded[prefix] = self._excluded.get(prefix, 0) + 1
            done.append(prefix)
        return tuple(done)

    def _unexclude(self, prefixes: Sequence[str]) -> None:
        from bpf.loader import BpfError

        assert self._dp is not None
        for prefix in prefixes:
            left = self._excluded.get(prefix, 0) - 1
            if left > 0:
                self._excluded[prefix] = left
                continue
            self._excluded.pop(prefix, None)
            try:
                self._dp.remove_clamp_prefix(prefix)
            except BpfError as exc:
                log.warning("event=xdp-exclude-failed prefix=%s error=%s", prefix, exc)


def _off_loop(step: Callable[[], None]) -> None:
    """Run an attach/detach step in a thread of its own. The loader's netlink fallback
    (TC as clsact filters on kernels without tcx, e.g. Linux 6.1) uses pyroute2's
    synchronous IPRoute, which refuses to run in a thread with a running asyncio loop
    (the daemon's): "This event loop is already running"."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            step()
        except BaseException as exc:  # handed to the caller's thread as it is
            failure.append(exc)

    worker = threading.Thread(target=target, name="xdp-attach")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


def _held_signals(step: Callable[[], None], undo: Callable[[], None]) -> None:
    """Run `step` (attaching) with SIGTERM/SIGINT/SIGHUP held back; one that arrived
    meanwhile undoes it and exits, so a signal never leaves programs attached. (The
    loader does this itself only when it runs in the main thread.)"""
    held: list[int] = []
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            old[sig] = signal.signal(sig, lambda n, _f: held.append(n))
    try:
        step()
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    if held:
        undo()
        raise SystemExit(128 + held[0])


def _shield_text(config: XdpConfig) -> str:
    """The IKE_SA_INIT shield as a log value: per-source rate/burst and the budget."""
    parts = []
    if config.ike_init_rate is not None:
        burst = config.ike_init_burst or _one_second(config.ike_init_rate)
        parts.append(f"{config.ike_init_rate:g}/s:{burst}")
    if config.ike_init_budget is not None:
        burst = config.ike_init_budget_burst or _one_second(config.ike_init_budget)
        parts.append(f"budget:{config.ike_init_budget:g}/s:{burst}")
    return ",".join(parts) or "off"


def _prefixes(selectors: Sequence[Any]) -> tuple[str, ...]:
    """The selectors' address ranges as CIDR prefixes (protocol/port parts dropped: the
    programs match on addresses only)."""
    out: list[str] = []
    for ts in selectors:
        for cidr in to_cidrs(ts):
            prefix = cidr.split("[", 1)[0]
            if prefix not in out:
                out.append(prefix)
    return tuple(out)


def interface_mtu(name: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{name}/mtu").read_text())
    except (OSError, ValueError):
        raise XdpError(f"[gateway.xdp] interface {name!r}: cannot read its MTU") from None
