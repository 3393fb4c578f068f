"""`[gateway] workers = N`: N IKE worker processes behind one port (docs/daemon.md, "Workers").

Theory of operation
-------------------
The supervisor (the process `gateway run` starts) owns everything the outside talks to:
the control socket, the metrics listener, SIGHUP/SIGTERM, and the IKE sockets. For every
listen address and port (500 and 4500) it binds N sockets with SO_REUSEPORT, in worker
order, so socket k of each reuseport group is worker k's, and attaches the steering
program of bpf/reuseport.py to the group. It keeps its copies of the sockets open for its
whole life: the groups never change, so socket index = worker index holds even while a
worker restarts.

Each worker is forked by the zygote (gateway/zygote.py: a process forked by `gateway run`
before its event loop starts, with the daemon's modules imported once), gets its share
of the sockets and a socketpair to the supervisor, reads the supervisor's configuration
(as last reloaded) from that socketpair, and runs the ordinary `Daemon`
(gateway/daemon.py) with:

- IKE SPIs that carry its index (`WorkerIkeSpis`, also for IKE SA rekeys), so the
  steering program brings every later packet of its IKE SAs back to it;
- ESP SPIs (`PartitionedSpis`) and XFRM reqids (`reqid_range`) from its own share, so
  workers never collide in the kernel and each one's start-up reconcile and EXPIRE
  events touch only its own objects;
- the start actions of the connections it owns (`connection_owner`, by name);
- the control API served over the socketpair (`ControlServer.serve_peer`: JSON lines,
  concurrent requests, every event pushed).

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
import os
import pickle
import signal
import socket
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bpf import reuseport
from gateway import __version__
from gateway.config.schema import GatewayConfig
from gateway.control.client import ControlClient
from gateway.control.protocol import FAILED, UNKNOWN_SA, ControlConnectionError, ControlError
from gateway.control.server import ControlServer
from gateway.dataplane.xdp import SlotSpis, XdpAdapter
from gateway.errors import GatewayError
from gateway.transport import bind_socket
from gateway.xdpshare import RemoteLoader, XdpShare
from gateway.xfrm.manager import OwnedRange
from gateway.zygote import WorkerProcess, WorkerRequest, Zygote, read_blob, send_blob

log = logging.getLogger("gateway.workers")

RESTART_DELAY: Final = 1.0  # seconds before a dead worker is started again
MAX_RESTARTS: Final = 5  # more deaths than this within RESTART_WINDOW stop the daemon
RESTART_WINDOW: Final = 60.0
START_TIMEOUT: Final = 300.0  # a worker must be serving within this long (TCG VM: slow)
STOP_TIMEOUT: Final = 30.0  # a worker must have shut down within this long (then SIGKILL)
IPC_LIMIT: Final = 1 << 28  # bytes per reply line from a worker (list-sas of many SAs)


# --------------------------------------------------------------------------- partitions


def connection_owner(name: str, workers: int) -> int:
    """The worker that runs a connection's start actions and `initiate` (stable across
    processes and runs: crc32, not Python's salted hash)."""
    return zlib.crc32(name.encode()) % workers


@dataclass(slots=True)
class WorkerIkeSpis:
    """Our IKE SPIs for worker `index` of `workers`: random, with the low 32 bits equal
    to `index` modulo `workers` (bpf.reuseport.owner_of_spi)."""

    index: int
    workers: int
    random: Callable[[int], bytes] = os.urandom

    def __call__(self) -> bytes:
        raw = self.random(8)
        low = int.from_bytes(raw[4:], "big")
        low = low - low % self.workers + self.index
        if low > 0xFFFF_FFFF:
            low -= self.workers
        return raw[:4] + low.to_bytes(4, "big")


