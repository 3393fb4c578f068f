"""The lab inside a virtme-ng VM, for hosts whose kernel has no ESP.

Host side (`VmLab`): boots the VM in the background with the lab agent as its command,
follows the agent's progress until it reports the lab up (or failed), and keeps what later
commands need in the host's lab directory (state.json: the VM's pid, two forwarded ports,
a token, the VM's measured slowness). Guest side (`run_agent`): brings the namespace lab
up with gateway.lab.local (the guest kernel has ESP), then serves two TCP ports on the
VM's user-mode NIC that qemu forwards from the host's loopback only:

- the lab port: one JSON request per connection, {"token", "cmd": "status" | "down"};
- the control port: after a first line holding the token, a byte pipe to gw-west's
  control socket, so `gateway lab tui` on the host talks to the daemon in the VM.

The protocol, without races on a slow or busy machine:

1. The agent first times a fixed calibration step (gateway/lab/pace.py) and appends
   `{"step": "calibrate", "factor": ...}` to progress.jsonl in the shared folder; every
   step after it (network, namespaces, gw-east, gw-west, tunnel, traffic, listen) appends
   a `start` record with its budget (reference seconds x the measured slowness), `done`
   or `fail`, and `extend` when a re-measurement finds the VM slower than assumed.
2. The host waits for the first record within a boot budget scaled by its own measured
   slowness, then for each step within that step's budget plus a margin: a silent agent
   fails the step it was in, with the agent's log and the VM console's last lines.
3. The agent writes up.json (atomically) only once both ports LISTEN. Until then qemu
   answers a connection to a forwarded port with a reset, which is why `up.json` before
   listening lost the race on a loaded machine.
4. The host's requests still retry a refused or reset connection, or an empty answer,
   until a deadline scaled by the VM's slowness, and say what they wait for.

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
    alive,
    control_socket,
    read_state,
    remove_lab_directory,
)
from gateway.lab.pace import Deadline, Pace, Report, StepFailed, measure_factor
from gateway.lab.vm import vm_kernel, vng_binary

GUEST_ADDR = "10.0.2.15"  # qemu user-mode networking's guest address
GUEST_LAB_PORT = 7001
GUEST_CONTROL_PORT = 7002
# Guest-local (tmpfs) and NOT the host's lab directory, which the guest also sees, mounted
# at the same path, as its shared folder.
GUEST_LAB_DIR = Path("/run/gateway-lab-guest")

# Budgets in reference seconds (gateway/lab/pace.py). The boot is scaled by the host's
# slowness (the VM is not running yet): 20-40 s until the agent ran, measured here idle.
BOOT_REFERENCE = 150.0
# The rest by the VM's: one request once the agent listens, the lab's tear-down inside
# the VM (the gateways send their Deletes), the power-off after it.
ANSWER_REFERENCE = 2.0
DOWN_REFERENCE = 8.0
POWEROFF_REFERENCE = 3.0
# The host's patience beyond a step's own budget: the agent enforces the budget and
# reports the failure; the host steps in only when the agent itself went silent.
STEP_MARGIN = 60.0
# Assumed when no measurement is known (a state.json from an older version).
DEFAULT_VM_FACTOR = 40.0
RETRIED = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class VmLab:
    def __init__(self, opts: LabOptions) -> None:
        self.opts = opts
        self.state_file = opts.directory / "state.json"
        self.shared = opts.directory / "vm"

    def load_state(self) -> dict[str, Any] | None:
        return read_state(self.state_file)

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.state_file)

    def vm_pace(self, state: dict[str, Any], report: Report | None = None) -> Pace:
        """The VM's slowness as measured at boot; a re-measurement (when a deadline runs
        out) times the host now and scales by the VM/host ratio seen at boot."""
        factor = float(state.get("factor") or DEFAULT_VM_FACTOR)
        ratio = factor / max(float(state.get("host_factor") or 1.0), 1.0)
        pace = Pace(factor=factor, measure=lambda: max(measure_factor() * ratio, factor))
        if report is not None:
            pace.report = report
        return pace

    # ------------------------------------------------------------------ up

    def up(self, pace: Pace) -> dict[str, Any]:
        """Boot the VM and follow its agent until the lab is up; `pace` is the host's
        (measured) and receives the progress records, the VM's marked `where: vm`."""
        if self.load_state() is not None:
            raise LabError("a lab is already up: run `gateway lab down` first")
        self.opts.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.shared.mkdir(mode=0o700, exist_ok=True)
        token = secrets.token_hex(16)
        lab_port, control_port = _free_port(), _free_port()
        (self.shared / "token").write_text(token)
        (self.shared / "token").chmod(0o600)
        script = self._agent_script()
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
            "host_factor": round(pace.factor, 2),
            "started": time.time(),
        }
        self._save_state(state)
        try:
            boot = pace.deadline("boot", BOOT_REFERENCE)
            pace.report(
                {
                    "step": "boot",
                    "event": "start",
                    "text": f"booting a VM with {kernel.name} (pid {proc.pid}) under software "
                    "emulation; waiting for its lab agent",
                    "budget": round(boot.budget),
                }
            )
            result = self._follow_agent(proc, boot, pace)
            state["factor"] = result.get("factor", DEFAULT_VM_FACTOR)
            self._save_state(state)
            with self.vm_pace(state, pace.report).step(
                "answer",
                f"asking the lab agent in the VM (127.0.0.1:{lab_port}) for the lab's status",
                ANSWER_REFERENCE,
            ):
                return self.status()
        except BaseException:
            self.down()
            raise

    def _agent_script(self) -> Path:
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
        return script

    def _follow_agent(
        self, proc: subprocess.Popen[bytes], boot: Deadline, pace: Pace
    ) -> dict[str, Any]:
        """Relay the agent's progress records until up.json says up or failed.

        Until the first record the boot deadline applies (it re-measures the host before
        giving up); then each step's own budget plus STEP_MARGIN, restarted by each record.
        """
        records = self.shared / "progress.jsonl"
        seen = 0
        step, patience, since = "boot", 0.0, time.monotonic()
        while True:
            for record in _read_records(records)[seen:]:
                if seen == 0:
                    pace.report({"step": "boot", "event": "done", "elapsed": round(boot.elapsed())})
                seen += 1
                record["where"] = "vm"
                pace.report(record)
                step = str(record.get("step", step))
                patience = float(record.get("budget") or 0.0) + STEP_MARGIN
                since = time.monotonic()
            result = _read_result(self.shared / "up.json")
            if result is not None:
                if result.get("ok"):
                    return result
                raise StepFailed(
                    str(result.get("step") or step),
                    f"(inside the VM) {result.get('error')}",
                    str(result.get("logs") or "") or self.logs(),
                )
            if proc.poll() is not None:
                raise StepFailed(
                    step,
                    f"the VM exited ({proc.returncode}) before the lab came up",
                    self.logs(),
                )
            if seen == 0:
                if boot.expired():
                    raise boot.fail("the VM did not start the lab agent", self.logs())
            elif time.monotonic() - since > patience:
                raise StepFailed(
                    step,
                    f"the lab agent in the VM went silent for {patience:.0f} s",
                    self.logs(),
                )
            time.sleep(0.5)

    def logs(self) -> str:
        return (
            "--- lab agent log (last 40 lines) ---\n"
            + _tail(self.shared / "agent.log")
            + "\n--- VM console (last 40 lines) ---\n"
            + _tail(self.shared / "console.log")
        )

    # ------------------------------------------------------------------ commands

    def request(
        self,
        cmd: str,
        reference_seconds: float = ANSWER_REFERENCE,
        progress: Callable[[str], None] = _stderr,
    ) -> dict[str, Any]:
        """One request to the agent. A refused or reset connection, or an empty answer
        (qemu accepted on the host but nothing listens in the guest yet), is retried
        until a deadline scaled by the VM's slowness; the first retry says so."""
        state = self.load_state()
        if state is None:
            raise LabError("no lab is up")
        port = state["lab_port"]
        deadline = self.vm_pace(state).deadline(f"agent {cmd}", reference_seconds)
        told = False
        while True:
            if not alive(state["vm_pid"]):
                raise LabError(
                    "the lab's VM is not running (run `gateway lab down` to clean up); "
                    + self.logs()
                )
            try:
                data = _ask(port, {"token": state["token"], "cmd": cmd}, deadline.remaining())
            except RETRIED as exc:
                why = exc.strerror or type(exc).__name__
            except TimeoutError:
                raise LabError(
                    f"the lab agent in the VM accepted {cmd!r} on 127.0.0.1:{port} but did "
                    f"not answer within {deadline.budget:.0f} s\n" + self.logs()
                ) from None
            except OSError as exc:
                raise LabError(f"cannot reach the lab agent in the VM: {exc}") from None
            else:
                if data:
                    break
                why = "the connection closed without an answer"
            if deadline.expired():
                raise LabError(
                    f"the lab agent in the VM did not answer {cmd!r} on 127.0.0.1:{port} "
                    f"within {deadline.budget:.0f} s (last: {why})\n" + self.logs()
                )
            if not told:
                progress(
                    f"lab: waiting for the lab agent in the VM to answer on 127.0.0.1:{port} "
                    f"({why}); up to {deadline.remaining():.0f} s more"
                )
                told = True
            time.sleep(0.5)
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError:
            raise LabError(f"the lab agent in the VM answered garbage: {data[:200]!r}") from None
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
            "slowness": state.get("factor"),
            "control": f"127.0.0.1:{state['control_port']} (token in {self.state_file})",
        }
        return result

    def down(self) -> list[str]:
        state = self.load_state()
        done: list[str] = []
        if state is not None:
            pid = state["vm_pid"]
            serving = (_read_result(self.shared / "up.json") or {}).get("ok")
            # an agent that never reported up (or failed) serves nothing: no request then
            if alive(pid) and serving:
                try:
                    self.request("down", DOWN_REFERENCE)
                    done.append("lab torn down inside the VM")
                except LabError as exc:
                    done.append(f"could not tear down inside the VM ({exc})")
                poweroff = self.vm_pace(state).deadline("poweroff", POWEROFF_REFERENCE)
                while alive(pid) and not poweroff.expired():
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


