"""`[gateway] workers = N`: the supervisor of N IKE worker processes behind one port
(docs/daemon.md, "Workers").

Theory of operation
-------------------
The supervisor (the process `gateway run` starts) owns everything the outside talks to:
the control socket, the metrics listener, SIGHUP/SIGTERM, and the IKE sockets. For every
listen address and port (500 and 4500) it binds N sockets with SO_REUSEPORT, in worker
order, so socket k of each reuseport group is worker k's, and attaches the steering
program of bpf/reuseport.py to the group. It keeps its copies of the sockets open for its
whole life: the groups never change, so socket index = worker index holds even while a
worker restarts.

Each worker is forked by the zygote (gateway/workers/zygote.py: a process forked by `gateway run`
before its event loop starts, with the daemon's modules imported once), gets its share
of the sockets and a socketpair to the supervisor, reads the supervisor's configuration
(as last reloaded) from that socketpair, and runs the ordinary `Daemon`
(gateway/daemon/) with:

- IKE SPIs that carry its index (`WorkerIkeSpis`, gateway/workers/partition.py; also
  for IKE SA rekeys), so the steering program brings every later packet of its IKE SAs back to it;
- ESP SPIs (`PartitionedSpis`) and XFRM reqids (`reqid_range`) from its own share, so
  workers never collide in the kernel and each one's start-up reconcile and EXPIRE
  events touch only its own objects;
- the start actions of the connections it owns (`connection_owner`, by name);
- the control API served over the socketpair (`ControlServer.serve_peer`: JSON lines,
  concurrent requests, every event pushed); gateway/workers/worker.py is that side.

The supervisor answers the public control API by asking the workers: list-sas and stats
are merged, initiate goes to the connection's owner, terminate and rekey go to every
worker (each acts on the SAs it owns), reload is checked once and then applied by all.
Worker events are republished (with `worker`: index).

A worker that exits while the daemon runs is reported (log `worker-died`, event `error`,
`stats.workers`) and restarted after RESTART_DELAY; its IKE SAs are lost (the peers
re-establish them: DPD, retransmission timeouts, start actions), and while it is down the
steering program sends new IKE_SA_INITs to the others. A worker that dies more than
MAX_RESTARTS times within RESTART_WINDOW stops the daemon (exit 1) rather than
crash-looping. SIGTERM/SIGINT: every worker gets SIGTERM and shuts down as a single
daemon does (deletes its SAs, tells the peers); the supervisor waits for them, then
closes the sockets and the control socket. A worker whose supervisor vanishes (its
socketpair closes) shuts down the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Final

from gateway import __version__
from gateway.config.reload import gateway_changes, load_for_reload
from gateway.config.schema import GatewayConfig, configured_children
from gateway.control.client import ControlClient
from gateway.control.protocol import (
    FAILED,
    ControlConnectionError,
    ControlError,
    full_changes,
)
from gateway.control.server import ControlServer
from gateway.dataplane.xdp import XdpAdapter
from gateway.errors import GatewayError
from gateway.workers.merge import merge_action, merge_stats
from gateway.workers.partition import connection_owner
from gateway.workers.sockets import SocketGroup, bind_groups, close_groups, steer
from gateway.workers.xdpshare import XdpShare
from gateway.workers.zygote import WorkerProcess, WorkerRequest, Zygote, send_blob

log = logging.getLogger("gateway.workers")

RESTART_DELAY: Final = 1.0  # seconds before a dead worker is started again
MAX_RESTARTS: Final = 5  # more deaths than this within RESTART_WINDOW stop the daemon
RESTART_WINDOW: Final = 60.0
START_TIMEOUT: Final = 300.0  # a worker must be serving within this long (TCG VM: slow)
STOP_TIMEOUT: Final = 30.0  # a worker must have shut down within this long (then SIGKILL)
IPC_LIMIT: Final = 1 << 28  # bytes per reply line from a worker (list-sas of many SAs)


@dataclass(slots=True)
class _Worker:
    index: int
    proc: WorkerProcess | None = None
    client: ControlClient | None = None
    ready: bool = False
    restarts: int = 0
    deaths: list[float] = field(default_factory=list)
    started_at: float = 0.0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


@dataclass(slots=True)
class SupervisorOptions:
    config_path: str
    dataplane: str | None = None  # `gateway run --dataplane`
    log_level: str | None = None


class Supervisor:
    """The `gateway run` process with workers > 1: a ControlBackend over the workers."""

    def __init__(self, config: GatewayConfig, options: SupervisorOptions, zygote: Zygote) -> None:
        self.config = config
        self.zygote = zygote
        self.options = options
        self.count = config.gateway.workers
        self.workers = [_Worker(i) for i in range(self.count)]
        self.groups: list[SocketGroup] = []
        self.xdp: XdpShare | None = None  # [gateway.xdp]: the programs, attached once
        self.tunnels: Any = None  # route-based children: the XFRM interfaces (TunnelKernel)
        self.control = ControlServer(self, config.gateway.control_socket)
        self.started_at = time.time()
        self.exit_status = 0
        self._stopping = asyncio.Event()
        self._shutting_down = False
        self._exporter: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.worker_deaths = 0
        # workers push events only while our control socket has subscribers: encoding,
        # relaying and decoding two events per handshake costs about a fifth of its CPU
        self._forwarding = False
        self._started = False  # every worker served once (later deaths: restart)
        self._control_started = False  # (never remove a socket another daemon serves)
        self.control.on_subscribers = self._on_subscribers

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        installed: list[signal.Signals] = []
        self.zygote.attach()
        try:
            self.groups = bind_groups(self.config)
            steer(self.groups, self.count, [])  # nobody serves yet: the kernel's hash
            if self.config.gateway.xdp is not None:  # before the workers: they use it
                adapter = XdpAdapter(self.config.gateway.xdp)
                adapter.open()  # all or nothing; detached in shutdown()
                self.xdp = XdpShare(adapter, self.count, self.config.gateway.counters_interval)
            self._prepare_tunnels()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
                installed.append(sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            installed.append(signal.SIGHUP)
            await self._start_all()
            self._started = True
            if self._stopping.is_set():
                return self.exit_status  # SIGTERM during the start (finally: shutdown)
            # the control socket appears once every worker serves (scripts wait for it)
            await self.control.start()
            self._control_started = True
            self._start_metrics()
            log.info(
                "event=daemon-started version=%s dataplane=%s workers=%d ike_port=%d "
                "nat_t_port=%d connections=%d control=%s",
                __version__,
                self._dataplane_name(),
                self.count,
                next((g.port for g in self.groups if not g.nat_t), 0),
                next((g.port for g in self.groups if g.nat_t), 0),
                len(self.config.connections),
                self.config.gateway.control_socket,
            )
            await self._stopping.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.shutdown()
        return self.exit_status

    def _prepare_tunnels(self) -> None:
        """Route-based children: the interfaces exist (down) before any worker runs, our
        leftover routes are gone; each worker then routes its own Child SAs
        (gateway/daemon/tunnels.py)."""
        from gateway.config.schema import xfrm_interfaces

        wanted = xfrm_interfaces(self.config.connections)
        if not wanted or self._dataplane_name() != "xfrm":
            return
        from gateway.routing.kernel import TunnelKernel

        self.tunnels = TunnelKernel()
        try:
            withdrawn, interfaces = self.tunnels.prepare(wanted.items())
        except GatewayError as exc:
            raise GatewayError(f"route-based tunnels: {exc}") from None
        for iface in interfaces:
            log.info(
                "event=tunnel-ready interface=%s if_id=%d mtu=%d adopted=%s",
                iface.name,
                iface.if_id,
                iface.mtu,
                "no" if iface.owned else "yes",
            )
        if withdrawn:
            log.info("event=routes-leftovers-withdrawn routes=%d", withdrawn)

    def _release_tunnels(self) -> None:
        from gateway.config.schema import xfrm_interfaces

        if self.tunnels is None:
            return
        try:
            removed = self.tunnels.release(xfrm_interfaces(self.config.connections))
        except GatewayError as exc:
            log.error("event=tunnel-error operation=release error=%s", exc)
        else:
            for name in removed:
                log.info("event=tunnel-removed interface=%s", name)
        self.tunnels.close()
        self.tunnels = None

    def _dataplane_name(self) -> str:
        return self.options.dataplane or self.config.gateway.dataplane

    def _start_metrics(self) -> None:
        listen = self.config.gateway.metrics_listen
        if listen is None:
            return
        from gateway import metrics

        host, port = listen
        self._exporter = metrics.start_exporter(
            self,
            listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            aggregate_per_connection=self.config.gateway.metrics_aggregate == "connection",
        )

    async def _start_all(self) -> None:
        """Start every worker and wait until all serve; any failure stops the start."""
        for worker in self.workers:
            await self._spawn(worker)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in self.workers):
            for w in self.workers:
                if w.proc is not None and w.proc.returncode is not None:
                    raise GatewayError(
                        f"worker {w.index} failed to start (exit status {w.proc.returncode})"
                    )
            if time.monotonic() > deadline:
                raise GatewayError(f"workers did not start within {START_TIMEOUT:g}s")
            if self._stopping.is_set():
                return
            await asyncio.sleep(0.05)

    async def _spawn(self, worker: _Worker) -> None:
        """Ask the zygote for worker `worker.index`; the configuration it gets is ours
        (as last reloaded), written on its control socketpair before anything else."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [child.fileno()]
        kinds = []
        for group in self.groups:
            fds.append(group.sockets[worker.index].fileno())
            kinds.append("nat_t" if group.nat_t else "ike")
        xdp_child: socket.socket | None = None
        if self.xdp is not None:  # the worker's map updates come over a link of its own
            xdp_parent, xdp_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds.append(xdp_child.fileno())
            kinds.append("xdp")
            self.xdp.serve(worker.index, xdp_parent)  # (what a predecessor left goes first)
        request = WorkerRequest(
            worker.index,
            self.count,
            self.options.log_level or self.config.gateway.log_level,
            tuple(kinds),
        )
        try:
            worker.proc = await self.zygote.spawn(request, fds)
        except GatewayError:
            parent.close()
            raise
        finally:
            child.close()
            if xdp_child is not None:
                xdp_child.close()
        worker.ready = False
        worker.started_at = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=IPC_LIMIT)
        writer.write(send_blob(pickle.dumps((self.options.config_path, self.config))))
        worker.client = ControlClient(reader, writer)
        worker.tasks = [
            self._task(self._relay_events(worker, worker.client)),
            self._task(self._watch(worker, worker.proc)),
            self._task(self._await_ready(worker, worker.client)),
        ]
        log.info("event=worker-started worker=%d pid=%d", worker.index, worker.proc.pid)

    async def _await_ready(self, worker: _Worker, client: ControlClient) -> None:
        """A worker answers its link once its sockets are read and its start actions
        ran (Daemon.start() runs to its end before the link is read)."""
        try:
            await client.call("list-conns")
            worker.ready = True
            self._steer()
            log.info("event=worker-ready worker=%d", worker.index)
            if self._forwarding:  # (set before _on_subscribers asks the ready ones)
                await client.call("subscribe")
        except (ControlError, ControlConnectionError):
            return  # died during its start: _watch reports it

    async def _on_subscribers(self, count: int) -> None:
        want = count > 0
        if want == self._forwarding:
            return
        self._forwarding = want
        cmd = "subscribe" if want else "unsubscribe"
        await asyncio.gather(
            *(w.client.call(cmd) for w in self._live() if w.client is not None),
            return_exceptions=True,
        )

    def _task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _relay_events(self, worker: _Worker, client: ControlClient) -> None:
        async for event in client.events():
            kind = event.pop("type", "error")
            if kind == "config-reloaded":
                continue  # the supervisor publishes one for all workers
            event.pop("time", None)
            self.control.publish(kind, **event, worker=worker.index)

    async def _watch(self, worker: _Worker, proc: WorkerProcess) -> None:
        status = await proc.wait()
        was_ready = worker.ready
        worker.ready = False
        if worker.client is not None:
            await worker.client.close()
            worker.client = None
        if self._shutting_down or self._stopping.is_set():
            return
        self.worker_deaths += 1
        self._steer()
        now = time.monotonic()
        worker.deaths = [t for t in worker.deaths if now - t < RESTART_WINDOW] + [now]
        log.error("event=worker-died worker=%d pid=%d status=%d", worker.index, proc.pid, status)
        if not was_ready and not self._started:
            return  # failed during the daemon's start: _start_all reports it
        if len(worker.deaths) > MAX_RESTARTS:
            log.error(
                "event=worker-crash-loop worker=%d deaths=%d window=%gs action=stop",
                worker.index,
                len(worker.deaths),
                RESTART_WINDOW,
            )
            self.control.publish(
                "error", worker=worker.index, message="worker keeps dying: daemon stopping"
            )
            self.exit_status = 1
            self._stopping.set()
            return
        self.control.publish(
            "error",
            worker=worker.index,
            message=f"worker {worker.index} died (status {status}); its IKE SAs are lost; "
            "restarting",
        )
        await asyncio.sleep(RESTART_DELAY)
        if self._stopping.is_set():
            return
        worker.restarts += 1
        try:
            await self._spawn(worker)
        except GatewayError as exc:
            log.error("event=worker-restart-failed worker=%d error=%s", worker.index, exc)
            self.exit_status = 1
            self._stopping.set()

    def _steer(self) -> None:
        if self.groups:
            steer(self.groups, self.count, [w.index for w in self.workers if w.ready])

    async def shutdown(self) -> None:
        self._shutting_down = True
        log.info("event=daemon-stopping workers=%d", self.count)
        running = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for w in running:
            assert w.proc is not None
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        for w in running:
            assert w.proc is not None
            try:
                await asyncio.wait_for(w.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.error("event=worker-stop-timeout worker=%d action=kill", w.index)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
        for w in self.workers:
            if w.client is not None:
                await w.client.close()
                w.client = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        close_groups(self.groups)
        self.groups = []
        self._release_tunnels()  # after the last worker: nobody routes into them now
        if self.xdp is not None:  # after the last worker: nobody updates the maps now
            await self.xdp.close()
            self.xdp.adapter.close()
            self.xdp = None
        self.zygote.close()
        if self._control_started:
            await self.control.close()
        if self._exporter is not None:
            self._exporter.close()
        log.info("event=daemon-stopped")

    def _on_sighup(self) -> None:
        log.info("event=sighup action=reload")

        async def quietly() -> None:
            with contextlib.suppress(ControlError):
                await self.reload()

        self._task(quietly())

    # ------------------------------------------------------------------ asking workers

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers if w.ready and w.client is not None]

    async def _ask(self, worker: _Worker, cmd: str, args: dict[str, Any] | None = None) -> Any:
        if worker.client is None:
            raise ControlError(FAILED, f"worker {worker.index} is not running")
        try:
            return await worker.client.call(cmd, args)
        except ControlConnectionError:
            raise ControlError(FAILED, f"worker {worker.index} went away") from None

    async def _ask_all(
        self, cmd: str, args: dict[str, Any] | None = None
    ) -> list[tuple[_Worker, Any]]:
        """(worker, result or the ControlError it raised) from every serving worker."""
        live = self._live()
        results = await asyncio.gather(
            *(self._ask(w, cmd, args) for w in live), return_exceptions=True
        )
        out: list[tuple[_Worker, Any]] = []
        for w, r in zip(live, results, strict=True):
            if isinstance(r, BaseException) and not isinstance(r, ControlError):
                raise r
            out.append((w, r))
        return out

    # ------------------------------------------------------------------ ControlBackend

    async def list_conns(self) -> list[dict[str, Any]]:
        live = self._live()
        if not live:
            raise ControlError(FAILED, "no worker is running")
        return list(await self._ask(live[0], "list-conns"))

    async def list_sas(self) -> list[dict[str, Any]]:
        sas: list[dict[str, Any]] = []
        for w, result in await self._ask_all("list-sas"):
            if isinstance(result, ControlError):
                raise result
            sas += [sa | {"worker": w.index} for sa in result]
        return sas

    async def sa_changes(self, since: dict[str, Any] | None) -> dict[str, Any]:
        """The workers keep their own cursors: the supervisor answers in full."""
        return full_changes(await self.list_sas())

    async def stats(self) -> dict[str, Any]:
        replies = await self._ask_all("stats")
        rows = [r for _, r in replies if not isinstance(r, ControlError)]
        merged = merge_stats(rows)
        if self.xdp is not None:  # interface-wide counters: read once, here
            merged["xdp"] = self.xdp.adapter.verdict_rows()
            steered = self.xdp.adapter.steered()
            merged["xdp_steered"] = {str(cpu): n for cpu, n in steered.items()}
            merged["mss_clamped"] = self.xdp.adapter.mss_clamped()
        merged["uptime"] = time.time() - self.started_at
        merged["version"] = __version__
        merged["dataplane"] = self._dataplane_name()
        merged["control"] = {
            "requests": self.control.requests,
            "bad_requests": self.control.bad_requests,
        }
        by_index = {w.index: r for w, r in replies if not isinstance(r, ControlError)}
        merged["workers"] = [
            {
                "index": w.index,
                "pid": w.proc.pid if w.proc is not None else None,
                "running": w.ready,
                "restarts": w.restarts,
                "ike_sas": sum(by_index[w.index]["ike_sas"].values()) if w.index in by_index else 0,
                "handshakes": by_index[w.index]["handshakes"] if w.index in by_index else 0,
            }
            for w in self.workers
        ]
        merged["worker_deaths"] = self.worker_deaths
        return merged

    async def initiate(self, name: str, timeout: float) -> Any:
        owner = self.workers[connection_owner(name.partition(".")[0], self.count)]
        if not owner.ready:
            raise ControlError(FAILED, f"initiate {name}: worker {owner.index} is not running")
        return await self._ask(owner, "initiate", {"name": name, "timeout": timeout})

    async def terminate(self, name: str, timeout: float) -> Any:
        return merge_action(await self._ask_all("terminate", {"name": name, "timeout": timeout}))

    async def rekey(self, name: str, timeout: float) -> Any:
        return merge_action(await self._ask_all("rekey", {"name": name, "timeout": timeout}))

    async def migrate(
        self, name: str, local_addr: str | None, remote_addr: str | None, timeout: float
    ) -> Any:
        """MOBIKE move: the worker that owns the connection's IKE SAs does it."""
        args: dict[str, Any] = {"name": name, "timeout": timeout}
        if local_addr is not None:
            args["local_addr"] = local_addr
        if remote_addr is not None:
            args["remote_addr"] = remote_addr
        return merge_action(await self._ask_all("migrate", args))

    async def redirect(self, name: str, to: str, timeout: float) -> Any:
        args = {"name": name, "to": to, "timeout": timeout}
        return merge_action(await self._ask_all("redirect", args))

    async def reload(self) -> Any:
        new = load_for_reload(self.options.config_path, self.control)
        replies = await self._ask_all("reload")
        failed = [(w, r) for w, r in replies if isinstance(r, ControlError)]
        if failed:
            w, err = failed[0]
            raise ControlError(FAILED, f"worker {w.index}: {err.message}")
        if not replies:
            raise ControlError(FAILED, "no worker is running")
        result = dict(replies[0][1])
        restart_needed, xdp_changed = gateway_changes(self.config.gateway, new.gateway)
        result["restart_needed"] = restart_needed
        gateway = self.config.gateway
        if xdp_changed and self.xdp is not None and new.gateway.xdp is not None:
            try:  # the programs are the supervisor's: it applies steering, drop, shield
                self.xdp.adapter.update_settings(new.gateway.xdp)
                gateway = dataclasses.replace(gateway, xdp=new.gateway.xdp)
            except GatewayError as exc:
                log.error("event=xdp-settings-failed error=%s", exc)
        self.config = GatewayConfig(gateway, new.connections, new.source, new.pools)
        log.info(
            "event=config-reloaded added=%s removed=%s changed=%s unchanged=%d",
            ",".join(result.get("added", [])) or "-",
            ",".join(result.get("removed", [])) or "-",
            ",".join(result.get("changed", [])) or "-",
            len(result.get("unchanged", [])),
        )
        if result["restart_needed"]:
            log.warning("event=config-gateway-changed detail=[gateway] changes need a restart")
        self.control.publish("config-reloaded", **result)
        return result

    # ------------------------------------------------------------------ metrics

    def metrics_snapshot(self) -> Any:
        """Called from the exporter's thread: ask the workers on the loop's thread."""
        from gateway import metrics

        loop = self.loop
        if loop is None or loop.is_closed():
            raise GatewayError("the daemon is not running")

        async def build() -> Any:
            sas = await self.list_sas()
            stats = await self.stats()
            return metrics.snapshot_from(
                sas,
                stats,
                start_time=self.started_at,
                configured=configured_children(self.config),
            )

        future = asyncio.run_coroutine_threadsafe(build(), loop)
        try:
            return future.result(timeout=metrics.SCRAPE_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise GatewayError("the daemon did not answer the scrape in time") from None
        except ControlError as exc:
            raise GatewayError(exc.message) from None