@dataclass(slots=True)
class PartitionedSpis:
    """Inbound ESP SPIs of worker `index` of `workers` (ike.engine.InboundSpiAllocator):
    SPI modulo `workers` = `index`, so two workers never choose the same SPI."""

    index: int
    workers: int
    random: Callable[[int], bytes] = os.urandom
    _used: set[int] = field(default_factory=set)

    def allocate(self, replaces: int | None = None) -> int:
        while True:  # (`replaces`: a rekey's old SPI; nothing to keep here)
            spi = int.from_bytes(self.random(4), "big")
            spi = spi - spi % self.workers + self.index
            if 256 <= spi <= 0xFFFF_FFFF and spi not in self._used:  # RFC 4303 §2.1
                self._used.add(spi)
                return spi

    def release(self, spi: int) -> None:
        self._used.discard(spi)


def reqid_range(index: int, workers: int, whole: OwnedRange | None = None) -> OwnedRange:
    """Worker `index`'s share of our XFRM reqids (the last one takes the remainder)."""
    whole = whole or OwnedRange()
    size = whole.size // workers
    last = index == workers - 1
    return OwnedRange(whole.first + index * size, whole.size - index * size if last else size)


# --------------------------------------------------------------------------- sockets


@dataclass(slots=True)
class SocketGroup:
    """One reuseport group: the N sockets of one listen address and port."""

    address: str
    nat_t: bool
    sockets: list[socket.socket]

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])


def bind_groups(config: GatewayConfig) -> list[SocketGroup]:
    """Bind every worker's sockets, worker 0 first in each group (socket index = bind
    order = worker index). GatewayError when a port cannot be bound."""
    gw = config.gateway
    groups: list[SocketGroup] = []
    try:
        for address in gw.listen:
            ike_port = gw.port
            for nat_t, port in ((False, gw.port), (True, gw.port_nat_t)):
                if nat_t and not ike_port:
                    port = 0  # an ephemeral IKE port (tests): ephemeral NAT-T port too
                group = SocketGroup(address, nat_t, [])
                groups.append(group)
                if port:
                    # Any process of our user could join a reuseport group (and replace its
                    # program): a plain bind first fails if the port is taken, by another
                    # gateway's workers too, as a single-process daemon's bind would.
                    bind_socket(address, port).close()
                for _ in range(gw.workers):
                    sock = bind_socket(
                        address,
                        port,
                        reuse_port=True,
                        esp_in_udp=nat_t and gw.dataplane == "xfrm",
                    )
                    group.sockets.append(sock)
                    port = sock.getsockname()[1]  # the rest join the first one's port
    except OSError as exc:
        close_groups(groups)
        raise GatewayError(f"cannot open IKE socket: {exc.strerror or exc}") from None
    return groups


def close_groups(groups: Sequence[SocketGroup]) -> None:
    for group in groups:
        for sock in group.sockets:
            sock.close()


def steer(groups: Sequence[SocketGroup], workers: int, live: Sequence[int]) -> None:
    """(Re)attach each group's steering program for the workers now serving."""
    for group in groups:
        program = reuseport.steering_program(nat_t=group.nat_t, workers=workers, live=live)
        try:
            reuseport.attach(group.sockets[0], program)
        except OSError as exc:
            raise GatewayError(
                f"cannot attach the IKE steering program ({group.address} port "
                f"{group.port}): {exc.strerror}"
            ) from None


