"""The XFRM manager: Child SAs in, kernel objects out, nothing half-installed.

Theory of operation
-------------------
A Child SA is 2 states (inbound, outbound) and, per selector pair, an out, an in and
(tunnel mode) a fwd policy. Every object carries the Child's reqid, and reqids come
from a range we own (OwnedRange): that is how start-up reconcile tells our leftovers
from other software's SAs, which it never touches.

install() encodes all messages of a Child, sends them in one batch (one sendmsg, one
ACK) and, if the kernel refused any of them, deletes the ones it accepted before
raising XfrmError for the first refusal. install_many() does the same for thousands of
Childs in batches of ~128 KiB, rolling back only the Childs that had a failure.

Rekey (RFC 7296 §2.8) is make-before-break: replace() adds the new pair of states under
the same reqid, updates the policies, then removes the old outbound state (the kernel
then picks the new one for output) and, unless asked to keep it for in-flight packets,
the old inbound state. The rekey responder does it in two steps: replace(outbound=False)
adds only the new inbound state (the peer cannot decrypt the new SA before it has our
answer), switch_outbound() later adds the new outbound state, moves the policies and
removes the old outbound state.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import platform
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

from gateway.xfrm import netlink as nl
from gateway.xfrm import wire
from gateway.xfrm.channel import NLM_F_REQUEST, XfrmChannel, in_netns
from gateway.xfrm.errors import XfrmError
from gateway.xfrm.model import PolicyInfo, SaInfo
from gateway.xfrm.offload import OffloadProbe, packet_offload_kernel, route_device
from gateway.xfrm.scan import SaCounters, scan_counters, scan_policy, scan_state
from gateway.xfrm.spec import (
    ChildSaSpec,
    EspTransform,
    IPAddress,
    OffloadResult,
    SaKeys,
    TrafficSelector,
    UdpEncap,
)

NLM_F_CREATE = 0x400
NLM_F_EXCL = 0x200
ESP = nl.IPPROTO_ESP
POLICY_PRIORITY_BASE = 200_000  # lower value = preferred; more specific selectors go lower
# GETSA dump request: a usersa_info header (ignored) and XFRMA_PROTO = ESP, which the
# kernel applies as a filter (xfrm_dump_sa), so other protocols' states are not sent.
_DUMP_ESP_ONLY = bytes(nl.layout_size(nl.USERSA_INFO)) + wire.nla(25, wire.u8(nl.IPPROTO_ESP))


@dataclass(frozen=True, slots=True)
class OwnedRange:
    """reqids [first, first + size) are ours; nothing else is touched by reconcile."""

    first: int = 0x4E_47_00_00  # "NG" in the high bytes: easy to spot in `ip xfrm`
    size: int = 1 << 16

    def __contains__(self, reqid: object) -> bool:
        return isinstance(reqid, int) and self.first <= reqid < self.first + self.size


_OFFLOAD_ORDER: tuple[OffloadResult, ...] = ("none", "crypto", "packet")


@dataclass(frozen=True, slots=True)
class InstalledChildSa:
    """A Child SA as the kernel took it. `offload_in`/`offload_out` are read back from
    the kernel (what it really does, not what was asked); `offload_dev` is the device
    offload was asked for (None: none asked or no device found) and `offload_reason`
    says why a direction got less than asked ("" when it got what was asked)."""

    spec: ChildSaSpec
    offload_in: OffloadResult = "none"
    offload_out: OffloadResult = "none"
    offload_reason: str = ""
    offload_dev: str | None = None

    @property
    def offload(self) -> OffloadResult:
        """What the Child really runs with (the weaker of both directions)."""
        return min(self.offload_in, self.offload_out, key=_OFFLOAD_ORDER.index)


@dataclass(frozen=True, slots=True)
class OffloadAttempt:
    """One try to add states with XFRMA_OFFLOAD_DEV (see XfrmManager.try_offload)."""

    device: str | None  # the device asked for (None: no route to the peer)
    results: dict[bool, OffloadResult]  # inbound? -> what the kernel did (empty: refused)
    error: XfrmError | None = None  # the kernel's refusal; then nothing was added
    reason: str = ""  # why less than asked ("" when granted)

    @property
    def added(self) -> bool:
        return self.error is None and self.device is not None


@dataclass(frozen=True, slots=True)
class OffloadOutcome:
    """What the kernel did with one offload request, and why less than asked."""

    offload: OffloadResult
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaCounters:
    """Lifetime counters of a Child's two states; the error counters are the inbound
    state's `struct xfrm_stats` (`ip -s xfrm state`: replay-window, replay, failed)."""

    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int
    replay_errors: int  # replayed (duplicate) packets: stats.replay
    integrity_failed: int  # ICV check failed: stats.integrity_failed
    replay_window_errors: int = 0  # too old for the replay window: stats.replay_window

    @classmethod
    def of(cls, sa_in: SaCounters, sa_out: SaCounters) -> ChildSaCounters:
        return cls(
            bytes_in=sa_in.bytes,
            packets_in=sa_in.packets,
            bytes_out=sa_out.bytes,
            packets_out=sa_out.packets,
            replay_errors=sa_in.replay,
            integrity_failed=sa_in.integrity_failed,
            replay_window_errors=sa_in.replay_window,
        )


@dataclass(frozen=True, slots=True)
class ReplayState:
    """GETAE: sequence numbers and lifetime counters of one SA (for HA sync, MOBIKE)."""

    oseq: int
    seq: int
    replay_window: int
    bytes: int
    packets: int


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    adopted_states: int = 0
    adopted_policies: int = 0
    removed_states: int = 0
    removed_policies: int = 0


class _Op(NamedTuple):
    """One request of a batch and the request that undoes it (a tuple: built 50k times
    per 10k Childs, so cheap to make). `what` is formatted only when reporting."""

    what: Callable[[], str]
    msg_type: int
    body: bytes
    undo_type: int
    undo_body: bytes


