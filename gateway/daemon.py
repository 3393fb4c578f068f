"""`gateway run -c FILE`: the asyncio daemon, the one place where the parts meet.

Theory of operation
-------------------
One event loop, one IKE engine (sans-IO, ike/), one UDP transport, one data plane, one
control server, optionally one metrics exporter. Three kinds of input reach the engine:
datagrams (transport callback), its timer (one `call_later` handle for the engine's
`next_timer()`, re-armed after every input) and API calls (control requests, start-up,
reload, shutdown). After each input `_pump()` sends what the engine queued, handles the
events it produced and re-arms the timer, so the engine's outputs are never left waiting.

Engine events drive everything else:

    IkeSaEstablished   -> record (list-sas), log, event `ike-established`
    ChildSaEstablished -> data plane install, record, log, event `child-established`
    ChildSaRekeyed     -> data plane replace (make-before-break, the old inbound SA kept
                          until its ChildSaDeleted "rekeyed" + REKEY_GRACE), `child-rekeyed`;
                          as rekey responder (`outbound` False) the new inbound SA only
    ChildSaOutboundSwitched -> the rekey responder sends on the new SA (switch_outbound)
    IkeSaRekeyed       -> record gets the new SPIs, event `ike-rekeyed`
    ChildSaDeleted     -> data plane remove, record gone, event `child-deleted`
    DpdFailed          -> event `dpd-failed`, each Child's dpd_action (restart: initiate)
    IkeSaDeleted       -> record gone, event `ike-deleted`
    IkeSaFailed        -> event `ike-failed` (auth failures counted); an attempt we
                          initiated is retried up to the connection's keyingtries
                          (`_schedule_retry`: jittered backoff, event `ike-retry`)
    IkeSaMigrated      -> data plane migrate of each Child SA (MOBIKE), `ike-migrated`
    IkeSaMigrateFailed -> event `ike-migrate-failed`

MOBIKE roaming: an `AddressWatcher` (gateway/addrwatch.py) reports local address and
route changes; when an IKE SA we initiated with MOBIKE has lost its local address, a
route lookup toward the peer (limited to the connection's concrete local_addrs) picks
a new one and the engine sends UPDATE_SA_ADDRESSES (`_roam`).

Dead Peer Detection runs in the engine (idle time per IKE SA, docs/ike.md); the daemon
only answers its question "did ESP arrive on this Child SA?" from the data plane's and
the XDP programs' counters (`_InboundTraffic`), and carries out the dpd_action.

Trap policies (`start_action = "trap"`, and `dpd_action`/`close_action = "trap"` after
a dead peer / a close by the peer) live in the data plane under their own reqid; a kernel
ACQUIRE for one initiates its Child (gateway/trap.py coalesces and backs off), and the
Child SAs of a trapped Child config are installed under the trap's reqid, so the trap
stays underneath when they go. `_sync_traps()` makes the installed traps what the
configuration and those actions want; `fall_back_to_trap(conn, children, reason)` is how
an action puts Children into the trap state.

Control requests that wait (initiate/terminate) register a waiter that the matching event
resolves. Signals: SIGTERM/SIGINT stop gracefully (delete every IKE SA, telling the peer,
wait briefly for the answers, remove whatever is still installed); SIGHUP reloads the file
and applies only the connections that were added, removed or changed.

Logs are one line per event, `event=NAME key=value ...`; keys and PSKs never appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gateway import __version__
from gateway.addrwatch import AddressWatcher
from gateway.config.engine import engine_connection, engine_settings
from gateway.config.reload import load_for_reload
from gateway.config.schema import (
    ChildSection,
    ConnectionSection,
    GatewayConfig,
)
from gateway.control.protocol import (
    BAD_REQUEST,
    FAILED,
    UNKNOWN_CONNECTION,
    UNKNOWN_SA,
    ControlError,
)
from gateway.control.server import ControlServer
from gateway.dataplane import make_dataplane
from gateway.dataplane.base import Counters, Dataplane, DataplaneError, Installed, TrapKey, TrapSpec
from gateway.dataplane.xdp import XdpAdapter
from gateway.errors import GatewayError
from gateway.transport import UdpTransport
from gateway.trap import TrapTable
from ike import config as ike_config
from ike import events as ev
from ike.errors import LocalError
from ike.ts import to_cidrs, ts_for_address

if TYPE_CHECKING:
    import socket

    from ike.engine import InboundSpiAllocator

log = logging.getLogger("gateway.daemon")
T = TypeVar("T")

SHUTDOWN_GRACE = 3.0  # seconds to wait for peers to answer our deletes at shutdown
REKEY_GRACE = 2.0  # an old inbound SA stays this long after its Delete (packets in flight)
# keyingtries: a failed initiation is retried after RETRY_FIRST seconds, doubling per
# attempt up to RETRY_CAP, each delay shortened by a random part of up to RETRY_JITTER
RETRY_FIRST = 1.0
RETRY_CAP = 60.0
RETRY_JITTER = 0.2


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class ChildRecord:
    name: str
    state: str
    spi_in: int
    spi_out: int
    mode: str
    encap: bool
    esp_proposal: str
    local_ts: list[str]
    remote_ts: list[str]
    installed_at: float
    rekey_at: float | None = None
    expire_at: float | None = None
    installed: Installed | None = None
    xdp_slot: int | None = None  # the BPF programs' counter/clamp slot ([gateway.xdp])
    # rekey responder: the older SA whose outbound SA is still in use until the engine's
    # ChildSaOutboundSwitched (`installed` then has its inbound SA only)
    sending: Installed | None = None


@dataclass(slots=True)
class IkeRecord:
    ike_sa: int
    connection: str
    state: str
    initiator: bool
    started_at: float
    local: tuple[str, int] | None = None
    remote: tuple[str, int] | None = None
    local_id: str | None = None
    remote_id: str | None = None
    spi_i: bytes = b""
    spi_r: bytes = b""
    proposal: str | None = None
    established_at: float | None = None
    rekey_at: float | None = None
    expire_at: float | None = None
    children: list[ChildRecord] = field(default_factory=list)
    mobike: bool = False  # RFC 4555 negotiated
    additional_addrs: tuple[str, ...] = ()  # the peer's other addresses (MOBIKE)
    moving_to: str | None = None  # our UPDATE_SA_ADDRESSES to this local address is under way


@dataclass(slots=True)
class _Waiter:
    """A control request waiting for an engine event."""

    match: Callable[[Any], str | None]  # event -> None (not mine) | "" (done) | error text
    future: asyncio.Future[str]


@dataclass(frozen=True, slots=True)
class _Try:
    """One attempt of an initiation that keyingtries covers (start_action, `ctl
    initiate`, dpd_action restart): attempt 1 is the first."""

    connection: str
    child: str | None
    attempt: int
    more: tuple[str, ...] = ()  # Children to request over the IKE SA once it is up


@dataclass(slots=True)
class Totals:
    handshakes: int = 0
    auth_failures: int = 0
    dpd_failures: int = 0
    rekeys: int = 0
    redirects: int = 0  # IKEv2 redirects followed (initiator) and sent (responder)
    ike_rekeys: int = 0
    install_failures: int = 0
    engine_errors: int = 0  # exceptions out of the engine on network input (a bug)
    # counters of SAs that are gone, so gateway-wide totals never go backwards
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0


# --------------------------------------------------------------------------- the engine


class Engine(Protocol):
    """What the daemon uses of the sans-IO IKE engine (ike/, docs/ike.md)."""

    def receive_datagram(
        self, data: bytes, addr: tuple[tuple[str, int], tuple[str, int]], now: float
    ) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def initiate(
        self, connection: str, child: str | None, now: float, *, packet_ts: Any = None
    ) -> int: ...

    def create_child_sa(
        self, ike_sa: int, child: str | None, now: float, *, packet_ts: Any = None
    ) -> None: ...

    def delete_ike_sa(self, ike_sa: int, now: float) -> None: ...

    def delete_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None: ...

    def rekey_child_sa(self, ike_sa: int, spi_in: int, now: float) -> None: ...

    def rekey_ike_sa(self, ike_sa: int, now: float) -> None: ...

    def update_addresses(
        self, ike_sa: int, local: str | None, remote: str | None, now: float
    ) -> None: ...
    def redirect_ike_sa(self, ike_sa: int, gateway: str, now: float) -> None: ...

    def datagrams_to_send(self) -> Iterable[ev.Datagram]: ...

    def next_timer(self) -> float | None: ...

    def next_event(self) -> ev.Event | None: ...


def make_engine(
    config: GatewayConfig,
    spis: InboundSpiAllocator | None = None,
    traffic: Any = None,
    ike_spis: Callable[[], bytes] | None = None,
) -> Engine:
    from ike.engine import IkeEngine

    return IkeEngine(  # type: ignore[no-any-return]
        [engine_connection(c) for c in config.connections],
        spis=spis,  # [gateway.xdp]: our inbound SPIs carry the XDP counter slot
        traffic=traffic,  # ESP counters: a Child SA with traffic needs no DPD check
        ike_spis=ike_spis,  # workers: our IKE SPIs carry the worker index
        settings=engine_settings(config.gateway),
    )


def set_engine_connections(engine: Any, connections: Sequence[ike_config.ConnectionConfig]) -> None:
    """Give a running engine a new connection table (reload).

    Uses the engine's `set_connections` when it has one. The part-1 engine has none yet:
    its table is `_conns`, name -> CompiledConnection, and each IKE SA keeps a reference
    to its own compiled connection, so swapping the table leaves existing SAs untouched.
    """
    setter = getattr(engine, "set_connections", None)
    if setter is not None:
        setter(connections)
        return
    engine._conns = {c.name: ike_config.compile_connection(c) for c in connections}


def _hex(data: bytes) -> str:
    return data.hex()


def _spi(value: int) -> str:
    return f"{value:08x}"


def _fmt_addr(addr: tuple[str, int] | None) -> str:
    if addr is None:
        return "-"
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """The running gateway: engine + transport + data plane + control API (+ metrics)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        config_path: str | None = None,
        dataplane: Dataplane | None = None,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        prebound: Sequence[tuple[socket.socket, bool]] = (),
        control: ControlServer | None = None,
        spis: InboundSpiAllocator | None = None,
        ike_spis: Callable[[], bytes] | None = None,
        xdp: XdpAdapter | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.dataplane = dataplane or make_dataplane(config.gateway.dataplane)
        # the XDP/TC programs (gateway/xdp.py), attached in start(); a worker passes one
        # that shares the supervisor's programs (gateway/xdpshare.py)
        xdp_config = config.gateway.xdp
        self.xdp: XdpAdapter | None = xdp
        if xdp is None and xdp_config is not None:
            self.xdp = XdpAdapter(xdp_config)
        # a worker (gateway/workers.py) passes its share of the ESP SPIs and IKE SPIs
        self.engine = engine or make_engine(
            config, self.xdp.spis if self.xdp else spis, _InboundTraffic(self), ike_spis
        )
        self.transport = UdpTransport(
            config.gateway.listen,
            config.gateway.port,
            config.gateway.port_nat_t,
            self._on_datagram,
            esp_in_udp=self.dataplane.name == "xfrm",
            keep_marker=True,  # the engine adds/strips the non-ESP marker itself
            prebound=prebound,  # a worker's sockets, bound by the supervisor
        )
        self.control = control or ControlServer(self, config.gateway.control_socket)
        # which connections' start actions run here (a worker runs only its own share)
        self.start_filter: Callable[[str], bool] = lambda connection: True
        self.sas: dict[int, IkeRecord] = {}
        self.totals = Totals()
        self.started_at = clock()
        self._waiters: list[_Waiter] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # old inbound SAs kept after a rekey: old spi_in -> (ike_sa, what the data plane
        # holds of it, its XDP slot/SPIs); removed REKEY_GRACE after their Delete
        self._retiring: dict[int, tuple[int, Installed, tuple[int, int] | None]] = {}
        self.traps = TrapTable()  # installed trap policies and their state machines
        self._armed: set[TrapKey] = set()  # dpd_action/close_action "trap" happened
        self._wanted: tuple[Any, dict[TrapKey, TrapSpec]] | None = None
        self._stopping = asyncio.Event()
        self._exporter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._histogram: Any = None
        # MOBIKE roaming: local address/route changes (started in start())
        self.addrwatch: AddressWatcher | None = None
        self._roaming: asyncio.Task[None] | None = None
        self._roam_again = False
        # keyingtries: our initiations in flight (ike_sa -> attempt) and the pending
        # retry of each connection whose last attempt failed
        self._tries: dict[int, _Try] = {}
        # IKE SAs we are setting up -> further Children to request once each is established
        # (start_action/close_action "start" of a connection with several Children)
        self._follow: dict[int, tuple[str, ...]] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self.retry_delays = (RETRY_FIRST, RETRY_CAP)  # tests shorten them
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.dataplane.start()
        self.dataplane.watch(self._on_expire, self._on_acquire)
        if self.xdp is not None:
            self.xdp.open()  # all or nothing: a failure leaves nothing attached
        try:
            self.transport.start(self._loop)
            await self.control.start()
            self._start_metrics()
            await self._start_addrwatch()
        except BaseException:  # also SystemExit from a signal: never stay half-attached
            self.transport.close()
            self._close_xdp()
            raise
        ports = self.transport.local_ports()
        log.info(
            "event=daemon-started version=%s dataplane=%s ike_port=%d nat_t_port=%d "
            "connections=%d control=%s",
            __version__,
            self.dataplane.name,
            ports.get("ike", 0),
            ports.get("nat_t", 0),
            len(self.config.connections),
            self.config.gateway.control_socket,
        )
        self._sync_traps()
        for conn in self.config.connections:
            self._start_actions(conn)
        self._pump()

    def _start_metrics(self) -> None:
        listen = self.config.gateway.metrics_listen
        if listen is None:
            return
        from gateway import metrics

        self.keep_handshake_durations()
        host, port = listen
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._exporter = metrics.start_exporter(
            self,
            listen=text,
            aggregate_per_connection=self.config.gateway.metrics_aggregate == "connection",
        )

    def keep_handshake_durations(self) -> None:
        """Observe handshake durations (the metrics histogram) also without an exporter
        of our own: a worker's supervisor reads them from `stats`."""
        from gateway import metrics

        if self._histogram is None:
            self._histogram = metrics.DurationHistogram()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or request_stop), shut down gracefully."""
        loop = asyncio.get_running_loop()
        await self.start()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
            installed.append(sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        installed.append(signal.SIGHUP)
        try:
            await self._stopping.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Delete our IKE SAs (telling the peers), remove what is installed, close all."""
        log.info("event=daemon-stopping ike_sas=%d", len(self.sas))
        self._closing = True  # a failure from here on is not retried
        for name in list(self._retries):
            self._cancel_retries(name)
        established = [r for r in self.sas.values() if r.state != "CONNECTING"]
        for record in established:
            self._engine_call(self.engine.delete_ike_sa, record.ike_sa)
        self._pump()
        deadline = self.clock() + SHUTDOWN_GRACE
        while any(r.state != "CONNECTING" for r in self.sas.values()) and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for record in list(self.sas.values()):
            for child in list(record.children):
                self._remove_child(record, child, "shutdown")
        for spi in list(self._retiring):
            self._retire(spi)
        self.sas.clear()
        self._tries.clear()
        self._follow.clear()
        for trap in self.traps.all():  # after the SAs that shared their policies
            self._remove_trap(trap.spec.key)
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_result("the gateway is shutting down")
        self.transport.close()
        if self.addrwatch is not None:
            self.addrwatch.close()
        if self._roaming is not None:
            self._roaming.cancel()
        await self.control.close()
        if self._exporter is not None:
            self._exporter.close()
        self._close_xdp()
        self.dataplane.close()
        log.info("event=daemon-stopped")

    # ------------------------------------------------------------------ XDP (bpf/)

    def _close_xdp(self) -> None:
        if self.xdp is not None:
            self.xdp.close()

    def _xdp_rows(self) -> list[dict[str, Any]]:
        return self.xdp.verdict_rows() if self.xdp is not None else []

    # ------------------------------------------------------------------ engine plumbing

    def _on_datagram(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        try:
            self.engine.receive_datagram(data, (local, remote), self.clock())
        except Exception as exc:  # the engine promises never to raise on input: if it
            # does anyway, drop the datagram, count it and keep serving everyone else
            self.totals.engine_errors += 1
            log.error(
                "event=engine-error remote=%s error=%s: %s",
                _fmt_addr(remote),
                type(exc).__name__,
                exc,
            )
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.clock())
        self._pump()

    def _engine_call(self, method: Callable[..., T], *args: Any) -> T:
        """An API call into the engine (now appended); LocalError becomes a ControlError."""
        try:
            return method(*args, self.clock())
        except LocalError as exc:
            raise ControlError(FAILED, str(exc)) from None

    def _pump(self) -> None:
        for _ in range(1000):  # events may trigger calls that queue more output
            # events first: what a message we answer set up (e.g. the new inbound SA of
            # a rekey we answer) is in the kernel before the peer can act on our answer
            event = self.engine.next_event()
            handled = event is not None
            while event is not None:
                self._handle_event(event)
                event = self.engine.next_event()
            sent = False
            for dgram in self.engine.datagrams_to_send():
                self.transport.send(dgram.data, dgram.local, dgram.remote)
                sent = True
            if not sent and not handled:
                break
        self._arm_timer()

    def _arm_timer(self) -> None:
        when = self.engine.next_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_later(max(0.0, when - self.clock()), self._on_timer)

    # ------------------------------------------------------------------ MOBIKE (RFC 4555)

    async def _start_addrwatch(self) -> None:
        """Watch local addresses and routes (roaming); without netlink, roaming is off."""
        watcher = AddressWatcher(self._on_addresses_changed)
        try:
            await watcher.start()
        except OSError as exc:
            watcher.close()
            log.warning("event=addrwatch-unavailable error=%s", exc.strerror or exc)
            return
        self.addrwatch = watcher

    def _on_addresses_changed(self) -> None:
        if self._roaming is not None and not self._roaming.done():
            self._roam_again = True  # one more pass when this one is done
            return
        self._roaming = asyncio.get_running_loop().create_task(self._roam())

    async def _roam(self) -> None:
        """Move every IKE SA we initiated with MOBIKE whose local address is gone."""
        while True:
            self._roam_again = False
            await self._roam_once()
            if not self._roam_again:
                return

    async def _roam_once(self) -> None:
        watcher = self.addrwatch
        if watcher is None:
            return
        try:
            present = await watcher.addresses()
        except OSError as exc:
            log.error("event=roam-failed error=%s", exc.strerror or exc)
            return
        for record in list(self.sas.values()):
            if not (record.mobike and record.initiator and record.state == "ESTABLISHED"):
                continue
            if record.local is None or record.remote is None:
                continue
            current = record.moving_to or record.local[0]
            if current in present:
                continue
            new = await self._pick_local(record, present)
            if record.ike_sa not in self.sas:
                continue  # went away while we looked
            if new is None:
                log.warning(
                    "event=mobike-no-address connection=%s ike_sa=%d lost=%s remote=%s",
                    record.connection,
                    record.ike_sa,
                    current,
                    record.remote[0],
                )
                continue
            log.info(
                "event=mobike-roam connection=%s ike_sa=%d lost=%s local=%s remote=%s",
                record.connection,
                record.ike_sa,
                current,
                new,
                record.remote[0],
            )
            try:
                self._engine_call(self.engine.update_addresses, record.ike_sa, new, None)
            except ControlError as exc:
                log.error("event=mobike-roam-failed ike_sa=%d error=%s", record.ike_sa, exc)
                continue
            record.moving_to = new
        self._pump()

    async def _pick_local(self, record: IkeRecord, present: set[str]) -> str | None:
        """A local address toward the peer: the route's source, if the connection allows
        it (concrete local_addrs) and we can send from it; else the first allowed one."""
        assert record.local is not None and record.remote is not None
        conn = self.config.connection(record.connection)
        allowed = [a for a in (conn.local_addrs if conn else ()) if _concrete(a)]
        port = record.local[1]
        family = ":" in record.remote[0]

        def usable(addr: str | None) -> bool:
            return (
                addr is not None
                and addr in present
                and (":" in addr) == family
                and (not allowed or addr in allowed)
                and self.transport.socket_for((addr, port)) is not None
            )

        assert self.addrwatch is not None
        src = await self.addrwatch.source_for(record.remote[0])
        if usable(src):
            return src
        return next((a for a in allowed if usable(a)), None)

    def _on_ike_migrated(self, e: ev.IkeSaMigrated) -> None:
        record = self.sas.get(e.ike_sa)
        failures = 0
        if record is not None:
            record.local, record.remote = e.local, e.remote
            record.additional_addrs = e.additional_addrs
            record.moving_to = None
            wanted = dict(e.children)
            for child in record.children:
                if child.spi_in not in wanted or child.installed is None:
                    continue
                # a rekey we answered still sending on the old SA: the peer moving (or
                # answering our move) normally has our answer: send on the new SA first
                self._switch_outbound(record, child, "migrating")
                try:
                    child.installed = self.dataplane.migrate(
                        child.installed, e.local[0], e.remote[0], e.encap
                    )
                except DataplaneError as exc:
                    failures += 1
                    log.error(
                        "event=child-migrate-failed connection=%s child=%s spi_in=%s error=%s",
                        e.connection,
                        child.name,
                        _spi(child.spi_in),
                        exc,
                    )
                    self.control.publish(
                        "error",
                        connection=e.connection,
                        child=child.name,
                        message=f"migrate failed: {exc}",
                    )
                    continue
                child.encap = e.encap is not None
        log.info(
            "event=ike-migrated connection=%s ike_sa=%d local=%s remote=%s old_local=%s "
            "old_remote=%s nat=%s children=%d failed=%d",
            e.connection,
            e.ike_sa,
            _fmt_addr(e.local),
            _fmt_addr(e.remote),
            _fmt_addr(e.old_local),
            _fmt_addr(e.old_remote),
            "yes" if e.nat_detected else "no",
            len(e.children),
            failures,
        )
        self.control.publish(
            "ike-migrated",
            connection=e.connection,
            ike_sa=e.ike_sa,
            local_addr=e.local[0],
            remote_addr=e.remote[0],
            old_local_addr=e.old_local[0],
            old_remote_addr=e.old_remote[0],
            encap=e.encap is not None,
        )

    def _on_ike_migrate_failed(self, e: ev.IkeSaMigrateFailed) -> None:
        record = self.sas.get(e.ike_sa)
        if record is not None:
            record.moving_to = None
        log.warning(
            "event=ike-migrate-failed connection=%s ike_sa=%d local=%s remote=%s reason=%s",
            e.connection,
            e.ike_sa,
            _fmt_addr(e.local),
            _fmt_addr(e.remote),
            e.reason,
        )
        self.control.publish(
            "ike-migrate-failed",
            connection=e.connection,
            ike_sa=e.ike_sa,
            local_addr=e.local[0],
            remote_addr=e.remote[0],
            reason=e.reason,
        )

    def _on_additional_addresses(self, e: ev.AdditionalAddressesUpdated) -> None:
        record = self.sas.get(e.ike_sa)
        if record is not None:
            record.additional_addrs = e.additional_addrs
        log.info(
            "event=peer-addresses connection=%s ike_sa=%d additional=%s",
            e.connection,
            e.ike_sa,
            ",".join(e.additional_addrs) or "-",
        )

    async def migrate(
        self, name: str, local_addr: str | None, remote_addr: str | None, timeout: float
    ) -> Any:
        """Move the connection's IKE SAs we initiated with MOBIKE to `local_addr` and/or
        `remote_addr`; with neither, to the source a route lookup toward the peer picks."""
        conn, _ = self._resolve(name)
        records = [
            r
            for r in self.sas.values()
            if r.connection == conn.name and r.state == "ESTABLISHED" and r.initiator
        ]
        if not records:
            raise ControlError(UNKNOWN_SA, f"{conn.name} has no established IKE SA we initiated")
        if not all(r.mobike for r in records):
            raise ControlError(FAILED, f"{conn.name}: MOBIKE is not in use (peer or config)")
        present = await self.addrwatch.addresses() if self.addrwatch is not None else None
        moves: list[tuple[IkeRecord, str]] = []
        for r in records:
            assert r.local is not None
            local = local_addr
            if local is None and remote_addr is None and present is not None:
                local = await self._pick_local(r, present)
                if local is None:
                    raise ControlError(FAILED, f"no usable local address toward {r.remote}")
            if local is not None:
                if present is not None and local not in present:
                    raise ControlError(FAILED, f"{local} is not an address of this host")
                if self.transport.socket_for((local, r.local[1])) is None:
                    raise ControlError(
                        FAILED, f"the daemon has no IKE socket for {local} (listen on it)"
                    )
            moves.append((r, local or r.local[0]))
        pending = {r.ike_sa for r, _ in moves}
        failures: list[str] = []

        def match(event: Any) -> str | None:
            if isinstance(event, ev.IkeSaMigrated | ev.IkeSaMigrateFailed | ev.IkeSaDeleted):
                if event.ike_sa not in pending:
                    return None
                pending.discard(event.ike_sa)
                if not isinstance(event, ev.IkeSaMigrated):
                    failures.append(event.reason)
                if not pending:
                    return "; ".join(failures)
            return None

        for r, local in moves:  # events come out of the engine only in _pump()
            self._engine_call(self.engine.update_addresses, r.ike_sa, local, remote_addr)
            r.moving_to = local
        future = self._wait(match)
        self._pump()
        await self._await(future, timeout, f"migrate {name}")
        sas = [self._sa_dict(r) for r, _ in moves if r.ike_sa in self.sas]
        where = ", ".join(f"{s['local_addr']} - {s['remote_addr']}" for s in sas)
        return {"message": f"migrate {name}: {len(moves)} IKE SA(s) now on {where}", "sas": sas}

    # ------------------------------------------------------------------ kernel expiry

    def _on_expire(self, spi: int, hard: bool) -> None:
        """A kernel lifetime (bytes/packets/life_time) ran out for one of our states."""
        for record in self.sas.values():
            for child in record.children:
                if spi in (child.spi_in, child.spi_out):
                    self._child_expired(record, child, spi, hard)
                    return

    def _child_expired(self, record: IkeRecord, child: ChildRecord, spi: int, hard: bool) -> None:
        log.info(
            "event=child-expired connection=%s child=%s spi=%s limit=%s",
            record.connection,
            child.name,
            _spi(spi),
            "hard" if hard else "soft",
        )
        if not hard:
            # soft limit (rekey_bytes/rekey_packets): rekey now; the engine ignores a
            # second request while one is under way
            self.control.publish(
                "child-expiring", connection=record.connection, child=child.name, spi=_spi(spi)
            )
            rekey = getattr(self.engine, "rekey_child_sa", None)
            if rekey is not None and child.state == "INSTALLED":
                with contextlib.suppress(ControlError):
                    self._engine_call(rekey, record.ike_sa, child.spi_in)
                self._pump()
            return
        # hard limit: the kernel removed the state; delete the Child with the peer too
        if child.state != "DELETING":
            child.state = "DELETING"
            with contextlib.suppress(ControlError):
                self._engine_call(self.engine.delete_child_sa, record.ike_sa, child.spi_in)
            self._pump()

    # ------------------------------------------------------------------ events

    def _handle_event(self, event: Any) -> None:
        handlers: dict[type, Callable[[Any], Any]] = {
            ev.IkeSaEstablished: self._on_ike_established,
            ev.ChildSaEstablished: self._on_child_established,
            ev.ChildSaFailed: self._on_child_failed,
            ev.ChildSaDeleted: self._on_child_deleted,
            ev.ChildSaRekeyed: self._on_child_rekeyed,
            ev.ChildSaOutboundSwitched: self._on_child_outbound_switched,
            ev.IkeSaRekeyed: self._on_ike_rekeyed,
            ev.IkeSaDeleted: self._on_ike_deleted,
            ev.DpdFailed: self._on_dpd_failed,
            ev.IkeSaRedirected: self._on_ike_redirected,
            ev.IkeSaFailed: self._on_ike_failed,
            ev.IkeSaMigrated: self._on_ike_migrated,
            ev.IkeSaMigrateFailed: self._on_ike_migrate_failed,
            ev.AdditionalAddressesUpdated: self._on_additional_addresses,
        }
        handler = handlers.get(type(event))
        if handler is None:
            log.debug("event=engine-event-ignored type=%s", type(event).__name__)
            return
        # A handler may report that the event did not take effect (e.g. an install that
        # failed): waiters then see that replacement instead.
        event = handler(event) or event
        for waiter in list(self._waiters):
            outcome = waiter.match(event)
            if outcome is not None and not waiter.future.done():
                waiter.future.set_result(outcome)
                self._waiters.remove(waiter)

    def _record(self, ike_sa: int, connection: str, initiator: bool) -> IkeRecord:
        record = self.sas.get(ike_sa)
        if record is None:
            record = IkeRecord(ike_sa, connection, "CONNECTING", initiator, self.clock())
            self.sas[ike_sa] = record
        return record

    def _on_ike_established(self, e: ev.IkeSaEstablished) -> None:
        self._tries.pop(e.ike_sa, None)  # keyingtries: this initiation succeeded
        follow = self._follow.pop(e.ike_sa, ())
        if follow and self._loop is not None:  # after this batch, which has the first Child
            self._loop.call_soon(self._follow_up, e.ike_sa, e.connection, follow)
        self._cancel_retry_timer(e.connection)  # the connection is up (either side began)
        r = self._record(e.ike_sa, e.connection, e.initiator)
        if r.state == "CONNECTING" and self._loop is not None:
            # traps whose ACQUIRE came while this IKE SA was being set up: their Child
            # follows once this event batch (with the first Child) is handled
            self._loop.call_soon(self._trap_children_after_ike, e.ike_sa)
        r.state = "ESTABLISHED"
        r.local, r.remote = e.local, e.remote
        r.local_id, r.remote_id = e.local_id, e.remote_id
        r.spi_i, r.spi_r = e.spi_i, e.spi_r
        r.proposal = e.proposal
        r.established_at = e.time
        r.rekey_at, r.expire_at = e.rekey_at, e.expire_at
        r.mobike, r.additional_addrs = e.mobike, e.additional_addrs
        self.totals.handshakes += 1
        if self._histogram is not None and r.initiator:
            self._histogram.observe(max(0.0, e.time - r.started_at))
        log.info(
            "event=ike-established connection=%s ike_sa=%d role=%s local=%s remote=%s "
            "local_id=%s remote_id=%s spi_i=%s spi_r=%s proposal=%s nat=%s",
            e.connection,
            e.ike_sa,
            "initiator" if e.initiator else "responder",
            _fmt_addr(e.local),
            _fmt_addr(e.remote),
            e.local_id,
            e.remote_id,
            _hex(e.spi_i),
            _hex(e.spi_r),
            e.proposal,
            "yes" if e.nat_detected else "no",
        )
        self.control.publish(
            "ike-established",
            connection=e.connection,
            ike_sa=e.ike_sa,
            local_addr=e.local[0],
            remote_addr=e.remote[0],
            remote_id=e.remote_id,
            spi_i=_hex(e.spi_i),
            spi_r=_hex(e.spi_r),
        )

    def _child_config(self, connection: str, child: str) -> ChildSection | None:
        conn = self.config.connection(connection)
        return conn.child(child) if conn else None

    def _on_child_established(self, e: ev.ChildSaEstablished) -> ev.ChildSaFailed | None:
        r = self._record(e.ike_sa, e.connection, e.initiator)
        config = self._child_config(e.connection, e.child)
        try:
            installed = self.dataplane.install(e, config)
        except DataplaneError as exc:
            self._dataplane_failed("child-install-failed", e.connection, e.child, e.spi_in, exc)
            self.traps.failed((e.connection, e.child), self.clock())
            # An SA we cannot install must not stay negotiated: tell the peer.
            with contextlib.suppress(ControlError):
                self._engine_call(self.engine.delete_child_sa, e.ike_sa, e.spi_in)
            return ev.ChildSaFailed(
                e.ike_sa, e.connection, e.child, f"install failed: {exc}", e.time
            )
        now = e.time or self.clock()
        child = ChildRecord(
            name=e.child,
            state="INSTALLED",
            spi_in=e.spi_in,
            spi_out=e.spi_out,
            mode=e.mode,
            encap=e.encap is not None,
            esp_proposal=e.proposal,
            local_ts=[c for ts in e.local_ts for c in to_cidrs(ts)],
            remote_ts=[c for ts in e.remote_ts for c in to_cidrs(ts)],
            installed_at=now,
            rekey_at=e.rekey_at,
            expire_at=e.expire_at,
            installed=installed,
        )
        r.children.append(child)
        self.traps.established((e.connection, e.child))
        if self.xdp is not None:
            placed = self.xdp.child_established(e, offloaded=installed.offload != "none")
            child.xdp_slot = placed.slot if placed is not None else None
        log.info(
            "event=child-established connection=%s child=%s ike_sa=%d mode=%s spi_in=%s "
            "spi_out=%s proposal=%s encap=%s offload=%s local_ts=%s remote_ts=%s",
            e.connection,
            e.child,
            e.ike_sa,
            e.mode,
            _spi(e.spi_in),
            _spi(e.spi_out),
            e.proposal,
            "yes" if e.encap else "no",
            installed.offload,
            ",".join(child.local_ts),
            ",".join(child.remote_ts),
        )
        self.control.publish(
            "child-established",
            connection=e.connection,
            child=e.child,
            spi_in=_spi(e.spi_in),
            spi_out=_spi(e.spi_out),
        )
        return None

    def _on_child_failed(self, e: ev.ChildSaFailed) -> None:
        self.traps.failed((e.connection, e.child), self.clock())
        log.warning(
            "event=child-failed connection=%s child=%s ike_sa=%d reason=%s",
            e.connection,
            e.child,
            e.ike_sa,
            e.reason,
        )
        self.control.publish(
            "child-failed", connection=e.connection, child=e.child, reason=e.reason
        )

    def _on_child_rekeyed(self, e: ev.ChildSaRekeyed) -> Any:
        """Make-before-break (docs/daemon.md): the new SAs go in and the policies move to
        them, the outbound SA in use goes, the old inbound one stays until its Delete. As
        the rekey's responder (`e.outbound` False) only the new inbound SA goes in: the
        peer cannot decrypt the new SA before it has our answer, so we keep sending on
        the old one until ChildSaOutboundSwitched."""
        new = e.new
        record = self.sas.get(e.ike_sa)
        child = None
        if record is not None:
            child = next((c for c in record.children if c.spi_in == e.old_spi_in), None)
        if record is None or child is None or child.installed is None:
            return self._on_child_established(new)  # nothing to replace (after a collision)
        config = self._child_config(e.connection, e.child)
        old = child.installed
        in_use = child.sending or old  # whose outbound SA we send on
        gone = self.dataplane.counters(old)
        sending = self.dataplane.counters(in_use) if e.outbound else Counters()
        try:
            if e.outbound:
                installed = self.dataplane.replace(in_use, new, config, keep_old_inbound=True)
            else:
                installed = self.dataplane.replace(
                    old, new, config, keep_old_inbound=True, switch_outbound=False
                )
        except DataplaneError as exc:
            self._dataplane_failed(
                "child-rekey-install-failed", e.connection, e.child, new.spi_in, exc
            )
            with contextlib.suppress(ControlError):  # the old SA stays in use
                self._engine_call(self.engine.delete_child_sa, e.ike_sa, new.spi_in)
            reason = f"install failed: {exc}"
            return ev.ChildSaFailed(e.ike_sa, e.connection, e.child, reason, e.time)
        # counters of SAs that leave the record: the old inbound SA's now, the outbound
        # SA in use when we stop sending on it
        self._bank(Counters(gone.bytes_in, gone.packets_in, sending.bytes_out, sending.packets_out))
        self.totals.rekeys += 1
        xdp_old = None
        if self.xdp is not None and child.xdp_slot is not None:
            xdp_old = (child.spi_in, child.spi_out)
            self.xdp.child_rekeyed(child.spi_in, new, offloaded=installed.offload != "none")
        self._retiring[e.old_spi_in] = (e.ike_sa, old, xdp_old)
        child.sending = None if e.outbound else in_use
        child.spi_in, child.spi_out = new.spi_in, new.spi_out
        child.esp_proposal = new.proposal
        child.installed = installed
        child.installed_at = new.time or self.clock()
        child.rekey_at, child.expire_at = new.rekey_at, new.expire_at
        log.info(
            "event=child-rekeyed connection=%s child=%s ike_sa=%d spi_in=%s spi_out=%s "
            "old_spi_in=%s old_spi_out=%s proposal=%s outbound=%s",
            e.connection,
            e.child,
            e.ike_sa,
            _spi(new.spi_in),
            _spi(new.spi_out),
            _spi(e.old_spi_in),
            _spi(e.old_spi_out),
            new.proposal,
            "new" if e.outbound else "old",
        )
        self.control.publish(
            "child-rekeyed",
            connection=e.connection,
            child=e.child,
            spi_in=_spi(new.spi_in),
            spi_out=_spi(new.spi_out),
            old_spi_in=_spi(e.old_spi_in),
            old_spi_out=_spi(e.old_spi_out),
        )
        return None

    def _on_child_outbound_switched(self, e: ev.ChildSaOutboundSwitched) -> None:
        """The rekey responder's second step: send on the new SA (RFC 7296 §2.8)."""
        record = self.sas.get(e.ike_sa)
        child = None
        if record is not None:
            child = next((c for c in record.children if c.spi_in == e.spi_in), None)
        if record is not None and child is not None:
            self._switch_outbound(record, child, e.reason)

    def _switch_outbound(self, record: IkeRecord, child: ChildRecord, reason: str) -> None:
        if child.sending is None or child.installed is None:
            return  # switched already, its install failed, or the Child is gone
        old_spi_out = child.sending.spi_out
        counters = self.dataplane.counters(child.sending)
        try:
            child.installed = self.dataplane.switch_outbound(child.sending, child.installed)
        except DataplaneError as exc:  # the old outbound SA stays in use
            self._dataplane_failed(
                "child-switch-failed", record.connection, child.name, child.spi_in, exc
            )
            return
        child.sending = None
        self._bank(Counters(0, 0, counters.bytes_out, counters.packets_out))
        log.info(
            "event=child-outbound-switched connection=%s child=%s ike_sa=%d spi_out=%s "
            "old_spi_out=%s reason=%r",
            record.connection,
            child.name,
            record.ike_sa,
            _spi(child.spi_out),
            _spi(old_spi_out),
            reason,
        )

    def _dataplane_failed(
        self, event: str, connection: str, child: str, spi_in: int, exc: DataplaneError
    ) -> None:
        """The data plane refused a Child SA (install, rekey or switch): count, log, tell."""
        self.totals.install_failures += 1
        log.error(
            "event=%s connection=%s child=%s spi_in=%s error=%s",
            event,
            connection,
            child,
            _spi(spi_in),
            exc,
        )
        self.control.publish(
            "error", connection=connection, child=child, message=f"install failed: {exc}"
        )

    def _bank(self, counters: Counters) -> None:
        """Counters of SAs that are gone, so gateway-wide totals never go backwards."""
        self.totals.bytes_in += counters.bytes_in
        self.totals.bytes_out += counters.bytes_out
        self.totals.packets_in += counters.packets_in
        self.totals.packets_out += counters.packets_out

    def _counters(self, c: ChildRecord) -> Counters:
        """A Child's counters: inbound of its newest SA, outbound of the one in use."""
        if c.installed is None:
            return Counters()
        counters = self.dataplane.counters(c.installed)
        if c.sending is None:
            return counters
        out = self.dataplane.counters(c.sending)
        return Counters(counters.bytes_in, counters.packets_in, out.bytes_out, out.packets_out)

    def _retire(self, spi_in: int) -> None:
        """Remove an old inbound SA kept after a rekey (and its SPIs from the BPF maps)."""
        entry = self._retiring.pop(spi_in, None)
        if entry is None:
            return
        _, old, xdp_old = entry
        if xdp_old is not None and self.xdp is not None:
            self.xdp.child_deleted(xdp_old[0])
        try:
            self.dataplane.retire(old)
        except DataplaneError as exc:
            log.error("event=child-retire-failed spi_in=%s error=%s", _spi(spi_in), exc)

    def _on_ike_rekeyed(self, e: ev.IkeSaRekeyed) -> None:
        record = self.sas.get(e.ike_sa)
        if record is not None:
            record.spi_i, record.spi_r = e.spi_i, e.spi_r
            record.proposal = e.proposal
            record.rekey_at, record.expire_at = e.rekey_at, e.expire_at
            if e.initiator is not None:  # the rekey's initiator is the new SA's (§2.18)
                record.initiator = e.initiator
        self.totals.ike_rekeys += 1
        log.info(
            "event=ike-rekeyed connection=%s ike_sa=%d spi_i=%s spi_r=%s old_spi_i=%s "
            "old_spi_r=%s proposal=%s",
            e.connection,
            e.ike_sa,
            _hex(e.spi_i),
            _hex(e.spi_r),
            _hex(e.old_spi_i),
            _hex(e.old_spi_r),
            e.proposal,
        )
        self.control.publish(
            "ike-rekeyed",
            connection=e.connection,
            ike_sa=e.ike_sa,
            spi_i=_hex(e.spi_i),
            spi_r=_hex(e.spi_r),
        )

    def _remove_child(self, record: IkeRecord, child: ChildRecord, reason: str) -> None:
        if child in record.children:
            record.children.remove(child)
        if self.xdp is not None:
            self.xdp.child_deleted(child.spi_in)
        if child.installed is not None:
            self._bank(self._counters(child))
            try:
                if child.sending is not None:  # a rekey responder still sending on it
                    self.dataplane.remove(child.sending)
                    child.sending = None
                self.dataplane.remove(child.installed)
            except DataplaneError as exc:
                log.error(
                    "event=child-remove-failed connection=%s child=%s spi_in=%s error=%s",
                    record.connection,
                    child.name,
                    _spi(child.spi_in),
                    exc,
                )
            child.installed = None

    def _on_child_deleted(self, e: ev.ChildSaDeleted) -> None:
        if e.spi_in in self._retiring:  # an old SA after its rekey: its Delete is done
            if self._loop is not None:
                self._loop.call_later(REKEY_GRACE, self._retire, e.spi_in)
            else:
                self._retire(e.spi_in)
            log.debug("event=child-retiring connection=%s spi_in=%s", e.connection, _spi(e.spi_in))
            return
        record = self.sas.get(e.ike_sa)
        if record is not None:
            for child in list(record.children):
                if child.spi_in == e.spi_in:
                    self._remove_child(record, child, e.reason)
        self._child_gone(e.connection, e.child, e.reason == "deleted by peer")
        log.info(
            "event=child-deleted connection=%s child=%s ike_sa=%d spi_in=%s spi_out=%s reason=%s",
            e.connection,
            e.child,
            e.ike_sa,
            _spi(e.spi_in),
            _spi(e.spi_out),
            e.reason,
        )
        self.control.publish(
            "child-deleted",
            connection=e.connection,
            child=e.child,
            spi_in=_spi(e.spi_in),
            spi_out=_spi(e.spi_out),
            reason=e.reason,
        )

    def _on_ike_deleted(self, e: ev.IkeSaDeleted) -> None:
        for spi, (ike_sa, _, _) in list(self._retiring.items()):
            if ike_sa == e.ike_sa:
                self._retire(spi)
        self._tries.pop(e.ike_sa, None)
        self._follow.pop(e.ike_sa, None)
        record = self.sas.pop(e.ike_sa, None)
        if record is not None:
            for child in list(record.children):  # normally already gone via ChildSaDeleted
                self._remove_child(record, child, e.reason)
                self._child_gone(e.connection, child.name, False)
        self.traps.ike_sa_gone(e.ike_sa, self.clock())
        log.info(
            "event=ike-deleted connection=%s ike_sa=%d spi_i=%s spi_r=%s reason=%s",
            e.connection,
            e.ike_sa,
            _hex(e.spi_i),
            _hex(e.spi_r),
            e.reason,
        )
        self.control.publish(
            "ike-deleted", connection=e.connection, ike_sa=e.ike_sa, reason=e.reason
        )
        conn = self.config.connection(e.connection)
        if e.reason == "deleted by peer" and conn is not None:
            self.fall_back_to_trap(
                conn, [c for c in conn.children if c.close_action == "trap"], "closed by peer"
            )
        self._sync_traps()  # e.g. a removed connection's trap waited for its SAs

    def _on_ike_redirected(self, e: ev.IkeSaRedirected) -> None:
        """RFC 5685 (ike/redirect.py). As initiator: the attempt (or the established SA,
        already gone with IkeSaDeleted "redirected") is replaced by a new attempt against
        the new gateway, which gets a record. As responder: we sent a peer away."""
        self.totals.redirects += 1
        if e.initiator:
            old = self.sas.pop(e.ike_sa, None)
            record = self._record(e.new_ike_sa, e.connection, True)
            attempt = self._tries.pop(e.ike_sa, None)
            if attempt is not None:  # the same attempt goes on elsewhere: not a retry
                self._tries[e.new_ike_sa] = attempt
            follow = self._follow.pop(e.ike_sa, ())
            if follow:
                self._follow[e.new_ike_sa] = follow
            if old is not None:
                record.started_at = old.started_at  # the handshake's duration counts on
        log.info(
            "event=ike-redirected connection=%s role=%s phase=%s ike_sa=%d remote=%s "
            "gateway=%s new_ike_sa=%s",
            e.connection,
            "initiator" if e.initiator else "responder",
            e.phase,
            e.ike_sa,
            _fmt_addr(e.remote),
            e.gateway,
            e.new_ike_sa or "-",
        )
        self.control.publish(
            "ike-redirected",
            connection=e.connection,
            role="initiator" if e.initiator else "responder",
            phase=e.phase,
            ike_sa=e.ike_sa,
            remote_addr=e.remote[0],
            gateway=e.gateway,
            new_ike_sa=e.new_ike_sa if e.initiator else None,
        )

    async def redirect(self, name: str, to: str, timeout: float) -> Any:
        """Send the peers of a connection's established IKE SAs to gateway `to` (RFC 5685
        §5; e.g. to drain this gateway). Waits until each peer has answered."""
        from ike.redirect import check_gateway

        conn, child = self._resolve(name)
        if child is not None:
            raise ControlError(BAD_REQUEST, "redirect moves IKE SAs: name a connection")
        try:
            gateway = check_gateway(to)
        except LocalError as exc:
            raise ControlError(BAD_REQUEST, f"redirect: {exc}") from None
        records = [
            r for r in self.sas.values() if r.connection == conn.name and r.state == "ESTABLISHED"
        ]
        if not records:
            raise ControlError(UNKNOWN_SA, f"{name} has no established IKE SA to redirect")
        pending: set[int] = set()
        refused: list[str] = []

        def match(event: Any) -> str | None:
            if isinstance(event, ev.IkeSaRedirected | ev.IkeSaDeleted):
                pending.discard(event.ike_sa)
            return "" if not pending else None

        future = self._wait(match)
        for record in records:
            try:
                self._engine_call(self.engine.redirect_ike_sa, record.ike_sa, gateway)
            except ControlError as exc:
                refused.append(exc.message)
            else:
                pending.add(record.ike_sa)
        sent = len(pending)
        if not sent:
            self._waiters = [w for w in self._waiters if w.future is not future]
            raise ControlError(FAILED, f"redirect {name}: " + "; ".join(refused))
        self._pump()
        await self._await(future, timeout, f"redirect {name}")
        message = f"redirect {name}: {sent} IKE SA(s) sent to {gateway}"
        if refused:
            message += f"; not redirected: {'; '.join(refused)}"
        return {"message": message}

    def _on_dpd_failed(self, e: ev.DpdFailed) -> None:
        """The engine found the peer dead (its Child SAs are gone, IkeSaDeleted follows):
        carry out the dpd_action of each Child SA it had. clear: nothing more; restart:
        initiate the connection again, once, with the first such Child (its first Child
        rides in IKE_AUTH, as with start_action); trap: the Child gets its trap policies
        (fall_back_to_trap), so the next packet for it brings it back."""
        self.totals.dpd_failures += 1
        log.warning(
            "event=dpd-failed connection=%s ike_sa=%d remote=%s actions=%s",
            e.connection,
            e.ike_sa,
            _fmt_addr(e.remote),
            ",".join(f"{child}:{action}" for child, action in e.actions) or "-",
        )
        self.control.publish(
            "dpd-failed",
            connection=e.connection,
            ike_sa=e.ike_sa,
            remote_addr=e.remote[0],
            actions={child: action for child, action in e.actions},
        )
        conn = self.config.connection(e.connection)
        if conn is not None:  # dpd_action = "trap": back to the trap state
            trap = [conn.child(child) for child, action in e.actions if action == "trap"]
            self.fall_back_to_trap(conn, [c for c in trap if c is not None], "dead peer")
        restart = [child for child, action in e.actions if action == "restart"]
        if conn is None or not restart or conn.child(restart[0]) is None:
            return  # removed or changed by a reload meanwhile: nothing to restart
        log.info("event=dpd-restart connection=%s child=%s", conn.name, restart[0])
        try:
            self._initiate(conn, restart[0])
        except ControlError as exc:
            log.error("event=dpd-restart-failed connection=%s error=%s", conn.name, exc)

    # ------------------------------------------------------------------ traps

    def fall_back_to_trap(
        self, conn: ConnectionSection, children: Sequence[ChildSection], reason: str
    ) -> None:
        """dpd_action / close_action "trap": these Children get trap policies (if they
        have none yet), so the next packet for them brings them back (`_on_acquire`)."""
        for child in children:
            key = (conn.name, child.name)
            if key not in self._armed and child.start_action != "trap":
                log.info(
                    "event=trap-armed connection=%s child=%s reason=%r",
                    conn.name,
                    child.name,
                    reason,
                )
                self._armed.add(key)
        self._sync_traps()

    def _trap_wanted(self) -> dict[TrapKey, TrapSpec]:
        """The traps the configuration and the armed dpd/close actions want (cached per
        configuration and armed set: called after every SA deletion)."""
        stamp = (self.config.connections, frozenset(self._armed))
        cached = self._wanted
        if cached is not None and cached[0][0] is stamp[0] and cached[0][1] == stamp[1]:
            return cached[1]
        wanted: dict[TrapKey, TrapSpec] = {}
        for conn in self.config.connections:
            if not self.start_filter(conn.name):
                continue  # another worker's (check-config refuses trap with workers)
            for child in conn.children:
                key = (conn.name, child.name)
                if child.start_action == "trap" or key in self._armed:
                    wanted[key] = _trap_spec(conn, child)
        self._wanted = (stamp, wanted)
        return wanted

    def _sync_traps(self) -> None:
        """Install the traps the configuration (and dpd/close actions) want, remove the
        others. A trap whose Child config still has Child SAs is left alone until they
        are gone: they share its out policies (docs/daemon.md)."""
        wanted = self._trap_wanted()
        if not wanted and not len(self.traps):
            return  # the common case: no traps at all, nothing to look at
        busy = {(r.connection, c.name) for r in self.sas.values() for c in r.children}
        for trap in self.traps.all():
            key = trap.spec.key
            if wanted.get(key) != trap.spec and key not in busy:
                self._remove_trap(key)
        for key, spec in wanted.items():
            if key in self.traps or key in busy:
                continue
            try:
                reqid = self.dataplane.install_trap(spec)
            except DataplaneError as exc:
                log.error(
                    "event=trap-install-failed connection=%s child=%s error=%s",
                    spec.connection,
                    spec.child,
                    exc,
                )
                self.control.publish(
                    "error",
                    connection=spec.connection,
                    child=spec.child,
                    message=f"trap install failed: {exc}",
                )
                continue
            self.traps.add(spec, reqid)
            log.info(
                "event=trap-installed connection=%s child=%s reqid=%#010x local_ts=%s remote_ts=%s",
                spec.connection,
                spec.child,
                reqid,
                ",".join(spec.local_ts),
                ",".join(spec.remote_ts),
            )

    def _remove_trap(self, key: TrapKey) -> None:
        self.traps.remove(key)
        try:
            self.dataplane.remove_trap(key)
        except DataplaneError as exc:
            log.error("event=trap-remove-failed connection=%s child=%s error=%s", *key, exc)
            return
        log.info("event=trap-removed connection=%s child=%s", *key)

    def _child_gone(self, connection: str, child: str, by_peer: bool) -> None:
        """A Child SA went: with none of that Child config left, its trap waits for
        traffic again; close_action "trap" arms one when the peer closed it."""
        key = (connection, child)
        left = any(
            c.name == child
            for r in self.sas.values()
            if r.connection == connection
            for c in r.children
        )
        if left:
            return
        self.traps.down(key)
        conn = self.config.connection(connection)
        config = conn.child(child) if conn is not None else None
        if by_peer and conn is not None and config is not None and config.close_action == "trap":
            self.fall_back_to_trap(conn, [config], "closed by peer")
        else:
            self._sync_traps()
        if by_peer and conn is not None and config is not None and config.close_action == "start":
            self._restart_closed(conn, child)

    def _on_acquire(self, reqid: int, src: str | None, dst: str | None) -> None:
        """The kernel's ACQUIRE for one of our traps: initiate its Child (RFC 4301 §4.4),
        once; the packet's addresses go first in the traffic selectors (RFC 7296 §2.9)."""
        now = self.clock()
        trap = self.traps.acquire(reqid, now)
        if trap is None:
            found = self.traps.by_reqid(reqid)
            if found is not None:
                log.debug(
                    "event=trap-acquire-coalesced connection=%s child=%s state=%s",
                    found.spec.connection,
                    found.spec.child,
                    found.state,
                )
            return
        spec = trap.spec
        conn = self.config.connection(spec.connection)
        log.info(
            "event=trap-acquire connection=%s child=%s src=%s dst=%s",
            spec.connection,
            spec.child,
            src or "-",
            dst or "-",
        )
        if conn is None or conn.child(spec.child) is None:
            self.traps.failed(spec.key, now)
            return
        packet_ts = _packet_ts(src, dst)
        records = [r for r in self.sas.values() if r.connection == conn.name]
        up = next((r for r in records if r.state == "ESTABLISHED"), None)
        coming = next((r for r in records if r.state == "CONNECTING" and r.initiator), None)
        try:
            if up is not None:
                self._create_child(up.ike_sa, spec.child, packet_ts)
                self.traps.initiated(spec.key, up.ike_sa)
            elif coming is not None:  # its Child follows when that IKE SA is up
                self.traps.initiated(spec.key, coming.ike_sa)
                trap.packet_ts = packet_ts
            else:
                ike_sa = self.engine.initiate(conn.name, spec.child, now, packet_ts=packet_ts)
                self._record(ike_sa, conn.name, True)
                self.traps.initiated(spec.key, ike_sa)
                log.info(
                    "event=initiate connection=%s child=%s ike_sa=%d trigger=acquire",
                    conn.name,
                    spec.child,
                    ike_sa,
                )
        except (LocalError, ControlError) as exc:
            log.error(
                "event=trap-initiate-failed connection=%s child=%s error=%s",
                spec.connection,
                spec.child,
                exc,
            )
            self.traps.failed(spec.key, now)
        self._pump()

    def _create_child(self, ike_sa: int, child: str, packet_ts: Any) -> None:
        self.engine.create_child_sa(ike_sa, child, self.clock(), packet_ts=packet_ts)

    def _trap_children_after_ike(self, ike_sa: int) -> None:
        """Traps that waited for this IKE SA: request their Child unless it came along."""
        record = self.sas.get(ike_sa)
        for trap in self.traps.all():
            if trap.state != "CONNECTING" or trap.ike_sa != ike_sa:
                continue
            if record is None or record.state != "ESTABLISHED":
                self.traps.failed(trap.spec.key, self.clock())
                continue
            if any(c.name == trap.spec.child for c in record.children):
                self.traps.established(trap.spec.key)
                continue
            try:
                self._create_child(ike_sa, trap.spec.child, trap.packet_ts)
            except LocalError as exc:
                log.error(
                    "event=trap-initiate-failed connection=%s child=%s error=%s",
                    trap.spec.connection,
                    trap.spec.child,
                    exc,
                )
                self.traps.failed(trap.spec.key, self.clock())
        self._pump()

    def _on_ike_failed(self, e: ev.IkeSaFailed) -> None:
        self.sas.pop(e.ike_sa, None)
        attempt = self._tries.pop(e.ike_sa, None)
        follow = self._follow.pop(e.ike_sa, ())
        if attempt is not None and follow:  # a retry brings them along
            attempt = _Try(
                attempt.connection, attempt.child, attempt.attempt, attempt.more + follow
            )
        self.traps.ike_sa_gone(e.ike_sa, self.clock())
        if "AUTHENTICATION_FAILED" in e.reason:
            self.totals.auth_failures += 1
        log.warning(
            "event=ike-failed connection=%s ike_sa=%d remote=%s reason=%s detail=%r",
            e.connection or "-",
            e.ike_sa,
            _fmt_addr(e.remote),
            e.reason,
            e.detail,
        )
        self.control.publish(
            "ike-failed",
            connection=e.connection,
            ike_sa=e.ike_sa,
            remote_addr=e.remote[0],
            reason=e.reason,
            detail=e.detail,
        )
        if attempt is not None:
            self._schedule_retry(attempt, e.reason)

    # ------------------------------------------------------------------ keyingtries

    def _schedule_retry(self, failed: _Try, reason: str) -> None:
        """An initiation of ours failed: try the connection again after a backoff
        (RETRY_FIRST doubling to RETRY_CAP, jittered), unless its keyingtries are used
        up (0 = forever). One pending retry per connection."""
        conn = self.config.connection(failed.connection)
        if conn is None or self._loop is None or self._closing:
            return
        if conn.keyingtries and failed.attempt >= conn.keyingtries:
            if conn.keyingtries > 1:
                log.warning(
                    "event=ike-retry-exhausted connection=%s attempts=%d reason=%s",
                    conn.name,
                    failed.attempt,
                    reason,
                )
            return
        first, cap = self.retry_delays
        delay = min(cap, first * 2.0 ** min(failed.attempt - 1, 30))
        delay *= 1.0 - RETRY_JITTER * random.random()  # timing jitter, not crypto
        self._cancel_retry_timer(conn.name)
        nxt = _Try(conn.name, failed.child, failed.attempt + 1, failed.more)
        self._retries[conn.name] = self._loop.call_later(delay, self._retry, conn, nxt)
        log.info(
            "event=ike-retry-scheduled connection=%s child=%s attempt=%d keyingtries=%d "
            "delay=%.2f reason=%s",
            conn.name,
            nxt.child or "-",
            nxt.attempt,
            conn.keyingtries,
            delay,
            reason,
        )

    def _retry(self, conn: ConnectionSection, attempt: _Try) -> None:
        self._retries.pop(conn.name, None)
        if self._closing or self.config.connection(conn.name) != conn:
            return  # stopped, or removed/changed by a reload (which starts it anew)
        if any(r.connection == conn.name and r.state == "ESTABLISHED" for r in self.sas.values()):
            return  # the peer brought it up meanwhile
        try:
            ike_sa = self._initiate(conn, attempt.child, attempt.attempt)
            if attempt.more:
                self._follow[ike_sa] = attempt.more
        except ControlError as exc:  # e.g. no usable local address yet: counts as failed
            log.error("event=ike-retry-failed connection=%s error=%s", conn.name, exc)
            self._schedule_retry(attempt, str(exc))
            return
        log.info(
            "event=ike-retry connection=%s child=%s attempt=%d keyingtries=%d ike_sa=%d",
            conn.name,
            attempt.child or "-",
            attempt.attempt,
            conn.keyingtries,
            ike_sa,
        )
        self.control.publish(
            "ike-retry",
            connection=conn.name,
            child=attempt.child,
            attempt=attempt.attempt,
            keyingtries=conn.keyingtries,
            ike_sa=ike_sa,
        )
        self._pump()

    def _cancel_retry_timer(self, connection: str) -> bool:
        handle = self._retries.pop(connection, None)
        if handle is not None:
            handle.cancel()
        return handle is not None

    def _cancel_retries(self, connection: str) -> bool:
        """No more retries for this connection: its pending one is cancelled and its
        attempts in flight will not be retried. True when a retry was pending."""
        for ike_sa, attempt in list(self._tries.items()):
            if attempt.connection == connection:
                del self._tries[ike_sa]
        return self._cancel_retry_timer(connection)

    # ------------------------------------------------------------------ actions

    def _start_actions(self, conn: ConnectionSection) -> None:
        if not self.start_filter(conn.name):
            return
        children = [c.name for c in conn.children if c.start_action == "start"]
        if not children:
            return
        try:
            self._bring_up(conn, children)
        except (ControlError, LocalError) as exc:
            log.error(
                "event=start-action-failed connection=%s child=%s error=%s",
                conn.name,
                children[0],
                exc,
            )

    def _bring_up(self, conn: ConnectionSection, children: Sequence[str]) -> None:
        """These Children of `conn` up, all on one IKE SA: requested over an established
        IKE SA of the connection, after the one we are setting up, or with a new IKE SA
        whose IKE_AUTH carries the first (keyingtries covers it) and the rest after."""
        records = [r for r in self.sas.values() if r.connection == conn.name]
        up = next((r for r in records if r.state == "ESTABLISHED"), None)
        if up is not None:
            self._request_children(up.ike_sa, conn.name, tuple(children))
            return
        coming = next((r for r in records if r.state == "CONNECTING" and r.initiator), None)
        if coming is not None:
            self._follow[coming.ike_sa] = self._follow.get(coming.ike_sa, ()) + tuple(children)
            return
        ike_sa = self._initiate(conn, children[0])
        if children[1:]:
            self._follow[ike_sa] = tuple(children[1:])

    def _request_children(self, ike_sa: int, connection: str, children: Sequence[str]) -> None:
        """CREATE_CHILD_SA for each of these Children the IKE SA does not carry yet."""
        record = self.sas.get(ike_sa)
        conn = self.config.connection(connection)
        if record is None or record.state != "ESTABLISHED" or conn is None:
            return  # gone or removed meanwhile (its retry or reload starts it anew)
        have = {c.name for c in record.children}
        for child in dict.fromkeys(children):
            if child in have or conn.child(child) is None:
                continue
            try:
                self._create_child(ike_sa, child, None)
                log.info(
                    "event=create-child connection=%s child=%s ike_sa=%d", connection, child, ike_sa
                )
            except LocalError as exc:
                log.error(
                    "event=create-child-failed connection=%s child=%s error=%s",
                    connection,
                    child,
                    exc,
                )

    def _follow_up(self, ike_sa: int, connection: str, children: Sequence[str]) -> None:
        self._request_children(ike_sa, connection, children)
        self._pump()

    def _restart_closed(self, conn: ConnectionSection, child: str) -> None:
        """close_action "start": the peer closed this Child (alone or with its IKE SA);
        once the current event batch is handled (an IKE SA going down goes first), bring
        it up again."""
        if self._loop is None or self._closing:
            return
        log.info("event=close-restart connection=%s child=%s", conn.name, child)

        def restart() -> None:
            if self._closing or self.config.connection(conn.name) != conn:
                return  # stopped, or removed/changed by a reload
            try:
                self._bring_up(conn, [child])
            except (ControlError, LocalError) as exc:
                log.error("event=close-restart-failed connection=%s error=%s", conn.name, exc)
            self._pump()

        self._loop.call_soon(restart)

    def _initiate(self, conn: ConnectionSection, child: str | None, attempt: int = 1) -> int:
        """Initiate an IKE SA (with `child` in IKE_AUTH); keyingtries retries it when it
        fails. A first attempt replaces the connection's pending retry."""
        if attempt == 1:
            self._cancel_retry_timer(conn.name)
        ike_sa = self._engine_call(self.engine.initiate, conn.name, child)
        self._record(ike_sa, conn.name, True)
        self._tries[int(ike_sa)] = _Try(conn.name, child, attempt)
        log.info("event=initiate connection=%s child=%s ike_sa=%d", conn.name, child or "-", ike_sa)
        return int(ike_sa)

    def _resolve(self, name: str) -> tuple[ConnectionSection, str | None]:
        conn_name, _, child_name = name.partition(".")
        conn = self.config.connection(conn_name)
        if conn is None:
            raise ControlError(UNKNOWN_CONNECTION, f"no connection named {conn_name!r}")
        if child_name and conn.child(child_name) is None:
            raise ControlError(
                UNKNOWN_CONNECTION, f"connection {conn_name!r} has no child {child_name!r}"
            )
        return conn, child_name or None

    def _wait(self, match: Callable[[Any], str | None]) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(match, future))
        return future

    async def _await(self, future: asyncio.Future[str], timeout: float, what: str) -> None:
        try:
            outcome = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ControlError(FAILED, f"{what}: no outcome within {timeout:g}s") from None
        finally:
            self._waiters = [w for w in self._waiters if w.future is not future]
        if outcome:
            raise ControlError(FAILED, f"{what}: {outcome}")

    # ------------------------------------------------------------------ ControlBackend

    def list_conns(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "local_addrs": list(c.local_addrs),
                "remote_addrs": list(c.remote_addrs),
                "local_id": c.local.id,
                "remote_id": c.remote.id,
                "local_auth": c.local.auth,
                "remote_auth": c.remote.auth,
                "ike_proposals": list(c.ike_proposals),
                "start_action": _conn_start_action(c),
                "dpd_delay": c.dpd_delay,
                "follow_redirects": c.follow_redirects,
                "redirect_to": c.redirect_to,
                "redirect_on": c.redirect_on,
                "rekey_time": c.rekey_time,
                "children": [
                    {
                        "name": ch.name,
                        "local_ts": list(ch.local_ts),
                        "remote_ts": list(ch.remote_ts),
                        "esp_proposals": list(ch.esp_proposals),
                        "mode": ch.mode,
                        "start_action": ch.start_action,
                        "rekey_time": ch.rekey_time,
                        "life_time": ch.life_time,
                        "trap": self._trap_dict((c.name, ch.name)),
                    }
                    for ch in c.children
                ],
            }
            for c in self.config.connections
        ]

    def _trap_dict(self, key: TrapKey) -> dict[str, Any] | None:
        """The Child's trap ({state: TRAPPED|CONNECTING|INSTALLED|BACKOFF, ...}) or None."""
        trap = self.traps.get(key)
        return trap.as_dict() if trap is not None else None

    def list_sas(self) -> list[dict[str, Any]]:
        return [self._sa_dict(r) for r in self.sas.values()]

    def _sa_dict(self, r: IkeRecord) -> dict[str, Any]:
        return {
            "connection": r.connection,
            "ike_sa": r.ike_sa,
            "state": r.state,
            "initiator": r.initiator,
            "local_addr": r.local[0] if r.local else None,
            "local_port": r.local[1] if r.local else None,
            "remote_addr": r.remote[0] if r.remote else None,
            "remote_port": r.remote[1] if r.remote else None,
            "local_id": r.local_id,
            "remote_id": r.remote_id,
            "spi_i": _hex(r.spi_i),
            "spi_r": _hex(r.spi_r),
            "ike_proposal": r.proposal,
            "established_at": r.established_at,
            "rekey_at": r.rekey_at,
            "expire_at": r.expire_at,
            "mobike": r.mobike,
            "additional_addrs": list(r.additional_addrs),
            "children": [self._child_dict(c) for c in r.children],
        }

    def _child_dict(self, c: ChildRecord) -> dict[str, Any]:
        counters = self._counters(c) if c.installed else None
        row = {
            "name": c.name,
            "state": c.state,
            "spi_in": _spi(c.spi_in),
            "spi_out": _spi(c.spi_out),
            "mode": c.mode,
            "encap": c.encap,
            "esp_proposal": c.esp_proposal,
            "offload": c.installed.offload if c.installed else "none",
            "bytes_in": counters.bytes_in if counters else 0,
            "bytes_out": counters.bytes_out if counters else 0,
            "packets_in": counters.packets_in if counters else 0,
            "packets_out": counters.packets_out if counters else 0,
            "local_ts": c.local_ts,
            "remote_ts": c.remote_ts,
            "installed_at": c.installed_at,
            "rekey_at": c.rekey_at,
            "expire_at": c.expire_at,
        }
        if self.xdp is not None:  # the XDP/TC programs' per-slot counters (docs/bpf.md)
            row["xdp"] = self.xdp.child_counters(c.spi_in)
        return row

    def stats(self) -> dict[str, Any]:
        return self._stats(self.list_sas())

    def _stats(self, sas: list[dict[str, Any]]) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        for sa in sas:
            by_state[sa["state"]] = by_state.get(sa["state"], 0) + 1
        children = [c for sa in sas for c in sa["children"]]
        t = self.totals
        return {
            "uptime": self.clock() - self.started_at,
            "version": __version__,
            "dataplane": self.dataplane.name,
            "ike_sas": by_state,
            "child_sas": len(children),
            "bytes_in": t.bytes_in + sum(c["bytes_in"] for c in children),
            "bytes_out": t.bytes_out + sum(c["bytes_out"] for c in children),
            "packets_in": t.packets_in + sum(c["packets_in"] for c in children),
            "packets_out": t.packets_out + sum(c["packets_out"] for c in children),
            "xdp": self._xdp_rows(),
            "xfrm_errors": self.dataplane.errors(),
            "handshakes": t.handshakes,
            "auth_failures": t.auth_failures,
            "dpd_failures": t.dpd_failures,
            "rekeys": t.rekeys,
            "redirects": t.redirects,
            "traps": _count_states(self.traps.all()),
            "install_failures": t.install_failures,
            "engine_errors": t.engine_errors,
            "transport": self.transport.counters.as_dict(),
            "engine": _engine_stats(self.engine),
            "control": {
                "requests": self.control.requests,
                "bad_requests": self.control.bad_requests,
            },
        } | self._histogram_stats()

    def _histogram_stats(self) -> dict[str, Any]:
        """`handshake_durations` (cumulative counts per bucket bound, then +Inf) while
        the histogram is kept (metrics on, or a worker)."""
        if self._histogram is None:
            return {}
        h = self._histogram.snapshot()
        return {
            "handshake_durations": {
                "bounds": list(h.bounds),
                "counts": list(h.counts),
                "sum": h.total,
            }
        }

    async def initiate(self, name: str, timeout: float) -> Any:
        conn, child = self._resolve(name)
        ike_sa = self._initiate(conn, child)
        want_child = child or (conn.children[0].name if conn.children else None)

        def match(event: Any) -> str | None:
            nonlocal ike_sa
            if isinstance(event, ev.IkeSaFailed) and event.ike_sa == ike_sa:
                return event.reason
            if getattr(event, "ike_sa", None) != ike_sa:
                return None
            if isinstance(event, ev.IkeSaRedirected) and event.initiator:
                ike_sa = event.new_ike_sa  # a gateway sent us elsewhere: wait for that one
                return None
            if isinstance(event, ev.ChildSaEstablished) and event.child == want_child:
                return ""
            if isinstance(event, ev.ChildSaFailed) and event.child == want_child:
                return f"Child SA {event.child} failed: {event.reason}"
            if isinstance(event, ev.IkeSaEstablished) and want_child is None:
                return ""
            if isinstance(event, ev.IkeSaDeleted):
                return event.reason
            return None

        future = self._wait(match)
        self._pump()
        await self._await(future, timeout, f"initiate {name}")
        record = self.sas.get(ike_sa)  # the last attempt's handle (after redirects)
        return {
            "message": f"initiate {name}: established",
            "sa": self._sa_dict(record) if record else None,
        }

    async def terminate(self, name: str, timeout: float) -> Any:
        conn, child = self._resolve(name)
        records = [r for r in self.sas.values() if r.connection == conn.name]
        if self._cancel_retries(conn.name) and not records:
            log.info("event=ike-retry-cancelled connection=%s reason=terminate", conn.name)
            return {"message": f"terminate {name}: pending initiation retry cancelled"}
        if child is None:
            if not records:
                raise ControlError(UNKNOWN_SA, f"connection {conn.name!r} has no IKE SA")
            targets = {r.ike_sa for r in records}
            pending = set(targets)

            def match(event: Any) -> str | None:
                if isinstance(event, ev.IkeSaDeleted | ev.IkeSaFailed):
                    pending.discard(event.ike_sa)
                    return "" if not pending else None
                return None

            future = self._wait(match)
            for record in records:
                self._engine_call(self.engine.delete_ike_sa, record.ike_sa)
                record.state = "DELETING"
            self._pump()
            await self._await(future, timeout, f"terminate {name}")
            return {"message": f"terminate {name}: {len(targets)} IKE SA(s) deleted"}
        children = [(r, c) for r in records for c in r.children if c.name == child]
        if not children:
            raise ControlError(UNKNOWN_SA, f"{name} has no installed Child SA")
        spis = {c.spi_in for _, c in children}

        def match_child(event: Any) -> str | None:
            if isinstance(event, ev.ChildSaDeleted):
                spis.discard(event.spi_in)
                return "" if not spis else None
            return None

        future = self._wait(match_child)
        for record, c in children:
            c.state = "DELETING"
            self._engine_call(self.engine.delete_child_sa, record.ike_sa, c.spi_in)
        self._pump()
        await self._await(future, timeout, f"terminate {name}")
        return {"message": f"terminate {name}: {len(children)} Child SA(s) deleted"}

    async def rekey(self, name: str, timeout: float) -> Any:
        """`conn`: rekey its IKE SAs; `conn.child`: rekey those Child SAs. Waits until
        every one is rekeyed (or fails)."""
        conn, child = self._resolve(name)
        records = [r for r in self.sas.values() if r.connection == conn.name]
        targets: list[tuple[int, int | None]]
        if child is None:
            targets = [(r.ike_sa, None) for r in records if r.state == "ESTABLISHED"]
        else:
            targets = [
                (r.ike_sa, c.spi_in)
                for r in records
                if r.state == "ESTABLISHED"
                for c in r.children
                if c.name == child and c.state == "INSTALLED"
            ]
        if not targets:
            raise ControlError(UNKNOWN_SA, f"{name} has no established SA to rekey")
        ike_pending = {ike_sa for ike_sa, spi in targets if spi is None}
        child_pending = {spi for _, spi in targets if spi is not None}

        def match(event: Any) -> str | None:
            if isinstance(event, ev.IkeSaRekeyed):
                ike_pending.discard(event.ike_sa)
            elif isinstance(event, ev.ChildSaRekeyed):
                child_pending.discard(event.old_spi_in)
            elif isinstance(event, ev.IkeSaDeleted) and event.ike_sa in {t[0] for t in targets}:
                return f"IKE SA deleted: {event.reason}"
            elif isinstance(event, ev.ChildSaDeleted) and event.spi_in in child_pending:
                return f"Child SA deleted: {event.reason}"
            elif isinstance(event, ev.ChildSaFailed) and child_pending and event.child == child:
                return f"rekey failed: {event.reason}"
            return "" if not ike_pending and not child_pending else None

        future = self._wait(match)
        for ike_sa, spi in targets:
            if spi is None:
                self._engine_call(self.engine.rekey_ike_sa, ike_sa)
            else:
                self._engine_call(self.engine.rekey_child_sa, ike_sa, spi)
        self._pump()
        await self._await(future, timeout, f"rekey {name}")
        what = "IKE SA(s)" if child is None else "Child SA(s)"
        return {"message": f"rekey {name}: {len(targets)} {what} rekeyed"}

    async def reload(self) -> Any:
        if self.config_path is None:
            raise ControlError(FAILED, "reload: the daemon was started without a config file")
        return self.apply_config(load_for_reload(self.config_path, self.control))

    def apply_config(self, new: GatewayConfig) -> dict[str, list[str]]:
        """Apply a new configuration: only added, removed and changed connections move."""
        old_by_name = {c.name: c for c in self.config.connections}
        new_by_name = {c.name: c for c in new.connections}
        added = [n for n in new_by_name if n not in old_by_name]
        removed = [n for n in old_by_name if n not in new_by_name]
        changed = [n for n in new_by_name if n in old_by_name and new_by_name[n] != old_by_name[n]]
        unchanged = [n for n in new_by_name if n in old_by_name and n not in changed]
        restart_needed = new.gateway != self.config.gateway
        # Tear down SAs of removed and changed connections (telling the peers).
        for record in list(self.sas.values()):
            if record.connection in removed or record.connection in changed:
                with contextlib.suppress(ControlError):
                    self._engine_call(self.engine.delete_ike_sa, record.ike_sa)
                record.state = "DELETING"
        for name in removed + changed:
            self._cancel_retries(name)  # a changed one starts anew below
        self._pump()
        set_engine_connections(self.engine, [engine_connection(c) for c in new.connections])
        self.config = GatewayConfig(self.config.gateway, new.connections, new.source)
        self._armed = {k for k in self._armed if k[0] not in removed and k[0] not in changed}
        self._sync_traps()  # those of removed/changed connections once their SAs are gone
        for name in added + changed:
            self._start_actions(new_by_name[name])
        self._pump()
        log.info(
            "event=config-reloaded added=%s removed=%s changed=%s unchanged=%d",
            ",".join(added) or "-",
            ",".join(removed) or "-",
            ",".join(changed) or "-",
            len(unchanged),
        )
        if restart_needed:
            log.warning("event=config-gateway-changed detail=[gateway] changes need a restart")
        result = {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}
        self.control.publish("config-reloaded", **result, restart_needed=restart_needed)
        return result | {"restart_needed": restart_needed}  # type: ignore[return-value]

    def _on_sighup(self) -> None:
        log.info("event=sighup action=reload")
        task = asyncio.get_running_loop().create_task(self._reload_quietly())
        self._background = task

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ControlError):
            await self.reload()

    # ------------------------------------------------------------------ metrics

    def metrics_snapshot(self) -> Any:
        """Called from the exporter's thread: build the snapshot on the loop's thread."""
        from gateway import metrics

        loop = self._loop
        if loop is None or loop.is_closed():
            raise GatewayError("the daemon is not running")

        def build() -> Any:
            sas = self.list_sas()
            t = self.totals
            return metrics.MetricsSnapshot(
                ike_sas=sas,
                xdp=[metrics.XdpCounter(**row) for row in self._xdp_rows()],
                mss_clamped=self.xdp.mss_clamped() if self.xdp is not None else {},
                xfrm_errors=self.dataplane.errors(),
                handshake_durations=self._histogram.snapshot()
                if self._histogram is not None
                else metrics.empty_histogram(),
                rekeys=t.rekeys,
                ike_rekeys=t.ike_rekeys,
                dpd_failures=t.dpd_failures,
                auth_failures=t.auth_failures,
                start_time=self.started_at,
            )

        future = asyncio.run_coroutine_threadsafe(_call(build), loop)
        try:
            return future.result(timeout=5)
        except TimeoutError:
            future.cancel()
            raise GatewayError("the daemon did not answer the scrape in time") from None


