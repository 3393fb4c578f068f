"""The namespace lab on a kernel with ESP: build, start, check, report, tear down.

State lives in a lab directory (default /run/gateway-lab, mode 0700): the generated
configs, each process's log, and state.json with the pids we started, so `status` and
`down` work from later commands. `down` ends exactly those pids, then removes the
namespaces (which also ends anything else that was started inside them by the lab).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.control.client import ControlClient
from gateway.control.protocol import ControlConnectionError, ControlError
from gateway.errors import GatewayError
from gateway.lab import topology
from gateway.lab.topology import EAST_HOST, NODES, Topology
from gateway.netns import Netns, NetnsError

DEFAULT_DIR = Path(os.environ.get("GATEWAY_LAB_DIR", "/run/gateway-lab"))
DEFAULT_PREFIX = os.environ.get("GATEWAY_LAB_PREFIX", "gwlab-")
PEERS = ("gateway", "strongswan")


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

    def _start_strongswan(self, node: str) -> int:
        from gateway.lab.strongswan import NETLINK_PLUGINS, StrongSwan

        (self.opts.directory / node).mkdir(mode=0o700, exist_ok=True)
        sw = StrongSwan(
            Netns(self.opts.prefix + node),
            plugins=NETLINK_PLUGINS,
            workdir=self.opts.directory / node,
        )
        sw.write_config(config_text("gw-east.swanctl.conf"))
        # Generous limits: inside the lab VM (software emulation) charon is slow to start.
        sw.start(timeout=180)
        sw.swanctl("--load-all", "--file", str(sw.dir / "swanctl.conf"), timeout=180)
        assert sw.proc is not None
        return sw.proc.pid  # keeps running after this command; `down` ends it by pid

    # ------------------------------------------------------------------ up

    def up(self, progress: Any = print, timeout: float = 120.0) -> dict[str, Any]:
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
            progress(f"lab: building namespaces {', '.join(self.topo.names())}")
            self.topo.create()
            progress(f"lab: starting gw-east ({self.opts.peer})")
            if self.opts.peer == "strongswan":
                state["pids"]["gw-east"] = self._start_strongswan("gw-east")
            else:
                state["pids"]["gw-east"] = self._start_gateway("gw-east")
            self.save_state(state)
            progress("lab: starting gw-west (gateway, initiator)")
            state["pids"]["gw-west"] = self._start_gateway("gw-west")
            self.save_state(state)
            progress("lab: waiting for the tunnel")
            self._wait_tunnel(state, timeout)
            progress("lab: sending traffic west -> east through the tunnel")
            self._check_traffic()
            if self.opts.traffic:
                self._start_traffic(state)
            self.save_state(state)
        except BaseException:
            self.down(quiet=True)
            raise
        return self.status()

    def _start_traffic(self, state: dict[str, Any]) -> None:
        """iperf3 at 2 Mbit/s west -> east and a ping a second, for the console's rates."""
        state["pids"]["iperf3-server"] = self._spawn(
            "east", "iperf3-server", ["iperf3", "-s", "-B", EAST_HOST]
        )
        east = self.topo.ns("east")
        deadline = time.monotonic() + 30
        while ":5201" not in east.run("ss", "-ltnH", check=False).stdout:
            if time.monotonic() > deadline:
                raise LabError(
                    "iperf3 server in east did not start listening:\n"
                    + self.log_tail("iperf3-server")
                )
            time.sleep(0.2)
        # A client that reconnects if a test run ends or a connection breaks.
        loop = f"while :; do iperf3 -c {EAST_HOST} -b 2M -t 86400 -i 0 -P 1; sleep 1; done"
        state["pids"]["iperf3-client"] = self._spawn("west", "iperf3-client", ["sh", "-c", loop])
        state["pids"]["ping"] = self._spawn("west", "ping", ["ping", "-i", "1", EAST_HOST])

    def _wait_tunnel(self, state: dict[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for node, pid in state["pids"].items():
                if not alive(pid):
                    raise LabError(
                        f"{node} exited while the tunnel was coming up; its log:\n"
                        + self.log_tail(node)
                    )
            try:
                sas = asyncio.run(_list_sas(control_socket(self.opts)))
            except (ControlConnectionError, ControlError, OSError) as exc:
                last = str(exc)
            else:
                if any(
                    sa.get("state") == "ESTABLISHED"
                    and any(c.get("state") == "INSTALLED" for c in sa.get("children", []))
                    for sa in sas
                ):
                    return
                last = "no established IKE SA with an installed Child SA yet"
            time.sleep(0.5)
        raise LabError(
            f"the tunnel did not come up within {timeout:.0f} s ({last}); gw-west's log:\n"
            + self.log_tail("gw-west")
        )

    def _check_traffic(self) -> None:
        west = self.topo.ns("west")
        proc = west.run(
            "ping", "-c", "3", "-i", "0.3", "-W", "5", EAST_HOST, check=False, timeout=60
        )
        if proc.returncode != 0:
            raise LabError(f"ping west -> east through the tunnel failed:\n{proc.stdout}")
        sas = asyncio.run(_list_sas(control_socket(self.opts)))
        out = sum(c.get("packets_out", 0) for sa in sas for c in sa.get("children", []))
        if out < 3:
            raise LabError(
                f"ping passed but gw-west counted {out} ESP packets out: "
                "traffic bypassed the tunnel"
            )

    # ------------------------------------------------------------------ status / down

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.opts.directory / f"{name}.log"
        if not path.exists():
            path = self.opts.directory / name / "charon.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

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
            sas = asyncio.run(_list_sas(control_socket(self.opts)))
        except (ControlConnectionError, ControlError, OSError) as exc:
            error = str(exc)
        result = {
            "up": True,
            "mode": state["mode"],
            "peer": state["peer"],
            "nat": state["nat"],
            "nodes": nodes,
            "processes": procs,
            "sas": sas,
            "control_socket": str(control_socket(self.opts)),
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


async def _list_sas(path: Path) -> list[dict[str, Any]]:
    async with await ControlClient.connect(path, timeout=2.0) as client:
        result: list[dict[str, Any]] = await client.list_sas()
        return result


def alive(pid: int) -> bool:
    """Whether process `pid` still exists."""
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
