"""Network namespaces and veth pairs for tests and the namespace lab.

Everything made here is named with a prefix and removed by the context managers, also
when the body fails. Processes are started inside namespaces we created and ended by
their pid; deleting a namespace first stops those processes (they are ours: only we ran
anything inside it).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.errors import GatewayError

_counter = itertools.count()
# Namespaces this process created and has not removed yet (checked by the test session).
LIVE: set[str] = set()


class NetnsError(GatewayError):
    pass


def host_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip ARGS` in our own namespace (`ip netns add/list/del` and the like)."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def unique_name(prefix: str) -> str:
    """A namespace/interface-safe name unique to this process (max 15 chars for links)."""
    return f"{prefix}{os.getpid() % 100000}{next(_counter)}"


@dataclass
class Netns:
    name: str
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
        )
        if check and proc.returncode != 0:
            raise NetnsError(
                f"[{self.name}] {' '.join(args)} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return host_ip("-n", self.name, *args, check=check)

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a background process in this namespace; stopped by close()."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            self.argv(args), start_new_session=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def pids(self) -> list[int]:
        out = host_ip("netns", "pids", self.name, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def close(self) -> None:
        for proc in reversed(self._procs):
            try:
                self.stop(proc)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._procs.clear()
        # Anything still running in the namespace was started by us through it.
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        host_ip("netns", "del", self.name, check=False)
        LIVE.discard(self.name)


def create(prefix: str = "gwt") -> Netns:
    name = unique_name(prefix)
    host_ip("netns", "add", name)
    LIVE.add(name)
    ns = Netns(name)
    ns.ip("link", "set", "lo", "up")
    return ns


@contextmanager
def netns(prefix: str = "gwt") -> Iterator[Netns]:
    ns = create(prefix)
    try:
        yield ns
    finally:
        ns.close()


def veth(a: Netns, a_name: str, b: Netns, b_name: str, *, mtu: int | None = None) -> None:
    """Connect two namespaces with a veth pair and bring both ends up."""
    tmp = unique_name("vt")
    host_ip("link", "add", tmp, "type", "veth", "peer", "name", tmp + "p")
    try:
        host_ip("link", "set", tmp, "netns", a.name)
        host_ip("link", "set", tmp + "p", "netns", b.name)
    except NetnsError:
        host_ip("link", "del", tmp, check=False)
        raise
    a.ip("link", "set", tmp, "name", a_name)
    b.ip("link", "set", tmp + "p", "name", b_name)
    for ns, dev in ((a, a_name), (b, b_name)):
        if mtu is not None:
            ns.ip("link", "set", dev, "mtu", str(mtu))
        ns.ip("link", "set", dev, "up")


def list_ours(prefix: str) -> list[str]:
    """The named network namespaces whose names start with `prefix` ("": all)."""
    out = host_ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