def _ask(port: int, request: dict[str, Any], timeout: float) -> bytes:
    """Send one request line, read one reply line ("" if the peer closed first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=max(timeout, 1.0)) as s:
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The agent's progress records; a line still being written is left for next time."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            record = json.loads(line)
        except ValueError:
            record = {"event": "note", "text": line.strip()}
        records.append(record if isinstance(record, dict) else {"event": "note"})
    return records


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        result = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None  # not yet (the agent writes it atomically, but be forgiving)
    return result if isinstance(result, dict) else {"ok": False, "error": repr(result)}


def _stop_group(pgid: int, timeout: float = 10.0) -> bool:
    """End the process group `pgid` (the VM's: vng started in its own session by us)."""

    def members() -> bool:
        # vng is our child when `up` itself cleans up: reap it, or it lingers as a zombie
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)
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
    """Inside the VM: measure, bring the lab up, listen, report up, serve until `down`."""
    opts = replace(opts, directory=GUEST_LAB_DIR)
    token = (shared / "token").read_text().strip()
    records = shared / "progress.jsonl"

    def report(record: dict[str, object]) -> None:
        with open(records, "a") as f:
            f.write(json.dumps(record) + "\n")

    pace = Pace.measured(report=report)
    print(f"agent: slowness {pace.factor:.1f} at {time.time():.1f}", flush=True)
    lab = Lab(opts)
    try:
        with pace.step("network", "bringing up the VM's NIC for the lab ports", 2.0):
            _setup_nic()
        lab.up(pace)
    except StepFailed as exc:  # the host shows it; then the VM powers off
        _fail(shared, exc)
        return 1
    except Exception as exc:  # noqa: BLE001 - anything else the host must see, named
        _fail(shared, StepFailed("agent", f"{type(exc).__name__}: {exc}"))
        return 1

    pace.report(
        {
            "step": "listen",
            "event": "start",
            "text": "opening the lab's ports to the host",
            "budget": round(pace.budget(2.0)),
        }
    )

    def listening() -> None:
        pace.report({"step": "listen", "event": "done"})
        _write_result(shared, {"ok": True, "factor": round(pace.factor, 2)})

    try:
        asyncio.run(_serve(lab, token, opts, listening))
    except StepFailed as exc:
        _fail(shared, exc)
        lab.down(quiet=True)
        return 1
    print(f"agent: exiting at {time.time():.1f}", flush=True)
    return 0


