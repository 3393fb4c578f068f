"""The namespace lab on a kernel with ESP: build, start, check, report, tear down.

State lives in a lab directory (default /run/gateway-lab, mode 0700): the generated
configs, each process's log, and state.json with the pids we started, so `status` and
`down` work from later commands. `down` ends exactly those pids, then removes the
namespaces (which also ends anything else that was started inside them by the lab).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.control.protocol import ControlConnectionError, ControlError
from gateway.errors import GatewayError
from gateway.lab import checks, topology
from gateway.lab.pace import Deadline, Pace
from gateway.lab.topology import EAST_HOST, NODES, Topology
from gateway.netns import Netns, NetnsError

DEFAULT_DIR = Path(os.environ.get("GATEWAY_LAB_DIR", "/run/gateway-lab"))
DEFAULT_PREFIX = os.environ.get("GATEWAY_LAB_PREFIX", "gwlab-")
PEERS = ("gateway", "strongswan")

# Each step's budget in reference seconds (gateway/lab/pace.py: seconds on an idle machine
# of the development kind, multiplied by the slowness measured here). Measured in the lab
# VM under software emulation, in reference seconds, idle (slowness ~25) and with a CPU
# hog per core and other engineers' VMs running (slowness 38-107): namespaces 0.2-1.5, a
# daemon's start 0.2-1.5, gw-west's start with the bcc compile of its XDP/TC programs
# 2.5-6, the tunnel 0.1-0.5, the traffic check 0.1-0.2. The budgets allow four times the
# worst of these.
BUDGETS = {
    "namespaces": 6.0,
    "gw-east": 6.0,
    "strongswan": 6.0,
    "gw-west": 6.0,
    "gw-west-xdp": 24.0,
    "tunnel": 4.0,
    "traffic": 3.0,
}
RECENT_EVENTS = 20
_EVENT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)\S* \w+ event=(\S+)(.*)$")


class LabError(GatewayError):
    pass


@dataclass(frozen=True, slots=True)
class LabOptions:
    peer: str = "gateway"
    nat: bool = False
    xdp: bool = True
    traffic: bool = True
    directory: Path = DEFAULT_DIR
    prefix: str = DEFAULT_PREFIX


def config_text(name: str) -> str:
    return resources.files("gateway.lab").joinpath("configs", name).read_text()


def gateway_config(node: str, opts: LabOptions) -> str:
    """The embedded config of `node`, with the lab's socket path and XDP ports."""
    text = config_text(f"{node}.toml")
    sock = opts.directory / node / "control.sock"
    text = re.sub(r'^control_socket = ".*"$', f'control_socket = "{sock}"', text, flags=re.M)
    if opts.xdp and node == "gw-west":
        text = text.replace(
            "\n[connections.",
            '\n[gateway.xdp]\nwan_interface = "wan0"\nlan_interface = "lan0"\n'
            "mss_clamp = true\n\n[connections.",
            1,
        )
    return text


def control_socket(opts: LabOptions, node: str = "gw-west") -> Path:
    return opts.directory / node / "control.sock"