class _InboundTraffic:
    """The engine's InboundTraffic hook (ike/engine.py): inbound packets of a Child SA,
    from the kernel's counters (data plane `xfrm`) plus the XDP programs' per-slot ESP
    count ([gateway.xdp]). Asked only when a DPD check is due, for that SA's children."""

    __slots__ = ("_daemon",)

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def packets_in(self, ike_sa: int, spi_in: int) -> int:
        d = self._daemon
        record = d.sas.get(ike_sa)
        child = next((c for c in record.children if c.spi_in == spi_in), None) if record else None
        if child is None:
            return 0  # an old SA after a rekey (retiring) or not installed
        packets = d.dataplane.counters(child.installed).packets_in if child.installed else 0
        if d.xdp is not None:
            xdp = d.xdp.child_counters(spi_in)
            packets += xdp["esp_in_packets"] if xdp else 0
        return packets


def _engine_stats(engine: Any) -> dict[str, int]:
    stats = getattr(engine, "stats", None)
    if stats is None or not hasattr(stats, "__slots__"):
        return {}
    return {name: int(getattr(stats, name)) for name in stats.__slots__}


async def _call(func: Callable[[], Any]) -> Any:
    return func()


def _concrete(addr: str) -> bool:
    """A config address that names one address (not %any, not a subnet)."""
    return addr != "%any" and "/" not in addr and addr not in ("0.0.0.0", "::")


