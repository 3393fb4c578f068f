"""The Vagrant lab's provisioning, run without Vagrant's providers (no nested
virtualization on these machines).

deploy/provision.sh provisions every node of the Vagrantfile, in the Vagrantfile's order,
inside a network namespace with the Vagrantfile's own addresses (NICs eth1, eth2 as on a
Vagrant box, and a management eth0 holding the default route, as Vagrant's NAT NIC) and a
mount namespace of its own: private /etc, /opt, /usr/local, /var/log, /var/lib/prometheus,
/run/gateway and /run/lab, as separate VMs would have. systemd does not run here, so
provision.sh starts the services as background processes; `--no-install` makes it
install nothing (the VM sees the host's packages and venv; it must not apt-get), and
/opt/gateway/venv is the project's venv.

Then the same working topology as `make lab` has to stand: each node's provisioning
passed its own checks (gw-west: tunnel up, pings across it, ESP counted, Prometheus
scraping it), west's iperf3/ping traffic keeps crossing the tunnel, Prometheus on each
gateway holds the gateway's series, and the console, started on gw-west as the docs tell
a Vagrant user (`/opt/gateway/venv/bin/gateway tui`), shows the SA in a real terminal.
One test: the VM's time is expensive (two daemons, two bcc compiles, two Prometheus).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway import netns as netns_mod
from gateway.lab import checks
from gateway.netns import Netns
from tests.support.terminal import Terminal

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # the project's venv (not resolved: a symlink)
PROVISION = ROOT / "deploy" / "provision.sh"
# What the node's mount namespace makes private: overlays keep what is there.
OVERLAID = ("/etc", "/opt", "/usr/local")
BOUND = ("/var/log", "/run/gateway", "/run/lab")
# gw-east runs without XDP, as in `make lab` (and one bcc compile less in the VM);
# gw-west has it, as everywhere.
OPTIONS = {"gw-east": ["--no-xdp"]}
QUERY = (
    "import sys, urllib.parse, urllib.request\n"
    "q = urllib.parse.urlencode({'query': sys.argv[1]})\n"
    "url = 'http://127.0.0.1:9090/api/v1/query?' + q\n"
    "sys.stdout.buffer.write(urllib.request.urlopen(url, timeout=30).read())\n"
)


def vagrant_nodes() -> dict[str, list[tuple[str, str]]]:
    """NODES of the Vagrantfile, in its order: name -> [(address, segment), ...]."""
    text = (ROOT / "Vagrantfile").read_text()
    nodes = {}
    for m in re.finditer(r'^\s+"([a-z-]+)"\s+=> \[(.*)\],?\s*$', text, flags=re.M):
        nodes[m.group(1)] = re.findall(r'\["([\d.]+)", "([a-z-]+)"\]', m.group(2))
    assert nodes, "no NODES in the Vagrantfile"
    return nodes


@dataclass
class Node:
    """One Vagrant VM: a network namespace plus a mount namespace held by a sleeper."""

    name: str
    ns: Netns
    root: Path
    holder: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    def enter(self, *argv: str) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, GATEWAY_SRC=str(ROOT))
        return subprocess.run(
            self.enter(*argv), capture_output=True, text=True, timeout=timeout, env=env
        )

    def hold(self) -> None:
        """Start the sleeper that owns this node's mount namespace."""
        lines = ["set -e"]
        for i, path in enumerate(OVERLAID):
            upper, work = self.root / f"upper{i}", self.root / f"work{i}"
            upper.mkdir()
            work.mkdir()
            lines.append(
                f"mount -t overlay overlay -o lowerdir={path},upperdir={upper},"
                f"workdir={work} {path}"
            )
        for path in BOUND:
            mine = self.root / path.strip("/").replace("/", "-")
            mine.mkdir()
            lines.append(f"mount --bind {mine} {path}")
        lines += [
            "mount -t tmpfs tmpfs /var/lib/prometheus",
            "mkdir -p /opt/gateway",
            f"ln -sfn {shlex.quote(str(VENV))} /opt/gateway/venv",
            f"ln -sfn {shlex.quote(str(ROOT))} /opt/gateway/src",
            "echo ready",
            "exec sleep infinity",
        ]
        self.holder = subprocess.Popen(
            self.ns.argv(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)]
            ),  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.holder.stdout is not None
        first = self.holder.stdout.readline()
        assert first.strip() == "ready", f"{self.name}: {first}{self.holder.stdout.read()}"

    def log(self, name: str) -> str:
        path = self.root / "var-log" / "lab" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return "(no log)"


