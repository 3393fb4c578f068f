"""The worker zygote: a pre-imported process that forks IKE workers on request
(docs/daemon.md, "Workers").

Theory of operation
-------------------
Starting a worker as a fresh interpreter (`python -m ...`) re-imports the daemon, the
engine, cryptography and pyroute2: about 0.4 s of CPU on the host and tens of seconds under
the test VM's emulation, per worker and per restart. Instead `gateway run` forks the
zygote before the supervisor starts its asyncio loop (so the zygote has no loop and no
threads), the zygote imports everything a worker needs once, and then forks one worker
per request: a worker (and a restarted one) skips the interpreter start and the imports.

The link is an AF_UNIX SOCK_SEQPACKET socketpair (message boundaries, file descriptors
with SCM_RIGHTS):

- supervisor -> zygote: `{"index", "workers", "log_level"}` (JSON) with the worker's file
  descriptors: its control socketpair end first, then its IKE sockets (`kinds` names each
  one "ike" or "nat_t").
- zygote -> supervisor: `{"started": pid}` with a pidfd of the new worker (the supervisor
  signals through it: never a recycled pid), or `{"failed": message}`; and, whenever a
  worker exits, `{"exited": pid, "status": s}` (negative: the signal that ended it, as
  asyncio's returncode).

The worker reads its configuration from its control socketpair before it starts (the
supervisor writes the configuration as last reloaded: a restarted worker never sees a
file edited since), then runs `gateway.workers.worker.run_worker`, which the zygote
imported once, before its first fork (`start_zygote(load)`). The zygote exits when the
supervisor's end closes; workers notice their own socketpair closing and shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.errors import GatewayError

MAX_MESSAGE: Final = 1 << 16
MAX_FDS: Final = 256
_LENGTH: Final = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class WorkerRequest:
    index: int
    workers: int
    log_level: str
    kinds: tuple[str, ...]  # "ike" / "nat_t" for each socket after the control socket


WorkerMain = Callable[[WorkerRequest, list[int]], int]  # a worker's life: exit status


# --------------------------------------------------------------------------- zygote side


def serve(link: socket.socket, run_worker: WorkerMain) -> None:
    """The zygote's loop (blocking: no event loop here): fork a worker per request,
    report exits, return when the supervisor's end closes."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # (a handler: the wakeup fd fires)
    children: set[int] = set()
    try:
        while True:
            ready, _, _ = select.select([link.fileno(), wake_r], [], [])
            if wake_r in ready:
                os.read(wake_r, 512)
                _reap(link, children)
            if link.fileno() in ready:
                try:
                    data, fds, _, _ = socket.recv_fds(link, MAX_MESSAGE, MAX_FDS)
                except OSError:
                    return
                if not data:
                    return  # the supervisor is gone
                _fork_worker(link, data, fds, (wake_r, wake_w), children, run_worker)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)


def _reap(link: socket.socket, children: set[int]) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            children.discard(pid)
            continue
        if done:
            children.discard(pid)
            _send(link, {"exited": pid, "status": os.waitstatus_to_exitcode(status)})