def _count_states(traps: Iterable[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trap in traps:
        counts[trap.state] = counts.get(trap.state, 0) + 1
    return counts


def _trap_spec(conn: ConnectionSection, child: ChildSection) -> TrapSpec:
    """The trap of a Child config: its selectors between the connection's first
    concrete addresses (check-config makes sure there are some)."""
    return TrapSpec(
        connection=conn.name,
        child=child.name,
        local=next((a for a in conn.local_addrs if _concrete(a)), ""),
        remote=next((a for a in conn.remote_addrs if _concrete(a)), ""),
        local_ts=tuple(child.local_ts),
        remote_ts=tuple(child.remote_ts),
        mode=child.mode,
    )


def _packet_ts(src: str | None, dst: str | None) -> Any:
    """(TSi, TSr) of the packet an ACQUIRE reports, or None when it does not say."""
    import ipaddress

    try:
        a, b = ipaddress.ip_address(src or ""), ipaddress.ip_address(dst or "")
    except ValueError:
        return None
    if a.version != b.version:
        return None
    return (ts_for_address(a), ts_for_address(b))


def _conn_start_action(conn: ConnectionSection) -> str:
    actions = {c.start_action for c in conn.children}
    for action in ("start", "trap"):
        if action in actions:
            return action
    return "none"
