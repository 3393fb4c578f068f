"""Running our daemon in a test's namespace and asking it things with `gateway ctl`.

Used by tests/host/test_daemon*.py and tests/kernel/test_daemon*.py. Every process is
started through the namespace's popen (so the fixture stops it) and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket as socket_mod
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.netns import Netns

REPO = Path(__file__).resolve().parents[2]
PSK = "lab-secret-123456"


def gateway_config(
    *,
    socket: Path,
    listen: list[str],
    conns: list[dict[str, Any]],
    dataplane: str = "none",
    metrics: str = "off",
    extra: str = "",
) -> str:
    """A TOML config; each conn: name, local, remote, local_id, remote_id, local_ts,
    remote_ts and optionally start_action, child, ike, esp, dpd_delay, mode, psk,
    dpd_action, conn_extra and child_extra (more TOML lines for the connection / child);
    or, for several Children, `children`: a list of dicts with the Child's keys (child,
    local_ts, remote_ts, esp, mode, start_action, dpd_action, child_extra)."""
    lines = [
        "[gateway]",
        f"listen = {json.dumps(listen)}",
        f'control_socket = "{socket}"',
        f'metrics_listen = "{metrics}"',
        f'dataplane = "{dataplane}"',
        extra,
    ]
    for c in conns:
        name = c["name"]
        lines += [
            "",
            f"[connections.{name}]",
            f'local_addrs = ["{c["local"]}"]',
            f'remote_addrs = ["{c["remote"]}"]',
            f"ike_proposals = {json.dumps(c.get('ike', ['aes256gcm16-prfsha384-x25519']))}",
            f'local = {{ auth = "psk", id = "{c["local_id"]}" }}',
            f'remote = {{ auth = "psk", id = "{c["remote_id"]}" }}',
            f'psk = "{c.get("psk", PSK)}"',
            f'dpd_delay = "{c.get("dpd_delay", "0s")}"',
            c.get("conn_extra", ""),
        ]
        for k in c.get("children", [c]):
            lines += [
                "",
                f"[connections.{name}.children.{k.get('child', 'net')}]",
                f"local_ts = {json.dumps(k['local_ts'])}",
                f"remote_ts = {json.dumps(k['remote_ts'])}",
                f"esp_proposals = {json.dumps(k.get('esp', ['aes256gcm16']))}",
                f'mode = "{k.get("mode", "tunnel")}"',
                f'start_action = "{k.get("start_action", "none")}"',
                f'dpd_action = "{k.get("dpd_action", "clear")}"',
                k.get("child_extra", ""),
            ]
    return "\n".join(lines) + "\n"


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A private directory for control sockets on a local file system (/run): inside the
    VM, unix sockets cannot live on the shared 9p folders that hold pytest's tmp_path."""
    base = "/run" if os.access("/run", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="gwt-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ctl(
    socket: Path, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "ctl", "--socket", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"gateway ctl {' '.join(args)}: {proc.returncode} {proc.stderr}")
    return proc


def ctl_json(socket: Path, *args: str) -> Any:
    return json.loads(ctl(socket, *args, "--json").stdout)


