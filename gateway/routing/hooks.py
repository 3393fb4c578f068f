"""updown hooks: a program run when a Child SA comes up, goes down or is rekeyed.

The interface is strongSwan's updown plugin's (itself pluto's `_updown` 1.1), so existing
scripts work: the program gets `PLUTO_*` variables, once per pair of local and remote
traffic selectors of the same family, with the verb `up-client`, `down-client`
(`-host` when the local selector is our own address, `-v6` for an IPv6 pair). Two things
strongSwan does not have: the verb `rekey-client` (only when the daemon asks for rekey
hooks: strongSwan's stock `_updown` exits 1 on a verb it does not know), and `GW_*`
variables with what the gateway knows besides (the event, the reason of a down, SPIs,
the interface MTU). docs/routing.md lists every variable.

Theory of operation
-------------------
`HookRunner.submit(program, event)` never blocks: it queues one run per selector pair
on the queue of the Child (key: connection and child name, so a Child's runs happen in
submission order: a down never overtakes its up, and a re-established Child's up waits
for the old one's down) and returns. Each queue has one asyncio task; at most
`max_concurrent` programs run at once over all queues. A run is an asyncio subprocess
(`exec`, no shell: `program` is split like a shell command line) in its own session,
with a clean environment (`PATH` and the hook variables only: nothing of the daemon's
environment leaks), stdin from /dev/null, stdout and stderr merged and logged line by
line (bounded, with `redact` strings replaced). A run that outlives `timeout` gets
SIGTERM on its process group (pgid = the pid we started), then SIGKILL after `grace`.
Every run ends in one `HookResult` (ok, failed, timeout, error) that is logged, counted
in `HookCounters` and handed to `on_result` (which then reports it; without one it is
logged here). No key material is ever in a `ChildInfo`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shlex
import signal
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.xfrm.spec import ChildSaSpec, IPAddress, Mark, TrafficSelector

log = logging.getLogger("gateway.hooks")

HookKind = Literal["up", "down", "rekey"]
HookStatus = Literal["ok", "failed", "timeout", "error"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_LINE = 400  # characters of one output line that reach the log
# [gateway.hooks]'s defaults (gateway/config/schema.py takes them from here)
HOOK_TIMEOUT = 30.0  # seconds a run may take before SIGTERM (then SIGKILL after `grace`)
HOOK_MAX_CONCURRENT = 4  # runs at once over all Childs
HOOK_MAX_OUTPUT_LINES = 50  # output lines of one run that reach the log


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """What a hook may know about a Child SA: addresses, identities, selectors, SPIs,
    interface. Deliberately no keys: nothing secret can reach a hook's environment."""

    connection: str
    child: str
    local: IPAddress
    remote: IPAddress
    reqid: int
    spi_in: int
    spi_out: int
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    mode: Literal["tunnel", "transport"] = "tunnel"
    unique_id: int = 0  # the IKE SA's id as list-sas shows it
    local_id: str = ""
    remote_id: str = ""
    interface: str = ""  # the XFRM interface (route-based) or the outbound device
    if_id_in: int | None = None
    if_id_out: int | None = None
    mark_in: Mark | None = None
    mark_out: Mark | None = None
    udp_encap_port: int | None = None  # the peer's port when ESP is UDP-encapsulated
    proposal: str = ""  # e.g. aes256gcm16
    mtu: int | None = None  # the XFRM interface's MTU (route-based)
    route_table: int | None = None
    route_metric: int | None = None

    @classmethod
    def from_spec(cls, spec: ChildSaSpec, connection: str, child: str, **kw: object) -> ChildInfo:
        """From the spec handed to the XFRM manager (its keys are not taken)."""
        return cls(
            connection=connection,
            child=child,
            local=spec.local,
            remote=spec.remote,
            reqid=spec.reqid,
            spi_in=spec.spi_in,
            spi_out=spec.spi_out,
            local_ts=spec.local_ts,
            remote_ts=spec.remote_ts,
            mode=spec.mode,
            if_id_in=spec.direction_if_id(True),
            if_id_out=spec.direction_if_id(False),
            mark_in=spec.mark,
            mark_out=spec.mark,
            udp_encap_port=spec.encap.remote_port if spec.encap else None,
            **kw,  # type: ignore[arg-type]
        )

    def selector_pairs(self) -> list[tuple[TrafficSelector, TrafficSelector]]:
        """(local, remote) pairs of one family; the two hosts when there are none."""
        pairs = [
            (lt, rt)
            for lt in self.local_ts
            for rt in self.remote_ts
            if lt.net.version == rt.net.version
        ]
        if pairs:
            return pairs
        return [
            (
                TrafficSelector(ipaddress.ip_network(self.local)),
                TrafficSelector(ipaddress.ip_network(self.remote)),
            )
        ]


