"""Data planes: where the daemon puts the Child SAs the IKE engine negotiated.

`Dataplane` is the Protocol the daemon talks to; two implementations:

- `XfrmDataplane` (`dataplane = "xfrm"`, the default): installs each Child SA in the
  kernel through gateway/xfrm (two states + policies, all or nothing), replaces it
  make-before-break on rekey (the rekey responder in two steps: new inbound SA first,
  outbound switched later), removes it on delete, reads its counters, and at start
  removes leftovers of a previous run (objects in our reqid range only).
- `NoneDataplane` (`dataplane = "none"`): control plane only. SAs are negotiated and
  recorded (they appear in list-sas as INSTALLED with offload "none" and zero counters)
  but nothing is installed, like strongSwan's load-tester plugin faking its kernel
  interface. For benchmarking the IKE side and for hosts without kernel ESP.

Keys reach the data plane inside `ChildSaEstablished` and go no further than the kernel
message; nothing here logs them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.config import ChildConfig
from gateway.errors import GatewayError
from gateway.trap import TrapKey, TrapSpec

if TYPE_CHECKING:
    from gateway.xfrm.manager import OwnedRange
    from ike.events import ChildSaEstablished

log = logging.getLogger("gateway.dataplane")
ExpireHandler = Callable[[int, bool], None]  # (SPI of the expired state, hard?)
# (reqid of the trap, the packet's source and destination address or None)
AcquireHandler = Callable[[int, str | None, str | None], None]


class DataplaneError(GatewayError):
    """Installing or removing an SA failed; the message names the operation."""


@dataclass(frozen=True, slots=True)
class Counters:
    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0


@dataclass(slots=True)
class Installed:
    """A Child SA as the data plane holds it. `handle` is the implementation's own."""

    spi_in: int
    spi_out: int
    offload: str = "none"  # "none" | "crypto" | "packet"
    handle: Any = field(default=None, repr=False)


class Dataplane(Protocol):
    name: str

    def start(self) -> None:
        """Prepare (e.g. remove our leftovers of a crashed run)."""

    def install(self, child: ChildSaEstablished, config: ChildConfig | None) -> Installed: ...

    def replace(
        self,
        old: Installed,
        child: ChildSaEstablished,
        config: ChildConfig | None,
        *,
        keep_old_inbound: bool = False,
        switch_outbound: bool = True,
    ) -> Installed:
        """Rekey, make-before-break: the new SAs, the policies moved to them, the old
        outbound SA removed; the old inbound one too unless `keep_old_inbound` (then
        `retire(old)` removes it later). `switch_outbound=False` (the rekey responder):
        only the new inbound SA, `old` keeps sending until `switch_outbound()`."""

    def switch_outbound(self, old: Installed, new: Installed) -> Installed:
        """Send on `new` (from replace(switch_outbound=False)) instead of `old`: its
        outbound SA in, the policies moved to it, the outbound SA of `old` removed."""

    def retire(self, old: Installed) -> None:
        """Remove the old inbound SA that replace(keep_old_inbound=True) kept."""

    def migrate(
        self, installed: Installed, local: str, remote: str, encap: tuple[int, int] | None
    ) -> Installed:
        """MOBIKE (RFC 4555): the same SAs (SPIs, keys, sequence numbers, counters) at new
        outer addresses and encapsulation (`encap` = (local port, remote port) or None);
        the policies follow. On failure the SAs stay as they were."""

    def remove(self, installed: Installed) -> None: ...

    def counters(self, installed: Installed) -> Counters: ...

    def errors(self) -> dict[str, int]:
        """Kernel error counters (xfrm_stat), empty when there is no kernel data plane."""

    def install_trap(self, trap: TrapSpec) -> int:
        """Trap policies for a Child config (out policies, no state): matching traffic
        raises an ACQUIRE. Returns the trap's reqid; Child SAs of that Child config are
        then installed under it and share its out policies (it stays underneath)."""

    def remove_trap(self, key: TrapKey) -> None: ...

    def watch(self, on_expire: ExpireHandler, on_acquire: AcquireHandler | None = None) -> None:
        """Report kernel lifetime expiries of our SAs, on_expire(spi, hard), and ACQUIREs
        of our traps, on_acquire(reqid, src, dst). From the running event loop; a data
        plane without a kernel never calls them."""

    def close(self) -> None:
        """Release resources; SAs must have been removed by the daemon before."""


