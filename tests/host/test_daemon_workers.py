"""`[gateway] workers = 2` in a namespace (data plane `none`), observed from outside only
(`gateway ctl`, the wire): the kernel's SO_REUSEPORT steering brings every packet of an
IKE SA to the worker that owns it, and the supervisor makes the workers one appliance.

- an initiator (our engine, in the other namespace) whose IKE_SA_INIT SPIs hash to worker
  0, 1, 0, 1: each IKE SA is listed once, by the worker whose index its SPI carries;
  a retransmitted IKE_AUTH request is answered byte for byte from the owner's response
  cache (a wrong worker would drop it: unknown SPI);
- `ctl rekey` (our side initiates the IKE rekeys) and the peer's own IKE rekeys: the new
  SPIs still carry the owner's index and later exchanges (terminate) reach the owner;
- `ctl terminate` ends SAs owned by either worker; then `rekey` has nothing (unknown-sa);
- reload (checked once, applied by both); the same steering on the IPv6 sockets;
- the daemon benchmark's load generator (bench/bench_daemon.py) from 20 addresses: every
  IKE SA it made is listed exactly once, by its owner, both workers have some;
- a worker killed with SIGKILL is reported (stats) and restarted (forked by the zygote,
  with the configuration as last reloaded even when the file was broken since), and
  serves again;
- SIGTERM: exit 0, no process left in the namespace, control socket gone.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.bench_daemon import ESP, IKE, PSK, TARGET, our_config
from bpf.reuseport import owner_of_spi
from gateway.netns import Netns
from gateway.workers.partition import WorkerIkeSpis, connection_owner
from ike import events as ev
from ike.config import ChildConfig, ConnectionConfig, EngineSettings
from ike.engine import IkeEngine
from tests.support.daemon import REPO, Gateway, ctl, ctl_json, gateway_config, ns_get, wait_for
from tests.support.ike_udp import UdpDriver

DRIVER, DRIVER6, TARGET6 = "192.0.2.2", "2001:db8::2", "2001:db8::1"
METRICS = "127.0.0.1:9810"  # inside the daemon's namespace
IKE_AUTH = 35
FLAG_RESPONSE = 0x20
DRV_CONNECTION = f"""
[connections.drv]
local_addrs = ["{TARGET}"]
remote_addrs = ["{DRIVER}"]
ike_proposals = ["{IKE}"]
local = {{ auth = "psk", id = "responder" }}
remote = {{ auth = "psk", id = "drv" }}
psk = "{PSK}"