# --------------------------------------------------------------------------- supervisor


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
        self.control = ControlServer(self, config.gateway.control_socket)
        self.started_at = time.time()
        self.exit_status = 0
        self._stopping = asyncio.Event()
        self._shutting_down = False
        self._exporter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._loop = loop
        installed: list[signal.Signals] = []
        self.zygote.attach()
        try:
            self.groups = bind_groups(self.config)
            steer(self.groups, self.count, [])  # nobody serves yet: the kernel's hash
            if self.config.gateway.xdp is not None:  # before the workers: they use it
                adapter = XdpAdapter(self.config.gateway.xdp)
                adapter.open()  # all or nothing; detached in shutdown()
                self.xdp = XdpShare(adapter, self.count)
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

    async def stats(self) -> dict[str, Any]:
        replies = await self._ask_all("stats")
        rows = [r for _, r in replies if not isinstance(r, ControlError)]
        merged = merge_stats(rows)
        if self.xdp is not None:  # interface-wide counters: read once, here
            merged["xdp"] = self.xdp.adapter.verdict_rows()
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
        from gateway.daemon import load_for_reload

        new = load_for_reload(self.options.config_path, self.control)
        replies = await self._ask_all("reload")
        failed = [(w, r) for w, r in replies if isinstance(r, ControlError)]
        if failed:
            w, err = failed[0]
            raise ControlError(FAILED, f"worker {w.index}: {err.message}")
        if not replies:
            raise ControlError(FAILED, "no worker is running")
        result = dict(replies[0][1])
        result["restart_needed"] = new.gateway != self.config.gateway
        self.config = GatewayConfig(self.config.gateway, new.connections, new.source)
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

        loop = self._loop
        if loop is None or loop.is_closed():
            raise GatewayError("the daemon is not running")

        async def build() -> Any:
            sas = await self.list_sas()
            stats = await self.stats()
            durations = stats.get("handshake_durations")
            xdp = self.xdp.adapter if self.xdp is not None else None
            return metrics.MetricsSnapshot(
                ike_sas=sas,
                xdp=[metrics.XdpCounter(**row) for row in stats["xdp"]],
                mss_clamped=xdp.mss_clamped() if xdp is not None else {},
                xfrm_errors=stats["xfrm_errors"],
                handshake_durations=metrics.HistogramCounts(
                    tuple(durations["bounds"]), tuple(durations["counts"]), durations["sum"]
                )
                if durations is not None
                else metrics.empty_histogram(),
                rekeys=stats["rekeys"],
                ike_rekeys=stats.get("ike_rekeys", 0),
                dpd_failures=stats["dpd_failures"],
                auth_failures=stats["auth_failures"],
                start_time=self.started_at,
            )

        future = asyncio.run_coroutine_threadsafe(build(), loop)
        try:
            return future.result(timeout=5)
        except TimeoutError:
            future.cancel()
            raise GatewayError("the daemon did not answer the scrape in time") from None
        except ControlError as exc:
            raise GatewayError(exc.message) from None


# --------------------------------------------------------------------------- merging

_SUMMED: Final = (
    "child_sas",
    "bytes_in",
    "bytes_out",
    "packets_in",
    "packets_out",
    "handshakes",
    "auth_failures",
    "dpd_failures",
    "rekeys",
    "ike_rekeys",
    "install_failures",
    "engine_errors",
)


def merge_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Gateway-wide stats from the workers' (sums; xfrm_errors are the kernel's, the
    same in every worker: the largest reading)."""
    out: dict[str, Any] = {key: sum(int(r.get(key, 0)) for r in rows) for key in _SUMMED}
    out["ike_sas"] = _sum_dicts(r.get("ike_sas", {}) for r in rows)
    out["transport"] = _sum_dicts(r.get("transport", {}) for r in rows)
    out["engine"] = _sum_dicts(r.get("engine", {}) for r in rows)
    errors: dict[str, int] = {}
    for r in rows:
        for name, value in r.get("xfrm_errors", {}).items():
            errors[name] = max(errors.get(name, 0), int(value))
    out["xfrm_errors"] = errors
    out["xdp"] = []
    durations = merge_histograms(
        [r["handshake_durations"] for r in rows if "handshake_durations" in r]
    )
    if durations is not None:
        out["handshake_durations"] = durations
    return out


def merge_histograms(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The workers' handshake-duration histograms as one (counts and sums add up; all
    workers run the same code, so the bucket bounds agree: a row that differs is left
    out rather than mixed in)."""
    if not rows:
        return None
    bounds = list(rows[0]["bounds"])
    same = [r for r in rows if list(r["bounds"]) == bounds and len(r["counts"]) == len(bounds) + 1]
    return {
        "bounds": bounds,
        "counts": [sum(int(r["counts"][i]) for r in same) for i in range(len(bounds) + 1)],
        "sum": sum(float(r["sum"]) for r in same),
    }