# -- building blocks ------------------------------------------------------------------


def _ts_selector(src: TrafficSelector, dst: TrafficSelector) -> wire.Selector:
    family = 2 if src.net.version == 4 else 10
    return (
        dst.packed,
        src.packed,
        dst.port or 0,
        0xFFFF if dst.port else 0,
        src.port or 0,
        0xFFFF if src.port else 0,
        family,
        dst.net.prefixlen,
        src.net.prefixlen,
        src.proto or dst.proto,
        0,
        0,
    )


def _priority(spec: ChildSaSpec, lt: TrafficSelector, rt: TrafficSelector) -> int:
    if spec.priority is not None:
        return spec.priority
    specificity = (lt.net.prefixlen + rt.net.prefixlen) * 4
    specificity += 2 if (lt.proto or rt.proto) else 0
    specificity += 1 if (lt.port or rt.port) else 0
    return POLICY_PRIORITY_BASE - specificity


def _common_attrs(spec: ChildSaSpec, inbound: bool) -> bytes:
    """Mark and if_id of one direction: inbound = the inbound state and the in/fwd
    policies, outbound = the outbound state and the out policy (swanctl's if_id_in/out)."""
    out = b""
    if spec.mark is not None:
        out += wire.nla(21, wire.mark(spec.mark.value, spec.mark.mask))
    if_id = spec.direction_if_id(inbound)
    if if_id is not None:
        out += wire.nla(31, wire.u32(if_id))
    return out


def _lifetime(spec: ChildSaSpec) -> tuple[int, ...]:
    lt = spec.lifetime
    return (
        lt.soft_bytes,
        lt.hard_bytes,
        lt.soft_packets,
        lt.hard_packets,
        lt.soft_seconds,
        lt.hard_seconds,
        0,
        0,
    )


class _StateKey:
    """(daddr, spi) of one direction, plus its undo/lookup body."""

    __slots__ = ("src", "dst", "src_packed", "dst_packed", "spi", "inbound")

    def __init__(self, spec: ChildSaSpec, inbound: bool) -> None:
        self.inbound = inbound
        if inbound:
            self.src, self.dst = spec.remote, spec.local
            self.src_packed, self.dst_packed = spec.remote_packed, spec.local_packed
        else:
            self.src, self.dst = spec.local, spec.remote
            self.src_packed, self.dst_packed = spec.local_packed, spec.remote_packed
        self.spi = spec.spi_in if inbound else spec.spi_out

    def id_body(self, spec: ChildSaSpec) -> bytes:
        return wire.usersa_id(self.dst_packed, self.spi, spec.family, ESP) + (
            wire.nla(21, wire.mark(spec.mark.value, spec.mark.mask)) if spec.mark else b""
        )

    def describe(self) -> str:
        d = "in" if self.inbound else "out"
        return f"SA {d} spi={self.spi:#010x} {self.src}->{self.dst}"


def state_body(
    spec: ChildSaSpec,
    inbound: bool,
    *,
    offload: tuple[int, int] | None = None,
    replay: bytes | None = None,
    replay_legacy: bytes | None = None,
    curlft: bytes | None = None,
) -> bytes:
    """usersa_info + attributes of one direction (NEWSA/UPDSA payload).

    A tunnel-mode state carries XFRM_STATE_AF_UNSPEC: without it the kernel sets the
    state's (empty) selector to the outer family, and the state then refuses inner
    packets of the other family (IPv6 in an IPv4 tunnel counts XfrmOutNoStates)."""
    key = _StateKey(spec, inbound)
    keys = spec.keys_in if inbound else spec.keys_out
    esp = spec.esp
    attrs = []
    if esp.aead:
        attrs.append(wire.nla(18, wire.algo_aead(esp.aead, keys.encr, esp.icv_bits)))
    else:
        assert esp.crypt is not None  # checked by EspTransform
        attrs.append(wire.nla(2, wire.algo(esp.crypt, keys.encr)))
        if esp.integ:
            attrs.append(wire.nla(20, wire.algo_auth(esp.integ, keys.integ, esp.trunc_bits)))
    if spec.encap is not None:
        sport, dport = (
            (spec.encap.remote_port, spec.encap.local_port)
            if inbound
            else (spec.encap.local_port, spec.encap.remote_port)
        )
        attrs.append(wire.nla(4, wire.encap_tmpl(nl.UDP_ENCAP_ESPINUDP, sport, dport)))
    if replay is not None:
        attrs.append(wire.nla(23, replay))
    elif replay_legacy is not None:
        attrs.append(wire.nla(10, replay_legacy))
    elif spec.replay_window:
        attrs.append(wire.nla(23, wire.replay_esn(spec.replay_window)))
    if curlft is not None:
        attrs.append(wire.nla(9, curlft))
    if offload is not None:
        attrs.append(wire.nla(28, wire.user_offload(*offload)))
    if spec.set_mark is not None and not inbound:
        attrs.append(wire.nla(29, wire.u32(spec.set_mark)))
    attrs.append(_common_attrs(spec, inbound))
    body = wire.usersa_info(
        sel=wire.ANY_SELECTOR,
        daddr=key.dst_packed,
        spi=key.spi,
        proto=ESP,
        saddr=key.src_packed,
        lifetime=_lifetime(spec),
        reqid=spec.reqid,
        family=spec.family,
        mode=nl.XFRM_MODE_TUNNEL if spec.mode == "tunnel" else nl.XFRM_MODE_TRANSPORT,
        replay_window=0,
        flags=(nl.XFRM_STATE_ESN if spec.esn else 0)
        | (nl.XFRM_STATE_AF_UNSPEC if spec.mode == "tunnel" else 0),
    )
    return body + b"".join(attrs)