class NoneDataplane:
    """Records SAs and installs nothing (strongSwan load-tester style)."""

    name = "none"

    def __init__(self) -> None:
        self.installed: dict[int, Installed] = {}  # by inbound SPI
        # MOBIKE moves, recorded: (spi_in, local, remote, encap) (nothing to move here)
        self.migrations: list[tuple[int, str, str, tuple[int, int] | None]] = []

    def start(self) -> None:
        pass

    def install(self, child: ChildSaEstablished, config: ChildConfig | None) -> Installed:
        sa = Installed(child.spi_in, child.spi_out)
        self.installed[child.spi_in] = sa
        return sa

    def replace(
        self,
        old: Installed,
        child: ChildSaEstablished,
        config: ChildConfig | None,
        *,
        keep_old_inbound: bool = False,
        switch_outbound: bool = True,
    ) -> Installed:
        if not keep_old_inbound:
            self.installed.pop(old.spi_in, None)
        return self.install(child, config)

    def switch_outbound(self, old: Installed, new: Installed) -> Installed:
        return new

    def retire(self, old: Installed) -> None:
        self.installed.pop(old.spi_in, None)

    def migrate(
        self, installed: Installed, local: str, remote: str, encap: tuple[int, int] | None
    ) -> Installed:
        self.migrations.append((installed.spi_in, local, remote, encap))
        return installed

    def remove(self, installed: Installed) -> None:
        self.installed.pop(installed.spi_in, None)

    def counters(self, installed: Installed) -> Counters:
        return Counters()

    def errors(self) -> dict[str, int]:
        return {}

    def install_trap(self, trap: TrapSpec) -> int:
        raise DataplaneError("trap policies need the kernel: dataplane 'none' has none")

    def remove_trap(self, key: TrapKey) -> None:
        pass

    def watch(self, on_expire: ExpireHandler, on_acquire: AcquireHandler | None = None) -> None:
        pass

    def close(self) -> None:
        self.installed.clear()