@dataclass(frozen=True, slots=True)
class HookEvent:
    """One Child SA event a hook runs for. For a rekey, `child` is the new SA and
    `old_spi_in/out` the SPIs of the one it replaced."""

    kind: HookKind
    child: ChildInfo
    reason: str = ""  # down: why (e.g. delete, dpd, expired, shutdown)
    old_spi_in: int | None = None
    old_spi_out: int | None = None


def verb(event: HookEvent, local_ts: TrafficSelector) -> str:
    """PLUTO_VERB: up/down/rekey, -host when the local selector is our address itself,
    -v6 for IPv6 (of the selector, or of our address for -host)."""
    child = event.child
    net = local_ts.net
    is_host = net.prefixlen == net.max_prefixlen and net.network_address == child.local
    ipv6 = (child.local.version if is_host else net.version) == 6
    return f"{event.kind}{'-host' if is_host else '-client'}{'-v6' if ipv6 else ''}"


def _port(ts: TrafficSelector) -> str:
    return str(ts.port or 0)


def hook_environment(
    event: HookEvent,
    local_ts: TrafficSelector,
    remote_ts: TrafficSelector,
    *,
    path: str = DEFAULT_PATH,
) -> dict[str, str]:
    """The complete environment of one run (nothing else is passed)."""
    c = event.child
    env = {
        "PATH": path,
        "PLUTO_VERSION": "1.1",
        "PLUTO_VERB": verb(event, local_ts),
        "PLUTO_CONNECTION": c.child,
        "PLUTO_INTERFACE": c.interface or "unknown",
        "PLUTO_REQID": str(c.reqid),
        "PLUTO_PROTO": "esp",
        "PLUTO_UNIQUEID": str(c.unique_id),
        "PLUTO_ME": str(c.local),
        "PLUTO_MY_ID": c.local_id,
        "PLUTO_MY_CLIENT": str(local_ts.net),
        "PLUTO_MY_PORT": _port(local_ts),
        "PLUTO_MY_PROTOCOL": str(local_ts.proto),
        "PLUTO_PEER": str(c.remote),
        "PLUTO_PEER_ID": c.remote_id,
        "PLUTO_PEER_CLIENT": str(remote_ts.net),
        "PLUTO_PEER_PORT": _port(remote_ts),
        "PLUTO_PEER_PROTOCOL": str(remote_ts.proto),
        "GW_EVENT": event.kind,
        "GW_CONNECTION": c.connection,
        "GW_CHILD": c.child,
        "GW_MODE": c.mode,
        "GW_SPI_IN": f"{c.spi_in:08x}",
        "GW_SPI_OUT": f"{c.spi_out:08x}",
    }
    for name, mark in (("PLUTO_MARK_IN", c.mark_in), ("PLUTO_MARK_OUT", c.mark_out)):
        if mark is not None and mark.value:
            env[name] = f"{mark.value}/0x{mark.mask:08x}"
    for name, if_id in (("PLUTO_IF_ID_IN", c.if_id_in), ("PLUTO_IF_ID_OUT", c.if_id_out)):
        if if_id:
            env[name] = str(if_id)
    optional = {
        "PLUTO_UDP_ENC": c.udp_encap_port,
        "GW_REASON": event.reason,
        "GW_OLD_SPI_IN": f"{event.old_spi_in:08x}" if event.old_spi_in is not None else None,
        "GW_OLD_SPI_OUT": f"{event.old_spi_out:08x}" if event.old_spi_out is not None else None,
        "GW_ESP": c.proposal,
        "GW_MTU": c.mtu,
        "GW_ROUTE_TABLE": c.route_table,
        "GW_ROUTE_METRIC": c.route_metric,
    }
    env.update({k: str(v) for k, v in optional.items() if v not in (None, "")})
    return env