def _policy_what(name: str, lt: TrafficSelector, rt: TrafficSelector, reqid: int) -> str:
    return f"policy {name} {lt}<->{rt} reqid={reqid:#x}"


def policy_bodies(
    spec: ChildSaSpec, *, trap_only: bool = False
) -> list[tuple[Callable[[], str], bytes, bytes]]:
    """(description, NEWPOLICY payload, DELPOLICY payload) for every policy of a Child."""
    out: list[tuple[Callable[[], str], bytes, bytes]] = []
    tunnel = spec.mode == "tunnel"
    mode = nl.XFRM_MODE_TUNNEL if tunnel else nl.XFRM_MODE_TRANSPORT
    common_in, common_out = _common_attrs(spec, True), _common_attrs(spec, False)
    local = spec.local_packed if tunnel else b""
    remote = spec.remote_packed if tunnel else b""
    tmpl_out = wire.nla(
        5,
        wire.user_tmpl(
            daddr=remote,
            spi=0,
            proto=ESP,
            family=spec.family,
            saddr=local,
            reqid=spec.reqid,
            mode=mode,
        ),
    )
    tmpl_in = wire.nla(
        5,
        wire.user_tmpl(
            daddr=local,
            spi=0,
            proto=ESP,
            family=spec.family,
            saddr=remote,
            reqid=spec.reqid,
            mode=mode,
        ),
    )
    dirs = [(nl.XFRM_POLICY_OUT, "out")]
    if not trap_only:
        dirs.insert(0, (nl.XFRM_POLICY_IN, "in"))
        if spec.installs_fwd:
            dirs.insert(1, (nl.XFRM_POLICY_FWD, "fwd"))
    for lt, rt in spec.selectors:
        prio = _priority(spec, lt, rt)
        sel_out, sel_in = _ts_selector(lt, rt), _ts_selector(rt, lt)
        for direction, name in dirs:
            outbound = direction == nl.XFRM_POLICY_OUT
            sel = sel_out if outbound else sel_in
            new = wire.userpolicy_info(sel=sel, priority=prio, index=0, direction=direction)
            common = common_out if outbound else common_in
            new += (tmpl_out if outbound else tmpl_in) + common
            delete = wire.userpolicy_id(sel, 0, direction) + common
            out.append((partial(_policy_what, name, lt, rt, spec.reqid), new, delete))
    return out