def _fail(shared: Path, exc: StepFailed) -> None:
    print(f"agent: {exc}", flush=True)
    _write_result(shared, {"ok": False, "step": exc.step, "error": exc.reason, "logs": exc.logs})


def _write_result(shared: Path, result: dict[str, Any]) -> None:
    """up.json, atomically: the host never reads half of it."""
    tmp = shared / "up.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(shared / "up.json")


def _setup_nic() -> None:
    for dev in sorted(os.listdir("/sys/class/net")):
        if dev != "lo":
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
            subprocess.run(["ip", "addr", "add", f"{GUEST_ADDR}/24", "dev", dev], check=True)
            return
    raise LabError("the VM has no network interface for the lab ports")


async def _serve(lab: Lab, token: str, opts: LabOptions, listening: Callable[[], None]) -> None:
    """Serve the lab and control ports; call `listening` once both accept connections."""
    stop = asyncio.Event()

    async def lab_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
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
            first = await asyncio.wait_for(reader.readline(), 30)
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

    try:
        s1 = await asyncio.start_server(lab_request, GUEST_ADDR, GUEST_LAB_PORT)
        s2 = await asyncio.start_server(control_pipe, GUEST_ADDR, GUEST_CONTROL_PORT)
    except OSError as exc:
        raise StepFailed("listen", f"cannot listen on {GUEST_ADDR}: {exc}") from None
    listening()  # only now: a request from the host can no longer meet a closed port
    await stop.wait()
    await asyncio.sleep(0.2)  # let the `down` reply reach the host
    s1.close()
    s2.close()
