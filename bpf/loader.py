"""Compile, attach and drive the data-plane programs (bpf/dataplane.c) with bcc.

Two layers:

- `Programs`: the compiled object (one bcc compile per start), the loaded program fds
  and typed access to every map. Nothing attached; tests run it with BPF_PROG_TEST_RUN.
- `AttachedPrograms`: a context manager that attaches `xdp_wan` (XDP) and `tc_wan_egress`
  (TC egress) to the WAN interface and `tc_lan_ingress` / `tc_lan_egress` (TC) to the
  LAN interface, and detaches all of it on exit, on exceptions and on SIGTERM/SIGHUP.
  The daemon drives it through its methods (see docs/bpf.md).

Map writes go through ctypes mirrors (bpf/abi.py) of the C structs; per-CPU maps are
read as one value per possible CPU and summed here.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import operator
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from bpf import abi
from bpf.abi import Reason, XdpAction
from bpf.links import BPF_TCX_EGRESS, BPF_TCX_INGRESS, BPF_XDP, link_create
from bpf.mtu import MIN_MTU_IPV4, MIN_MTU_IPV6
from bpf.spi import slot_mask
from bpf.syscall import BpfSyscallError, array_lookup_batch, array_update_batch

log = logging.getLogger(__name__)

BPF_DIR = Path(__file__).resolve().parent
SOURCE = BPF_DIR / "dataplane.c"
BASELINE_SOURCE = BPF_DIR / "baseline.c"

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
TC_PRIO = 0xC1  # our filters' priority on clsact, so we delete only our own
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
_CLONE_NEWNET = 0x40000000

XdpMode = Literal["auto", "native", "generic"]
AttachMethod = Literal["auto", "link", "netlink"]
_MODE_NAMES = {XDP_FLAGS_DRV_MODE: "native", XDP_FLAGS_SKB_MODE: "generic"}


class BpfError(Exception):
    """The programs cannot be set up or changed as asked. The message is meant for the
    user as it is; the gateway's adapter (gateway/dataplane/xdp.py) turns it into a
    GatewayError, so bpf/ imports nothing of the gateway."""


# --------------------------------------------------------------------------- helpers


def kernel_hz(release: str | None = None) -> int:
    """CONFIG_HZ of the running kernel (the IKE_SA_INIT shield counts time in jiffies),
    from /proc/config.gz or /boot/config-<release>; 250 (Debian's) when neither says."""
    import gzip
    import platform
    import re

    release = release or platform.release()
    for path, opener in (
        ("/proc/config.gz", gzip.open),
        (f"/boot/config-{release}", open),
    ):
        try:
            with opener(path, "rt") as f:  # type: ignore[operator]
                m = re.search(r"^CONFIG_HZ=(\d+)$", f.read(), re.M)
        except OSError:
            continue
        if m:
            return int(m.group(1))
    log.warning("CONFIG_HZ not found in /proc/config.gz or /boot: assuming 250")
    return 250


def possible_cpus() -> int:
    """Number of possible CPUs: the length of every per-CPU map value array."""
    from bcc.utils import get_possible_cpus

    return len(get_possible_cpus())


def import_bcc() -> Any:
    """bcc (Debian's python3-bpfcc), or a BpfError that says how to get it."""
    try:
        import bcc
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BpfError(
            "bcc is not importable (Debian package python3-bpfcc; scripts/setup.sh links it)"
        ) from e
    return bcc


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise BpfError(f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with this thread inside network namespace `name` (None: stay).

    BPF programs and maps are not per namespace; only the attachment (which interface)
    is, so the loader enters the namespace just to attach and detach.
    """
    if name is None:
        yield
        return
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except OSError as e:
        raise BpfError(f"network namespace {name!r}: {e.strerror}") from e
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(target)
        os.close(orig)


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise BpfError(f"interface {ifname!r} does not exist") from None


def _ip_key(prefix: str) -> tuple[abi.ClampKey, bool]:
    """LPM key for a CIDR prefix; IPv4 maps to ::ffff:0:0/96 (as in the C program)."""
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError as e:
        raise BpfError(f"bad prefix {prefix!r}: {e}") from None
    key = abi.ClampKey()
    if isinstance(net, ipaddress.IPv4Network):
        raw = ipaddress.IPv6Address("::ffff:" + str(net.network_address)).packed
        key.prefixlen = 96 + net.prefixlen
        v6 = False
    else:
        raw = net.network_address.packed
        key.prefixlen = net.prefixlen
        v6 = True
    ctypes.memmove(key.addr, raw, 16)
    return key, v6


@dataclass(frozen=True, slots=True)
class SlotCounters:
    """Per-slot counters summed over CPUs. Bytes are IP bytes (outer header included)."""

    esp_in_packets: int = 0
    esp_in_bytes: int = 0
    esp_out_packets: int = 0
    esp_out_bytes: int = 0
    clear_to_tunnel_packets: int = 0
    clear_to_tunnel_bytes: int = 0
    clear_from_tunnel_packets: int = 0
    clear_from_tunnel_bytes: int = 0


SLOT_FIELDS = tuple(f[0] for f in abi.SlotStats._fields_)  # = SlotCounters' fields


class SlotTable:
    """Per-slot counters of slots 0 .. len-1 summed over CPUs, kept column-wise (one
    list per field, indexed by slot) as one bulk read produced them: a scrape reads
    `column("esp_in_bytes")[slot]` without a Python object per slot."""

    __slots__ = ("_columns",)

    def __init__(self, columns: list[list[int]]) -> None:
        self._columns = columns

    def __len__(self) -> int:
        return len(self._columns[0]) if self._columns else 0

    def column(self, field: str) -> list[int]:
        return self._columns[SLOT_FIELDS.index(field)]

    def row(self, slot: int) -> tuple[int, ...]:
        """One slot's counters in SLOT_FIELDS order (IndexError beyond the read)."""
        return tuple(c[slot] for c in self._columns)

    def __getitem__(self, slot: int) -> SlotCounters:
        return SlotCounters(*self.row(slot))


@dataclass(frozen=True, slots=True)
class VerdictCount:
    """Packets a program ended with `reason` and `action`, summed over CPUs."""

    reason: Reason
    action: XdpAction
    packets: int


@dataclass(frozen=True, slots=True)
class XdpVerdict:
    """One row of ipsec_xdp_packets_total (same fields as gateway.metrics.XdpCounter)."""

    interface: str
    action: str
    reason: str
    packets: int


@dataclass(frozen=True, slots=True)
class IkeShield:
    """IKE_SA_INIT shield. Per source (IPv4 address, IPv6 /64): a token bucket of `rate`
    requests/s sustained and `burst` at once. Global (every source together, so a flood
    from random spoofed sources is bounded too): `budget_rate`/`budget_burst`, None =
    no global budget. Either part may be off: rate=None for a budget only."""

    rate: float | None
    burst: int = 1
    budget_rate: float | None = None
    budget_burst: int = 1

    def __post_init__(self) -> None:
        if self.rate is None and self.budget_rate is None:
            raise BpfError("the IKE_SA_INIT shield needs a per-source rate or a budget")
        for what, rate, burst in (
            ("per-source", self.rate, self.burst),
            ("budget", self.budget_rate, self.budget_burst),
        ):
            if rate is not None and (not rate > 0 or burst < 1):
                raise BpfError(f"IKE_SA_INIT {what} limit needs rate > 0 and burst >= 1")

    @property
    def cost_ns(self) -> int:
        """ns of per-source credit one request costs (0: no per-source limit)."""
        return _cost_ns(self.rate)

    @property
    def budget_cost_ns(self) -> int:
        return _cost_ns(self.budget_rate)


def _cost_ns(rate: float | None) -> int:
    return 0 if rate is None else max(1, round(1e9 / rate))


def source_bucket(addr: str, seed: int) -> int:
    """The IKE_SA_INIT bucket of a source address, exactly as dataplane.c computes it
    (source_bucket()): IPv4 by address, IPv6 by its /64."""
    packed = ipaddress.ip_address(addr).packed
    h = seed & 0xFFFFFFFF
    if len(packed) == 4:
        h = ((h ^ int.from_bytes(packed, "little")) * 0x9E3779B1) & 0xFFFFFFFF
    else:
        h = ((h ^ int.from_bytes(packed[:4], "little")) * 0x9E3779B1) & 0xFFFFFFFF
        h = ((h ^ int.from_bytes(packed[4:8], "little")) * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 16
    return h & (abi.IKE_BUCKETS - 1)


def map_sizes(slot_bits: int) -> dict[str, int]:
    """Entries of the maps that grow with the slot space (-D values of dataplane.h):
    outbound SPIs and clamp prefixes, two per slot (a rekey overlaps old and new SPI;
    a Child may have several remote selectors). Hash and LPM maps are not preallocated."""
    slots = 1 << slot_bits
    return {
        "MAX_OUT_SPIS": max(1 << 17, 2 * slots),
        "MAX_CLAMP_PREFIXES": max(1 << 17, 2 * slots),
        "MAX_IN_SPI_FALLBACK": 16384,
    }


def preallocated_bytes(slot_bits: int, ncpus: int) -> int:
    """Kernel memory the maps take from the start (arrays are preallocated): the
    per-CPU slot counters dominate, 64 bytes per slot per possible CPU. Hash/LPM maps
    come on top as they fill (roughly 100 bytes per outbound SPI or prefix)."""
    slots = 1 << slot_bits
    slot_stats = ctypes.sizeof(abi.SlotStats) * slots * ncpus
    slot_table = ctypes.sizeof(abi.SlotEntry) * slots
    buckets = ctypes.sizeof(abi.IkeBucket) * abi.IKE_BUCKETS
    verdicts = 8 * abi.R_MAX * abi.VERDICT_ACTIONS * ncpus
    return slot_stats + slot_table + buckets + verdicts


# --------------------------------------------------------------------------- programs


class Programs:
    """The compiled and loaded programs and their maps; nothing attached."""

    PROGRAM_TYPES = {
        "xdp_wan": "XDP",
        "tc_wan_egress": "SCHED_CLS",
        "tc_lan_ingress": "SCHED_CLS",
        "tc_lan_egress": "SCHED_CLS",
    }

    def __init__(self, *, slot_bits: int = abi.SLOT_BITS_DEFAULT) -> None:
        if not 1 <= slot_bits <= abi.SLOT_BITS_MAX:
            raise BpfError(f"slot_bits must be 1..{abi.SLOT_BITS_MAX}, not {slot_bits}")
        bcc = import_bcc()
        self.slot_bits = slot_bits
        self.ncpus = possible_cpus()
        self.sizes = {"slot_table": 1 << slot_bits, **map_sizes(slot_bits)}
        self.jiffy_ns = 1_000_000_000 // kernel_hz()
        cflags = [f"-I{BPF_DIR}", f"-DSLOT_BITS={slot_bits}", f"-DCPUMAP_SIZE={self.ncpus}"]
        cflags += [f"-D{name}={value}" for name, value in map_sizes(slot_bits).items()]
        try:
            self.bpf = bcc.BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception for compile errors
            raise BpfError(f"compiling {SOURCE.name} failed: {e}") from e
        self.fds: dict[str, int] = {}
        try:
            for name, kind in self.PROGRAM_TYPES.items():
                fn = self.bpf.load_func(name.encode(), getattr(bcc.BPF, kind))
                self.fds[name] = fn.fd
        except Exception as e:  # bcc: verifier rejection is a bare Exception too
            self.bpf.cleanup()
            raise BpfError(f"loading {SOURCE.name} failed: {e}") from e
        self._lib = bcc.libbcc.lib
        self._closed = False

    # map plumbing ------------------------------------------------------------------

    def map_fd(self, name: str) -> int:
        return int(self.bpf[name.encode()].map_fd)

    def update(self, name: str, key: ctypes._CData, value: ctypes._CData) -> None:
        rc = self._lib.bpf_update_elem(self.map_fd(name), ctypes.byref(key), ctypes.byref(value), 0)
        if rc < 0:
            # libbpf returns -errno; bcc's library does not share ctypes' errno copy.
            err = -rc if rc < -1 else (ctypes.get_errno() or errno.EIO)
            if err == errno.E2BIG:  # a hash/LPM map at max_entries
                size = {"out_spi": "MAX_OUT_SPIS", "clamp_prefixes": "MAX_CLAMP_PREFIXES"}
                limit = self.sizes.get(size.get(name, ""), 0) or "its"
                raise BpfError(f"map {name} is full ({limit} entries)")
            raise BpfError(f"map {name}: update failed: {os.strerror(err)}")

    def delete(self, name: str, key: ctypes._CData) -> bool:
        return bool(self._lib.bpf_delete_elem(self.map_fd(name), ctypes.byref(key)) == 0)

    def lookup(self, name: str, key: ctypes._CData, value: ctypes._CData) -> bool:
        fd = self.map_fd(name)
        return bool(self._lib.bpf_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) == 0)

    def percpu(self, name: str, key: ctypes._CData, value_type: type[Any]) -> list[Any]:
        """One value per possible CPU (a per-CPU map's lookup)."""
        values = (value_type * self.ncpus)()
        if not self.lookup(name, key, values):
            return []
        return list(values)

    # typed views ---------------------------------------------------------------------

    def set_config(self, config: abi.DpConfig) -> None:
        self.update("config", ctypes.c_uint32(0), config)

    def get_config(self) -> abi.DpConfig:
        cfg = abi.DpConfig()
        self.lookup("config", ctypes.c_uint32(0), cfg)
        return cfg

    def slot_counters(self, slot: int) -> SlotCounters:
        per_cpu = self.percpu("slot_stats", ctypes.c_uint32(slot), abi.SlotStats)
        fields = [f[0] for f in abi.SlotStats._fields_]
        sums = {f: sum(getattr(v, f) for v in per_cpu) for f in fields}
        return SlotCounters(**sums)

    def reset_slot_counters(self, slot: int) -> None:
        zero = (abi.SlotStats * self.ncpus)()
        self.update("slot_stats", ctypes.c_uint32(slot), zero)

    def _percpu_sums(self, name: str, count: int, fields: int) -> list[list[int]]:
        """Keys 0..count-1 of a per-CPU array of `fields` u64 each, read in ONE bpf(2)
        call and summed over CPUs: one list per field, indexed by key."""
        stride = fields * self.ncpus
        try:
            raw = array_lookup_batch(self.map_fd(name), count, 8 * stride)
        except BpfSyscallError as e:
            raise BpfError(f"map {name}: batch read failed: {e.strerror}") from None
        flat = memoryview(raw).cast("Q")
        columns = []
        for f in range(fields):
            total = flat[f::stride].tolist()
            for cpu in range(1, self.ncpus):
                total = list(map(operator.add, total, flat[cpu * fields + f :: stride].tolist()))
            columns.append(total)
        return columns

    def slot_table(self, count: int) -> SlotTable:
        """Counters of slots 0..count-1 summed over CPUs; one bpf(2) call for all."""
        count = min(count, 1 << self.slot_bits)
        return SlotTable(self._percpu_sums("slot_stats", count, len(SLOT_FIELDS)))

    def verdict_counts(self) -> list[VerdictCount]:
        """Every non-zero (reason, action) counter, from one read of the verdict map."""
        (totals,) = self._percpu_sums("verdicts", abi.R_MAX * abi.VERDICT_ACTIONS, 1)
        out = []
        actions = set(XdpAction)
        for idx, n in enumerate(totals):
            reason, action = divmod(idx, abi.VERDICT_ACTIONS)
            if n and reason in Reason._value2member_map_ and action in actions:
                out.append(VerdictCount(Reason(reason), XdpAction(action), n))
        return out

    def steered_counts(self) -> dict[int, int]:
        """ESP packets redirected to each CPU by steering (non-zero ones)."""
        (totals,) = self._percpu_sums("steered", self.ncpus, 1)
        return {cpu: n for cpu, n in enumerate(totals) if n}

    def _zero(self, name: str, count: int, value_size: int) -> None:
        try:
            array_update_batch(self.map_fd(name), 0, bytes(count * value_size), value_size)
        except BpfSyscallError as e:
            raise BpfError(f"map {name}: batch write failed: {e.strerror}") from None

    def reset_verdicts(self) -> None:
        self._zero("verdicts", abi.R_MAX * abi.VERDICT_ACTIONS, 8 * self.ncpus)
        self._zero("steered", self.ncpus, 8 * self.ncpus)

    def reset_ike_buckets(self) -> None:
        """Forget every source's IKE_SA_INIT token bucket and the global budget's state."""
        self._zero("ike_buckets", abi.IKE_BUCKETS, ctypes.sizeof(abi.IkeBucket))
        self._zero("ike_budget", 1, ctypes.sizeof(abi.IkeBudget))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.bpf.cleanup()


# --------------------------------------------------------------------------- attachments


@dataclass(slots=True)
class _Attachment:
    kind: Literal["xdp", "tc"]
    ifname: str
    flags: int = 0  # xdp: mode flags used
    parent: str = ""  # tc: ingress/egress
    made_clsact: bool = False
    link_fd: int | None = None  # a BPF link: closing it detaches


def _attach_xdp(bcc: Any, fn: Any, ifname: str, mode: XdpMode, method: AttachMethod) -> _Attachment:
    modes = {
        "native": [XDP_FLAGS_DRV_MODE],
        "generic": [XDP_FLAGS_SKB_MODE],
        "auto": [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE],
    }[mode]
    idx = _ifindex(ifname)
    errors: list[str] = []
    for m in modes:
        if method != "netlink":
            try:
                fd = link_create(fn.fd, idx, BPF_XDP, m)
            except BpfSyscallError as e:
                if e.errno == errno.EBUSY:
                    raise BpfError(
                        f"attaching XDP to {ifname} failed: another program is attached"
                    ) from None
                errors.append(f"{_MODE_NAMES[m]} link: {e.strerror}")
            else:
                log.info("xdp_wan linked to %s (%s mode)", ifname, _MODE_NAMES[m])
                return _Attachment("xdp", ifname, flags=m, link_fd=fd)
        if method != "link":
            try:
                bcc.BPF.attach_xdp(ifname, fn, XDP_FLAGS_UPDATE_IF_NOEXIST | m)
            except Exception as e:  # bcc raises bare Exception with the netlink error text
                errors.append(f"{_MODE_NAMES[m]} netlink: {e}")
            else:
                log.info("xdp_wan attached to %s (%s mode, netlink)", ifname, _MODE_NAMES[m])
                return _Attachment("xdp", ifname, flags=m)
    raise BpfError(f"attaching XDP to {ifname} failed: {'; '.join(errors)}")


def _detach_xdp(bcc: Any, att: _Attachment) -> None:
    if att.link_fd is not None:
        os.close(att.link_fd)
    else:
        bcc.BPF.remove_xdp(att.ifname, att.flags)


def _attach_tc(fd: int, name: str, ifname: str, parent: str, method: AttachMethod) -> _Attachment:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    idx = _ifindex(ifname)
    if method != "netlink":
        hook = BPF_TCX_INGRESS if parent == TC_INGRESS else BPF_TCX_EGRESS
        try:
            return _Attachment("tc", ifname, parent=parent, link_fd=link_create(fd, idx, hook))
        except BpfSyscallError as e:
            # Kernels before 6.6 have no tcx: EINVAL for the unknown attach type.
            if method == "link" or e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise BpfError(f"attaching {name} to {ifname}: {e.strerror}") from None
            log.info("no tcx links (%s): %s attached with a clsact filter", e.strerror, name)
    with IPRoute() as ipr:
        made = False
        try:
            ipr.tc("add", "clsact", idx)
            made = True
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise BpfError(f"adding clsact to {ifname}: {e}") from None
        try:
            ipr.tc(
                "add-filter",
                "bpf",
                idx,
                ":1",
                fd=fd,
                name=name,
                parent=parent,
                prio=TC_PRIO,
                classid=1,
                direct_action=True,
            )
        except NetlinkError as e:
            if made:
                with suppress(NetlinkError):
                    ipr.tc("del", "clsact", idx)
            raise BpfError(f"attaching {name} to {ifname}: {e}") from None
    return _Attachment("tc", ifname, parent=parent, made_clsact=made)


def _detach_tc(att: _Attachment) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if att.link_fd is not None:
        os.close(att.link_fd)
        return
    try:
        idx = _ifindex(att.ifname)
    except BpfError:
        return  # interface gone: its qdiscs and filters went with it
    with IPRoute() as ipr:
        if att.made_clsact:
            ipr.tc("del", "clsact", idx)
            return
        try:
            ipr.tc("del-filter", "bpf", idx, ":1", parent=att.parent, prio=TC_PRIO)
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise


# --------------------------------------------------------------------------- dataplane


class AttachedPrograms:
    """The gateway's data plane on one WAN and (optionally) one LAN interface.

    Use as a context manager; everything it attached is removed on exit, also when the
    body raises and when SIGTERM/SIGHUP arrive (their default handlers are replaced by
    ones raising SystemExit for the duration, when we are in the main thread).
    With neither interface given nothing is attached: the maps are still managed, which
    is how tests and benchmarks drive the programs through BPF_PROG_TEST_RUN.
    """

    def __init__(
        self,
        wan_if: str | None,
        lan_if: str | None = None,
        *,
        mss_clamp: bool | int = True,
        drop_unknown_spi: bool = False,
        ike_shield: IkeShield | None = None,
        steer_cpus: Sequence[int] = (),
        nic_decrypts: bool = False,
        netns: str | None = None,
        xdp_mode: XdpMode = "auto",
        attach: AttachMethod = "auto",
        slot_bits: int = abi.SLOT_BITS_DEFAULT,
        programs: Programs | None = None,
        hash_seed: int | None = None,
    ) -> None:
        if not isinstance(mss_clamp, bool) and not 536 <= mss_clamp <= 65495:
            raise BpfError(f"MSS clamp {mss_clamp} is out of range 536..65495")
        self.wan_if = wan_if
        self.lan_if = lan_if
        self.mss_clamp = mss_clamp
        self.drop_unknown_spi = drop_unknown_spi
        self.ike_shield = ike_shield
        self.steer_cpus = _cpu_set(steer_cpus)
        self.nic_decrypts = nic_decrypts
        self.netns = netns
        self.xdp_mode = xdp_mode
        self.attach_method = attach
        self._slot_bits = slot_bits
        self._given_programs = programs
        self.programs: Programs | None = None
        self._attached: list[_Attachment] = []
        self._slots: dict[int, abi.SlotEntry] = {}
        self._fallback_in: dict[int, int] = {}
        self._out_spis: dict[int, int] = {}
        self._prefixes: dict[str, int] = {}
        self._old_handlers: dict[int, Any] = {}
        # key of the per-source IKE bucket hash: random, so nobody can aim at a bucket
        self._hash_seed = secrets.randbits(32) if hash_seed is None else hash_seed & 0xFFFFFFFF
        self._cpu_of: dict[int, int] = {}  # slot -> steering CPU
        self._pinned: set[int] = set()  # slots whose CPU was chosen by set_slot_cpu()
        self._cpumap: set[int] = set()  # CPUs with a cpumap entry

    # lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> AttachedPrograms:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        if self.programs is not None:
            raise BpfError("the data plane is already open")
        self.programs = self._given_programs or Programs(slot_bits=self._slot_bits)
        try:
            self._install_signal_handlers()
            self._write_config()
            self._write_steering()
            self._attach_all()
        except BaseException:
            self.close()
            raise

    def _attach_all(self) -> None:
        bcc = import_bcc()
        progs = self._progs
        how = self.attach_method
        with in_netns(self.netns):
            if self.wan_if is not None:
                fn = progs.bpf.funcs[b"xdp_wan"]
                self._attached.append(_attach_xdp(bcc, fn, self.wan_if, self.xdp_mode, how))
                fd = progs.fds["tc_wan_egress"]
                self._attached.append(_attach_tc(fd, "tc_wan_egress", self.wan_if, TC_EGRESS, how))
            if self.lan_if is not None:
                for name, parent in (("tc_lan_ingress", TC_INGRESS), ("tc_lan_egress", TC_EGRESS)):
                    fd = progs.fds[name]
                    self._attached.append(_attach_tc(fd, name, self.lan_if, parent, how))

    def attachments(self) -> list[tuple[str, str, str]]:
        """(kind "xdp"/"tc", interface, "link"/"netlink") for everything attached."""
        return [
            (a.kind, a.ifname, "link" if a.link_fd is not None else "netlink")
            for a in self._attached
        ]

    @property
    def xdp_flags(self) -> int | None:
        """The XDP mode flag in use on the WAN (4 native, 2 generic), None if not attached."""
        for att in self._attached:
            if att.kind == "xdp":
                return att.flags
        return None

    def close(self) -> None:
        """Detach everything (each attachment tried even when another fails). SIGTERM and
        SIGHUP arriving meanwhile are held back until it is done."""
        errors: list[str] = []
        held = self._hold_signals()
        try:
            try:
                with in_netns(self.netns):
                    self._detach_all(errors)
            except BpfError:
                # The namespace is gone, and its interfaces with it: only our link fds
                # are left to close.
                self._detach_all(errors, links_only=True)
        finally:
            self._restore_signal_handlers()
        if self.programs is not None and self._given_programs is None:
            self.programs.close()
        self.programs = None
        if errors:
            raise BpfError("detaching failed: " + "; ".join(errors))
        if held:
            raise SystemExit(128 + held[0])

    def _detach_all(self, errors: list[str], *, links_only: bool = False) -> None:
        bcc = import_bcc() if any(a.link_fd is None for a in self._attached) else None
        while self._attached:
            att = self._attached.pop()
            if links_only and att.link_fd is None:
                continue
            try:
                if att.kind == "xdp":
                    _detach_xdp(bcc, att)
                else:
                    _detach_tc(att)
            except Exception as e:  # keep detaching the rest; report all at the end
                errors.append(f"{att.kind} on {att.ifname}: {e}")

    def _hold_signals(self) -> list[int]:
        """Replace our SystemExit handlers by ones that only note the signal."""
        held: list[int] = []
        for signum in self._old_handlers:
            signal.signal(signum, lambda n, _f: held.append(n))
        return held

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                self._old_handlers[signum] = signal.signal(signum, _raise_exit)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    @property
    def _progs(self) -> Programs:
        if self.programs is None:
            raise BpfError("the data plane is not open")
        return self.programs

    # settings ------------------------------------------------------------------------

    def _write_config(self) -> None:
        cfg = abi.DpConfig()
        cfg.hash_seed = self._hash_seed
        cfg.jiffy_ns = jiffy = self._progs.jiffy_ns
        if self.drop_unknown_spi:
            cfg.flags |= abi.CFG_DROP_UNKNOWN_SPI
        shield = self.ike_shield
        # Credit accrues once per jiffy: a cap below two jiffies' worth would cut the
        # rate itself (a 10,000/s budget at HZ=250 earns 40 requests per tick).
        if shield is not None and shield.rate is not None:
            cfg.flags |= abi.CFG_IKE_RATE_LIMIT
            cfg.ike_cost_ns = shield.cost_ns
            cfg.ike_burst_ns = max(shield.cost_ns * shield.burst, 2 * jiffy)
        if shield is not None and shield.budget_rate is not None:
            cfg.flags |= abi.CFG_IKE_BUDGET
            cfg.budget_cost_ns = shield.budget_cost_ns
            cfg.budget_burst_ns = max(shield.budget_cost_ns * shield.budget_burst, 2 * jiffy)
        if self.steer_cpus:
            cfg.flags |= abi.CFG_STEER
        if self.nic_decrypts:
            cfg.flags |= abi.CFG_NIC_DECRYPTS
        if self.mss_clamp is not False:
            cfg.flags |= abi.CFG_MSS_CLAMP
        if self._fallback_in:
            cfg.flags |= abi.CFG_IN_FALLBACK
        self._progs.set_config(cfg)

    def _write_steering(self) -> None:
        """cpumap entries for the steering CPUs (the kernel starts a kthread per CPU),
        none for the others; then every slot's CPU spread over the set again."""
        progs = self._progs
        for cpu in self.steer_cpus:
            if not 0 <= cpu < progs.ncpus:
                raise BpfError(f"CPU {cpu} does not exist (possible: 0..{progs.ncpus - 1})")
        for cpu in self.steer_cpus:
            if cpu not in self._cpumap:
                # cpumap value: queue size (bpf_cpumap_val.qsize)
                try:
                    progs.update("cpumap", ctypes.c_uint32(cpu), ctypes.c_uint32(2048))
                except BpfError as e:
                    raise BpfError(f"steering to CPU {cpu}: {e} (offline?)") from None
                self._cpumap.add(cpu)
        for cpu in self._cpumap - set(self.steer_cpus):
            progs.delete("cpumap", ctypes.c_uint32(cpu))
            self._cpumap.discard(cpu)
        keep = {s: c for s, c in self._cpu_of.items() if s in self._pinned and c in self.steer_cpus}
        self._pinned &= set(keep)
        self._cpu_of = keep
        for slot in self._slots:
            if slot not in keep:
                self._assign_cpu(slot)
            self._write_slot(slot)

    def _assign_cpu(self, slot: int) -> None:
        """Give a slot the steering set's least loaded CPU (fewest slots; the first of
        those on a tie); nothing while steering is off."""
        if not self.steer_cpus:
            return
        load = dict.fromkeys(self.steer_cpus, 0)
        for cpu in self._cpu_of.values():
            if cpu in load:
                load[cpu] += 1
        self._cpu_of[slot] = min(self.steer_cpus, key=load.__getitem__)

    def update_settings(
        self,
        *,
        drop_unknown_spi: bool | None = None,
        ike_shield: IkeShield | None | Literal[False] = False,
        steer_cpus: Sequence[int] | None = None,
    ) -> None:
        """Change settings at run time (config reload). ike_shield=None switches it off;
        leaving it False keeps the current one. steer_cpus: the new CPU set (() = off),
        slots are spread over it again (pinned slots keep a CPU still in the set)."""
        if drop_unknown_spi is not None:
            self.drop_unknown_spi = drop_unknown_spi
        if ike_shield is not False:
            self.ike_shield = ike_shield
        if steer_cpus is not None:
            self.steer_cpus = _cpu_set(steer_cpus)
            self._write_steering()
        self._write_config()

    def set_slot_cpu(self, slot: int, cpu: int) -> None:
        """Pin a slot's ESP to `cpu` (one of the steering set) instead of the spread."""
        self._check_slot(slot)
        if cpu not in self.steer_cpus:
            raise BpfError(f"CPU {cpu} is not in the steering set {list(self.steer_cpus)}")
        self._entry(slot)
        self._cpu_of[slot] = cpu
        self._pinned.add(slot)
        self._write_slot(slot)

    def slot_cpu(self, slot: int) -> int | None:
        """The CPU a slot's ESP is steered to (None: not steered: steering off, the slot
        is offloaded, or the NIC decrypts)."""
        entry = self._slots.get(slot)
        cpu = None if entry is None else entry.cpu
        return None if cpu is None or cpu == abi.STEER_NONE else cpu

    def steered(self) -> dict[int, int]:
        """ESP packets redirected per target CPU (ipsec_xdp_steered_packets_total{cpu})."""
        return self._progs.steered_counts()

    # Child SA slots --------------------------------------------------------------------

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot <= slot_mask(self._progs.slot_bits):
            raise BpfError(f"slot {slot} is outside 0..{slot_mask(self._progs.slot_bits)}")

    def _write_slot(self, slot: int) -> None:
        """Write the slot's entry with the CPU the program must steer it to: STEER_NONE
        unless steering is on, the slot is not offloaded and the NIC does not decrypt
        (the program then only compares cpu against the cpumap size)."""
        entry = self._slots[slot]
        cpu = self._cpu_of.get(slot)
        steer = cpu is not None and not self.nic_decrypts
        steer = steer and not entry.flags & abi.SLOT_F_OFFLOADED
        entry.cpu = cpu if steer and cpu is not None else abi.STEER_NONE
        self._progs.update("slot_table", ctypes.c_uint32(slot), entry)

    def _entry(self, slot: int) -> abi.SlotEntry:
        """The slot's entry, made (with its steering CPU) on first use."""
        entry = self._slots.get(slot)
        if entry is None:
            entry = self._slots[slot] = abi.SlotEntry(cpu=abi.STEER_NONE)
            self._assign_cpu(slot)
        return entry

    def add_inbound_spi(self, slot: int, spi: int) -> None:
        """Count ESP with inbound `spi` in `slot`. SPIs made by bpf.spi.make_inbound_spi()
        take the direct path (two per slot: old and new during a rekey); any other SPI
        goes through the fallback hash map."""
        self._check_slot(slot)
        if not 256 <= spi <= 0xFFFFFFFF:
            raise BpfError(f"SPI {spi:#x} is reserved or not 32-bit (RFC 4303 §2.1)")
        entry = self._entry(slot)
        if spi & slot_mask(self._progs.slot_bits) == slot and spi not in tuple(entry.spi):
            for i in range(2):
                if entry.spi[i] == 0:
                    entry.spi[i] = spi
                    self._write_slot(slot)
                    return
        self._progs.update("in_spi_fallback", ctypes.c_uint32(spi), ctypes.c_uint32(slot))
        self._fallback_in[spi] = slot
        self._write_slot(slot)  # so the fallback path finds the slot's flags
        if len(self._fallback_in) == 1:
            self._write_config()

    def remove_inbound_spi(self, spi: int) -> None:
        slot = self._fallback_in.pop(spi, None)
        if slot is not None:
            self._progs.delete("in_spi_fallback", ctypes.c_uint32(spi))
            if not self._fallback_in:
                self._write_config()
            return
        slot = spi & slot_mask(self._progs.slot_bits)
        entry = self._slots.get(slot)
        if entry is None or spi not in tuple(entry.spi):
            raise BpfError(f"inbound SPI {spi:#010x} is not registered")
        entry.spi[tuple(entry.spi).index(spi)] = 0
        self._write_slot(slot)

    def set_slot_offloaded(self, slot: int, offloaded: bool) -> None:
        """Mark a slot whose SAs the NIC decrypts: its packets are never steered."""
        self._check_slot(slot)
        entry = self._entry(slot)
        entry.flags = (
            (entry.flags | abi.SLOT_F_OFFLOADED)
            if offloaded
            else (entry.flags & ~abi.SLOT_F_OFFLOADED)
        )
        self._write_slot(slot)

    def add_outbound_spi(self, slot: int, spi: int) -> None:
        """Count outbound ESP with `spi` (the peer's choice) in `slot`."""
        self._check_slot(slot)
        if not 256 <= spi <= 0xFFFFFFFF:
            raise BpfError(f"SPI {spi:#x} is reserved or not 32-bit (RFC 4303 §2.1)")
        self._progs.update("out_spi", ctypes.c_uint32(spi), ctypes.c_uint32(slot))
        self._out_spis[spi] = slot

    def remove_outbound_spi(self, spi: int) -> None:
        if self._out_spis.pop(spi, None) is None:
            raise BpfError(f"outbound SPI {spi:#010x} is not registered")
        self._progs.delete("out_spi", ctypes.c_uint32(spi))

    def release_slot(self, slot: int) -> None:
        """Forget a slot for good: its inbound SPIs and counters (ready for reuse)."""
        self._check_slot(slot)
        for spi, s in list(self._fallback_in.items()):
            if s == slot:
                self.remove_inbound_spi(spi)
        self._slots.pop(slot, None)
        self._cpu_of.pop(slot, None)
        self._pinned.discard(slot)
        self._progs.update("slot_table", ctypes.c_uint32(slot), abi.SlotEntry(cpu=abi.STEER_NONE))
        self._progs.reset_slot_counters(slot)

    # Child SAs as the daemon sees them --------------------------------------------------

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
        """Everything one Child SA needs, all or nothing: its inbound and outbound SPI, a
        clamp/count prefix per remote traffic selector (CIDR) with the tunnel MTU, and
        the offload mark. A rekey calls it again with the new SPIs and the same slot, then
        remove_child_sa_spis() with the old ones once the old SA is gone. When two
        Child SAs claim the same remote prefix, the later one gets its LAN traffic."""
        done: list[Callable[[], None]] = []
        try:
            self.add_inbound_spi(slot, spi_in)
            done.append(partial(self.remove_inbound_spi, spi_in))
            self.add_outbound_spi(slot, spi_out)
            done.append(partial(self.remove_outbound_spi, spi_out))
            for prefix in remote_ts:
                had = self._prefixes.get(_normal_or_raw(prefix))
                self.set_clamp_prefix(prefix, slot, mtu)
                if had is None:
                    done.append(partial(self.remove_clamp_prefix, prefix))
            self.set_slot_offloaded(slot, offloaded)
        except BpfError:
            for undo in reversed(done):
                with suppress(BpfError):
                    undo()
            raise

    def remove_child_sa_spis(self, *, spi_in: int, spi_out: int) -> None:
        """Forget the SPIs of a Child SA that was rekeyed away (its slot stays)."""
        self.remove_inbound_spi(spi_in)
        self.remove_outbound_spi(spi_out)

    def remove_child_sa(
        self, slot: int, *, spi_in: int, spi_out: int, remote_ts: Sequence[str]
    ) -> None:
        """A Child SA deleted for good: its SPIs and prefixes go, its slot is released
        (counters zeroed for the slot's next user)."""
        with suppress(BpfError):
            self.remove_child_sa_spis(spi_in=spi_in, spi_out=spi_out)
        for prefix in remote_ts:
            if self._prefixes.get(_normal_or_raw(prefix)) == slot:
                self.remove_clamp_prefix(prefix)
        self.release_slot(slot)

    # MSS clamp prefixes --------------------------------------------------------------

    def set_clamp_prefix(self, prefix: str, slot: int, mtu: int) -> None:
        """LAN traffic to `prefix` enters the tunnel of `slot` whose MTU is `mtu`: count
        it per slot and clamp SYN/SYN-ACK MSS to mtu - 40 (IPv4) / mtu - 60 (IPv6).
        With mss_clamp=<int> the MSS is additionally capped at that value."""
        self._check_slot(slot)
        key, v6 = _ip_key(prefix)
        low = MIN_MTU_IPV6 if v6 else MIN_MTU_IPV4
        if not low <= mtu <= 65535:
            raise BpfError(f"MTU {mtu} for {prefix} is out of range {low}..65535")
        if not isinstance(self.mss_clamp, bool):
            mtu = min(mtu, self.mss_clamp + (60 if v6 else 40))
        value = abi.ClampValue(slot=slot, mtu=mtu)
        self._progs.update("clamp_prefixes", key, value)
        self._prefixes[_normal(prefix)] = slot

    def exclude_prefix(self, prefix: str) -> None:
        """Carve `prefix` out of wider tunnel prefixes (e.g. the gateway's own LAN subnet
        under a 0.0.0.0/0 selector): its traffic is neither counted nor clamped, like an
        XFRM bypass policy. Undo with remove_clamp_prefix()."""
        key, _ = _ip_key(prefix)
        self._progs.update("clamp_prefixes", key, abi.ClampValue(slot=abi.SLOT_NONE, mtu=0))
        self._prefixes[_normal(prefix)] = abi.SLOT_NONE

    def remove_clamp_prefix(self, prefix: str) -> None:
        key, _ = _ip_key(prefix)
        if self._prefixes.pop(_normal(prefix), None) is None:
            raise BpfError(f"clamp prefix {prefix} is not set")
        self._progs.delete("clamp_prefixes", key)

    def clear(self) -> None:
        """Remove every SPI, slot and prefix this object registered; zero their counters."""
        slots = self.slots_in_use()
        for spi in list(self._out_spis):
            self.remove_outbound_spi(spi)
        for prefix in list(self._prefixes):
            self.remove_clamp_prefix(prefix)
        for slot in slots:
            self.release_slot(slot)

    # counters ------------------------------------------------------------------------

    def slot_counters(self, slot: int) -> SlotCounters:
        self._check_slot(slot)
        return self._progs.slot_counters(slot)

    def slots_in_use(self) -> set[int]:
        """Every slot this object registered an SPI, prefix or flag in."""
        slots = set(self._slots) | set(self._fallback_in.values())
        slots |= set(self._out_spis.values()) | set(self._prefixes.values())
        slots.discard(abi.SLOT_NONE)
        return slots

    def slot_counters_bulk(self, upto: int | None = None) -> SlotTable:
        """Counters of every slot up to the highest in use (or slots 0 .. upto-1) from
        ONE read of the per-CPU slot map, column-wise (SlotTable; `table[slot]` gives a
        SlotCounters). For a scrape: 100,000 slots cost one bpf(2) call and summing in
        C-level list operations, no Python object per slot (docs/benchmarks/xdp.md)."""
        if upto is None:
            used = self.slots_in_use()
            upto = max(used) + 1 if used else 0
        if upto:
            self._check_slot(upto - 1)
        return self._progs.slot_table(upto)

    def verdicts(self) -> list[XdpVerdict]:
        """Non-zero rows for ipsec_xdp_packets_total{interface,action,reason}."""
        rows = []
        for vc in self._progs.verdict_counts():
            ifname = self.lan_if if vc.reason.side == "lan" else self.wan_if
            if ifname is not None:
                rows.append(XdpVerdict(ifname, vc.action.label, vc.reason.label, vc.packets))
        return rows

    def mss_clamped(self) -> dict[str, int]:
        """Packets whose MSS was clamped, per LAN interface (ipsec_mss_clamped_total)."""
        if self.lan_if is None:
            return {}
        clamped = (Reason.LAN_MSS_CLAMPED, Reason.LAN_OUT_MSS_CLAMPED)
        n = sum(vc.packets for vc in self._progs.verdict_counts() if vc.reason in clamped)
        return {self.lan_if: n}


def _cpu_set(cpus: Sequence[int]) -> tuple[int, ...]:
    """A steering CPU set: each CPU once, in the order given."""
    out = tuple(dict.fromkeys(int(c) for c in cpus))
    if len(out) > abi.MAX_STEER_CPUS:
        raise BpfError(f"at most {abi.MAX_STEER_CPUS} CPUs can be steered to")
    return out


def _normal(prefix: str) -> str:
    return str(ipaddress.ip_network(prefix, strict=False))


def _normal_or_raw(prefix: str) -> str:
    try:
        return _normal(prefix)
    except ValueError:
        return prefix


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
