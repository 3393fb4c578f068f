"""`dataplane = "xfrm"` (the default): Child SAs in the kernel through gateway/xfrm.

`XfrmDataplane` installs each Child SA (two states + policies, all or nothing), replaces
it make-before-break on rekey (the rekey responder in two steps: new inbound SA first,
outbound switched later), moves it on MOBIKE, removes it on delete, reads its counters,
installs trap policies, reports kernel EXPIRE/ACQUIRE events, and at start removes
leftovers of a previous run (objects in our reqid range only). `child_sa_spec` and
`trap_sa_spec` are the pure translations of an engine event / a trap into the XFRM
backend's ChildSaSpec.

Offload (docs/xfrm.md "Offload"): each Child config's `offload` is asked on every install,
rekey and migration, on its `offload_interface` or else the device the route to the peer
uses (with the Child's `set_mark_out`); what the kernel did is read back into
`Installed.offload` (`offload_reason` says why `auto` got less). A refused `crypto` or
`packet` is a DataplaneError naming the device and the kernel's reason.

Counters: `read_counters()` is ONE GETSA dump of every state (on a netlink socket of its
own, so the daemon runs it in a thread off its event loop) and `counters_in()` looks a
Child's states up in it; `counters()` reads one Child now (two GETSA, for an SA about to
go). A state the kernel removed at its hard lifetime keeps its final counts from the
EXPIRE message until the daemon removes the Child, so no read loses them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.dataplane.base import (
    AcquireHandler,
    Counters,
    DataplaneError,
    ExpireHandler,
    Installed,
    TrapKey,
    TrapSpec,
)

if TYPE_CHECKING:
    from gateway.config.schema import ChildSection
    from gateway.xfrm.manager import OwnedRange
    from ike.events import ChildSaEstablished

log = logging.getLogger("gateway.dataplane")


class XfrmDataplane:
    """The kernel data plane (gateway/xfrm): one ChildSaSpec per negotiated Child SA."""

    name = "xfrm"

    def __init__(self, *, netns: str | None = None, owned: OwnedRange | None = None) -> None:
        from gateway.xfrm import XfrmError, XfrmManager
        from gateway.xfrm.manager import OwnedRange

        self._error_type = XfrmError
        try:
            # `owned`: the reqids this process may use and reconcile (a worker's share)
            self.manager = XfrmManager(netns=netns, owned=owned or OwnedRange())
        except (XfrmError, OSError) as exc:
            raise DataplaneError(f"cannot open the XFRM netlink socket: {exc}") from None
        self._watcher: asyncio.Task[None] | None = None
        self._traps: dict[TrapKey, Any] = {}  # key -> the trap's ChildSaSpec
        # (daddr, SPI) -> final SaCounters of a state the kernel removed (hard expiry)
        self._finals: dict[tuple[bytes, int], Any] = {}
        self._reader: Any = None  # XfrmManager of read_counters() (its thread only)

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

    def install(self, child: ChildSaEstablished, config: ChildSection | None) -> Installed:
        trap = self._traps.get((child.connection, child.child))
        # under its trap's reqid: the kernel's larval state of the ACQUIRE goes, and the
        # trap's out policies are shared (they stay when the SA goes)
        reqid = trap.reqid if trap is not None else self.manager.allocate_reqid()
        spec = child_sa_spec(child, config, reqid)
        try:
            result = self.manager.install(spec)
        except self._error_type as exc:
            raise DataplaneError(str(exc), exc.errno) from None
        return _installed(result)

    def install_many(
        self, children: Sequence[tuple[ChildSaEstablished, ChildSection | None]]
    ) -> list[Installed | DataplaneError]:
        """Software Child SAs go to the kernel in one batched send (manager.install_many:
        ~128 KiB per sendmsg, each Child rolled back alone if the kernel refused any of
        its objects); one that asks for offload, or whose spec cannot be built, goes
        alone through install()."""
        results: list[Installed | DataplaneError | None] = [None] * len(children)
        batch: list[tuple[int, Any]] = []
        for i, (child, config) in enumerate(children):
            trap = self._traps.get((child.connection, child.child))
            reqid = trap.reqid if trap is not None else self.manager.allocate_reqid()
            try:
                spec = child_sa_spec(child, config, reqid)
            except DataplaneError as exc:
                results[i] = exc
                continue
            if spec.offload == "no":
                batch.append((i, spec))
            else:
                try:
                    results[i] = self.install(child, config)
                except DataplaneError as exc:
                    results[i] = exc
        if batch:
            try:
                done = self.manager.install_many([spec for _, spec in batch])
            except self._error_type as exc:  # the batch itself failed (socket, rollback)
                done = [exc] * len(batch)
            for (i, _), result in zip(batch, done, strict=True):
                child = children[i][0]
                results[i] = (
                    DataplaneError(str(result), result.errno)
                    if isinstance(result, self._error_type)
                    else _installed(result)
                )
        return [r for r in results if r is not None]

    def replace(
        self,
        old: Installed,
        child: ChildSaEstablished,
        config: ChildSection | None,
        *,
        keep_old_inbound: bool = False,
        switch_outbound: bool = True,
    ) -> Installed:
        spec = child_sa_spec(child, config, old.handle.spec.reqid)
        try:
            result = self.manager.replace(
                old.handle, spec, keep_old_inbound=keep_old_inbound, outbound=switch_outbound
            )
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None
        return _installed(result)

    def switch_outbound(self, old: Installed, new: Installed) -> Installed:
        try:
            result = self.manager.switch_outbound(old.handle, new.handle)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None
        return _installed(result)

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
        return _installed(result)

    def remove(self, installed: Installed) -> None:
        spec = installed.handle.spec
        self._finals.pop((spec.local_packed, spec.spi_in), None)
        self._finals.pop((spec.remote_packed, spec.spi_out), None)
        try:
            self.manager.delete(installed.handle)
        except self._error_type as exc:
            raise DataplaneError(str(exc)) from None

    def counters(
        self, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        """Read now, each direction on its own: one may be missing (not yet installed at
        a rekey responder: 0; removed at its hard lifetime: its final counts)."""
        spec = installed.handle.spec
        found: list[Any] = []
        for wanted, is_in, key in (
            (inbound, True, (spec.local_packed, spec.spi_in)),
            (outbound, False, (spec.remote_packed, spec.spi_out)),
        ):
            sa = None
            if wanted:
                try:
                    sa = self.manager.read_state(spec, inbound=is_in).counters
                except self._error_type:
                    sa = self._finals.get(key)
            found.append(sa)
        return _counters(*found)

    def read_counters(self) -> Any:
        """Every state's counters in one GETSA dump, keyed (daddr, SPI). On a netlink
        socket of its own: the daemon calls it from a thread (never two at once)."""
        from gateway.xfrm import XfrmManager

        try:
            if self._reader is None:
                self._reader = XfrmManager(netns=self.manager.netns, owned=self.manager.owned)
            return self._reader.dump_counters()
        except (self._error_type, OSError) as exc:
            raise DataplaneError(f"reading the SA counters: {exc}") from None

    def counters_in(
        self, table: Any, installed: Installed, *, inbound: bool = True, outbound: bool = True
    ) -> Counters:
        """An SA's counters from a read_counters() table (what it lacks counts 0, or its
        final counts when the kernel removed it at its hard lifetime)."""
        spec = installed.handle.spec
        finals = self._finals
        key_in = (spec.local_packed, spec.spi_in)
        key_out = (spec.remote_packed, spec.spi_out)
        sa_in = (table.get(key_in) or finals.get(key_in)) if inbound else None
        sa_out = (table.get(key_out) or finals.get(key_out)) if outbound else None
        return _counters(sa_in, sa_out)

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
                if event.hard:  # the kernel removed it: keep what it counted
                    sa = event.sa.counters
                    self._finals[(sa.daddr, sa.spi)] = sa
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
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.manager.close()


def _installed(result: Any) -> Installed:
    """What the daemon keeps of an InstalledChildSa (offload as the kernel reports it)."""
    spec = result.spec
    return Installed(
        spec.spi_in,
        spec.spi_out,
        result.offload,
        result,
        offload_dev=result.offload_dev,
        offload_reason=result.offload_reason,
    )


def _counters(sa_in: Any, sa_out: Any) -> Counters:
    """Counters of an SA from its inbound and outbound state's SaCounters (or None)."""
    return Counters(
        sa_in.bytes if sa_in else 0,
        sa_in.packets if sa_in else 0,
        sa_out.bytes if sa_out else 0,
        sa_out.packets if sa_out else 0,
        sa_in.replay if sa_in else 0,
        sa_in.replay_window if sa_in else 0,
        sa_in.integrity_failed if sa_in else 0,
    )


