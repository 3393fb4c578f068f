"""One IKE worker process: the ordinary daemon with its share of SPIs, reqids, sockets
and connections, serving the control API to its supervisor over a socketpair.

The zygote (gateway/workers/zygote.py) forks the process and calls `run_worker`; the
worker reads the supervisor's configuration (as last reloaded) from its socketpair,
then runs `Daemon` (gateway/daemon/) until SIGTERM or until the supervisor goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pickle
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from gateway.config.schema import GatewayConfig
from gateway.control.server import ControlServer
from gateway.daemon import Daemon
from gateway.dataplane import make_dataplane
from gateway.dataplane.xdp import SlotSpis, XdpAdapter
from gateway.errors import GatewayError
from gateway.workers.partition import (
    PartitionedSpis,
    WorkerIkeSpis,
    connection_owner,
    reqid_range,
)
from gateway.workers.xdpshare import RemoteLoader
from gateway.workers.zygote import WorkerRequest, read_blob


class PeerControl(ControlServer):
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


async def worker_main(
    config: GatewayConfig,
    config_path: str,
    request: WorkerRequest,
    ipc: socket.socket,
    sockets: list[tuple[socket.socket, bool]],
    xdp_link: socket.socket | None,
) -> int:

    gw = dataclasses.replace(config.gateway, metrics_listen=None)  # the supervisor's
    config = dataclasses.replace(config, gateway=gw)
    index, count = request.index, request.workers
    stop = asyncio.Event()
    xdp = None
    if gw.xdp is not None and xdp_link is not None:  # the supervisor's programs
        link = xdp_link
        xdp = XdpAdapter(
            gw.xdp,
            loader=lambda _config: RemoteLoader(link),
            spis=SlotSpis(gw.xdp.slot_bits, share=(index, count)),
        )
    daemon = Daemon(
        config,
        config_path=config_path,
        dataplane=make_dataplane(gw.dataplane, owned=reqid_range(index, count)),
        spis=PartitionedSpis(index, count),
        ike_spis=WorkerIkeSpis(index, count),
        prebound=sockets,
        control=PeerControl(None, ipc, stop.set),
        xdp=xdp,
        tunnels_owner=False,  # the supervisor creates and removes the XFRM interfaces
        pool_share=(index, count),  # never an address another worker hands out
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
    """A worker's life, in a process the zygote just forked (gateway/workers/zygote.py): `fds`
    are its control socketpair end and its IKE sockets (`request.kinds`)."""
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
        return asyncio.run(worker_main(config, config_path, request, ipc, sockets, xdp_link))
    except GatewayError as exc:
        print(f"gateway worker {request.index}: {exc}", file=sys.stderr)
        return 2