class XfrmManager:
    """Installs, replaces, migrates and removes Child SAs; reads counters; reconciles."""

    def __init__(
        self,
        channel: XfrmChannel | None = None,
        *,
        netns: str | None = None,
        owned: OwnedRange = OwnedRange(),
    ) -> None:
        self.channel = channel or XfrmChannel(netns)
        self.netns = self.channel.netns
        self.owned = owned
        self._next_reqid = owned.first
        # out policies installed by install_trap(): DELPOLICY payload (selector and
        # direction) -> (NEWPOLICY payload, reqid)
        self._trap_policies: dict[bytes, tuple[bytes, int]] = {}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> XfrmManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def allocate_reqid(self, in_use: Iterable[int] = ()) -> int:
        used = set(in_use)
        for _ in range(self.owned.size):
            reqid = self._next_reqid
            self._next_reqid += 1
            if self._next_reqid >= self.owned.first + self.owned.size:
                self._next_reqid = self.owned.first
            if reqid not in used:
                return reqid
        raise XfrmError("allocate reqid", errno.ENOSPC, "owned reqid range exhausted")

    # -- install -----------------------------------------------------------------------

    def _check_owned(self, spec: ChildSaSpec) -> None:
        if spec.reqid not in self.owned:
            raise ValueError(f"reqid {spec.reqid:#x} is outside the owned range")

    def _ifindex(self, name: str) -> int:
        with in_netns(self.netns):
            try:
                return socket.if_nametoindex(name)
            except OSError as exc:
                raise XfrmError(
                    f"offload device {name}", errno.ENODEV, f"no such interface: {name}"
                ) from exc

    def _state_ops(
        self,
        spec: ChildSaSpec,
        offload: tuple[int, int] | None,
        msg_type: int = nl.XFRM_MSG_NEWSA,
        directions: tuple[bool, ...] = (True, False),  # inbound?
    ) -> list[_Op]:
        """NEWSA (or `msg_type`) of each direction; `offload` = (ifindex, flags) adds
        XFRMA_OFFLOAD_DEV (XFRM_OFFLOAD_INBOUND is set for the inbound state here)."""
        ops = []
        for inbound in directions:
            key = _StateKey(spec, inbound)
            off = None
            if offload is not None:
                off = (offload[0], offload[1] | (nl.XFRM_OFFLOAD_INBOUND if inbound else 0))
            body = state_body(spec, inbound, offload=off)
            ops.append(_Op(key.describe, msg_type, body, nl.XFRM_MSG_DELSA, key.id_body(spec)))
        return ops

    def _policy_ops(
        self,
        spec: ChildSaSpec,
        msg_type: int = nl.XFRM_MSG_NEWPOLICY,
        trap_only: bool = False,
        offload: tuple[int, int] | None = None,
    ) -> list[_Op]:
        """The Child's policies. A policy a trap holds (same selector and direction) is
        the trap's: a Child SA under the trap's reqid shares an identical one (left out
        here, so it stays when the SA goes: the trap stays underneath); a different one
        (other tunnel addresses, e.g. after NAT-T or MOBIKE) replaces the trap's with
        UPDPOLICY and its undo puts the trap's back. remove_trap() removes them.
        `offload` = (ifindex, XFRM_OFFLOAD_PACKET): packet offload wants the policies
        on the device too (Linux >= 6.2)."""
        ops = []
        extra = wire.nla(28, wire.user_offload(*offload)) if offload is not None else b""
        for what, new, delete in policy_bodies(spec, trap_only=trap_only):
            new += extra
            held = None if trap_only else self._trap_policies.get(delete)
            if held is None:
                ops.append(_Op(what, msg_type, new, nl.XFRM_MSG_DELPOLICY, delete))
            elif held[0] != new:
                ops.append(_Op(what, nl.XFRM_MSG_UPDPOLICY, new, nl.XFRM_MSG_UPDPOLICY, held[0]))
        return ops

    def _run_groups(
        self, groups: Sequence[list[_Op]], *, rollback: bool = True
    ) -> list[XfrmError | None]:
        """Send every op; roll back each group that had a failure. One result per group."""
        seq = self.channel.reserve_seqs(sum(len(g) for g in groups))
        messages: list[bytes] = []
        owner: dict[int, tuple[int, _Op]] = {}
        for gi, group in enumerate(groups):
            for op in group:
                flags = NLM_F_REQUEST
                if op.msg_type in (nl.XFRM_MSG_NEWSA, nl.XFRM_MSG_NEWPOLICY):
                    flags |= NLM_F_CREATE | NLM_F_EXCL
                messages.append(wire.message(op.msg_type, flags, seq, op.body))
                owner[seq] = (gi, op)
                seq += 1
        failures = self.channel.send_batch(messages)
        results: list[XfrmError | None] = [None] * len(groups)
        failed_seqs: set[int] = set()
        for f in failures:
            gi, op = owner[f.seq]
            failed_seqs.add(f.seq)
            if results[gi] is None:
                results[gi] = XfrmError(
                    f"{nl.MSG_NAMES[op.msg_type]} {op.what()}", f.errno, f.reason
                )
        if failures and rollback:
            undo = [
                op
                for s, (gi, op) in owner.items()
                if results[gi] is not None and s not in failed_seqs
            ]
            self._undo(reversed(undo))
        return results

    def _undo(self, ops: Iterable[_Op]) -> None:
        first = None
        batch = list(ops)
        if not batch:
            return
        seq = self.channel.reserve_seqs(len(batch))
        msgs = [
            wire.message(op.undo_type, NLM_F_REQUEST, seq + i, op.undo_body)
            for i, op in enumerate(batch)
        ]
        for f in self.channel.send_batch(msgs):
            if f.errno not in (errno.ENOENT, errno.ESRCH) and first is None:
                first = f
        if first is not None:
            op = batch[first.seq - seq]
            raise XfrmError(
                f"rollback {nl.MSG_NAMES[op.undo_type]} {op.what()}", first.errno, first.reason
            )

    # -- offload ------------------------------------------------------------------------

    def _offload_device(self, spec: ChildSaSpec) -> str | None:
        """spec.offload_dev, else the device the route to the peer uses (with the SA's
        output mark, as the kernel will route its ESP packets)."""
        if spec.offload_dev:
            return spec.offload_dev
        return route_device(spec.remote, spec.local, mark=spec.set_mark, netns=self.netns)

    def try_offload(
        self, spec: ChildSaSpec, directions: tuple[bool, ...] = (True, False)
    ) -> OffloadAttempt:
        """Add the states of `directions` (inbound?) with XFRMA_OFFLOAD_DEV asking for
        spec.offload ("packet": packet offload, anything else: crypto offload) and read
        back what the kernel did. Neither retried nor rolled back: a refusal adds
        nothing (`error`), a silent software fallback leaves the states in with result
        "none" and a `reason`. The building block of install/replace/migrate and of
        offload.probe_offload()."""
        mode = "packet" if spec.offload == "packet" else "crypto"
        dev = self._offload_device(spec)
        if dev is None:
            return OffloadAttempt(
                None, {}, None, f"no route to {spec.remote}: no device to offload to"
            )
        ifindex = self._ifindex(dev)
        flags = nl.XFRM_OFFLOAD_PACKET if mode == "packet" else 0
        (err,) = self._run_groups([self._state_ops(spec, (ifindex, flags), directions=directions)])
        if err is not None:
            refused = _offload_error(err, mode, dev)
            return OffloadAttempt(dev, {}, refused, refused.reason)
        results = {d: self.read_state(spec, inbound=d).offload for d in directions}
        reason = ""
        got = min(results.values(), key=_OFFLOAD_ORDER.index)
        if got == "none":
            reason = (
                f"{dev} has no IPsec offload: the kernel installed the SA in software "
                "(ethtool -k shows esp-hw-offload off [fixed] for such devices)"
            )
        elif mode == "packet" and got != "packet":
            reason = f"{dev} gave crypto offload only, not packet offload"
        return OffloadAttempt(dev, results, None, reason)

    def add_offloaded_state(self, spec: ChildSaSpec, *, inbound: bool) -> OffloadOutcome:
        """One state with spec.offload asked on its device, as a trial: what the kernel
        did and why less than asked. XfrmError only when the state cannot be added even
        without offload. The caller deletes it (delete_state)."""
        att = self.try_offload(spec, (inbound,))
        if att.added:
            return OffloadOutcome(att.results[inbound], att.reason)
        if att.error is not None and att.error.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise att.error
        return OffloadOutcome("none", att.reason)

    def _add_states(
        self, spec: ChildSaSpec, directions: tuple[bool, ...]
    ) -> tuple[dict[bool, OffloadResult], str, str | None]:
        """Add the states of `directions` with spec.offload's rules: "no" plain; "auto"
        offload if the kernel grants it, else plain with a reason; "crypto"/"packet"
        that mode or XfrmError naming the device and the reason (nothing left added).
        Returns (what the kernel did per direction, reason, device asked)."""
        if spec.offload == "no":
            (err,) = self._run_groups([self._state_ops(spec, None, directions=directions)])
            if err is not None:
                raise err
            return dict.fromkeys(directions, "none"), "", None
        att = self.try_offload(spec, directions)
        if att.added:
            if spec.offload != "auto" and not all(
                _satisfies(r, spec.offload) for r in att.results.values()
            ):
                self._undo(self._state_ops(spec, None, directions=directions))
                raise XfrmError(
                    f"offload {spec.offload} on {att.device}", errno.EOPNOTSUPP, att.reason
                )
            return att.results, att.reason, att.device
        if spec.offload != "auto":
            raise att.error or XfrmError(
                f"offload {spec.offload} for peer {spec.remote}", errno.ENETUNREACH, att.reason
            )
        (err,) = self._run_groups([self._state_ops(spec, None, directions=directions)])
        if err is not None:
            raise err
        return dict.fromkeys(directions, "none"), att.reason, att.device

    def _policy_offload(
        self, results: dict[bool, OffloadResult], dev: str | None
    ) -> tuple[int, int] | None:
        """Packet offload puts the policies on the device too."""
        if dev is None or "packet" not in results.values():
            return None
        return self._ifindex(dev), nl.XFRM_OFFLOAD_PACKET

    # -- install ------------------------------------------------------------------------

    def install(self, spec: ChildSaSpec) -> InstalledChildSa:
        """Install both states and all policies of a Child SA, or nothing at all.
        With offload asked (spec.offload != "no") the states go first, then the policies;
        see _add_states() for what each offload mode accepts."""
        self._check_owned(spec)
        if spec.offload == "no":
            return self._install_plain(spec)
        results, reason, dev = self._add_states(spec, (True, False))
        offload = self._policy_offload(results, dev)
        (err,) = self._run_groups([self._policy_ops(spec, offload=offload)])
        if err is not None:
            self._undo(self._state_ops(spec, None))
            raise err
        return InstalledChildSa(spec, results[True], results[False], reason, dev)

    def _install_plain(self, spec: ChildSaSpec) -> InstalledChildSa:
        (err,) = self._run_groups([self._state_ops(spec, None) + self._policy_ops(spec)])
        if err is not None:
            raise err
        return InstalledChildSa(spec)

    def install_many(self, specs: Sequence[ChildSaSpec]) -> list[InstalledChildSa | XfrmError]:
        """Install many software Childs with few syscalls; each one all-or-nothing."""
        for spec in specs:
            self._check_owned(spec)
            if spec.offload != "no":
                raise ValueError("install_many() is for offload='no'; use install()")
        groups = [self._state_ops(s, None) + self._policy_ops(s) for s in specs]
        results = self._run_groups(groups)
        return [
            err if err is not None else InstalledChildSa(s)
            for s, err in zip(specs, results, strict=True)
        ]

    def install_trap(self, spec: ChildSaSpec) -> None:
        """Out policies only: matching traffic makes the kernel send ACQUIRE (on demand).
        A Child SA later installed with the same reqid and selectors shares them."""
        self._check_owned(spec)
        ops = self._policy_ops(spec, trap_only=True)
        (err,) = self._run_groups([ops])
        if err is not None:
            raise err
        for op in ops:
            self._trap_policies[op.undo_body] = (op.body, spec.reqid)

    def remove_trap(self, spec: ChildSaSpec) -> None:
        ops = self._policy_ops(spec, trap_only=True)
        for op in ops:
            self._trap_policies.pop(op.undo_body, None)
        self._undo(ops)

    # -- delete / replace / migrate ---------------------------------------------------

    def delete(self, child: InstalledChildSa | ChildSaSpec) -> None:
        """Remove both states and all policies; objects already gone are fine."""
        spec = child.spec if isinstance(child, InstalledChildSa) else child
        self._undo(self._policy_ops(spec) + self._state_ops(spec, None))

    def delete_state(self, spec: ChildSaSpec, *, inbound: bool) -> None:
        sa_in, sa_out = self._state_ops(spec, None)
        self._undo([sa_in if inbound else sa_out])

    def replace(
        self,
        old: InstalledChildSa,
        new: ChildSaSpec,
        *,
        keep_old_inbound: bool = False,
        outbound: bool = True,
    ) -> InstalledChildSa:
        """Make-before-break rekey: new states first (with new.offload's rules), then
        policies, then old states go. `outbound=False` (the rekey responder): only the new
        inbound state goes in; the old outbound state stays in use until
        switch_outbound(). A failure leaves the old Child SA as it was."""
        self._check_owned(new)
        if new.reqid != old.spec.reqid:
            raise ValueError("a rekeyed Child SA keeps its reqid")
        if {new.spi_in, new.spi_out} & {old.spec.spi_in, old.spec.spi_out}:
            raise ValueError("a rekeyed Child SA needs new SPIs")
        if not outbound:
            results, reason, dev = self._add_states(new, (True,))
            return InstalledChildSa(new, results[True], "none", reason, dev)
        results, reason, dev = self._add_states(new, (True, False))
        try:
            self._update_policies(old.spec, new, self._policy_offload(results, dev))
        except XfrmError:
            self._undo(self._state_ops(new, None))
            raise
        self.delete_state(old.spec, inbound=False)
        if not keep_old_inbound:
            self.delete_state(old.spec, inbound=True)
        return InstalledChildSa(new, results[True], results[False], reason, dev)

    def switch_outbound(self, old: InstalledChildSa, new: InstalledChildSa) -> InstalledChildSa:
        """The rekey responder's second step: the outbound state of `new` (installed by
        replace(outbound=False)) goes in, the policies move to it and the outbound state
        of `old` (the one in use) goes, so the kernel sends on `new` from now on."""
        if new.spec.reqid != old.spec.reqid:
            raise ValueError("a rekeyed Child SA keeps its reqid")
        results, reason, dev = self._add_states(new.spec, (False,))
        try:
            self._update_policies(old.spec, new.spec, self._policy_offload(results, dev))
        except XfrmError:
            self.delete_state(new.spec, inbound=False)
            raise
        self.delete_state(old.spec, inbound=False)
        return InstalledChildSa(
            new.spec,
            new.offload_in,
            results[False],
            reason or new.offload_reason,
            dev or new.offload_dev,
        )

    def _update_policies(
        self, old: ChildSaSpec, new: ChildSaSpec, offload: tuple[int, int] | None = None
    ) -> None:
        new_ops = self._policy_ops(new, nl.XFRM_MSG_UPDPOLICY, offload=offload)
        new_deletes = {op.undo_body for op in new_ops}
        stale = [op for op in self._policy_ops(old) if op.undo_body not in new_deletes]
        (err,) = self._run_groups([new_ops])
        if err is not None:
            raise err
        self._undo(stale)

    def migrate(
        self,
        child: InstalledChildSa,
        local: IPAddress,
        remote: IPAddress,
        encap: UdpEncap | None | bool = True,
    ) -> InstalledChildSa:
        """Move a Child to new outer addresses (MOBIKE, RFC 4555) keeping SPIs, keys,
        sequence numbers and byte counters. encap=True keeps the current encapsulation.
        Offload is asked again with the Child's mode (on spec.offload_dev, else on the
        device of the new route to the peer) and read back; "auto" falls back to software
        (e.g. NAT-T appeared, which Linux 6.1 cannot offload), "crypto"/"packet" that
        cannot be had put the old states back and raise XfrmError."""
        old = child.spec
        new = dataclasses.replace(
            old,
            local=local,
            remote=remote,
            encap=old.encap if encap is True else (encap or None),
            local_ts=old.local_ts if old.mode == "tunnel" else (),
            remote_ts=old.remote_ts if old.mode == "tunnel" else (),
        )
        saved = [self._get_state_msg(old, inbound) for inbound in (True, False)]
        results: dict[bool, OffloadResult] = {True: "none", False: "none"}
        reason, dev, offload = "", None, None
        mode = "packet" if new.offload == "packet" else "crypto"
        if new.offload != "no":
            dev = self._offload_device(new)
            if dev is None:
                reason = f"no route to {new.remote}: no device to offload to"
                if new.offload != "auto":
                    raise XfrmError(
                        f"offload {new.offload} for peer {remote}", errno.ENETUNREACH, reason
                    )
            else:
                offload = (self._ifindex(dev), nl.XFRM_OFFLOAD_PACKET if mode == "packet" else 0)
        (err,) = self._run_groups([self._migrate_ops(old, new, saved, offload)], rollback=False)
        if err is not None:
            self._restore(old, new, saved)
            if offload is None or new.offload != "auto":
                raise _offload_error(err, mode, dev) if offload is not None and dev else err
            reason = _offload_error(err, mode, dev or "").reason
            (err,) = self._run_groups([self._migrate_ops(old, new, saved, None)], rollback=False)
            if err is not None:
                self._restore(old, new, saved)
                raise err
        elif offload is not None:
            results = {d: self.read_state(new, inbound=d).offload for d in (True, False)}
            if not all(_satisfies(r, new.offload) for r in results.values()):
                reason = f"{dev} has no IPsec {mode} offload for this SA (kernel: {results})"
                if new.offload != "auto":
                    self._restore(old, new, saved)
                    raise XfrmError(f"offload {new.offload} on {dev}", errno.EOPNOTSUPP, reason)
            if min(results.values(), key=_OFFLOAD_ORDER.index) == "none":
                reason = f"{dev} has no IPsec offload: the kernel moved the SA to software"
        self._update_policies(old, new, self._policy_offload(results, dev))
        return InstalledChildSa(new, results[True], results[False], reason, dev)

    def _migrate_ops(
        self,
        old: ChildSaSpec,
        new: ChildSaSpec,
        saved: list[Any],
        offload: tuple[int, int] | None,
    ) -> list[_Op]:
        """Per direction: delete the old state, add it at the new addresses carrying
        replay state and current lifetime over (and XFRMA_OFFLOAD_DEV when asked)."""
        ops: list[_Op] = []
        for inbound, msg in zip((True, False), saved, strict=True):
            replay, legacy, curlft, _ = _carry_over(msg)
            key = _StateKey(new, inbound)
            old_key = _StateKey(old, inbound)
            off = None
            if offload is not None:
                off = (offload[0], offload[1] | (nl.XFRM_OFFLOAD_INBOUND if inbound else 0))
            body = state_body(
                new, inbound, offload=off, replay=replay, replay_legacy=legacy, curlft=curlft
            )
            ops.append(
                _Op(
                    old_key.describe,
                    nl.XFRM_MSG_DELSA,
                    old_key.id_body(old),
                    nl.XFRM_MSG_DELSA,
                    b"",
                )
            )
            ops.append(
                _Op(key.describe, nl.XFRM_MSG_NEWSA, body, nl.XFRM_MSG_DELSA, key.id_body(new))
            )
        return ops

    def _restore(self, old: ChildSaSpec, new: ChildSaSpec, saved: list[Any]) -> None:
        """Undo a failed migration: drop the new states, put the old ones back with the
        offload they had (in software if the device no longer takes them: never lost)."""
        self._undo([op for op in self._state_ops(new, None)])
        pending = list(zip((True, False), saved, strict=True))
        for with_offload in (True, False):
            seq = self.channel.reserve_seqs(len(pending))
            msgs = []
            for i, (inbound, msg) in enumerate(pending):
                replay, legacy, curlft, offload = _carry_over(msg)
                body = state_body(
                    old,
                    inbound,
                    offload=offload if with_offload else None,
                    replay=replay,
                    replay_legacy=legacy,
                    curlft=curlft,
                )
                msgs.append(
                    wire.message(nl.XFRM_MSG_NEWSA, NLM_F_REQUEST | NLM_F_CREATE, seq + i, body)
                )
            failed = {f.seq - seq for f in self.channel.send_batch(msgs)}
            pending = [p for i, p in enumerate(pending) if i in failed]
            if not pending:
                return

    # -- read back ----------------------------------------------------------------------

    def _get_state_msg(self, spec: ChildSaSpec, inbound: bool) -> Any:
        key = _StateKey(spec, inbound)
        msg = self.channel.request(nl.XFRM_MSG_GETSA, key.id_body(spec), f"GETSA {key.describe()}")
        if msg is None:
            raise XfrmError(f"GETSA {key.describe()}", errno.ENOENT, "no reply")
        return msg

    def read_states(self, spec: ChildSaSpec) -> tuple[SaInfo, SaInfo]:
        """(inbound, outbound) as the kernel has them."""
        return self.read_state(spec, inbound=True), self.read_state(spec, inbound=False)

    def read_state(self, spec: ChildSaSpec, *, inbound: bool) -> SaInfo:
        """One direction as the kernel has it (XfrmError ENOENT... when it is not there)."""
        return SaInfo.from_msg(self._get_state_msg(spec, inbound))

    def read_replay(self, spec: ChildSaSpec, *, inbound: bool) -> ReplayState:
        """XFRM_MSG_GETAE of one direction: replay state and current lifetime."""
        key = _StateKey(spec, inbound)
        body = wire.aevent_id(
            key.dst_packed,
            key.spi,
            spec.family,
            ESP,
            key.src_packed,
            nl.XFRM_AE_RVAL | nl.XFRM_AE_LVAL,
            spec.reqid,
        )
        if spec.mark is not None:
            body += wire.nla(21, wire.mark(spec.mark.value, spec.mark.mask))
        msg = self.channel.request(nl.XFRM_MSG_GETAE, body, f"GETAE {key.describe()}")
        if msg is None:
            raise XfrmError(f"GETAE {key.describe()}", errno.ENOENT, "no reply")
        esn = msg.get_attr("XFRMA_REPLAY_ESN_VAL")
        legacy = msg.get_attr("XFRMA_REPLAY_VAL")
        lt = msg.get_attr("XFRMA_LTIME_VAL") or {"bytes": 0, "packets": 0}
        if esn is not None:
            oseq = esn["oseq"] | esn["oseq_hi"] << 32
            seq = esn["seq"] | esn["seq_hi"] << 32
            window = esn["replay_window"]
        else:
            oseq, seq, window = (legacy["oseq"], legacy["seq"], 0) if legacy else (0, 0, 0)
        return ReplayState(oseq, seq, window, lt["bytes"], lt["packets"])

    def counters(self, child: InstalledChildSa | ChildSaSpec) -> ChildSaCounters:
        """One Child's counters (two GETSA); for many Childs use child_counters()."""
        spec = child.spec if isinstance(child, InstalledChildSa) else child
        sa_in, sa_out = self.read_states(spec)
        return ChildSaCounters.of(sa_in.counters, sa_out.counters)

    def dump_counters(self, *, ours_only: bool = True) -> dict[tuple[bytes, int], SaCounters]:
        """Every ESP state's counters in one XFRM_MSG_GETSA dump (filtered to ESP by the
        kernel, to our reqids here), keyed by (daddr as xfrm_address_t, SPI): what a
        scrape needs instead of 2-4 GETSA per Child SA. Reads only fixed offsets of each
        message (scan.scan_counters); larval states (SPI 0) are left out."""
        rows = self.channel.dump_scan(
            nl.XFRM_MSG_GETSA, nl.XFRM_MSG_NEWSA, scan_counters, _DUMP_ESP_ONLY
        )
        owned = self.owned
        return {
            (r.daddr, r.spi): r
            for r in rows
            if r.spi != 0 and (not ours_only or owned.first <= r.reqid < owned.first + owned.size)
        }

    def child_counters(
        self,
        children: Iterable[InstalledChildSa | ChildSaSpec],
        table: dict[tuple[bytes, int], SaCounters] | None = None,
    ) -> list[ChildSaCounters | None]:
        """counters() of many Child SAs from one dump (`table`, default: a fresh
        dump_counters()), in the order given; None for a Child whose inbound or outbound
        state is not in the kernel (any more)."""
        if table is None:
            table = self.dump_counters()
        out: list[ChildSaCounters | None] = []
        for child in children:
            spec = child.spec if isinstance(child, InstalledChildSa) else child
            sa_in = table.get((spec.local_packed, spec.spi_in))
            sa_out = table.get((spec.remote_packed, spec.spi_out))
            out.append(
                None if sa_in is None or sa_out is None else ChildSaCounters.of(sa_in, sa_out)
            )
        return out

    def states(self, *, ours_only: bool = True, larval: bool = False) -> list[SaInfo]:
        """Installed states. Larval states (SPI 0) are the kernel's placeholders for an
        ACQUIRE in progress: not installed by anyone, they expire by themselves."""
        infos = [
            SaInfo.from_msg(m)
            for m in self.channel.dump(nl.XFRM_MSG_GETSA)
            if m["header"]["type"] == nl.XFRM_MSG_NEWSA
        ]
        if not larval:
            infos = [s for s in infos if s.spi != 0]
        return [s for s in infos if s.reqid in self.owned] if ours_only else infos

    def policies(self, *, ours_only: bool = True) -> list[PolicyInfo]:
        infos = [
            PolicyInfo.from_msg(m)
            for m in self.channel.dump(nl.XFRM_MSG_GETPOLICY)
            if m["header"]["type"] == nl.XFRM_MSG_NEWPOLICY
        ]
        if not ours_only:
            return infos
        return [p for p in infos if p.reqids and all(r in self.owned for r in p.reqids)]

    def xfrm_stat(self) -> dict[str, int]:
        """The kernel's XFRM error counters (/proc/net/xfrm_stat) of our namespace."""
        with in_netns(self.netns):
            try:
                with open("/proc/thread-self/net/xfrm_stat") as f:
                    text = f.read()
            except FileNotFoundError:  # CONFIG_XFRM_STATISTICS off
                return {}
        return parse_xfrm_stat(text)

    # -- ownership -----------------------------------------------------------------------

    def reconcile(self, keep_reqids: Iterable[int] = ()) -> ReconcileReport:
        """After a restart: adopt our objects whose reqid is in keep_reqids, remove the
        rest of ours, and leave every object outside the owned range alone."""
        keep = set(keep_reqids)
        owned = self.owned
        states = [
            scan_state(p) for p in self.channel.dump_raw(nl.XFRM_MSG_GETSA, nl.XFRM_MSG_NEWSA)
        ]
        states = [s for s in states if s.reqid in owned]
        policies = [
            scan_policy(p)
            for p in self.channel.dump_raw(nl.XFRM_MSG_GETPOLICY, nl.XFRM_MSG_NEWPOLICY)
        ]
        policies = [p for p in policies if p.reqids and all(r in owned for r in p.reqids)]
        drop: list[_Op] = []
        for p in policies:
            if not p.reqids <= keep:
                body = wire.userpolicy_id(wire.ANY_SELECTOR, p.index, p.direction) + p.key_attrs
                drop.append(
                    _Op(
                        partial(str, f"policy index={p.index}"), 0, b"", nl.XFRM_MSG_DELPOLICY, body
                    )
                )
        n_policies = len(drop)
        for s in states:
            # SPI 0: an ACQUIRE placeholder (larval state); the kernel expires it itself.
            if s.spi != 0 and s.reqid not in keep:
                body = wire.usersa_id(s.daddr, s.spi, s.family, s.proto) + s.key_attrs
                drop.append(
                    _Op(partial(str, f"SA spi={s.spi:#010x}"), 0, b"", nl.XFRM_MSG_DELSA, body)
                )
        self._undo(drop)
        self._trap_policies = {k: v for k, v in self._trap_policies.items() if v[1] in keep}
        return ReconcileReport(
            adopted_states=sum(1 for s in states if s.reqid in keep),
            adopted_policies=len(policies) - n_policies,
            removed_states=len(drop) - n_policies,
            removed_policies=n_policies,
        )

    def flush(self) -> ReconcileReport:
        """Remove all of our objects (never the kernel-wide XFRM_MSG_FLUSHSA)."""
        return self.reconcile(())