@pytest.fixture
def vagrant_lab() -> Iterator[dict[str, Node]]:
    """The Vagrantfile's nodes as namespaces, linked by its segments; removed after."""
    for path in BOUND:
        Path(path).mkdir(exist_ok=True)  # mount points (guest-local /run, /var/log)
    base = Path(tempfile.mkdtemp(prefix="gwvag-", dir="/run"))
    spec = vagrant_nodes()
    nodes: dict[str, Node] = {}
    try:
        for name in spec:
            (base / name).mkdir()
            nodes[name] = Node(name, netns_mod.create("gwv"), base / name)
        ends: dict[str, list[tuple[Node, str, str]]] = {}
        for name, links in spec.items():
            node = nodes[name]
            # eth0: Vagrant's management NIC (NAT) with the default route; traffic that
            # strays onto it is lost, as it would leave the lab on a real box
            node.ns.ip("link", "add", "eth0", "type", "dummy")
            node.ns.ip("addr", "add", "10.0.2.15/24", "dev", "eth0")
            node.ns.ip("link", "set", "eth0", "up")
            node.ns.ip("route", "add", "default", "via", "10.0.2.2")
            for i, (addr, segment) in enumerate(links, start=1):
                ends.setdefault(segment, []).append((node, f"eth{i}", addr))
        for segment, members in ends.items():
            assert len(members) == 2, (segment, members)
            (a, a_if, a_addr), (b, b_if, b_addr) = members
            netns_mod.veth(a.ns, a_if, b.ns, b_if)
            a.ns.ip("addr", "add", f"{a_addr}/24", "dev", a_if)
            b.ns.ip("addr", "add", f"{b_addr}/24", "dev", b_if)
        for node in nodes.values():
            node.hold()
        yield nodes
    finally:
        for node in reversed(list(nodes.values())):
            for pid in node.ns.pids():  # the daemons first get a graceful SIGTERM
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(n.ns.pids() for n in nodes.values()):
            time.sleep(0.2)
        for node in reversed(list(nodes.values())):
            node.ns.close()
            if node.holder is not None:
                node.holder.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def query(node: Node, promql: str) -> list[dict[str, Any]]:
    """A PromQL query to the node's Prometheus (its HTTP API; a bare Python is quick)."""
    proc = node.run(sys.executable, "-I", "-c", QUERY, promql, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["status"] == "success", reply
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def test_provision_sh_builds_the_lab_of_make_lab(vagrant_lab: dict[str, Node]) -> None:
    nodes = vagrant_lab
    assert list(nodes) == ["router", "gw-east", "east", "gw-west", "west"]
    took = {}
    for name, node in nodes.items():
        started = time.monotonic()
        args = [name, "--no-install", *OPTIONS.get(name, [])]
        proc = node.run("bash", str(PROVISION), *args, timeout=1200)
        took[name] = time.monotonic() - started
        out = proc.stdout + proc.stderr
        node.output.append(out)
        assert proc.returncode == 0, (
            f"provision.sh {name} failed:\n{out}\n--- gateway log ---\n{node.log('gateway')}"
        )
        assert f"provision {name}: installing" not in out, out
    print("provisioning took " + ", ".join(f"{n} {t:.0f} s" for n, t in took.items()))
    started = time.monotonic()

    # Each role ran the namespace lab's checks for its part.
    gw_east, gw_west = nodes["gw-east"].output[0], nodes["gw-west"].output[0]
    assert "check: the daemon answers on /run/gateway/control.sock" in gw_east, gw_east
    assert "check: Prometheus scrapes the gateway: up{job='gateway'} = 1" in gw_east, gw_east
    for out in (gw_east, gw_west):  # the project's alerting rules, loaded and evaluated
        assert "check: Prometheus evaluates the 10 alerting rules of ipsec-alerts.yml" in out
    assert "starting the gateway without XDP" in gw_east, gw_east
    assert "XDP on eth2 (WAN) and eth1 (LAN)" in gw_west, gw_west
    assert "check: tunnel up: east ESTABLISHED 198.51.100.2 <-> 203.0.113.2" in gw_west
    assert "check: pings crossed the tunnel" in gw_west, gw_west
    assert "ipsec_child_sa_packets_total = " in gw_west, gw_west
    assert "check: gw-west ok" in gw_west, gw_west
    assert "3 packets transmitted, 3 received" in nodes["west"].output[0]
    assert "iperf3 server listening on 10.2.0.10:5201" in nodes["east"].output[0]

    # The tunnel carries west's traffic (iperf3 at 2 Mbit/s and the ping), continuously.
    sock = nodes["gw-west"].root / "run-gateway" / "control.sock"
    first = checks.established(checks.list_sas(sock))
    assert first is not None
    time.sleep(8)
    second = checks.established(checks.list_sas(sock))
    assert second is not None
    grown = second[1]["bytes_out"] - first[1]["bytes_out"]
    assert grown > 50_000, (first[1], second[1], nodes["west"].log("lab-traffic-stream"))
    assert second[1]["packets_in"] > first[1]["packets_in"]

    # Prometheus on each gateway scrapes that gateway (provisioning saw `up` = 1): gw-east's
    # now holds the Child SA, gw-west's the traffic's bytes.
    installed = query(nodes["gw-east"], 'ipsec_child_sas{state="INSTALLED"}')
    assert [s["value"][1] for s in installed] == ["1"], installed
    sent = query(nodes["gw-west"], 'ipsec_child_sa_bytes_total{direction="out"}')
    assert sent and float(sent[0]["value"][1]) > 50_000, sent

    # The console, as a Vagrant user opens it on gw-west.
    gw = nodes["gw-west"]
    with Terminal(cwd=ROOT, env=dict(os.environ)) as term:
        term.type(shlex.join(gw.enter("/opt/gateway/venv/bin/gateway", "tui")))
        term.wait_for(r"connected /run/gateway/control\.sock", 300, "the console connected")
        term.wait_for(r"east\s+net\s+INSTALLED\s+203\.0\.113\.2", 120, "the SA row")
        term.wait_for(r"\bout [1-9][\d.]* \S*b/s", 120, "an outbound rate")
        term.press("q")
    print(f"the checks after provisioning took {time.monotonic() - started:.0f} s")