[connections.drv.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.9.0.0/16"]
esp_proposals = ["{ESP}"]
"""


class RecordingEngine(IkeEngine):
    """Our engine as the test's initiator, keeping every datagram it sent."""

    sent: list[ev.Datagram]

    def datagrams_to_send(self) -> list[ev.Datagram]:
        out = list(super().datagrams_to_send())
        self.sent.extend(out)
        return out


def driver_engine(local: str = DRIVER, remote: str = TARGET) -> RecordingEngine:
    # IKE_SA_INIT requests are steered by SPIi's high word: to workers 0, 1, 0, 1, ...
    # (its low word is random: it says nothing about the owner, whose index is in SPIr)
    targets = itertools.cycle([0, 1])

    def spi_i() -> bytes:
        high = WorkerIkeSpis(next(targets), 2)()[4:]
        return high + os.urandom(4)

    conn = ConnectionConfig(
        name="gw",
        local_addrs=(local,),
        remote_addrs=(remote,),
        local_id="drv",
        remote_id="responder",
        psk=PSK.encode(),
        ike_proposals=(IKE,),
        children=(ChildConfig("net", ("10.9.0.2/32",), ("10.1.0.0/16",), (ESP,)),),
        mobike=True,  # IKE moves to port 4500 at IKE_AUTH (RFC 4555 §3.3)
    )
    engine = RecordingEngine([conn], EngineSettings(retransmit_timeout=2.0), ike_spis=spi_i)
    engine.sent = []
    return engine


def is_ike_auth(data: bytes, port: int, *, response: bool) -> bool:
    header = data[4:] if port == 4500 else data  # the non-ESP marker (RFC 3948 §2.2)
    return header[18] == IKE_AUTH and bool(header[19] & FLAG_RESPONSE) == response


def count(events: Iterable[ev.Event], kind: type) -> int:
    return sum(1 for e in events if isinstance(e, kind))


def ctl_driven(driver: UdpDriver, sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway ctl ARGS` while the driver keeps answering the daemon."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "ctl", "--socket", str(sock), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    driver.run_until(lambda _: proc.poll() is not None, 60)
    out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_owned(sas: list[dict[str, Any]], ours: str) -> None:
    """Each IKE SA listed once, by the worker whose index is in the SPI we chose (`ours`:
    "spi_i" where we initiated the IKE SA or its last rekey, else "spi_r")."""
    pairs = [(sa["spi_i"], sa["spi_r"]) for sa in sas]
    assert len(set(pairs)) == len(pairs), "an IKE SA is listed twice"
    for sa in sas:
        assert owner_of_spi(bytes.fromhex(sa[ours]), 2) == sa["worker"], sa


def subscribe(path: Path) -> socket.socket:
    """A control connection subscribed to events (the reply has arrived)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.sendall(b'{"id": 1, "cmd": "subscribe"}\n')
    sock.settimeout(30)
    reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"], reply
    return sock


def read_events(sock: socket.socket, n: int) -> list[dict[str, Any]]:
    lines = sock.makefile("rb")
    return [json.loads(lines.readline())["event"] for _ in range(n)]


def stats(gw: Gateway) -> dict[str, Any]:
    return dict(ctl_json(gw.socket, "stats"))


def test_two_workers(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
    sock = tmp_path / "gw.sock"
    text = our_config(sock, workers=2, connections=DRV_CONNECTION)
    text = text.replace('metrics_listen = "off"', f'metrics_listen = "{METRICS}"')
    text = text.replace(f'listen = ["{TARGET}"]', f'listen = ["{TARGET}", "{TARGET6}"]')
    text += (
        DRV_CONNECTION.replace("drv]", "drv6]")
        .replace("drv.", "drv6.")
        .replace(f'["{TARGET}"]', f'["{TARGET6}"]')
        .replace(f'["{DRIVER}"]', f'["{DRIVER6}"]')
    )
    gw = Gateway.start(a, tmp_path, "gw", text)
    try:
        first = stats(gw)
        assert [w["index"] for w in first["workers"]] == [0, 1]
        assert all(w["running"] for w in first["workers"])

        events = subscribe(gw.socket)  # the workers forward events only from now on
        engine = driver_engine()
        with UdpDriver(engine, b.name, DRIVER, ports=(500, 4500)) as driver:
            # 1. four IKE SAs, two per worker
            for _ in range(4):
                engine.initiate("gw", None, driver.now())
            assert driver.run_until(lambda e: count(e, ev.ChildSaEstablished) == 4, 30)
            sas = [sa for sa in gw.sas() if sa["connection"] == "drv"]
            assert len(sas) == 4
            assert sorted(sa["worker"] for sa in sas) == [0, 0, 1, 1]
            assert_owned(sas, "spi_r")
            seen = read_events(events, 8)  # 4 ike-established + 4 child-established
            established = [e for e in seen if e["type"] == "ike-established"]
            assert sorted(e["worker"] for e in established) == [0, 0, 1, 1]
            assert {e["spi_r"] for e in established} == {sa["spi_r"] for sa in sas}
            events.close()

            # 2. retransmitted IKE_AUTH requests: each answered by its owner, from its cache
            # (MOBIKE on both sides: IKE_AUTH and everything after it uses port 4500,
            # behind the non-ESP marker, so both reuseport groups are exercised)
            requests = [d for d in engine.sent if is_ike_auth(d.data, d.local[1], response=False)]
            answers = {
                data[4:12]: data
                for data, port, _ in driver.ike_received
                if is_ike_auth(data, port, response=True)
            }
            assert len(requests) == 4 and len(answers) == 4
            assert {d.local[1] for d in requests} == {4500}
            s = driver.socks[4500]
            for req in requests:
                s.sendto(req.data, (TARGET, 4500))
                assert select.select([s], [], [], 5)[0], "retransmitted IKE_AUTH not answered"
                assert s.recvfrom(65535)[0] == answers[req.data[4:12]]

            # 3. IKE rekeys: ours (ctl) and the peer's; the owner stays the owner
            done = ctl_driven(driver, gw.socket, "rekey", "drv")
            assert done.returncode == 0, done.stderr
            assert count(driver.events, ev.IkeSaRekeyed) == 4
            rekeyed = [sa for sa in gw.sas() if sa["connection"] == "drv"]
            assert {sa["spi_i"] for sa in rekeyed}.isdisjoint({sa["spi_i"] for sa in sas})
            assert_owned(rekeyed, "spi_i")  # we made the new IKE SAs
            for uid in {e.ike_sa for e in driver.events if isinstance(e, ev.IkeSaEstablished)}:
                engine.rekey_ike_sa(uid, driver.now())
            assert driver.run_until(lambda e: count(e, ev.IkeSaRekeyed) == 8, 30)
            again = [sa for sa in gw.sas() if sa["connection"] == "drv"]
            assert sorted(sa["worker"] for sa in again) == [0, 0, 1, 1]
            assert_owned(again, "spi_r")

            # 4. terminate reaches the SAs of both workers (over the rekeyed SPIs)
            done = ctl_driven(driver, gw.socket, "terminate", "drv")
            assert done.returncode == 0, done.stderr
            assert count(driver.events, ev.IkeSaDeleted) == 4
            assert not [sa for sa in gw.sas() if sa["connection"] == "drv"]
            nothing = ctl(gw.socket, "rekey", "drv", check=False)
            assert nothing.returncode == 1 and "(unknown-sa)" in nothing.stderr

        # 4b. reload: checked once, applied by both workers, reported once
        text = gw.config.read_text()
        gw.config.write_text(text + DRV_CONNECTION.replace("drv", "drv2"))
        reloaded = ctl_json(gw.socket, "reload")
        assert reloaded["added"] == ["drv2"] and reloaded["restart_needed"] is False
        assert "drv2" in {c["name"] for c in ctl_json(gw.socket, "list-conns")}
        gw.config.write_text(text + "[connections.broken]\nlocal_addrs = 5\n")
        refused = ctl(gw.socket, "reload", check=False)
        assert refused.returncode == 1 and "reload refused" in refused.stderr
        gw.config.write_text(text)

        # 4c. the same steering on the IPv6 sockets: one IKE SA for each worker
        engine = driver_engine(DRIVER6, TARGET6)
        with UdpDriver(engine, b.name, DRIVER6, ports=(500, 4500)) as driver:
            for _ in range(2):
                engine.initiate("gw", None, driver.now())
            assert driver.run_until(lambda e: count(e, ev.ChildSaEstablished) == 2, 30)
            v6 = [sa for sa in gw.sas() if sa["connection"] == "drv6"]
            assert sorted(sa["worker"] for sa in v6) == [0, 1]
            assert {sa["remote_addr"] for sa in v6} == {DRIVER6}
            assert_owned(v6, "spi_r")
            done = ctl_driven(driver, gw.socket, "terminate", "drv6")
            assert done.returncode == 0, done.stderr

        # 5. many initiators: the benchmark's load generator
        ips = [f"192.0.2.{10 + i}" for i in range(20)]
        for ip in ips:
            b.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        out = b.run(
            sys.executable,
            str(REPO / "bench" / "bench_daemon.py"),
            "--loadgen",
            "--ips",
            ",".join(ips),
            "--seconds",
            "4",
            "--warmup",
            "0",
            "--inflight",
            "16",
            timeout=120,
        )
        load = json.loads(out.stdout.strip().splitlines()[-1])
        assert load["done"] >= 40 and load["failed"] == 0, load
        sas = [sa for sa in gw.sas() if sa["connection"] == "lg"]
        # the generator stops mid-handshake: we may have finished a few it did not see
        assert load["done"] <= len(sas) <= load["done"] + 16
        assert {sa["remote_addr"] for sa in sas} == set(ips)
        assert all(sa["state"] == "ESTABLISHED" for sa in sas)
        assert_owned(sas, "spi_r")
        per_worker = [sum(1 for sa in sas if sa["worker"] == i) for i in (0, 1)]
        assert min(per_worker) > len(sas) // 5, per_worker  # both take a share
        now = stats(gw)
        assert now["ike_sas"] == {"ESTABLISHED": len(sas)}
        assert now["handshakes"] == sum(w["handshakes"] for w in now["workers"])
        assert [w["ike_sas"] for w in now["workers"]] == per_worker
        # the supervisor's Prometheus exporter sees the SAs of both workers
        scraped = ns_get(a, f"http://{METRICS}/metrics")
        assert "ipsec_source_up 1.0" in scraped
        assert f'ipsec_ike_sas{{state="ESTABLISHED"}} {float(len(sas))}' in scraped

        # 6. a worker dies: reported, restarted, serving again; the other keeps its SAs.
        # The successor gets the configuration as last reloaded, not the file as it is
        # now (here: broken; re-reading it would fail the restart)
        gw.config.write_text(text + "[connections.broken]\nlocal_addrs = 5\n")
        victim = now["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        after = wait_for(
            "worker 1 restarted",
            lambda: (
                (s := stats(gw))["workers"][1]["running"] and s["workers"][1]["pid"] != victim and s
            ),
        )
        assert after["worker_deaths"] == 1 and after["workers"][1]["restarts"] == 1
        gw.config.write_text(text)
        left = [sa for sa in gw.sas() if sa["connection"] == "lg"]
        assert {sa["worker"] for sa in left} == {0} and len(left) == per_worker[0]
        engine = driver_engine()
        with UdpDriver(engine, b.name, DRIVER, ports=(500, 4500)) as driver:
            for _ in range(2):  # one IKE_SA_INIT for each worker
                engine.initiate("gw", None, driver.now())
            assert driver.run_until(lambda e: count(e, ev.ChildSaEstablished) == 2, 30)
        fresh = [sa for sa in gw.sas() if sa["connection"] == "drv"]
        assert sorted(sa["worker"] for sa in fresh) == [0, 1]
        assert "event=worker-died worker=1" in gw.log_text()

        # 7. a second daemon on the same ports is refused and leaves the first one alone
        second = a.run(
            sys.executable, "-m", "gateway", "run", "-c", str(gw.config), check=False, timeout=60
        )
        assert second.returncode != 0 and "cannot open IKE socket" in second.stderr
        assert "Traceback" not in second.stderr
        assert sock.exists() and stats(gw)["workers"][0]["running"]
    finally:
        status = gw.stop(timeout=60)
    assert status == 0, gw.log_text()
    wait_for("no process left", lambda: a.pids() == [], timeout=10)
    assert not sock.exists()
    assert PSK not in gw.log_text()


def test_two_workers_and_strongswan(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    """Smoke against strongSwan (charon, kernel-libipsec) with workers = 2: the start
    action runs in the connection's owner only, IKE rekeys from both sides and a Child
    rekey keep the SA with its owner and agree with charon, terminate from either side,
    SIGTERM deletes the SA with charon."""
    from tests.support.strongswan import (
        OURS,
        SWAN_CONF,
        SWAN_PSK,
        THEIRS,
        assert_same_view,
        charon,
        swan_sa,
    )

    a, b = netns_pair
    config = gateway_config(
        socket=tmp_path / "w.sock",
        listen=[OURS],
        extra="workers = 2",
        conns=[
            {
                "name": "swan",
                "local": OURS,
                "remote": THEIRS,
                "local_id": "gw-west",
                "remote_id": "gw-east",
                "local_ts": ["10.1.0.0/16"],
                "remote_ts": ["10.2.0.0/16"],
                "ike": [IKE],
                "esp": [ESP],
                "psk": SWAN_PSK,
                "start_action": "start",
            },
        ],
    )
    owner = connection_owner("swan", 2)
    with charon(b, SWAN_CONF) as sw:
        gw = Gateway.start(a, tmp_path, "west", config)
        try:
            # 1. start_action = start, in the owner only: exactly one IKE SA
            (ours,) = gw.installed("swan")
            assert ours["initiator"] is True and ours["worker"] == owner
            assert owner_of_spi(bytes.fromhex(ours["spi_i"]), 2) == owner
            assert_same_view(ours, wait_for("charon's SA", lambda: swan_sa(sw)))

            # 2. charon rekeys the IKE SA, then we do, then a Child rekey: same owner
            sw.swanctl("--rekey", "--ike", "gw")
            rekeyed = wait_for(
                "charon's IKE rekey",
                lambda: [s for s in gw.sas() if s["spi_i"] != ours["spi_i"]],
            )
            assert [s["worker"] for s in rekeyed] == [owner]
            assert owner_of_spi(bytes.fromhex(rekeyed[0]["spi_r"]), 2) == owner
            ctl(gw.socket, "rekey", "swan")
            ctl(gw.socket, "rekey", "swan.net")
            (now,) = gw.installed("swan")
            assert now["worker"] == owner
            assert owner_of_spi(bytes.fromhex(now["spi_i"]), 2) == owner
            assert_same_view(now, wait_for("charon agrees", lambda: swan_sa(sw)))

            # 3. we terminate; charon forgets
            ctl(gw.socket, "terminate", "swan")
            wait_for("charon's SA gone", lambda: sw.list_sas() == [])

            # 4. charon initiates (steered by its SPIi) and terminates, three times
            for _ in range(3):
                sw.initiate("net")
                (theirs,) = gw.installed("swan")
                assert theirs["initiator"] is False
                assert owner_of_spi(bytes.fromhex(theirs["spi_r"]), 2) == theirs["worker"]
                assert_same_view(theirs, swan_sa(sw))  # type: ignore[arg-type]
                sw.terminate_ike("gw")
                wait_for("our SA gone", lambda: gw.sas() == [])

            # 5. SIGTERM: the owner deletes its SA with charon before the daemon exits
            sw.initiate("net")
            gw.installed("swan")
            assert gw.stop(timeout=60) == 0, gw.log_text()
            wait_for("charon told", lambda: sw.list_sas() == [], timeout=10)
        finally:
            status = gw.stop(timeout=60)
    assert status == 0, gw.log_text()
    wait_for("no process left", lambda: a.pids() == [], timeout=10)
