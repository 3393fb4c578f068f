"""The daemon's core: one event loop, one IKE engine, one UDP transport, one data plane,
one control server, and the feature managers that react to the engine's events.

Theory of operation
-------------------
Three kinds of input reach the sans-IO engine (ike/): datagrams (the transport's
callback), its timer (one `call_later` handle for the engine's `next_timer()`, re-armed
after every input) and API calls (control requests, start-up, reload, shutdown). After
each input `pump()` handles the events the engine produced, sends what it queued and
re-arms the timer, so the engine's outputs are never left waiting. Events are handled
before datagrams are sent: what a message we answer set up (e.g. the new inbound SA of a
rekey we answer) is in the kernel before the peer can act on our answer.

Each engine event goes to every feature manager (gateway/daemon/feature.py), in the
order `Daemon.__init__` registers them in, then to the control requests waiting for an outcome:

    children   the Child SAs in the data plane and in the SA table (children.py)
    xdp        their slots in the XDP/TC programs, with [gateway.xdp] (xdpslots.py)
    traffic    their counters: one read per interval, what SAs that go counted (traffic.py)
    ike_sas    the IKE SAs in the SA table (ike_sas.py; the records: records.py)
    vips       the virtual-IP pools, the engine's AddressAssigner (vips.py)
    eap_users  the EAP users file, the engine's EapSecrets (eapusers.py)
    radius     EAP relayed to the RADIUS server (radius.py)
    tally      the counters stats and /metrics show (tally.py)
    eventlog   the log line and control event of each engine event (eventlog.py)
    tunnels    route-based Child SAs: XFRM interfaces and routes (tunnels.py)
    updown     the children's updown programs (updown.py)
    roaming    MOBIKE: moving our IKE SAs when a local address goes (roaming.py)
    traps      trap policies and ACQUIREs (traps.py)
    retries    keyingtries (retries.py)
    actions    start/close/dpd actions and the initiate/terminate/rekey/redirect
               commands (actions.py)

`start()` starts them in the same order (the address watch and the traps before the
start actions, which run last) and `shutdown()` stops them in it (the Child SAs before
the trap policies underneath them).

Kernel events come from the data plane: EXPIRE goes to expiry.py, ACQUIRE to traps.py.
Signals: SIGTERM/SIGINT stop gracefully (delete every IKE SA, telling the peer, wait
briefly for the answers, then each feature removes what it installed); SIGHUP reloads
the file and applies only the connections that were added, removed or changed
(backend.py). Logs are one line per event, `event=NAME key=value ...` (report.py);
keys and PSKs never appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from gateway import __version__
from gateway.config.reload import load_for_reload
from gateway.config.schema import GatewayConfig
from gateway.control.protocol import FAILED, ControlError
from gateway.control.server import ControlServer
from gateway.daemon import backend
from gateway.daemon.actions import Actions
from gateway.daemon.children import REKEY_GRACE, ChildSas
from gateway.daemon.eapusers import EapUsers
from gateway.daemon.engine import Engine, InboundTraffic, make_engine
from gateway.daemon.eventlog import EventLog
from gateway.daemon.expiry import KernelExpiry
from gateway.daemon.feature import EventContext, Feature
from gateway.daemon.ike_sas import IkeSas
from gateway.daemon.radius import RadiusRelay
from gateway.daemon.records import IkeRecord, SaTable, Totals
from gateway.daemon.report import Reporter, endpoint
from gateway.daemon.retries import Retries
from gateway.daemon.roaming import Roaming
from gateway.daemon.tally import Tally
from gateway.daemon.traffic import Traffic
from gateway.daemon.traps import Traps
from gateway.daemon.tunnels import KernelFactory, Tunnels, kernel_tunnels
from gateway.daemon.updown import Updown
from gateway.daemon.vips import VirtualIps
from gateway.daemon.xdpslots import XdpSlots
from gateway.dataplane import make_dataplane
from gateway.dataplane.base import Dataplane
from gateway.dataplane.xdp import XdpAdapter
from gateway.transport import UdpTransport
from ike.errors import LocalError

if TYPE_CHECKING:
    import socket

    from ike.engine import InboundSpiAllocator

log = logging.getLogger("gateway.daemon")
T = TypeVar("T")

SHUTDOWN_GRACE: Final = 3.0  # seconds to wait for peers to answer our deletes at shutdown


@dataclass(slots=True)
class Waiter:
    """A control request waiting for an engine event."""

    match: Callable[[Any], str | None]  # event -> None (not mine) | "" (done) | error text
    future: asyncio.Future[str]


class Daemon:
    """The running gateway: engine + transport + data plane + control API (+ metrics),
    and the feature managers between them."""

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
        tunnel_kernel: KernelFactory = kernel_tunnels,
        tunnels_owner: bool = True,
        pool_share: tuple[int, int] = (0, 1),
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.dataplane = dataplane or make_dataplane(config.gateway.dataplane)
        # the XDP/TC programs (gateway/dataplane/xdp.py), attached in start(); a worker
        # passes one that shares the supervisor's programs (gateway/workers/xdpshare.py)
        self.xdp: XdpAdapter | None = xdp
        if xdp is None and config.gateway.xdp is not None:
            self.xdp = XdpAdapter(config.gateway.xdp)
        self.sas = SaTable(clock)
        self.totals = Totals()
        self.started_at = clock()
        self.features: list[Feature] = []
        # what the engine asks while it authenticates peers: the virtual-IP pools (a
        # worker hands out its share of each), the EAP users (a bad file: ConfigError)
        self.vips = VirtualIps(self, config.pools, pool_share)
        self.eap_users = EapUsers(self, config.gateway.eap_secrets)
        # a worker (gateway/workers/) passes its share of the ESP SPIs and IKE SPIs
        self.engine = engine or make_engine(
            config,
            self.xdp.spis if self.xdp else spis,
            InboundTraffic(self.sas, self.features),
            ike_spis,
            eap_secrets=self.eap_users,
            addresses=self.vips,
        )
        self.transport = UdpTransport(
            config.gateway.listen,
            config.gateway.port,
            config.gateway.port_nat_t,
            self.receive,
            after_batch=self.pump,  # one pump per batch of datagrams read
            esp_in_udp=self.dataplane.name == "xfrm",
            keep_marker=True,  # the engine adds/strips the non-ESP marker itself
            prebound=prebound,  # a worker's sockets, bound by the supervisor
        )
        self.control = control or ControlServer(self, config.gateway.control_socket)
        self._reporter = Reporter(self.control)
        # which connections' start actions run here (a worker runs only its own share)
        self.start_filter: Callable[[str], bool] = lambda connection: True
        self.rekey_grace = REKEY_GRACE  # tests shorten it
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[Waiter] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopping = asyncio.Event()
        self._exporter: Any = None
        self._background: set[asyncio.Task[Any]] = set()
        # the feature managers, in the order they see each engine event
        self.traffic = Traffic(self)
        self.children = ChildSas(self)
        self.xdp_slots = XdpSlots(self, self.xdp) if self.xdp is not None else None
        self.ike_sas = IkeSas(self.sas)
        self.radius = RadiusRelay(self, config.gateway.radius)
        self.tally = Tally(self)
        self.eventlog = EventLog(self)
        # a worker routes its own Child SAs; the supervisor owns the interfaces
        self.tunnels = Tunnels(self, kernel=tunnel_kernel, owner=tunnels_owner)
        self.updown = Updown(self)
        self.roaming = Roaming(self)
        self.traps = Traps(self)
        self.retries = Retries(self)
        self.actions = Actions(self)
        self.features += [
            f
            for f in (
                self.children,
                self.xdp_slots,
                self.traffic,
                self.ike_sas,
                self.vips,  # after ike_sas: a released address is gone from the SA's row
                self.eap_users,
                self.radius,
                self.tally,
                self.eventlog,
                self.tunnels,
                self.updown,
                self.roaming,
                self.traps,
                self.retries,
                self.actions,  # last: its start() runs the start actions
            )
            if f is not None
        ]
        self.expiry = KernelExpiry(self)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.dataplane.start()
        self.dataplane.watch(self.expiry.expired, self.traps.acquired)
        if self.xdp is not None:
            self.xdp.open()  # all or nothing: a failure leaves nothing attached
        try:
            self.transport.start(self.loop)
            await self.control.start()
            self._start_metrics()
        except BaseException:  # also SystemExit from a signal: never stay half-attached
            self.transport.close()
            self._close_xdp()
            raise
        ports = self.transport.local_ports()
        self.report(
            "daemon-started",
            version=__version__,
            dataplane=self.dataplane.name,
            ike_port=ports.get("ike", 0),
            nat_t_port=ports.get("nat_t", 0),
            connections=len(self.config.connections),
            control=self.config.gateway.control_socket,
        )
        for feature in self.features:  # traps installed, then the start actions
            await feature.start()
        self.pump()

    def _start_metrics(self) -> None:
        listen = self.config.gateway.metrics_listen
        if listen is None:
            return
        from gateway import metrics

        self.keep_handshake_durations()
        host, port = listen
        self._exporter = metrics.start_exporter(
            self,
            listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            aggregate_per_connection=self.config.gateway.metrics_aggregate == "connection",
        )

    def keep_handshake_durations(self) -> None:
        """Observe handshake durations also without an exporter of our own (a worker's
        supervisor reads them from `stats`)."""
        self.tally.keep_handshake_durations()

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
        self.report("daemon-stopping", ike_sas=len(self.sas))
        self.closing = True  # a failure from here on is not retried
        established = [r for r in self.sas.values() if r.state != "CONNECTING"]
        for record in established:
            with contextlib.suppress(ControlError):
                self.engine_call(self.engine.delete_ike_sa, record.ike_sa)
        self.pump()
        deadline = self.clock() + SHUTDOWN_GRACE
        while any(r.state != "CONNECTING" for r in self.sas.values()) and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for feature in self.features:  # the SAs first, then the traps underneath them
            feature.stop()
        for feature in self.features:  # the downs of the SAs just deleted (hooks)
            await feature.drain()
        self.sas.clear()
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_result("the gateway is shutting down")
        self.transport.close()
        await self.control.close()
        if self._exporter is not None:
            self._exporter.close()
        self._close_xdp()
        self.dataplane.close()
        self.report("daemon-stopped")

    def _close_xdp(self) -> None:
        if self.xdp is not None:
            self.xdp.close()

    # ------------------------------------------------------------------ the engine

    def on_datagram(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """One datagram into the engine, then a pump."""
        self.receive(data, local, remote)
        self.pump()

    def receive(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """One datagram into the engine, no pump: the transport pumps once after each
        batch it read, so the Child SAs that a burst of peers completes in one event-loop
        turn reach the kernel in one batched install (children.py)."""
        try:
            self.engine.receive_datagram(data, (local, remote), self.clock())
        except Exception as exc:  # the engine promises never to raise on input: if it
            # does anyway, drop the datagram, count it and keep serving everyone else
            self.totals.engine_errors += 1
            self.report(
                "engine-error",
                logging.ERROR,
                remote=endpoint(remote),
                error=f"{type(exc).__name__}: {exc}",
            )

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.clock())
        self.pump()

    def engine_call(self, method: Callable[..., T], *args: Any) -> T:
        """An API call into the engine (now appended); LocalError becomes a ControlError."""
        try:
            return method(*args, self.clock())
        except LocalError as exc:
            raise ControlError(FAILED, str(exc)) from None

    def pump(self) -> None:
        """Handle the engine's events, send its datagrams, re-arm its timer."""
        next_event = self.engine.next_event
        for _ in range(1000):  # events may trigger calls that queue more output
            events = []
            while (event := next_event()) is not None:
                events.append(event)
            handled = bool(events)
            if handled:
                for feature in self.features:  # batched kernel work (children.py)
                    feature.prepare(events)
                for event in events:
                    self._handle_event(event)
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
        if when is not None and self.loop is not None:
            self._timer = self.loop.call_later(max(0.0, when - self.clock()), self._on_timer)

    def _handle_event(self, event: Any) -> None:
        """One engine event through every feature manager, then to the waiters."""
        ike_sa = getattr(event, "ike_sa", -1)
        sa = self.sas.get(ike_sa)
        ctx = EventContext(sa, sa.state if sa else None, tuple(sa.children) if sa else ())
        for feature in self.features:
            # a feature may say the event did not take effect as such (an install that
            # failed): the features after it, and the waiters, see what stands in for it
            event = feature.on_event(event, ctx) or event
        self.sas.touch(ike_sa)  # its list-sas row may have changed (incremental list-sas)
        for waiter in list(self._waiters):
            outcome = waiter.match(event)
            if outcome is not None and not waiter.future.done():
                waiter.future.set_result(outcome)
                self._waiters.remove(waiter)

    # ------------------------------------------------------------------ for the features
    # (the Host protocol of gateway/daemon/feature.py)

    def report(self, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
        """Log and publish one event (gateway/daemon/report.py)."""
        self._reporter.report(event, level, **fields)

    def soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback` once the current event batch is handled."""
        if self.loop is not None:
            self.loop.call_soon(callback, *args)

    def later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback` after `delay` seconds (at once when the loop is not running)."""
        if self.loop is not None:
            self.loop.call_later(delay, callback, *args)
        else:
            callback(*args)

    def wait(self, match: Callable[[Any], str | None]) -> asyncio.Future[str]:
        """A future the first engine event `match` answers (not None) resolves."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(Waiter(match, future))
        return future

    def unwait(self, future: asyncio.Future[str]) -> None:
        self._waiters = [w for w in self._waiters if w.future is not future]

    async def outcome(self, future: asyncio.Future[str], timeout: float, what: str) -> None:
        """Wait for `future`; its error text (or no outcome in time) is a ControlError."""
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ControlError(FAILED, f"{what}: no outcome within {timeout:g}s") from None
        finally:
            self.unwait(future)
        if result:
            raise ControlError(FAILED, f"{what}: {result}")

    def sa_row(self, record: IkeRecord) -> dict[str, Any]:
        return backend.sa_row(self, record)

    # ------------------------------------------------------------------ ControlBackend
    # The control API (gateway/control/server.py) asks the daemon; each command is
    # answered by the module that owns it.

    def list_conns(self) -> list[dict[str, Any]]:
        return backend.list_conns(self)

    def list_sas(self) -> list[dict[str, Any]]:
        return backend.list_sas(self)

    def sa_changes(self, since: dict[str, Any] | None) -> dict[str, Any]:
        return backend.sa_changes(self, since)

    async def fresh_counters(self) -> None:
        """The control API's list-sas and stats: counters of a read at most
        counters_interval old (a new read runs off the loop: gateway/daemon/traffic.py)."""
        await self.traffic.refresh()

    def stats(self) -> dict[str, Any]:
        return backend.stats(self)

    async def initiate(self, name: str, timeout: float) -> Any:
        return await self.actions.initiate_command(name, timeout)

    async def terminate(self, name: str, timeout: float) -> Any:
        return await self.actions.terminate_command(name, timeout)

    async def rekey(self, name: str, timeout: float) -> Any:
        return await self.actions.rekey_command(name, timeout)

    async def redirect(self, name: str, to: str, timeout: float) -> Any:
        return await self.actions.redirect_command(name, to, timeout)

    async def migrate(
        self, name: str, local_addr: str | None, remote_addr: str | None, timeout: float
    ) -> Any:
        return await self.roaming.migrate_command(name, local_addr, remote_addr, timeout)

    async def reload(self) -> Any:
        if self.config_path is None:
            raise ControlError(FAILED, "reload: the daemon was started without a config file")
        return self.apply_config(load_for_reload(self.config_path, self.control))

    def apply_config(self, new: GatewayConfig) -> dict[str, Any]:
        return backend.apply_config(self, new)

    def metrics_snapshot(self) -> Any:
        return backend.metrics_snapshot(self)

    def _on_sighup(self) -> None:
        self.report("sighup", action="reload")
        task = asyncio.get_running_loop().create_task(self._reload_quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ControlError):
            await self.reload()