def _send(link: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: our loop ends next
        socket.send_fds(link, [json.dumps(message).encode()], list(fds))


def _fork_worker(
    link: socket.socket,
    data: bytes,
    fds: list[int],
    own: tuple[int, int],
    children: set[int],
    run_worker: WorkerMain,
) -> None:
    try:
        raw = json.loads(data)
        request = WorkerRequest(
            int(raw["index"]), int(raw["workers"]), str(raw["log_level"]), tuple(raw["kinds"])
        )
        if len(fds) != len(request.kinds) + 1:
            raise ValueError(f"{len(fds)} descriptors for {len(request.kinds)} sockets")
        pid = os.fork()
    except (ValueError, KeyError, TypeError, OSError) as exc:
        for fd in fds:
            os.close(fd)
        _send(link, {"failed": str(exc)})
        return
    if pid == 0:  # the worker: never returns into the zygote's loop
        status = 70
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            link.close()
            for fd in own:
                os.close(fd)
            status = run_worker(request, fds)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 (a worker must never fall through)
            print(f"gateway worker {request.index}: {exc!r}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    children.add(pid)
    for fd in fds:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:  # (cannot happen before we reap it; be clear if it does)
        _send(link, {"failed": f"pidfd_open: {exc.strerror}", "pid": pid})
        return
    _send(link, {"started": pid}, [pidfd])
    os.close(pidfd)


def start_zygote(load: Callable[[], WorkerMain]) -> Zygote:
    """Fork the zygote; call before any event loop or thread exists in this process.
    `load` runs in the zygote, once: it imports what a worker needs and returns the
    function a forked worker runs (gateway.workers.worker.run_worker; tests: their own)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            mine.close()
            # Ctrl-C reaches the whole process group: the supervisor handles it for us
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            serve(theirs, load())
        except BaseException as exc:  # noqa: BLE001 (never return into the supervisor's code)
            print(f"gateway zygote: {exc!r}", file=sys.stderr)
            status = 70
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(status)
    theirs.close()
    return Zygote(pid, mine)


# --------------------------------------------------------------------------- supervisor side


class WorkerProcess:
    """A worker forked by the zygote, as the supervisor sees it (the part of
    asyncio.subprocess.Process it uses): signalled through its pidfd, its exit status
    reported by the zygote."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def _set_exited(self, status: int) -> None:
        if self.returncode is None:
            self.returncode = status
            os.close(self._pidfd)
            self._exited.set_result(status)


@dataclass(slots=True)
class Zygote:
    """The supervisor's end of the zygote link."""

    pid: int
    link: socket.socket
    _replies: asyncio.Queue[tuple[dict[str, Any], list[int]]] | None = None
    _procs: dict[int, WorkerProcess] = field(default_factory=dict)
    _early: dict[int, int] = field(default_factory=dict)  # exits before "started" was read
    _lock: asyncio.Lock | None = None
    _gone: bool = False

    def attach(self) -> None:
        """Start reading the link on the running loop."""
        self.link.setblocking(False)
        self._replies = asyncio.Queue()
        self._lock = asyncio.Lock()
        asyncio.get_running_loop().add_reader(self.link.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._replies is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.link, MAX_MESSAGE, MAX_FDS)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._lost()
                return
            message = json.loads(data)
            if "exited" in message:
                pid, status = int(message["exited"]), int(message["status"])
                proc = self._procs.pop(pid, None)
                if proc is not None:
                    proc._set_exited(status)
                else:
                    self._early[pid] = status
            else:
                self._replies.put_nowait((message, fds))

    def _lost(self) -> None:
        """The zygote died: nobody reaps or reports our workers any more; wait for
        them through their pidfds (status unknown: -1)."""
        if self._gone:
            return
        self._gone = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.link.fileno())
        assert self._replies is not None
        self._replies.put_nowait(({"failed": "the worker zygote is gone"}, []))
        for pid, proc in list(self._procs.items()):

            def done(proc: WorkerProcess = proc, pid: int = pid) -> None:
                loop.remove_reader(proc._pidfd)
                self._procs.pop(pid, None)
                proc._set_exited(-1)

            loop.add_reader(proc._pidfd, done)

    async def spawn(self, request: WorkerRequest, fds: Sequence[int]) -> WorkerProcess:
        assert self._replies is not None and self._lock is not None
        if self._gone:
            raise GatewayError("cannot start a worker: the worker zygote is gone")
        body = {
            "index": request.index,
            "workers": request.workers,
            "log_level": request.log_level,
            "kinds": list(request.kinds),
        }
        async with self._lock:
            try:
                socket.send_fds(self.link, [json.dumps(body).encode()], list(fds))
            except OSError as exc:
                raise GatewayError(f"cannot start worker {request.index}: {exc}") from None
            message, got = await self._replies.get()
        if "started" not in message or len(got) != 1:
            for fd in got:
                os.close(fd)
            raise GatewayError(
                f"cannot start worker {request.index}: {message.get('failed', 'no reply')}"
            )
        pid = int(message["started"])
        proc = WorkerProcess(pid, got[0])
        if pid in self._early:
            proc._set_exited(self._early.pop(pid))
        else:
            self._procs[pid] = proc
        return proc

    def close(self) -> None:
        """End the link (the zygote exits); reap it if it is gone already."""
        with contextlib.suppress(ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self.link.fileno())
        self.link.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


# --------------------------------------------------------------------------- config transfer


def send_blob(data: bytes) -> bytes:
    """A length-prefixed frame (the configuration, on a worker's control socketpair)."""
    return _LENGTH.pack(len(data)) + data


def read_blob(sock: socket.socket) -> bytes:
    """Read one frame of send_blob from a blocking socket."""
    header = _recv_exactly(sock, _LENGTH.size)
    (length,) = _LENGTH.unpack(header)
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise GatewayError("the supervisor closed the link before the configuration")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