def api(path: Path, cmd: str, io_timeout: float = 300, **args: Any) -> Any:
    """One control API request on a fresh connection, without starting a `gateway ctl`
    process (under the VM's emulation a Python start costs seconds). An error reply raises
    AssertionError with its code and message."""
    with socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM) as s:
        s.settimeout(io_timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise AssertionError(f"control API {cmd}: connection closed")
            data += chunk
    reply = json.loads(data)
    if not reply["ok"]:
        raise AssertionError(f"control API {cmd} {args}: {reply['error']}")
    return reply["result"]


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Gateway:
    """One `gateway run` process inside a namespace."""

    ns: Netns
    config: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls, ns: Netns, workdir: Path, name: str, config_text: str, wait: float = 240
    ) -> Gateway:
        gw = cls.launch(ns, workdir, name, config_text)
        gw.ready(wait)
        return gw

    @classmethod
    def launch(cls, ns: Netns, workdir: Path, name: str, config_text: str) -> Gateway:
        """Start without waiting (then ready()): daemons that start side by side (under
        the VM's emulation each start costs the better part of a minute)."""
        config = workdir / f"{name}.toml"
        config.write_text(config_text)
        log = workdir / f"{name}.log"
        socket = _socket_of(config_text)
        with open(log, "wb") as out:
            proc = ns.popen(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "-c",
                str(config),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
            )
        return cls(ns, config, socket, log, proc)

    def ready(self, wait: float = 240) -> None:
        """Wait for the control socket (the daemon serves)."""
        # generous: under the VM's emulation a start can take a minute on a busy machine
        # (with [gateway.xdp] the bcc compile comes first: give it `wait` of several minutes)
        name = self.config.stem
        wait_for(f"{name}'s control socket", lambda: self.socket.exists() or self.dead(), wait)
        if self.dead():
            raise AssertionError(f"{name} exited {self.proc.returncode}:\n{self.log.read_text()}")

    def dead(self) -> bool:
        return self.proc.poll() is not None

    def sas(self) -> list[dict[str, Any]]:
        return list(api(self.socket, "list-sas"))

    def installed(self, connection: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `connection` has `count` ESTABLISHED IKE SAs with INSTALLED children."""

        def probe() -> list[dict[str, Any]] | None:
            sas = [
                s
                for s in self.sas()
                if s["connection"] == connection
                and s["state"] == "ESTABLISHED"
                and s["children"]
                and all(c["state"] == "INSTALLED" for c in s["children"])
            ]
            return sas if len(sas) == count else None

        try:
            return list(wait_for(f"{connection} installed", probe))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlist-sas: {self.sas()}\n{self.log_text()}") from None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait: the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"did not stop on SIGTERM:\n{self.log.read_text()}") from None
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text()


def _socket_of(config_text: str) -> Path:
    for line in config_text.splitlines():
        if line.startswith("control_socket"):
            return Path(line.split("=", 1)[1].strip().strip('"'))
    raise ValueError("config without control_socket")


GET = (
    "import sys, urllib.request\n"
    "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=5).read())\n"
)


def ns_get(ns: Netns, url: str) -> str:
    """GET from inside the namespace (its loopback is not the host's)."""
    proc = ns.run(sys.executable, "-c", GET, url, check=False, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_in(ns: Netns, url: str, timeout: float = 60) -> Samples:
    """/metrics from inside the namespace without starting a process (a socket made in
    the namespace stays there): (series name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.xfrm.channel import in_netns

    with in_netns(ns.name):
        conn = socket_mod.create_connection(_host_port(url), timeout=timeout)
    with conn:
        path = url.split("/", 3)[3] if url.count("/") >= 3 else ""
        conn.sendall(f"GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"GET {url}: {head[:200]!r}")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("/")[2].rpartition(":")
    return host.strip("[]"), int(port)


@contextmanager
def recorded_events(sock: Path, timeout: float = 30.0) -> Iterator[list[dict[str, Any]]]:
    """The events the daemon at `sock` publishes while the block runs, in order: the
    subscription is answered before the block starts (unlike a `gateway ctl events`
    process, which may start after the first events). The list is complete once the
    block has ended (the daemon stopped, or the subscription closed then)."""
    conn = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(str(sock))
    stream = conn.makefile("rb")
    conn.sendall(b'{"id": 1, "cmd": "subscribe"}\n')
    reply = json.loads(stream.readline())
    assert reply.get("ok"), reply
    conn.settimeout(None)
    events: list[dict[str, Any]] = []
    last = [time.monotonic()]

    def read() -> None:
        try:
            for line in stream:
                message = json.loads(line)
                if "event" in message:
                    events.append(message["event"])
                    last[0] = time.monotonic()
        except (OSError, ValueError):
            pass

    reader = threading.Thread(target=read, name="events", daemon=True)
    reader.start()
    try:
        yield events
    finally:
        # what was published before the block ended is read (quiet for half a second,
        # or the daemon closed the stream), then the subscription ends
        deadline = time.monotonic() + 5
        while reader.is_alive() and time.monotonic() < deadline:
            if time.monotonic() - last[0] > 0.5:
                break
            reader.join(timeout=0.1)
        conn.close()
        reader.join(timeout=5)
