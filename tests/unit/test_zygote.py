"""The worker zygote (gateway/workers/zygote.py) with a stand-in worker: requests fork workers
that get exactly the descriptors sent, exits are reported with their status, signals go
through the pidfd, the configuration frame crosses a socketpair, and the zygote exits
when the supervisor's end closes. (The real workers: tests/host/test_daemon_workers.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import pytest

from gateway.errors import GatewayError
from gateway.workers.zygote import WorkerRequest, read_blob, send_blob, start_zygote


def stand_in(request: WorkerRequest, fds: list[int]) -> int:
    """Report what we got on the first descriptor; `index` 1 waits for a signal."""
    with socket.socket(fileno=fds[0]) as link:
        link.sendall(f"{request.index} {len(fds)} {','.join(request.kinds)}\n".encode())
        if request.index == 1:
            signal.pause()
    return 3


async def test_zygote_forks_reports_and_signals() -> None:
    zygote = start_zygote(lambda: stand_in)
    zygote.attach()
    try:
        ours, theirs = socket.socketpair()
        extra_a, extra_b = socket.socketpair()
        with ours, theirs, extra_a, extra_b:
            proc = await zygote.spawn(
                WorkerRequest(0, 2, "info", ("ike",)), [theirs.fileno(), extra_a.fileno()]
            )
            assert proc.pid != os.getpid() and proc.pid != zygote.pid
            assert await asyncio.wait_for(proc.wait(), 30) == 3
            assert proc.returncode == 3
            assert ours.recv(100) == b"0 2 ike\n"
            with pytest.raises(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # gone: never a recycled pid

        ours, theirs = socket.socketpair()
        with ours, theirs:
            proc = await zygote.spawn(WorkerRequest(1, 2, "info", ()), [theirs.fileno()])
            assert ours.recv(100) == b"1 1 \n"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGTERM

        # a request whose descriptors do not match its sockets is refused, not forked
        ours, theirs = socket.socketpair()
        with ours, theirs, pytest.raises(GatewayError, match="descriptors"):
            await zygote.spawn(WorkerRequest(0, 2, "info", ("ike", "nat_t")), [theirs.fileno()])
    finally:
        zygote.close()  # the zygote exits on EOF (close reaps it)
    with pytest.raises(ChildProcessError):
        os.waitpid(zygote.pid, os.WNOHANG)


async def test_worker_process_dies_with_the_zygote_gone() -> None:
    zygote = start_zygote(lambda: stand_in)
    zygote.attach()
    ours, theirs = socket.socketpair()
    try:
        with ours, theirs:
            proc = await zygote.spawn(WorkerRequest(1, 2, "info", ()), [theirs.fileno()])
            assert ours.recv(100) == b"1 1 \n"
            os.kill(zygote.pid, signal.SIGKILL)
            os.waitpid(zygote.pid, 0)
            await asyncio.sleep(0.1)  # the link's EOF: exits are watched by pidfd now
            with pytest.raises(GatewayError, match="zygote is gone"):
                await zygote.spawn(WorkerRequest(0, 2, "info", ()), [theirs.fileno()])
            proc.kill()  # (the orphan is reaped by init; its pidfd still says it exited)
            assert await asyncio.wait_for(proc.wait(), 30) == -1
    finally:
        zygote.close()


def test_config_frame_crosses_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        payload = os.urandom(300_000)  # larger than one socket buffer
        deadline = time.monotonic() + 30

        writer = threading.Thread(target=a.sendall, args=(send_blob(payload),))
        writer.start()
        assert read_blob(b) == payload
        writer.join(max(0.0, deadline - time.monotonic()))
        a.close()
        with pytest.raises(GatewayError, match="closed the link"):
            read_blob(b)