class Lab:
    def __init__(self, opts: LabOptions) -> None:
        self.opts = opts
        self.topo = Topology(prefix=opts.prefix, nat=opts.nat)
        self.state_file = opts.directory / "state.json"

    # ------------------------------------------------------------------ state

    def load_state(self) -> dict[str, Any] | None:
        return read_state(self.state_file)

    def save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------ processes

    def _spawn(
        self, node: str, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> int:
        log = open(self.opts.directory / f"{name}.log", "ab")  # noqa: SIM115 - child keeps it
        try:
            proc = subprocess.Popen(
                Netns(self.opts.prefix + node).argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            log.close()
        return proc.pid

    def _start_gateway(self, node: str) -> int:
        workdir = self.opts.directory / node
        workdir.mkdir(mode=0o700, exist_ok=True)
        conf = workdir / "gateway.toml"
        conf.write_text(gateway_config(node, self.opts))
        conf.chmod(0o600)
        return self._spawn(node, node, [sys.executable, "-m", "gateway", "run", "-c", str(conf)])

    def _start_strongswan(self, node: str, deadline: Deadline) -> int:
        from gateway.lab.strongswan import NETLINK_PLUGINS, StrongSwan, StrongSwanError

        (self.opts.directory / node).mkdir(mode=0o700, exist_ok=True)
        sw = StrongSwan(
            Netns(self.opts.prefix + node),
            plugins=NETLINK_PLUGINS,
            workdir=self.opts.directory / node,
        )
        sw.write_config(config_text("gw-east.swanctl.conf"))
        try:
            sw.start(timeout=deadline.remaining())
            sw.swanctl(
                "--load-all", "--file", str(sw.dir / "swanctl.conf"), timeout=deadline.remaining()
            )
        except (StrongSwanError, subprocess.SubprocessError) as exc:
            raise deadline.fail(f"strongSwan did not start: {exc}", self.log_tail(node)) from None
        assert sw.proc is not None
        return sw.proc.pid  # keeps running after this command; `down` ends it by pid

    # ------------------------------------------------------------------ up

    def up(self, pace: Pace) -> dict[str, Any]:
        """Build the lab step by step, each against a deadline scaled to this machine's
        measured speed (`pace`, which also receives the progress records)."""
        if self.opts.peer not in PEERS:
            raise LabError(f"unknown peer {self.opts.peer!r}: choose one of {', '.join(PEERS)}")
        if self.load_state() is not None or self.topo.existing():
            raise LabError("a lab is already up: run `gateway lab down` first")
        self.opts.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "mode": "netns",
            "peer": self.opts.peer,
            "nat": self.opts.nat,
            "prefix": self.opts.prefix,
            "pids": {},
            "started": time.time(),
        }
        self.save_state(state)
        try:
            self._up(state, pace)
        except BaseException:
            self.down(quiet=True)
            raise
        return self.status()

    def _up(self, state: dict[str, Any], pace: Pace) -> None:
        names = ", ".join(self.topo.names())
        with pace.step("namespaces", f"building namespaces {names}", BUDGETS["namespaces"]):
            self.topo.create()
        east = "strongswan" if self.opts.peer == "strongswan" else "gw-east"
        with pace.step("gw-east", f"starting gw-east ({self.opts.peer})", BUDGETS[east]) as d:
            if self.opts.peer == "strongswan":
                state["pids"]["gw-east"] = self._start_strongswan("gw-east", d)
            else:
                state["pids"]["gw-east"] = self._start_gateway("gw-east")
                self.save_state(state)
                self._wait_daemon("gw-east", state, d)
            self.save_state(state)
        west = "gw-west-xdp" if self.opts.xdp else "gw-west"
        text = "starting gw-west (gateway, initiator" + (
            "; bcc compiles its XDP/TC programs first)" if self.opts.xdp else ")"
        )
        with pace.step("gw-west", text, BUDGETS[west]) as d:
            state["pids"]["gw-west"] = self._start_gateway("gw-west")
            self.save_state(state)
            self._wait_daemon("gw-west", state, d)
        with pace.step("tunnel", "waiting for the tunnel", BUDGETS["tunnel"]) as d:
            checks.wait_tunnel(
                control_socket(self.opts),
                d,
                self._gone(state),
                lambda: self.logs("gw-west", "gw-east"),
            )
        text = "sending traffic west -> east through the tunnel"
        with pace.step("traffic", text, BUDGETS["traffic"]) as d:
            west_ns = self.topo.ns("west")
            checks.ping_through(
                lambda argv, timeout: west_ns.run(*argv, check=False, timeout=timeout),
                EAST_HOST,
                d,
            )
            checks.esp_counted(control_socket(self.opts), d, logs=lambda: self.logs("gw-west"))
            if self.opts.traffic:
                self._start_traffic(state, d)
            self.save_state(state)

    def _wait_daemon(self, node: str, state: dict[str, Any], deadline: Deadline) -> None:
        checks.wait_daemon(
            control_socket(self.opts, node), deadline, self._gone(state), lambda: self.logs(node)
        )

    def _gone(self, state: dict[str, Any]) -> checks.Alive:
        """A check of the lab's processes: which one exited, if any."""

        def gone() -> str | None:
            for node, pid in state["pids"].items():
                if not alive(pid):
                    return f"{node} (pid {pid}) exited"
            return None

        return gone

    def _start_traffic(self, state: dict[str, Any], deadline: Deadline) -> None:
        """iperf3 at 2 Mbit/s west -> east and a ping a second (gateway/lab/traffic.sh)."""
        script = str(checks.traffic_script())
        state["pids"]["iperf3-server"] = self._spawn(
            "east", "iperf3-server", ["sh", script, "server", EAST_HOST]
        )
        east = self.topo.ns("east")
        while ":5201" not in east.run("ss", "-ltnH", check=False).stdout:
            if deadline.expired():
                raise deadline.fail(
                    "the iperf3 server in east did not start listening",
                    self.logs("iperf3-server"),
                )
            time.sleep(0.2)
        state["pids"]["iperf3-client"] = self._spawn(
            "west", "iperf3-client", ["sh", script, "stream", EAST_HOST]
        )
        state["pids"]["ping"] = self._spawn("west", "ping", ["sh", script, "ping", EAST_HOST])

    # ------------------------------------------------------------------ status / down

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.opts.directory / f"{name}.log"
        if not path.exists():
            path = self.opts.directory / name / "charon.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def logs(self, *names: str, lines: int = 30) -> str:
        """The last lines of each named log, headed by its name (for failure messages)."""
        return "\n".join(
            f"--- {name} log (last {lines} lines) ---\n{self.log_tail(name, lines)}"
            for name in names
        )

    def recent_events(self, limit: int = RECENT_EVENTS) -> list[str]:
        """gw-west's latest events from its log, "HH:MM:SS type key=value ...", so the
        console and `status` show what happened before they looked (the control API
        pushes only new events)."""
        try:
            text = (self.opts.directory / "gw-west.log").read_text(errors="replace")
        except OSError:
            return []
        events = []
        for line in text.splitlines():
            m = _EVENT_LINE.match(line)
            if m:
                events.append(f"{m.group(1)} {m.group(2)}{m.group(3)}")
        return events[-limit:]

    def status(self) -> dict[str, Any]:
        state = self.load_state()
        if state is None:
            return {"up": False, "mode": None, "nodes": [], "processes": [], "sas": []}
        present = set(self.topo.existing())
        nodes = [
            {
                "name": n,
                "namespace": self.opts.prefix + n,
                "present": self.opts.prefix + n in present,
            }
            for n in NODES
        ]
        procs = [{"name": k, "pid": v, "running": alive(v)} for k, v in state["pids"].items()]
        sas: list[dict[str, Any]] = []
        error = None
        try:
            sas = checks.list_sas(control_socket(self.opts))
        except (ControlConnectionError, ControlError, OSError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
        result = {
            "up": True,
            "mode": state["mode"],
            "peer": state["peer"],
            "nat": state["nat"],
            "nodes": nodes,
            "processes": procs,
            "sas": sas,
            "control_socket": str(control_socket(self.opts)),
            "events": self.recent_events(),
        }
        if error:
            result["error"] = f"gw-west control API: {error}"
        return result

    def down(self, quiet: bool = False) -> list[str]:
        """Stop our processes (by pid), remove the namespaces and the lab directory."""
        done = []
        state = self.load_state() or {"pids": {}}
        # gateways last among processes so their graceful shutdown can still reach the peer
        order = sorted(state["pids"].items(), key=lambda kv: kv[0].startswith("gw-"))
        for name, pid in order:
            if _stop_pid(pid):
                done.append(f"stopped {name} (pid {pid})")
        for name in reversed(self.topo.existing()):
            Netns(name).close()
            done.append(f"removed namespace {name}")
        remove_lab_directory(self.opts.directory)
        return done


@contextlib.contextmanager
def lab_lock(directory: Path, action: str) -> Iterator[None]:
    """Hold the lab's lock while `up` or `down` changes it, so two commands never race.

    The lock is a flock on `lock` inside the lab directory, which `down` removes while it
    holds it; a lock taken on a file that was removed meanwhile is taken again. A second
    command does not wait: it says who holds the lock and exits."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            pid, what = (holder + ["?", "?"])[:2]
            raise LabError(
                f"`gateway lab {what}` (pid {pid}) is changing this lab right now "
                f"({directory}); wait for it to finish, or stop it (Ctrl-C cleans up), "
                "then try again"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {action}\n".encode())
        yield
    finally:
        os.close(fd)


def describe_running(state: dict[str, Any]) -> str:
    """What a second `gateway lab up` tells about the lab that is already up."""
    where = "in a VM" if state.get("mode") == "vm" else "in network namespaces"
    since = time.strftime("%H:%M:%S", time.localtime(float(state.get("started") or 0)))
    vm_pid = state.get("vm_pid")
    if vm_pid is not None and not alive(int(vm_pid)):
        return (
            f"a lab was brought up at {since} ({where}) but its VM (pid {vm_pid}) is gone: "
            "`gateway lab down` cleans up, then `gateway lab up` starts a new one"
        )
    return (
        f"a lab is already up ({where} since {since}, gw-east runs {state.get('peer')}"
        + (", gw-west behind NAT" if state.get("nat") else "")
        + "): `gateway lab tui` opens its console, `gateway lab status` shows it, "
        "`gateway lab down` removes it"
    )


def read_state(path: Path) -> dict[str, Any] | None:
    """The lab's state.json, or None when no lab is up."""
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {path}: {exc}") from exc
    return state


def remove_lab_directory(directory: Path) -> None:
    """Remove the lab directory: configs, logs, state (links are removed, not followed)."""
    if directory.exists():
        shutil.rmtree(directory)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def _stop_pid(pid: int, timeout: float = 8.0) -> bool:
    if not alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


__all__ = ["Lab", "LabError", "LabOptions", "topology", "NetnsError"]