def _satisfies(result: OffloadResult, mode: str) -> bool:
    """Whether what the kernel did is what `mode` demands ("auto": anything)."""
    if mode == "packet":
        return result == "packet"
    if mode == "crypto":
        return result != "none"
    return True


def _offload_error(err: XfrmError, mode: str, dev: str) -> XfrmError:
    """The kernel's refusal of an offloaded state, naming the device and the reason."""
    hint = ""
    if mode == "packet" and not packet_offload_kernel():
        hint = f" (packet offload needs Linux >= 6.2; this is {platform.release()})"
    return XfrmError(
        f"{err.operation} with {mode} offload on {dev}",
        err.errno,
        f"{dev} refused {mode} offload: {err.reason}{hint}",
    )


def _carry_over(
    msg: Any,
) -> tuple[bytes | None, bytes | None, bytes | None, tuple[int, int] | None]:
    """Replay state, current lifetime and offload (ifindex, flags) of a state,
    re-encoded for its successor."""
    replay = legacy = curlft = None
    off = msg.get_attr("XFRMA_OFFLOAD_DEV")
    offload = (off["ifindex"], off["flags"]) if off is not None else None
    esn = msg.get_attr("XFRMA_REPLAY_ESN_VAL")
    if esn is not None:
        replay = wire.replay_esn(
            esn["replay_window"],
            esn["oseq"],
            esn["seq"],
            esn["oseq_hi"],
            esn["seq_hi"],
            tuple(esn["bmp"]),
        )
    else:
        rv = msg.get_attr("XFRMA_REPLAY_VAL")
        if rv is not None:
            legacy = nl.pack_fields(nl.REPLAY_STATE, rv)
    curlft = nl.pack_fields(
        nl.xfrm_lifetime_cur(""),
        {n: msg["curlft_" + n] for n in nl.LIFETIME_CUR_NAMES},
    )
    return replay, legacy, curlft, offload