def _sum_dicts(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = out.get(key, 0) + int(value)
    return out


def merge_action(replies: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """terminate/rekey asked of every worker: done where it had something to act on.
    All "nothing here" (unknown-sa/unknown-connection): that error; any other refusal:
    `failed` with the worker's message."""
    done = [r for _, r in replies if not isinstance(r, ControlError)]
    errors = [(w, r) for w, r in replies if isinstance(r, ControlError)]
    hard = [(w, e) for w, e in errors if e.code != UNKNOWN_SA and e.code != "unknown-connection"]
    if hard:
        w, err = hard[0]
        raise ControlError(err.code, f"{err.message} (worker {w.index})")
    if not done:
        if errors:
            raise errors[0][1]
        raise ControlError(FAILED, "no worker is running")
    return {"message": "; ".join(str(r.get("message", "")) for r in done)}


# --------------------------------------------------------------------------- worker side


class _PeerControl(ControlServer):
    """The worker's control API, served over its socketpair to the supervisor."""

    def __init__(self, backend: Any, sock: socket.socket, on_close: Callable[[], None]) -> None:
        super().__init__(backend, f"worker-socketpair-{sock.fileno()}")
        self._sock = sock
        self._on_close = on_close
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        serving = await self.serve_peer(self._sock)  # events flow from here on

        async def serve() -> None:
            with contextlib.suppress(OSError):
                await serving
            self._on_close()  # the supervisor is gone: shut down

        self._task = asyncio.get_running_loop().create_task(serve())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _worker_main(
    config: GatewayConfig,
    config_path: str,
    request: WorkerRequest,
    ipc: socket.socket,
    sockets: list[tuple[socket.socket, bool]],
    xdp_link: socket.socket | None,
) -> int:
    from gateway.daemon import Daemon
    from gateway.dataplane import make_dataplane

    gw = dataclasses.replace(config.gateway, metrics_listen=None)  # the supervisor's
    config = GatewayConfig(gw, config.connections, config.source)
    index, count = request.index, request.workers
    stop = asyncio.Event()
    xdp = None
    if gw.xdp is not None and xdp_link is not None:  # the supervisor's programs
        link = xdp_link
        xdp = XdpAdapter(
            gw.xdp, loader=lambda _config: RemoteLoader(link), spis=SlotSpis(share=(index, count))
        )
    daemon = Daemon(
        config,
        config_path=config_path,
        dataplane=make_dataplane(gw.dataplane, owned=reqid_range(index, count)),
        spis=PartitionedSpis(index, count),
        ike_spis=WorkerIkeSpis(index, count),
        prebound=sockets,
        control=_PeerControl(None, ipc, stop.set),
        xdp=xdp,
    )
    daemon.control.backend = daemon
    daemon.keep_handshake_durations()  # merged by the supervisor (stats, metrics)
    daemon.start_filter = lambda name: connection_owner(name, count) == index
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for sig in (signal.SIGINT, signal.SIGHUP):  # the supervisor handles these for us all
        loop.add_signal_handler(sig, lambda: None)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.shutdown()
    return 0


def run_worker(request: WorkerRequest, fds: list[int]) -> int:
    """A worker's life, in a process the zygote just forked (gateway/zygote.py): `fds`
    are its control socketpair end and its IKE sockets (`request.kinds`)."""
    from gateway.daemon import setup_logging

    setup_logging(request.log_level, suffix=f" worker={request.index}")
    ipc = socket.socket(fileno=fds[0])
    sockets: list[tuple[socket.socket, bool]] = []
    xdp_link = None
    for fd, kind in zip(fds[1:], request.kinds, strict=True):
        if kind == "xdp":
            xdp_link = socket.socket(fileno=fd)
        else:
            sockets.append((socket.socket(fileno=fd), kind == "nat_t"))
    try:
        ipc.setblocking(True)
        # the supervisor's configuration, as last reloaded (not the file as it is now)
        config_path, config = pickle.loads(read_blob(ipc))
        return asyncio.run(_worker_main(config, config_path, request, ipc, sockets, xdp_link))
    except GatewayError as exc:
        print(f"gateway worker {request.index}: {exc}", file=sys.stderr)
        return 2