class XfrmDataplane:
    """The kernel data plane (gateway/xfrm): one ChildSaSpec per negotiated Child SA."""

    name = "xfrm"

    def __init__(
        self,
        *,
        offload_dev: str | None = None,
        netns: str | None = None,
        owned: OwnedRange | None = None,
    ) -> None:
        from gateway.xfrm import XfrmError, XfrmManager
        from gateway.xfrm.manager import OwnedRange

        self._error_type = XfrmError
        try:
            # `owned`: the reqids this process may use and reconcile (a worker's share)
            self.manager = XfrmManager(netns=netns, owned=owned or OwnedRange())
        except (XfrmError, OSError) as exc:
            raise DataplaneError(f"cannot open the XFRM netlink socket: {exc}") from None
        self.offload_dev = offload_dev
        self._watcher: asyncio.Task[None] | None = None
        self._traps: dict[TrapKey, Any] = {}  # key -> the trap's ChildSaSpec

    def start(self) -> None:
        try:
            report = self.manager.flush()
        except self._error_type as exc:
            raise DataplaneError(f"removing leftovers of a previous run: {exc}") from None
        if report.removed_states or report.removed_policies:
            log.info(
                "event=xfrm-leftovers-removed states=%d policies=%d",
                report.removed_states,
                report.removed_policies,
            )

    def install(self, child: ChildSaEstablished, config: ChildConfig | None) -> Installed:
        trap = self._traps.get((child.connection, child.child))
        # under its trap's reqid: the kernel's larval state of the ACQUIRE goes, and the
        # trap's out policies are shared (they stay when the SA goes)
        reqid = trap.reqid if trap is not None else self.manager.allocate_reqid()
        spec = child_sa_spec(child, config, reqid, self.offload_dev)
        try:
            result = self.manager.install(spec)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None
        return Installed(child.spi_in, child.spi_out, result.offload, result)

    def replace(
        self,
        old: Installed,
        child: ChildSaEstablished,
        config: ChildConfig | None,
        *,
        keep_old_inbound: bool = False,
        switch_outbound: bool = True,
    ) -> Installed:
        spec = child_sa_spec(child, config, old.handle.spec.reqid, self.offload_dev)
        try:
            result = self.manager.replace(
                old.handle, spec, keep_old_inbound=keep_old_inbound, outbound=switch_outbound
            )
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None
        return Installed(child.spi_in, child.spi_out, result.offload, result)

    def switch_outbound(self, old: Installed, new: Installed) -> Installed:
        try:
            result = self.manager.switch_outbound(old.handle, new.handle)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None
        return Installed(new.spi_in, new.spi_out, result.offload, result)

    def retire(self, old: Installed) -> None:
        try:
            self.manager.delete_state(old.handle.spec, inbound=True)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None

    def migrate(
        self, installed: Installed, local: str, remote: str, encap: tuple[int, int] | None
    ) -> Installed:
        from gateway.xfrm import UdpEncap

        try:
            result = self.manager.migrate(
                installed.handle,
                ipaddress.ip_address(local),
                ipaddress.ip_address(remote),
                UdpEncap(*encap) if encap else None,
            )
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None
        return Installed(installed.spi_in, installed.spi_out, installed.offload, result)

    def remove(self, installed: Installed) -> None:
        try:
            self.manager.delete(installed.handle)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None

    def counters(self, installed: Installed) -> Counters:
        """Each direction read on its own: one may be missing (gone after a hard expiry,
        or not yet installed at a rekey responder); it then counts 0."""
        spec = installed.handle.spec
        found: list[Any] = []
        for inbound in (True, False):
            try:
                found.append(self.manager.read_state(spec, inbound=inbound))
            except self._error_type:
                found.append(None)
        sa_in, sa_out = found
        return Counters(
            sa_in.cur_bytes if sa_in else 0,
            sa_in.cur_packets if sa_in else 0,
            sa_out.cur_bytes if sa_out else 0,
            sa_out.cur_packets if sa_out else 0,
        )

    def errors(self) -> dict[str, int]:
        return self.manager.xfrm_stat()

    def install_trap(self, trap: TrapSpec) -> int:
        reqid = self.manager.allocate_reqid()
        spec = trap_sa_spec(trap, reqid)
        try:
            self.manager.install_trap(spec)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None
        self._traps[trap.key] = spec
        return reqid

    def remove_trap(self, key: TrapKey) -> None:
        spec = self._traps.pop(key, None)
        if spec is None:
            return
        try:
            self.manager.remove_trap(spec)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None

    def watch(self, on_expire: ExpireHandler, on_acquire: AcquireHandler | None = None) -> None:
        from gateway.xfrm import Acquire, EventsLost, SaExpired, XfrmEventReader

        reader = XfrmEventReader(self.manager.netns)
        owned = self.manager.owned

        def dispatch(event: Any) -> None:
            if isinstance(event, SaExpired) and event.sa.reqid in owned:
                on_expire(event.sa.spi, event.hard)
            elif isinstance(event, Acquire) and event.reqid in owned:
                if on_acquire is not None:
                    sel = event.selector
                    src = str(sel.src.network_address) if sel.src else None
                    dst = str(sel.dst.network_address) if sel.dst else None
                    on_acquire(event.reqid, src, dst)
            elif isinstance(event, EventsLost):
                log.warning("event=xfrm-events-lost detail=netlink socket overflowed")

        async def pump() -> None:
            try:
                async for event in reader:
                    try:
                        dispatch(event)
                    except Exception as exc:  # a handler's bug must not end the watch
                        log.error(
                            "event=xfrm-event-handler-failed event_type=%s error=%s: %s",
                            type(event).__name__,
                            type(exc).__name__,
                            exc,
                        )
            except OSError as exc:
                log.error("event=xfrm-events-failed error=%s", exc.strerror or exc)
            finally:
                reader.close()

        self._watcher = asyncio.get_running_loop().create_task(pump())

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self.manager.close()


