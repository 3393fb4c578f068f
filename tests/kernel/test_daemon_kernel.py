"""Our daemon with the `xfrm` data plane over real kernel ESP (in the VM when the host
kernel has none). Few test functions, each doing a lot: VM time is expensive.

- our daemon vs our daemon: the SAs our engine negotiates are installed by the daemon,
  ping between the protected networks passes through them (kernel ESP counters move and
  list-sas reports them), a kernel packet limit (EXPIRE) makes both daemons delete the
  Child, `gateway ctl terminate` removes the kernel states, SIGTERM leaves nothing behind;
- start_action = "trap": the first packet brings the tunnel up through the kernel's
  ACQUIRE, terminate leaves the trap and the next packet brings it back.

The interop matrix (strongSwan and our daemon as peers, certificates, NAT, ChaCha20 and
ecp256, iperf3, captures on the wire, rekeys under traffic, DPD) is
tests/kernel/test_interop_kernel.py; it replaced the single strongSwan case once here.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import REPO, Gateway, ctl, ctl_json, gateway_config, wait_for
from tests.support.kernel import EAST, WEST, ping, policies, protected_nets, states


def config(
    sock: Path, me: str, peer: str, mine: str, theirs: str, start: str, lim: bool = True
) -> str:
    """Connection `peer` (mine.0 <-> theirs.0) with `start` as its start_action and (with
    `lim`) `lim` (mine.1 <-> theirs.1), whose Child SA the kernel removes after 6 packets
    (life_packets)."""
    common = {
        "local": me,
        "remote": peer,
        "local_id": f"gw-{me}",
        "remote_id": f"gw-{peer}",
        "start_action": start,
    }
    conns = [
        {
            "name": "peer",
            "local_ts": [f"{mine}.0.0/24"],
            "remote_ts": [f"{theirs}.0.0/24"],
            **common,
        },
        {  # own IDs, so the responder picks this connection, not `peer`
            **common,
            "name": "lim",
            "local_id": f"lim-{me}",
            "remote_id": f"lim-{peer}",
            "local_ts": [f"{mine}.1.0/24"],
            "remote_ts": [f"{theirs}.1.0/24"],
            "child_extra": "life_packets = 6",
            "start_action": "none" if start == "trap" else start,
        },
    ]
    return gateway_config(socket=sock, listen=[me], dataplane="xfrm", conns=conns[: 1 + lim])


def test_two_daemons_pass_traffic_through_kernel_esp(
    netns_pair: tuple[Netns, Netns], tmp_path: Path, run_dir: Path
) -> None:
    a, b = netns_pair
    protected_nets(a, b)
    east = Gateway.start(
        b, tmp_path, "east", config(run_dir / "e.sock", EAST, WEST, "10.2", "10.1", "none")
    )
    west = Gateway.start(
        a, tmp_path, "west", config(run_dir / "w.sock", WEST, EAST, "10.1", "10.2", "start")
    )
    try:
        (w,) = west.installed("peer")
        (e,) = east.installed("peer")
        west.installed("lim")
        east.installed("lim")
        (wc,), (ec,) = w["children"], e["children"]
        # the kernel holds the SAs list-sas reports, with our SPIs
        assert f"0x{wc['spi_in']}" in states(a) and f"0x{wc['spi_out']}" in states(a)
        assert f"0x{ec['spi_in']}" in states(b) and f"0x{ec['spi_out']}" in states(b)
        assert len(states(a)) == len(states(b)) == 4
        assert policies(a) == policies(b) == 6  # out, in, fwd per Child

        ping(a, "10.1.0.1", "10.2.0.1")
        (wc,) = next(s for s in west.sas() if s["connection"] == "peer")["children"]
        (ec,) = next(s for s in east.sas() if s["connection"] == "peer")["children"]
        assert wc["packets_out"] >= 3 and wc["packets_in"] >= 3 and wc["bytes_out"] > 0
        assert (ec["packets_in"], ec["packets_out"]) == (wc["packets_out"], wc["packets_in"])
        assert ctl_json(west.socket, "stats")["dataplane"] == "xfrm"

        # rekeys under continuous traffic, initiated by either side: Child then IKE SA,
        # then a Child rekey over the rekeyed IKE SA. A numbered UDP echo stream (50
        # datagrams/s each way) between the protected hosts loses not one datagram: the
        # rekey responder sends on the new SA only once the initiator has it (its Delete
        # of the old SA arrived), the old inbound SAs stay for packets in flight
        echo = b.popen(
            sys.executable,
            "-m",
            "tests.support.udp_stream",
            "echo",
            "10.2.0.1",
            "7777",
            stdout=subprocess.PIPE,
            cwd=str(REPO),
        )
        assert echo.stdout is not None
        assert echo.stdout.readline() == b"ready\n"  # bound before the first datagram
        sender = a.popen(
            sys.executable,
            "-m",
            "tests.support.udp_stream",
            "send",
            "10.1.0.1",
            "10.2.0.1",
            "7777",
            "0.02",
            stdout=subprocess.PIPE,
            cwd=str(REPO),
        )
        assert sender.stdout is not None and sender.stdout.readline() == b"ready\n"
        old_spi = wc["spi_in"]
        rekeys = ((west, "peer.net"), (east, "peer.net"), (east, "peer"), (west, "peer"))
        for gw, what in (*rekeys, (east, "peer.net")):
            ctl(gw.socket, "rekey", what, "--timeout", "180")
            # both sides on the new SA pair, the old inbound SAs retired
            wait_for("rekey settled", lambda: len(states(a)) == len(states(b)) == 4, 60)
        sender.send_signal(signal.SIGINT)
        result = json.loads(sender.communicate(timeout=60)[0].decode().strip())
        b.stop(echo)
        assert result["sent"] >= 100 and result["echoed"] == result["sent"], result
        (wc,) = next(s for s in west.sas() if s["connection"] == "peer")["children"]
        assert wc["spi_in"] != old_spi
        assert ctl_json(west.socket, "stats")["rekeys"] >= 2
        assert "event=child-outbound-switched" in west.log_text() + east.log_text()

        # kernel lifetime: after 6 packets the kernel drops lim's state (EXPIRE hard);
        # the daemons delete that Child with each other and remove its policies
        a.run(
            "ping",
            "-c",
            "8",
            "-i",
            "0.3",
            "-W",
            "2",
            "-I",
            "10.1.1.1",
            "10.2.1.1",
            timeout=120,
            check=False,
        )
        wait_for(
            "lim's Child deleted on both sides",
            lambda: (
                not [
                    c
                    for gw in (west, east)
                    for s in gw.sas()
                    if s["connection"] == "lim"
                    for c in s["children"]
                ]
            ),
            timeout=90,
        )
        assert "event=child-expired connection=lim" in west.log_text() + east.log_text()
        wait_for("lim's policies gone", lambda: policies(a) == policies(b) == 3, timeout=30)

        # terminate removes the kernel SAs on both sides; initiate brings new ones
        ctl(west.socket, "terminate", "peer")
        ctl(west.socket, "terminate", "lim")
        wait_for("states removed", lambda: states(a) == [] and states(b) == [], timeout=60)
        assert policies(a) == 0 and policies(b) == 0
        ctl(west.socket, "initiate", "peer")
        east.installed("peer")
        ping(a, "10.1.0.1", "10.2.0.1", count=2)
    finally:
        codes = (west.stop(60), east.stop(60))
    assert codes == (0, 0)
    # graceful shutdown leaves nothing of ours in either kernel
    assert states(a) == [] and states(b) == []
    assert policies(a) == 0 and policies(b) == 0


def xfrm_reqids(ns: Netns, what: str) -> list[int]:
    return [int(r) for r in re.findall(r"reqid (\d+)", ns.run("ip", "xfrm", what).stdout)]


def test_trap_brings_the_tunnel_up_on_the_first_packet(
    netns_pair: tuple[Netns, Netns], tmp_path: Path, run_dir: Path
) -> None:
    """start_action = "trap" on west: an out policy and no state until a packet from
    behind west matches it; the kernel's ACQUIRE makes west initiate (once), the SA is
    installed under the trap's reqid and pings pass; `terminate` removes the SAs, the
    trap stays and the next packet brings the tunnel back; SIGTERM removes the trap."""
    a, b = netns_pair
    protected_nets(a, b)

    east = Gateway.start(
        b, tmp_path, "east", config(run_dir / "e.sock", EAST, WEST, "10.2", "10.1", "none", False)
    )
    west = Gateway.start(
        a, tmp_path, "west", config(run_dir / "w.sock", WEST, EAST, "10.1", "10.2", "trap", False)
    )

    def trap() -> dict[str, object]:
        (conn,) = ctl_json(west.socket, "list-conns")
        return dict(conn["children"][0]["trap"] or {})

    try:
        assert trap()["state"] == "TRAPPED"
        assert states(a) == [] and policies(a) == 1  # the out policy only
        (trap_reqid,) = xfrm_reqids(a, "policy")
        assert "trap TRAPPED" in ctl(west.socket, "list-conns").stdout
        for round_ in (1, 2):
            # the first echo hits the trap (the kernel drops it while it asks: larval
            # state) and raises the ACQUIRE; the SA comes up; then every echo passes
            a.run("ping", "-c", "1", "-W", "1", "-I", "10.1.0.1", "10.2.0.1", check=False)
            west.installed("peer")
            east.installed("peer")
            ping(a, "10.1.0.1", "10.2.0.1", count=3)
            assert trap()["state"] == "INSTALLED"
            assert west.log_text().count("trigger=acquire") == round_
            # under the trap's reqid, sharing its out policy: 2 states, out/in/fwd
            assert xfrm_reqids(a, "state") == [trap_reqid] * 2 and policies(a) == 3
            (sa,) = west.sas()
            assert sa["children"][0]["packets_in"] >= 3
            # terminate: the SAs go on both sides, the trap stays underneath
            ctl(west.socket, "terminate", "peer")
            wait_for("SAs removed", lambda: states(a) == [] and states(b) == [], timeout=60)
            assert policies(a) == 1 and policies(b) == 0
            assert xfrm_reqids(a, "policy") == [trap_reqid]
            assert trap()["state"] == "TRAPPED"
    finally:
        codes = (west.stop(60), east.stop(60))
    assert codes == (0, 0)
    assert states(a) == [] and policies(a) == 0 and policies(b) == 0