def program_argv(program: str | Sequence[str]) -> list[str]:
    """`updown = "/etc/gateway/updown.sh iptables"` as argv (shell-like split, no shell)."""
    argv = shlex.split(program) if isinstance(program, str) else list(program)
    if not argv or not argv[0]:
        raise ValueError("an updown program needs a path")
    return argv


def redact(line: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            line = line.replace(secret, "<redacted>")
    return line


@dataclass(frozen=True, slots=True)
class HookResult:
    event: HookEvent
    verb: str
    argv: tuple[str, ...]
    status: HookStatus
    returncode: int | None  # None: never started (error) or killed before reporting
    pid: int | None
    duration: float  # seconds
    detail: str = ""  # error text, or how it ended


@dataclass
class HookCounters:
    """Runs so far by outcome, and what is running or waiting now."""

    started: int = 0
    ok: int = 0
    failed: int = 0  # exited non-zero or by a signal
    timeout: int = 0  # killed after the timeout
    error: int = 0  # could not be started (no such program, not executable)
    running: int = 0
    queued: int = 0


@dataclass
class _Job:
    argv: list[str]
    event: HookEvent
    verb: str
    env: dict[str, str] = field(repr=False)


class HookRunner:
    """Runs updown programs for Child SA events, ordered per Child, bounded overall."""

    def __init__(
        self,
        *,
        timeout: float = HOOK_TIMEOUT,
        grace: float = 1.0,
        max_concurrent: int = HOOK_MAX_CONCURRENT,
        max_output_lines: int = HOOK_MAX_OUTPUT_LINES,
        redact: Sequence[str] = (),
        on_result: Callable[[HookResult], None] | None = None,
        path: str = DEFAULT_PATH,
    ) -> None:
        if timeout <= 0 or grace < 0 or max_concurrent < 1 or max_output_lines < 0:
            raise ValueError("hook timeout > 0, grace >= 0, max_concurrent >= 1 needed")
        self.timeout = timeout
        self.grace = grace
        self.max_output_lines = max_output_lines
        self.redact = tuple(redact)
        self.on_result = on_result
        self.path = path
        self.counters = HookCounters()
        self._sem = asyncio.Semaphore(max_concurrent)
        self._queues: dict[Hashable, deque[_Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._procs: set[asyncio.subprocess.Process] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- submit ------------------------------------------------------------------------

    def submit(
        self, program: str | Sequence[str], event: HookEvent, key: Hashable | None = None
    ) -> int:
        """Queue the runs of `event` (one per selector pair) behind the earlier runs of
        the same Child (`key`, default (connection, child)). Returns how many were
        queued. Needs a running event loop; never blocks."""
        argv = program_argv(program)
        key = key if key is not None else (event.child.connection, event.child.child)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            task = asyncio.get_running_loop().create_task(self._worker(key, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        pairs = event.child.selector_pairs()
        for lt, rt in pairs:
            env = hook_environment(event, lt, rt, path=self.path)
            queue.append(_Job(argv, event, env["PLUTO_VERB"], env))
        self.counters.queued += len(pairs)
        self._idle.clear()
        return len(pairs)

    async def _worker(self, key: Hashable, queue: deque[_Job]) -> None:
        try:
            while queue:
                job = queue.popleft()
                self.counters.queued -= 1
                async with self._sem:
                    await self._run(job)
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]
            if not self._queues:
                self._idle.set()

    # -- one run -------------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        c = job.event.child
        what = f"connection={c.connection} child={c.child} verb={job.verb}"
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *job.argv,
                env=job.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        except OSError as exc:
            self._finish(job, "error", None, None, start, f"cannot start {job.argv[0]}: {exc}")
            return
        self.counters.started += 1
        self.counters.running += 1
        self._procs.add(proc)
        log.info("event=hook-started %s program=%s pid=%d", what, job.argv[0], proc.pid)
        reader = asyncio.ensure_future(self._read_output(proc, what))
        try:
            try:
                returncode = await asyncio.wait_for(proc.wait(), self.timeout)
            except TimeoutError:
                await self._kill(proc)
                self._finish(
                    job,
                    "timeout",
                    proc.returncode,
                    proc.pid,
                    start,
                    f"killed after {self.timeout:g} s",
                )
                return
            # The program is done; a background child of it may still hold the output
            # pipe: read what is there, then stop listening (it is not ours to kill).
            try:
                await asyncio.wait_for(asyncio.shield(reader), 1.0)
            except TimeoutError:
                pass
            status: HookStatus = "ok" if returncode == 0 else "failed"
            detail = "" if returncode >= 0 else f"killed by signal {-returncode}"
            self._finish(job, status, returncode, proc.pid, start, detail)
        finally:
            reader.cancel()
            self._procs.discard(proc)
            self.counters.running -= 1

    async def _read_output(self, proc: asyncio.subprocess.Process, what: str) -> None:
        assert proc.stdout is not None
        logged = 0
        dropped = 0
        try:
            while line := await proc.stdout.readline():
                if logged >= self.max_output_lines:
                    dropped += 1
                    continue
                text = redact(line.decode(errors="replace").rstrip("\r\n"), self.redact)
                if len(text) > MAX_LINE:
                    text = text[:MAX_LINE] + "..."
                log.info("event=hook-output %s pid=%d line=%r", what, proc.pid, text)
                logged += 1
        except (ValueError, asyncio.LimitOverrunError):
            dropped += 1  # one line longer than the stream buffer: not logged
        finally:
            if dropped:
                log.info("event=hook-output %s pid=%d lines_not_logged=%d", what, proc.pid, dropped)

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the run's process group (pgid = its pid), SIGKILL after grace."""
        for sig, wait in ((signal.SIGTERM, self.grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except TimeoutError:
                continue

    def _finish(
        self,
        job: _Job,
        status: HookStatus,
        returncode: int | None,
        pid: int | None,
        start: float,
        detail: str,
    ) -> None:
        c = job.event.child
        result = HookResult(
            job.event,
            job.verb,
            tuple(job.argv),
            status,
            returncode,
            pid,
            time.monotonic() - start,
            detail,
        )
        setattr(self.counters, status, getattr(self.counters, status) + 1)
        if self.on_result is not None:  # the caller reports it (the daemon: report())
            self.on_result(result)
            return
        level = logging.INFO if status == "ok" else logging.WARNING
        log.log(
            level,
            "event=hook-%s connection=%s child=%s verb=%s program=%s rc=%s duration=%.3f%s",
            "done" if status == "ok" else status,
            c.connection,
            c.child,
            job.verb,
            job.argv[0],
            returncode,
            result.duration,
            f" detail={detail!r}" if detail else "",
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued run has ended; False if `timeout` came first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Let queued runs finish for up to `timeout` seconds (a shutdown's downs), then
        drop what is still queued and kill what still runs."""
        if await self.drain(timeout):
            return
        for queue in self._queues.values():
            self.counters.queued -= len(queue)
            queue.clear()
        await asyncio.gather(*(self._kill(p) for p in list(self._procs)))
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