def parse_xfrm_stat(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def probe_offload(
    ifname: str, mode: Literal["crypto", "packet"], netns: str | None = None
) -> OffloadProbe:
    """Ask the kernel for `mode` offload of a throw-away outbound SA on `ifname` and read
    back what it did. The SA (AES-GCM-128 with a random key, 192.0.2.1 -> 192.0.2.2,
    TEST-NET-1, a reqid of our owned range, no policy refers to it) is deleted again at
    once. Needs kernel ESP: XfrmError otherwise."""
    with XfrmManager(netns=netns) as mgr:
        spec = ChildSaSpec(
            local=ipaddress.ip_address("192.0.2.1"),
            remote=ipaddress.ip_address("192.0.2.2"),
            spi_in=0x100 + secrets.randbelow(0xFFFF0000),
            spi_out=0x100 + secrets.randbelow(0xFFFF0000),
            reqid=mgr.allocate_reqid(),
            esp=EspTransform(aead="rfc4106(gcm(aes))", icv_bits=128),
            keys_in=SaKeys(secrets.token_bytes(20)),
            keys_out=SaKeys(secrets.token_bytes(20)),
            mode="transport",
            replay_window=32,
            offload=mode,
            offload_dev=ifname,
        )
        try:
            result = mgr.add_offloaded_state(spec, inbound=False)
        except XfrmError as exc:
            return OffloadProbe(ifname, mode, "none", exc.reason)
        finally:
            mgr.delete_state(spec, inbound=False)
    return OffloadProbe(ifname, mode, result.offload, result.reason)
