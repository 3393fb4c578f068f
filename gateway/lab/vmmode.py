"""The lab inside a virtme-ng VM, for hosts whose kernel has no ESP.

Host side (`VmLab`): boots the VM in the background with the lab agent as its command,
waits until the agent reports the lab up (or failed), and keeps what later commands need
in the host's lab directory (state.json: the VM's pid, two forwarded ports, a token).
Guest side (`run_agent`): brings the namespace lab up with gateway.lab.local (the guest
kernel has ESP), then serves two TCP ports on the VM's user-mode NIC that qemu forwards
from the host's loopback only:

- the lab port: one JSON request per connection, {"token", "cmd": "status" | "down"};
- the control port: after a first line holding the token, a byte pipe to gw-west's
  control socket, so `gateway lab tui` on the host talks to the daemon in the VM.

The token (random, in the 0700 lab directory) keeps other local users off both ports, as
the 0600 mode does for the daemon's unix socket. Unix sockets cannot cross the VM's 9p
shares, hence TCP. `down` answers, tears the lab down and ends the agent, which powers
the VM off; the host then waits for the VM process (ours, by pid) to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.lab.local import (
    Lab,
    LabError,
    LabOptions,
    control_socket,
    read_state,
    remove_lab_directory,
)
from gateway.lab.local import (
    alive as _alive,
)
from gateway.lab.vm import vm_kernel, vng_binary

GUEST_ADDR = "10.0.2.15"  # qemu user-mode networking's guest address
GUEST_LAB_PORT = 7001
GUEST_CONTROL_PORT = 7002
# Guest-local (tmpfs) and NOT the host's lab directory, which the guest also sees, mounted
# at the same path, as its shared folder.
GUEST_LAB_DIR = Path("/run/gateway-lab-guest")
BOOT_TIMEOUT = float(os.environ.get("GATEWAY_LAB_VM_TIMEOUT", "1500"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VmLab:
    def __init__(self, opts: LabOptions) -> None:
        self.opts = opts
        self.state_file = opts.directory / "state.json"
        self.shared = opts.directory / "vm"

    def load_state(self) -> dict[str, Any] | None:
        return read_state(self.state_file)

    # ------------------------------------------------------------------ up

    def up(self, progress: Callable[[str], None] = print) -> dict[str, Any]:
        if self.load_state() is not None:
            raise LabError("a lab is already up: run `gateway lab down` first")
        self.opts.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.shared.mkdir(mode=0o700, exist_ok=True)
        token = secrets.token_hex(16)
        lab_port, control_port = _free_port(), _free_port()
        (self.shared / "token").write_text(token)
        (self.shared / "token").chmod(0o600)
        agent_args = ["--peer", self.opts.peer]
        if self.opts.nat:
            agent_args.append("--nat")
        if not self.opts.xdp:
            agent_args.append("--no-xdp")
        if not self.opts.traffic:
            agent_args.append("--no-traffic")
        script = self.shared / "agent.sh"
        script.write_text(
            "#!/bin/sh\n"
            "export PYTHONDONTWRITEBYTECODE=1\n"
            f"cd {shlex.quote(str(Path.cwd()))}\n"
            f"exec {shlex.quote(sys.executable)} -m gateway lab agent "
            f"--shared {shlex.quote(str(self.shared))} {' '.join(agent_args)} "
            f"> {shlex.quote(str(self.shared / 'agent.log'))} 2>&1\n"
        )
        script.chmod(0o700)
        fwd = (
            f"hostfwd=tcp:127.0.0.1:{lab_port}-{GUEST_ADDR}:{GUEST_LAB_PORT},"
            f"hostfwd=tcp:127.0.0.1:{control_port}-{GUEST_ADDR}:{GUEST_CONTROL_PORT}"
        )
        argv = [vng_binary()]
        if os.environ.get("GATEWAY_VM_KVM") != "1":
            argv.append("--disable-kvm")
        kernel = vm_kernel()
        argv += [
            "--run",
            str(kernel),
            "--user",
            "root",
            "--memory",
            "2G",
            "--cpus",
            "2",
            "--rwdir",
            str(self.shared),
            # `=` form: the value starts with '-', which argparse would take for a flag
            f"--qemu-opts=-netdev user,id=lab0,restrict=on,{fwd} "
            "-device virtio-net-pci,netdev=lab0",
            "--exec",
            str(script),
        ]
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        console = open(self.shared / "console.log", "wb")  # noqa: SIM115 - child keeps it
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            console.close()
        state = {
            "mode": "vm",
            "peer": self.opts.peer,
            "nat": self.opts.nat,
            "vm_pid": proc.pid,
            "kernel": str(kernel),
            "lab_port": lab_port,
            "control_port": control_port,
            "token": token,
            "started": time.time(),
        }
        self.state_file.write_text(json.dumps(state, indent=2))
        self.state_file.chmod(0o600)
        progress(
            f"lab: booting a VM with {kernel.name} (pid {proc.pid}); under software "
            "emulation this takes a few minutes"
        )
        try:
            self._wait_up(proc, progress)
        except BaseException:
            self.down()
            raise
        return self.status()

    def _wait_up(self, proc: subprocess.Popen[bytes], progress: Callable[[str], None]) -> None:
        result_file = self.shared / "up.json"
        progress_file = self.shared / "progress.log"
        shown = 0
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if progress_file.exists():
                lines = progress_file.read_text(errors="replace").splitlines()
                for line in lines[shown:]:
                    progress(f"  vm: {line}")
                shown = len(lines)
            if result_file.exists():
                result = json.loads(result_file.read_text())
                if result.get("ok"):
                    return
                raise LabError(f"the lab failed inside the VM: {result.get('error')}")
            if proc.poll() is not None:
                raise LabError(
                    f"the VM exited ({proc.returncode}) before the lab came up; agent log:\n"
                    + _tail(self.shared / "agent.log")
                    + "\nconsole:\n"
                    + _tail(self.shared / "console.log")
                )
            time.sleep(1.0)
        raise LabError(f"the lab did not come up in the VM within {BOOT_TIMEOUT:.0f} s")

    # ------------------------------------------------------------------ commands

    def request(self, cmd: str, timeout: float = 60.0) -> dict[str, Any]:
        state = self.load_state()
        if state is None:
            raise LabError("no lab is up")
        if not _alive(state["vm_pid"]):
            raise LabError("the lab's VM is not running (run `gateway lab down` to clean up)")
        try:
            with socket.create_connection(("127.0.0.1", state["lab_port"]), timeout=timeout) as s:
                s.sendall(json.dumps({"token": state["token"], "cmd": cmd}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise LabError(f"cannot reach the lab agent in the VM: {exc}") from None
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError:
            raise LabError("the lab agent in the VM gave no answer") from None
        if not reply.get("ok"):
            raise LabError(f"lab agent: {reply.get('error')}")
        result: dict[str, Any] = reply["result"]
        return result

    def status(self) -> dict[str, Any]:
        state = self.load_state()
        if state is None:
            return {"up": False, "mode": None, "nodes": [], "processes": [], "sas": []}
        result = self.request("status")
        result["mode"] = "vm"
        result["vm"] = {
            "pid": state["vm_pid"],
            "kernel": state["kernel"],
            "control": f"127.0.0.1:{state['control_port']} (token in {self.state_file})",
        }
        return result

    def down(self) -> list[str]:
        state = self.load_state()
        done: list[str] = []
        if state is not None:
            pid = state["vm_pid"]
            if _alive(pid):
                try:
                    self.request("down", timeout=180)
                    done.append("lab torn down inside the VM")
                except LabError as exc:
                    done.append(
                        f"could not tear down inside the VM ({exc}); agent log:\n"
                        + _tail(self.shared / "agent.log")
                    )
                deadline = time.monotonic() + 60
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.5)
            # vng, virtme-run and qemu share the session we started vng in: end the group.
            if _stop_group(pid):
                done.append(f"stopped the VM (process group {pid})")
            else:
                done.append("the VM powered off")
        remove_lab_directory(self.opts.directory)
        return done

    def connector(self) -> Any:
        """A TUI connector reaching gw-west's control API through the VM's control port."""
        from gateway.control.client import ControlClient
        from ui.control_source import ControlSource

        state = self.load_state()
        if state is None:
            raise LabError("no lab is up")
        port, token = state["control_port"], state["token"]

        async def connect() -> Any:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 26)
            writer.write(token.encode() + b"\n")
            await writer.drain()
            return ControlSource(ControlClient(reader, writer))

        return connect


def _stop_group(pgid: int, timeout: float = 10.0) -> bool:
    """End the process group `pgid` (the VM's: vng started in its own session by us)."""

    def members() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    if not members():
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while members() and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


# ---------------------------------------------------------------------- guest side


def run_agent(shared: Path, opts: LabOptions) -> int:
    """Inside the VM: bring the lab up, report to the host, serve until `down`."""
    opts = replace(opts, directory=GUEST_LAB_DIR)
    token = (shared / "token").read_text().strip()
    progress_file = shared / "progress.log"

    def progress(line: str) -> None:
        with open(progress_file, "a") as f:
            f.write(line + "\n")

    _setup_nic()
    lab = Lab(opts)
    try:
        # Under software emulation bcc's compile of the XDP/TC programs alone can take a
        # few minutes before gw-west even starts IKE.
        lab.up(progress=progress, timeout=900 if opts.xdp else 300)
    except Exception as exc:  # report any failure to the host, then power off
        (shared / "up.json").write_text(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    (shared / "up.json").write_text(json.dumps({"ok": True}))
    asyncio.run(_serve(lab, token, opts))
    print(f"agent: exiting at {time.time():.1f}", flush=True)
    return 0


def _setup_nic() -> None:
    for dev in sorted(os.listdir("/sys/class/net")):
        if dev != "lo":
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
            subprocess.run(["ip", "addr", "add", f"{GUEST_ADDR}/24", "dev", dev], check=True)
            return
    raise LabError("the VM has no network interface for the lab ports")


async def _serve(lab: Lab, token: str, opts: LabOptions) -> None:
    stop = asyncio.Event()

    async def lab_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            req = json.loads(line)
            if not isinstance(req, dict) or not secrets.compare_digest(
                str(req.get("token", "")), token
            ):
                reply: dict[str, Any] = {"ok": False, "error": "bad token"}
            elif req.get("cmd") == "status":
                reply = {"ok": True, "result": await asyncio.to_thread(lab.status)}
            elif req.get("cmd") == "down":
                print(f"agent: down requested at {time.time():.1f}", flush=True)
                done = await asyncio.to_thread(lab.down)
                print(f"agent: down done at {time.time():.1f}: {done}", flush=True)
                reply = {"ok": True, "result": {"done": done}}
                stop.set()
            else:
                reply = {"ok": False, "error": f"unknown command {req.get('cmd')!r}"}
        except (ValueError, TimeoutError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except (OSError, GatewayError, subprocess.SubprocessError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def control_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.readline(), 10)
        except (TimeoutError, ValueError):
            writer.close()
            return
        if not secrets.compare_digest(first.strip().decode(errors="replace"), token):
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_unix_connection(str(control_socket(opts)))
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    s1 = await asyncio.start_server(lab_request, GUEST_ADDR, GUEST_LAB_PORT)
    s2 = await asyncio.start_server(control_pipe, GUEST_ADDR, GUEST_CONTROL_PORT)
    await stop.wait()
    await asyncio.sleep(0.2)  # let the `down` reply reach the host
    s1.close()
    s2.close()
