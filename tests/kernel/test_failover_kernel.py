"""The failover lab end to end over real ESP (gateway/lab/failover.py, docs/lab.md):
gw-west with two route-based tunnels (XFRM interfaces, 0.0.0.0/0 selectors) to
east-primary and east-backup, our daemon and FRR (eBGP + BFD 100 ms x 3 over the
tunnels, iBGP on the east LAN) on all three.

With a numbered UDP stream (100/s) and a TCP stream from the west host to the east host
through the primary tunnel, east-primary is killed (SIGKILL of its daemon, its WAN link
down) and later restored. Asserted, with bounds loose enough for the VM's emulation:

- the route moves to the backup and the UDP loss window of the switch is short; gw-west's
  DPD (1 s + 3 s) takes the dead tunnel down by itself (`tunnel-down` reason dpd, the
  interface down, `ipsec_tunnel_up` 0), with no help from BFD;
- after the restore, gw-west's DPD restart brings the tunnel up again, BGP follows and
  the route moves back, losing (almost) nothing;
- the TCP stream survives both switches;
- nothing leaves gw-west's WAN link unencrypted (tcpdump, egress only) while ESP does;
- the active/active variant: without the backup's longer AS path, one route with two
  next hops (ECMP), and the primary's failure leaves the backup's.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.lab.failover import FailoverLab
from gateway.lab.local import LabOptions, control_socket
from gateway.lab.pace import Pace
from gateway.lab.topology import BACKUP_TUNNEL, EAST_HOST, PRIMARY_TUNNEL, WEST_HOST
from gateway.netns import list_ours
from tests.support.capture import Capture
from tests.support.daemon import api, recorded_events
from tests.support.failover import TcpStream, UdpStream

# cleartext that must never leave gw-west on its WAN link: anything with an inner address
INNER = ("10.1.0.", "10.2.0.", "169.254.")


def test_failover_lab_switches_tunnels_without_leaking(tmp_path: Path) -> None:
    labdir = Path(tempfile.mkdtemp(prefix="gwf-", dir="/run")) / "lab"
    prefix = f"gwf{os.getpid() % 1000}-"
    opts = LabOptions(directory=labdir, prefix=prefix, xdp=False, traffic=False, failover=True)
    lab = FailoverLab(opts)
    pace = Pace.measured()
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        lab.up(pace)
        timings["up"] = time.monotonic() - started
        sock = control_socket(opts)
        sas = {sa["connection"]: sa for sa in api(sock, "list-sas")}
        assert set(sas) == {"primary", "backup"}
        for name, interface in (("primary", "ipsec-pri"), ("backup", "ipsec-bak")):
            (child,) = sas[name]["children"]
            assert child["interface"] == interface and child["state"] == "INSTALLED"
            assert child["local_ts"] == child["remote_ts"] == ["0.0.0.0/0", "::/0"]
        tunnels = {t["interface"]: t for t in api(sock, "stats")["tunnels"]}
        for interface in ("ipsec-pri", "ipsec-bak"):
            assert tunnels[interface]["up"] and tunnels[interface]["children"] == 1
            assert tunnels[interface]["mtu"] == 1446  # AES-GCM-16 over IPv4, 1500 path
        gw_west = lab.topo.ns("gw-west")
        # BFD flaps while the VM is busy starting things: let it settle before failing
        time.sleep(3)
        lab.wait_routes({PRIMARY_TUNNEL}, pace.deadline("steady", 4.0))

        capture = Capture(gw_west, "wan0", tmp_path / "wan.pcap", out_only=True)
        capture.ready()
        west, east = lab.topo.ns("west").name, lab.topo.ns("east").name
        udp = UdpStream(EAST_HOST, 5400, src=WEST_HOST, sender_netns=west, receiver_netns=east)
        tcp = TcpStream(EAST_HOST, src=WEST_HOST, client_netns=west, server_netns=east)
        with recorded_events(sock) as events:
            udp.start()
            tcp.start()
            time.sleep(2)

            killed = time.monotonic()
            lab.kill_primary()
            timings["failover"] = lab.wait_routes({BACKUP_TUNNEL}, pace.deadline("failover", 2.0))
            # DPD alone (no BFD needed) finds the dead peer and takes its tunnel down
            _wait(lambda: _event(events, "tunnel-down", "ipsec-pri"), pace, "tunnel-down")
            timings["dpd"] = time.monotonic() - killed
            down = _event(events, "tunnel-down", "ipsec-pri")
            assert down is not None and down["reason"] == "dpd", events
            row = _tunnel(sock, "ipsec-pri")
            assert not row["up"] and row["children"] == 0
            time.sleep(1)

            restoring = time.monotonic()
            lab.restore_primary(pace.deadline("restore", 12.0))
            lab.wait_routes({PRIMARY_TUNNEL}, pace.deadline("failback", 12.0))
            timings["failback"] = time.monotonic() - restoring
            time.sleep(2)
            u, t = udp.stop(drain=1.0), tcp.stop()
        wire = capture.stop()

        print(
            f"\nfailover lab: up in {timings['up']:.0f} s; route to the backup "
            f"{timings['failover'] * 1000:.0f} ms after the kill; DPD took the tunnel down "
            f"after {timings['dpd']:.1f} s; back on the primary {timings['failback']:.1f} s "
            f"after the restore began; UDP sent {u.sent} received {u.received}, loss windows "
            f"(ms) {[round(w.duration * 1000) for w in u.windows]}; TCP survived={t.survived} "
            f"longest stall {t.longest_stall * 1000:.0f} ms; slowness {pace.factor:.0f}"
        )
        assert u.windows, "the failover must show as lost datagrams"
        assert u.windows[0].duration < 3.0, u.windows  # BFD 100 ms x 3, under emulation
        assert all(w.duration < 3.0 for w in u.windows), u.windows  # the way back too
        assert u.received > 0.8 * u.sent
        assert t.survived, t.error
        cleartext = [line for line in wire if any(f" {p}" in line for p in INNER)]
        assert not cleartext, cleartext[:5]
        assert sum("ESP(spi=" in line for line in wire) > u.received / 2

        # Active/active: east-backup without its longer AS path
        frr = lab.frr["east-backup"]
        frr.configure("route-map TO-WEST permit 10", "no set as-path prepend")
        frr.vtysh("clear bgp ipv4 unicast 169.254.20.1 soft out")
        lab.wait_routes({PRIMARY_TUNNEL, BACKUP_TUNNEL}, pace.deadline("ecmp", 4.0))
        lab.kill_primary()
        lab.wait_routes({BACKUP_TUNNEL}, pace.deadline("ecmp-failover", 2.0))
    finally:
        lab.down()
    assert not [n for n in list_ours(prefix)]
    labdir.parent.rmdir()


def _event(events: list[dict[str, Any]], kind: str, interface: str) -> dict[str, Any] | None:
    return next(
        (e for e in events if e.get("type") == kind and e.get("interface") == interface), None
    )


def _tunnel(sock: Path, interface: str) -> dict[str, Any]:
    return next(t for t in api(sock, "stats")["tunnels"] if t["interface"] == interface)


def _wait(probe: Any, pace: Pace, what: str, reference: float = 2.0) -> None:
    deadline = pace.deadline(what, reference)
    while not probe():
        if deadline.expired():
            raise deadline.fail(f"no {what}")
        time.sleep(0.1)