def child_sa_spec(child: ChildSaEstablished, config: ChildSection | None, reqid: int) -> Any:
    """The XFRM backend's ChildSaSpec for a negotiated Child SA (a pure function).

    Byte/packet limits come from the child's config (0: none); time limits are the
    engine's business, the kernel only gets `life_time` as a hard safety net. Offload as
    the Child config asks, on its `offload_interface` (None: the route's device, found
    by the XFRM backend with the `set_mark_out` mark)."""
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
    offload, offload_dev, set_mark = "no", None, None
    if_id_in = if_id_out = None
    if config is not None:
        if_id_in, if_id_out = config.if_id_in, config.if_id_out
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
        offload, offload_dev = config.offload, config.offload_interface
        set_mark = config.set_mark_out
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
            set_mark=set_mark,
            replay_window=replay_window,
            if_id=if_id_in,
            if_id_out=_distinct(if_id_in, if_id_out),
        )
    except ValueError as exc:
        raise DataplaneError(f"Child SA {child.connection}.{child.child}: {exc}") from None


def _distinct(if_id_in: int | None, if_id_out: int | None) -> int | None:
    """ChildSaSpec's if_id_out: set only where it differs from the inbound if_id."""
    return if_id_out if if_id_out != if_id_in else None


def installed_spec(
    child: ChildSaEstablished, config: ChildSection | None, installed: Installed | None
) -> Any:
    """The ChildSaSpec the xfrm data plane installed for `child` (its handle's), or the
    one it would install (another data plane: reqid 0): what route-based tunnels derive
    an interface MTU from and what updown hooks are told (never its keys)."""
    from gateway.xfrm.manager import InstalledChildSa

    handle = installed.handle if installed is not None else None
    if isinstance(handle, InstalledChildSa):
        return handle.spec
    return child_sa_spec(child, config, 0)


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
            if_id=trap.if_id_in,
            if_id_out=_distinct(trap.if_id_in, trap.if_id_out),
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