def child_sa_spec(
    child: ChildSaEstablished, config: ChildConfig | None, reqid: int, offload_dev: str | None
) -> Any:
    """The XFRM backend's ChildSaSpec for a negotiated Child SA (a pure function).

    Byte/packet limits come from the child's config (0: none); time limits are the
    engine's business, the kernel only gets `life_time` as a hard safety net. Offload is
    requested only when an offload device is known ([gateway.xdp] wan_interface)."""
    from gateway.xfrm import (
        DEFAULT_REPLAY_WINDOW,
        ChildSaSpec,
        EspTransform,
        Lifetime,
        SaKeys,
        TrafficSelector,
        UdpEncap,
    )
    from gateway.xfrm.netlink import XFRM_INF

    if child.integ_alg is None:
        esp = EspTransform(aead=child.encr_alg, icv_bits=child.icv_bits)
    else:
        esp = EspTransform(
            crypt=child.encr_alg, integ=child.integ_alg, trunc_bits=child.integ_trunc_bits
        )
    lifetime = Lifetime()
    replay_window = DEFAULT_REPLAY_WINDOW
    offload = "no"
    if config is not None:
        lifetime = Lifetime(
            soft_bytes=config.rekey_bytes or XFRM_INF,
            hard_bytes=config.life_bytes or XFRM_INF,
            soft_packets=config.rekey_packets or XFRM_INF,
            hard_packets=config.life_packets or XFRM_INF,
            # time: the engine rekeys; the kernel's hard limit is the safety net
            hard_seconds=int(config.life_time) if config.life_time else 0,
        )
        if config.replay_window is not None:
            replay_window = config.replay_window
        offload = config.offload if offload_dev else "no"
    try:
        return ChildSaSpec(
            local=ipaddress.ip_address(child.local_addr),
            remote=ipaddress.ip_address(child.remote_addr),
            spi_in=child.spi_in,
            spi_out=child.spi_out,
            reqid=reqid,
            esp=esp,
            keys_in=SaKeys(child.encr_key_in, child.integ_key_in),
            keys_out=SaKeys(child.encr_key_out, child.integ_key_out),
            local_ts=_all_selectors(child.local_ts, TrafficSelector),
            remote_ts=_all_selectors(child.remote_ts, TrafficSelector),
            mode="transport" if child.mode == "transport" else "tunnel",
            encap=UdpEncap(*child.encap) if child.encap else None,
            lifetime=lifetime,
            esn=child.esn,
            offload=offload,  # type: ignore[arg-type]
            offload_dev=offload_dev if offload != "no" else None,
            replay_window=replay_window,
        )
    except ValueError as exc:
        raise DataplaneError(f"Child SA {child.connection}.{child.child}: {exc}") from None


def trap_sa_spec(trap: TrapSpec, reqid: int) -> Any:
    """The ChildSaSpec whose out policies are the trap (a pure function). Only the
    policy parts matter (addresses, reqid, selectors, mode); SPIs, keys and algorithm are
    placeholders that never reach the kernel."""
    from gateway.xfrm import ChildSaSpec, EspTransform, SaKeys, TrafficSelector
    from ike.ts import ts_from_text

    local, remote = ipaddress.ip_address(trap.local), ipaddress.ip_address(trap.remote)

    def selectors(texts: tuple[str, ...], outer: Any) -> tuple[Any, ...]:
        parsed = [ts_from_text(str(outer) if t == "dynamic" else t) for t in texts]
        return _all_selectors(parsed, TrafficSelector)

    try:
        return ChildSaSpec(
            local=local,
            remote=remote,
            spi_in=256,
            spi_out=256,
            reqid=reqid,
            esp=EspTransform(aead="rfc4106(gcm(aes))"),
            keys_in=SaKeys(b""),
            keys_out=SaKeys(b""),
            local_ts=selectors(trap.local_ts, local),
            remote_ts=selectors(trap.remote_ts, remote),
            mode="transport" if trap.mode == "transport" else "tunnel",
        )
    except ValueError as exc:
        raise DataplaneError(f"trap {trap.connection}.{trap.child}: {exc}") from None


def _all_selectors(selectors: Any, make: Any) -> tuple[Any, ...]:
    return tuple(sel for ts in selectors for sel in _selectors(ts, make))


def _selectors(ts: Any, make: Any) -> list[Any]:
    """An IKE traffic selector (address range, protocol, port range) as XFRM selectors."""
    nets = ipaddress.summarize_address_range(ts.start_addr, ts.end_addr)
    if (ts.start_port, ts.end_port) == (0, 65535):
        port = None
    elif ts.start_port == ts.end_port:
        port = ts.start_port
    else:
        raise ValueError(f"port range {ts.start_port}-{ts.end_port} cannot be an XFRM selector")
    return [make(net, ts.ip_protocol, port) for net in nets]


def make_dataplane(
    kind: str, *, offload_dev: str | None = None, owned: OwnedRange | None = None
) -> Dataplane:
    if kind == "none":
        return NoneDataplane()
    if kind == "xfrm":
        return XfrmDataplane(offload_dev=offload_dev, owned=owned)
    raise DataplaneError(f"unknown data plane {kind!r}")
