"""`[gateway.xdp]` (the bpf issue's contract) in a real `gateway run` (data plane `none`:
the host kernel has no ESP, the XDP/TC programs do not need it).

West runs with `wan_interface = "eth0"` (towards east) and `lan_interface = "lan0"`
(towards a LAN host namespace) and the metrics exporter; it establishes with east. The
test proves, against the real programs: XDP is attached to eth0 while the daemon runs;
the IKE exchange is counted in `stats.xdp` (gateway ctl stats --json) and in
`ipsec_xdp_packets_total` scraped from the daemon; our inbound SPI carries the Child's
slot; LAN packets into the Child's remote selector are counted as `tunnel` and a TCP SYN
towards it has its MSS clamped (`ipsec_mss_clamped_total{interface="lan0"}`); after
SIGTERM nothing is attached. Steering, unknown-SPI drop, the IKE_SA_INIT shield and the
2^20-slot space reach the programs (the attach line, list-sas `cpu`, `stats.xdp_slots`).
A Child rekey (`gateway ctl rekey`) makes the new inbound SPI
in the Child's slot. Bad interface names and a start that fails after attaching
leave nothing attached and say why in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.netns import Netns, veth
from tests.support.daemon import REPO, Gateway, api, ctl, ctl_json, gateway_config, wait_for
from tests.support.fixtures import NetnsFactory

METRICS = "127.0.0.1:9811"
MASK = (1 << 20) - 1  # max_child_sas = 1048576: 20 slot bits in our inbound SPIs
GET = (
    "import sys, urllib.request\n"
    "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=5).read())\n"
)
# A TCP SYN from the LAN host towards the tunnel (nobody answers: the SYN is all we need)
SYN = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.settimeout(0.5)\n"
    "try:\n"
    "    s.connect((sys.argv[1], 80))\n"
    "except OSError:\n"
    "    pass\n"
)


def conn(me: str, peer: str, start: bool) -> dict[str, object]:
    nets = {"192.0.2.1": "10.1.0.0/24", "192.0.2.2": "10.2.0.0/24"}
    return {
        "name": "peer",
        "local": me,
        "remote": peer,
        "local_id": f"gw-{me}",
        "remote_id": f"gw-{peer}",
        "local_ts": [nets[me]],
        "remote_ts": [nets[peer]],
        "start_action": "start" if start else "none",
    }


def xdp_on(ns: Netns, dev: str) -> bool:
    """`ip -d link` lists an XDP program (`prog/xdp`) on the device."""
    return "prog/xdp" in ns.ip("-d", "link", "show", "dev", dev).stdout


def scrape(ns: Netns) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    proc = ns.run(sys.executable, "-c", GET, f"http://{METRICS}/metrics", check=False)
    if proc.returncode != 0:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(proc.stdout)
        for s in family.samples
    }


def rows(socket: Path, interface: str, reason: str) -> int:
    stats = ctl_json(socket, "stats")
    return sum(
        int(r["packets"])
        for r in stats["xdp"]
        if (r["interface"], r["reason"], r["action"]) == (interface, reason, "pass")
    )


def test_daemon_attaches_counts_and_detaches(
    netns_pair: tuple[Netns, Netns], make_netns: NetnsFactory, tmp_path: Path
) -> None:
    a, b = netns_pair
    lan = make_netns("gwl")
    veth(a, "lan0", lan, "eth0")
    a.ip("addr", "add", "10.1.0.1/24", "dev", "lan0")
    lan.ip("addr", "add", "10.1.0.2/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", "10.1.0.1")

    east = Gateway.start(
        b,
        tmp_path,
        "east",
        gateway_config(
            socket=tmp_path / "e.sock",
            listen=["192.0.2.2"],
            conns=[conn("192.0.2.2", "192.0.2.1", False)],
        ),
    )
    west = Gateway.start(
        a,
        tmp_path,
        "west",
        gateway_config(
            socket=tmp_path / "w.sock",
            listen=["192.0.2.1"],
            conns=[conn("192.0.2.1", "192.0.2.2", True)],
            metrics=METRICS,
            extra='\n[gateway.xdp]\nwan_interface = "eth0"\nlan_interface = "lan0"\n'
            'steer_cpus = "all"\ndrop_unknown_spi = true\nike_init_rate = 50\n'
            "ike_init_budget = 500\nmax_child_sas = 1048576",
        ),
    )
    (sa,) = west.installed("peer")
    east.installed("peer")
    assert xdp_on(a, "eth0")
    log = west.log_text()
    assert "event=xdp-attached wan=eth0 lan=lan0 mss_clamp=True wan_mtu=1500" in log
    assert "xdp:eth0:link" in log and "tc:lan0:link" in log
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert (
        f"steer_cpus={cpus} drop_unknown_spi=yes shield=50/s:50,budget:500/s:500 slots=1048576"
    ) in log
    # Our inbound SPI came from the adapter's allocator: its low 20 bits are the slot
    (child,) = sa["children"]
    spi_in = int(child["spi_in"], 16)
    assert f"event=xdp-child-installed connection=peer child=net slot={spi_in & MASK} " in log
    assert child["cpu"] in os.sched_getaffinity(0)  # steered to one CPU of the set
    slots = api(west.socket, "stats")["xdp_slots"]
    assert slots == {"used": 1, "capacity": 1 << 20, "exhausted": 0}
    assert "mtu=1446" in log  # AES-GCM-16, IPv4, 1500: docs/bpf.md

    # IKE counted by XDP on eth0: in `gateway ctl stats --json` and in the metrics
    wait_for("XDP counting the IKE exchange", lambda: rows(west.socket, "eth0", "ike") >= 2)
    key = (("action", "pass"), ("interface", "eth0"), ("reason", "ike"))
    metrics = wait_for("ipsec_xdp_packets_total", lambda: scrape(a))
    assert metrics[("ipsec_xdp_packets_total", key)] >= 2

    # LAN: three pings into the Child's remote selector are tunnel traffic (per slot),
    # pings to the gateway's own LAN address are not; a SYN into the tunnel is clamped.
    lan.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "10.2.0.5", check=False)
    lan.run("ping", "-c", "2", "-i", "0.2", "-W", "1", "10.1.0.1")
    lan.run(sys.executable, "-c", SYN, "10.2.0.5", check=False)
    assert rows(west.socket, "lan0", "tunnel") >= 3
    assert rows(west.socket, "lan0", "no_tunnel") >= 2
    assert rows(west.socket, "lan0", "mss_clamped") >= 1
    # ...and per slot: list-sas shows the Child's slot and its counters
    (child,) = west.installed("peer")[0]["children"]
    assert child["xdp"]["slot"] == spi_in & MASK
    assert child["xdp"]["clear_to_tunnel_packets"] >= 4  # 3 pings + the SYN
    metrics = scrape(a)
    assert metrics[("ipsec_mss_clamped_total", (("interface", "lan0"),))] >= 1
    assert metrics[("ipsec_xdp_slots", (("state", "capacity"),))] == 1 << 20
    assert "event=xdp-install-failed" not in west.log_text()

    # A Child SA rekey keeps the slot: the new inbound SPI is made in it (the engine names
    # the SA it replaces), so XDP still finds it by masking, and the counters carry on;
    # west rekeys (initiator), then east does (west answers as the responder)
    for rekeying in (west, east):
        ctl(rekeying.socket, "rekey", "peer.net")
        (child,) = west.installed("peer")[0]["children"]
        new_in = int(child["spi_in"], 16)
        assert new_in != spi_in and new_in & MASK == spi_in & MASK == child["xdp"]["slot"]
        assert child["xdp"]["clear_to_tunnel_packets"] >= 4
        spi_in = new_in

    assert west.stop() == 0
    assert not xdp_on(a, "eth0")
    assert a.run("tc", "filter", "show", "dev", "lan0", "ingress").stdout.strip() == ""
    assert "event=xdp-detached" in west.log_text()
    assert east.stop() == 0


def run_gateway(ns: Netns, tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    return subprocess.run(
        ns.argv((sys.executable, "-m", "gateway", "run", "-c", str(config))),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_bad_interfaces_and_failed_starts_leave_nothing_attached(
    netns_pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, _ = netns_pair

    def config(xdp: str, socket: Path) -> str:
        return gateway_config(
            socket=socket,
            listen=["192.0.2.1"],
            conns=[conn("192.0.2.1", "192.0.2.2", False)],
            extra="\n[gateway.xdp]\n" + xdp,
        )

    sock = tmp_path / "w.sock"
    for xdp, message in [
        ('wan_interface = "nosuch0"', "wan_interface = 'nosuch0': no such network interface"),
        (
            'wan_interface = "eth0"\nlan_interface = "nosuch1"',
            "lan_interface = 'nosuch1': no such network interface",
        ),
    ]:
        proc = run_gateway(a, tmp_path, config(xdp, sock))
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("gateway")]
        assert errors == [f"gateway run: [gateway.xdp] {message}"], proc.stderr
        assert not xdp_on(a, "eth0")

    # Attached, then the control socket cannot be made: everything is detached again
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_gateway(a, tmp_path, config('wan_interface = "eth0"', blocker / "w.sock"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "event=xdp-attached" in proc.stderr and "event=xdp-detached" in proc.stderr
    assert not xdp_on(a, "eth0")


async def test_netlink_attach_from_the_daemons_event_loop(netns_pair: tuple[Netns, Netns]) -> None:
    """Kernels without tcx links (Debian's 6.1 in the VM) get the TC programs as clsact
    filters through pyroute2, which refuses to run on a thread with a running asyncio
    loop; the adapter attaches and detaches off the loop. Forced to netlink here."""
    from bpf.loader import AttachedPrograms, in_netns
    from gateway.config.schema import XdpConfig
    from gateway.dataplane.xdp import XdpAdapter

    a, _ = netns_pair

    def netlink_loader(config: XdpConfig) -> AttachedPrograms:
        return AttachedPrograms(config.wan_interface, config.lan_interface, attach="netlink")

    adapter = XdpAdapter(XdpConfig("eth0"), loader=netlink_loader, link_mtu=lambda _: 1500)
    try:
        with in_netns(a.name):  # the attach thread starts in the namespace it is made in
            adapter.open()
        assert xdp_on(a, "eth0")
        assert "tc_wan_egress" in a.run("tc", "filter", "show", "dev", "eth0", "egress").stdout
    finally:
        with in_netns(a.name):
            adapter.close()
    assert not xdp_on(a, "eth0")
    assert a.run("tc", "filter", "show", "dev", "eth0", "egress").stdout.strip() == ""


def test_two_workers_share_the_programs(
    netns_pair: tuple[Netns, Netns], make_netns: NetnsFactory, tmp_path: Path
) -> None:
    """`workers = 2` with `[gateway.xdp]` (gateway/workers/xdpshare.py): the supervisor attaches
    once; a connection owned by each worker (crc32: alpha -> 0, beta -> 1) gets a slot and
    an inbound SPI of that worker's share (slot mod 2 = SPI mod 2 = worker) and its own
    per-slot counters move; stats.xdp is read once; a SIGKILLed worker's slot leaves the
    maps and its successor takes a slot of the same share; SIGTERM detaches."""
    from gateway.workers.partition import connection_owner

    assert [connection_owner(n, 2) for n in ("alpha", "beta")] == [0, 1]
    a, b = netns_pair
    lan = make_netns("gwl")
    veth(a, "lan0", lan, "eth0")
    a.ip("addr", "add", "10.1.0.1/24", "dev", "lan0")
    lan.ip("addr", "add", "10.1.0.2/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", "10.1.0.1")

    def conns(me: str, peer: str, start: bool) -> list[dict[str, object]]:
        mine, theirs = ("10.1", "10.2") if me == "192.0.2.1" else ("10.2", "10.1")
        return [
            {
                "name": name,
                "local": me,
                "remote": peer,
                "local_id": f"{name}-{me}",
                "remote_id": f"{name}-{peer}",
                "local_ts": [f"{mine}.{x}.0/24"],
                "remote_ts": [f"{theirs}.{x}.0/24"],
                "start_action": "start" if start else "none",
            }
            for name, x in (("alpha", 0), ("beta", 1))
        ]

    east = Gateway.start(
        b,
        tmp_path,
        "east",
        gateway_config(
            socket=tmp_path / "e.sock",
            listen=["192.0.2.2"],
            conns=conns("192.0.2.2", "192.0.2.1", False),
        ),
    )
    west = Gateway.start(
        a,
        tmp_path,
        "west",
        gateway_config(
            socket=tmp_path / "w.sock",
            listen=["192.0.2.1"],
            conns=conns("192.0.2.1", "192.0.2.2", True),
            metrics=METRICS,
            extra='workers = 2\n[gateway.xdp]\nwan_interface = "eth0"\nlan_interface = "lan0"',
        ),
    )
    try:
        assert xdp_on(a, "eth0")
        log = west.log_text()
        assert log.count("event=xdp-attached wan=eth0 lan=lan0") == 3  # supervisor + 2
        assert "event=xdp-loading" in log and log.count("event=xdp-loading") == 3

        def slots() -> dict[str, tuple[int, int, int]]:
            """connection -> (worker, slot, spi_in) once both are installed."""
            out = {}
            for name in ("alpha", "beta"):
                (sa,) = west.installed(name)
                (c,) = sa["children"]
                out[name] = (sa["worker"], c["xdp"]["slot"], int(c["spi_in"], 16))
            return out

        placed = slots()
        for name, (worker, slot, spi_in) in placed.items():
            assert worker == connection_owner(name, 2)
            assert slot % 2 == worker and spi_in % 2 == worker and spi_in & 0xFFFF == slot

        # LAN traffic into each Child's remote selector: counted in that Child's slot
        lan.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "10.2.0.5", check=False)
        lan.run("ping", "-c", "2", "-i", "0.2", "-W", "1", "10.2.1.5", check=False)
        for name, least in (("alpha", 3), ("beta", 2)):
            (sa,) = west.installed(name)
            assert sa["children"][0]["xdp"]["clear_to_tunnel_packets"] >= least, sa
        # interface-wide counters once (not once per worker), in stats and the metrics
        assert rows(west.socket, "lan0", "tunnel") >= 5
        wait_for("XDP counting IKE", lambda: rows(west.socket, "eth0", "ike") >= 4)
        key = (("action", "pass"), ("interface", "eth0"), ("reason", "ike"))
        metrics = wait_for("ipsec_xdp_packets_total", lambda: scrape(a))
        assert metrics[("ipsec_xdp_packets_total", key)] >= 4
        assert "event=xdp-install-failed" not in west.log_text()

        # worker 1 dies: the supervisor clears its slot; the successor restarts beta in
        # a slot of its own share (the new Child's counters start from zero)
        victim = api(west.socket, "stats")["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            "worker 1's slots cleared",
            lambda: "event=xdp-worker-cleared worker=1 slots=1" in west.log_text(),
        )
        beta = wait_for(
            "beta again",
            lambda: [
                sa
                for sa in west.sas()
                if sa["connection"] == "beta"
                and sa["worker"] == 1
                and sa["children"]
                and sa["children"][0].get("xdp")
            ],
            timeout=60,
        )
        slot = beta[0]["children"][0]["xdp"]["slot"]
        assert slot % 2 == 1 and beta[0]["children"][0]["xdp"]["clear_to_tunnel_packets"] == 0
        (sa,) = west.installed("alpha")  # worker 0's Child kept its slot and counters
        assert sa["children"][0]["xdp"]["slot"] == placed["alpha"][1]
        assert sa["children"][0]["xdp"]["clear_to_tunnel_packets"] >= 3
    finally:
        codes = (west.stop(60), east.stop())
    assert codes == (0, 0), west.log_text()
    assert not xdp_on(a, "eth0")
    assert a.run("tc", "filter", "show", "dev", "lan0", "ingress").stdout.strip() == ""
    assert west.log_text().count("event=xdp-detached") >= 1
