"""FRR (zebra, bgpd, bfdd) as a real routing engine in a network namespace.

    with Frr(ns) as frr:
        frr.start(FRR_CONF)                      # an integrated frr.conf, as in docs/routing.md
        frr.wait_bgp(["169.254.10.2"])           # sessions Established
        frr.wait_bfd(["169.254.10.2"])           # BFD peers up
        frr.show("show ip route json")
    # stop(): every daemon ended by its pid, its run directory removed

One set of daemons per namespace, each started in the foreground with every path given
explicitly (config, pid file, zebra API socket, vty sockets, bfdd control socket, log) in
a private directory of this instance: nothing under /etc/frr or /var/run/frr is used, so
any number of instances (other tests, other engineers' runs) never collide. The
configuration is applied the way FRR's own service does it (`vtysh -b`: the integrated
frr.conf of the config directory, here the instance's directory). The daemons drop
privileges to Debian's `frr` user, so the directory belongs to it. The directory lives
under TMPDIR (guest-local in the VM: unix sockets cannot live on 9p shared folders).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from gateway.errors import GatewayError
from gateway.netns import Netns

FRR_LIBEXEC = Path("/usr/lib/frr")
VTYSH = "vtysh"
DAEMONS = ("zebra", "bgpd", "bfdd")
FRR_USER = "frr"
FRR_CRASH_DIR = Path("/var/tmp/frr")  # FRR's per-process crash-log dirs (<daemon>.<pid>)


class FrrError(GatewayError):
    pass


class Frr:
    """zebra + bgpd + bfdd (or `daemons`) in `ns`, driven with vtysh over its own sockets."""

    def __init__(
        self, ns: Netns, *, daemons: Iterable[str] = DAEMONS, directory: Path | None = None
    ) -> None:
        self.ns = ns
        self.daemons = tuple(daemons)
        if not self.daemons or self.daemons[0] != "zebra":
            raise ValueError("zebra must be the first daemon (the others connect to it)")
        self.dir = directory or Path(tempfile.mkdtemp(prefix=f"frr-{ns.name}-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._outs: list[IO[bytes]] = []

    @classmethod
    def existing(cls, ns: Netns, directory: Path) -> Frr:
        """The instance another process started in `directory`: vtysh reaches its daemons
        (`gateway lab status` after `gateway lab up`); stopping them is by their pids."""
        return cls(ns, directory=directory)

    # -- paths ------------------------------------------------------------------------------

    @property
    def zserv(self) -> Path:
        return self.dir / "zserv.api"

    def log_path(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.log"

    def argv(self, daemon: str) -> list[str]:
        d = self.dir
        argv = [
            str(FRR_LIBEXEC / daemon),
            "-f",
            str(d / f"{daemon}.conf"),
            "-i",
            str(d / f"{daemon}.pid"),
            "-z",
            str(self.zserv),
            "--vty_socket",
            str(d),
            "-P",
            "0",  # no TCP vty
            "--log",
            f"file:{self.log_path(daemon)}",
        ]
        if daemon == "bfdd":
            argv += ["--bfdctl", str(d / "bfdd.sock")]
        return argv

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, config: str, timeout: float = 20.0) -> None:
        """Start the daemons, wait for their vty sockets, apply `config` (frr.conf)."""
        (self.dir / "frr.conf").write_text(config)
        (self.dir / "vtysh.conf").write_text("service integrated-vtysh-config\n")
        for daemon in self.daemons:
            (self.dir / f"{daemon}.conf").write_text("")
        shutil.chown(self.dir, FRR_USER, FRR_USER)
        self.dir.chmod(0o750)
        for path in self.dir.iterdir():
            path.chmod(0o644)
        deadline = time.monotonic() + timeout
        for daemon in self.daemons:
            out = open(self.dir / f"{daemon}.out", "wb")
            self._outs.append(out)
            self.procs[daemon] = self.ns.popen(
                *self.argv(daemon), stdout=out, stderr=subprocess.STDOUT
            )
            self._wait(
                lambda d=daemon: (self.dir / f"{d}.vty").exists(),  # type: ignore[misc]
                deadline,
                f"{daemon}'s vty socket",
            )
        proc = self.vtysh_run("-b", timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise FrrError(
                f"[{self.ns.name}] applying frr.conf failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()}\n{self.logs()}"
            )

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while not ready():
            for daemon, proc in self.procs.items():
                if proc.poll() is not None:
                    raise FrrError(
                        f"[{self.ns.name}] {daemon} exited {proc.returncode} waiting for "
                        f"{what}\n{self.logs()}"
                    )
            if time.monotonic() > deadline:
                raise FrrError(f"[{self.ns.name}] timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """End every daemon by its pid (the others before zebra) and clean up after it."""
        for daemon in reversed(list(self.procs)):
            proc = self.procs[daemon]
            self.ns.stop(proc)
            shutil.rmtree(FRR_CRASH_DIR / f"{daemon}.{proc.pid}", ignore_errors=True)
        self.procs.clear()
        for out in self._outs:
            out.close()
        self._outs.clear()

    def kill(self, daemon: str) -> None:
        """SIGKILL one daemon by its pid (a crash, as a failover test wants it)."""
        proc = self.procs[daemon]
        proc.kill()
        proc.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Frr:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def logs(self, lines: int = 30) -> str:
        parts = []
        for daemon in self.daemons:
            for path in (self.dir / f"{daemon}.out", self.log_path(daemon)):
                try:
                    text = path.read_text(errors="replace").splitlines()[-lines:]
                except OSError:
                    continue
                if text:
                    parts.append(f"--- {self.ns.name} {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- vtysh ------------------------------------------------------------------------------

    def vtysh_run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.ns.run(
            VTYSH,
            "--vty_socket",
            str(self.dir),
            "--config_dir",
            str(self.dir),
            *args,
            check=False,
            timeout=timeout,
        )

    def vtysh(self, *commands: str) -> str:
        """Run vtysh commands (`-c` each, in order); FrrError when vtysh fails."""
        args = [a for c in commands for a in ("-c", c)]
        proc = self.vtysh_run(*args)
        if proc.returncode != 0:
            raise FrrError(
                f"[{self.ns.name}] vtysh {' / '.join(commands)} exited {proc.returncode}: "
                f"{(proc.stdout + proc.stderr).strip()}"
            )
        return proc.stdout

    def configure(self, *lines: str) -> None:
        """Change the running configuration (`configure terminal` + lines)."""
        self.vtysh("configure terminal", *lines)

    def show(self, command: str) -> Any:
        """A `show ... json` command, decoded."""
        return json.loads(self.vtysh(command) or "{}")

    # -- BGP / BFD state --------------------------------------------------------------------

    def bgp_states(self) -> dict[str, str]:
        """Neighbour address -> BGP state (Established, Active, Connect, ...)."""
        data = self.show("show bgp neighbors json")
        return {peer: info.get("bgpState", "?") for peer, info in data.items()}

    def bfd_states(self) -> dict[str, str]:
        """BFD peer address -> status (up, down, init)."""
        return {p["peer"]: p.get("status", "?") for p in self.show("show bfd peers json")}

    def wait_bgp(
        self, peers: Iterable[str], state: str = "Established", timeout: float = 30.0
    ) -> None:
        self._wait_states(self.bgp_states, peers, state, timeout, "BGP")

    def wait_bfd(self, peers: Iterable[str], status: str = "up", timeout: float = 30.0) -> None:
        self._wait_states(self.bfd_states, peers, status, timeout, "BFD")

    def _wait_states(
        self,
        read: Callable[[], dict[str, str]],
        peers: Iterable[str],
        want: str,
        timeout: float,
        what: str,
    ) -> None:
        peers = list(peers)
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            states = read()
            if all(states.get(p) == want for p in peers):
                return
            if time.monotonic() > deadline:
                raise FrrError(
                    f"[{self.ns.name}] {what} peers {peers} not {want} after {timeout:g} s: "
                    f"{states}\n{self.logs()}"
                )
            time.sleep(0.1)
