"""`[gateway.xdp]` with real kernel ESP (the VM when the host kernel has none): one test
doing a lot, VM time is expensive.

A LAN host behind west pings a host behind east through the tunnel our two daemons
negotiate and the kernel (XFRM) carries. West has the XDP/TC programs on its WAN (eth0)
and LAN (lan0) interfaces; on Debian's 6.1 kernel the TC programs go in as clsact filters
through netlink (no tcx there). The Child SA's per-slot counters (list-sas `xdp`) move
for all four hooks: ESP in (XDP, found by the slot in our SPI), ESP out (TC egress),
cleartext into and out of the tunnel (LAN TC). A rekey keeps the slot and the counters
carry on. After SIGTERM no program, filter or clsact qdisc is left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.netns import Netns, veth
from tests.support.daemon import Gateway, ctl, ctl_json, gateway_config, socket_dir, wait_for
from tests.support.fixtures import NetnsFactory

WEST, EAST = "192.0.2.1", "192.0.2.2"


def config(sock: Path, me: str, peer: str, mine: str, theirs: str, xdp: str) -> str:
    return gateway_config(
        socket=sock,
        listen=[me],
        dataplane="xfrm",
        conns=[
            {
                "name": "peer",
                "local": me,
                "remote": peer,
                "local_id": f"gw-{me}",
                "remote_id": f"gw-{peer}",
                "local_ts": [mine],
                "remote_ts": [theirs],
                "start_action": "start" if xdp else "none",
            }
        ],
        extra=xdp,
    )


def child(gw: Gateway) -> dict[str, Any]:
    (sa,) = gw.installed("peer")
    (c,) = sa["children"]
    return dict(c)


def test_xdp_counts_tunnel_traffic_per_slot_through_kernel_esp(
    netns_pair: tuple[Netns, Netns], make_netns: NetnsFactory, tmp_path: Path
) -> None:
    with socket_dir() as run_dir:  # unix sockets on a guest-local path
        run(*netns_pair, make_netns, tmp_path, run_dir)


def run(a: Netns, b: Netns, make_netns: NetnsFactory, tmp_path: Path, run_dir: Path) -> None:
    lan = make_netns("gwl")
    veth(a, "lan0", lan, "eth0")
    a.ip("addr", "add", "10.1.0.1/24", "dev", "lan0")
    a.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    a.ip("route", "add", "10.2.0.0/24", "via", EAST)  # routed first, then XFRM policy
    lan.ip("addr", "add", "10.1.0.2/24", "dev", "eth0")
    lan.ip("route", "add", "default", "via", "10.1.0.1")
    b.ip("addr", "add", "10.2.0.1/32", "dev", "lo")
    b.ip("route", "add", "10.1.0.0/24", "via", WEST)

    east = Gateway.start(
        b,
        tmp_path,
        "east",
        config(run_dir / "e.sock", EAST, WEST, "10.2.0.0/24", "10.1.0.0/24", ""),
    )
    xdp = '\n[gateway.xdp]\nwan_interface = "eth0"\nlan_interface = "lan0"'
    # west compiles the programs first: about a minute under emulation, minutes when busy
    west = Gateway.start(
        a,
        tmp_path,
        "west",
        config(run_dir / "w.sock", WEST, EAST, "10.1.0.0/24", "10.2.0.0/24", xdp),
        wait=900,
    )
    try:
        east.installed("peer")
        first = child(west)
        slot = int(first["spi_in"], 16) & 0xFFFF
        assert first["xdp"]["slot"] == slot
        assert "tc:lan0:netlink" in west.log_text() or "tc:lan0:link" in west.log_text()

        lan.run("ping", "-c", "5", "-i", "0.3", "-W", "5", "10.2.0.1", timeout=120)
        c = child(west)
        assert c["packets_in"] >= 5 and c["packets_out"] >= 5  # the kernel's ESP counters
        x = c["xdp"]
        assert x["esp_in_packets"] >= 5 and x["esp_out_packets"] >= 5, x
        assert x["clear_to_tunnel_packets"] >= 5 and x["clear_from_tunnel_packets"] >= 5, x
        esp = [
            r
            for r in ctl_json(west.socket, "stats")["xdp"]
            if (r["interface"], r["reason"], r["action"]) == ("eth0", "esp", "pass")
        ]
        assert esp and esp[0]["packets"] >= 5

        # a rekey: new SPIs, the same slot, the counters carry on
        ctl(west.socket, "rekey", "peer.net", "--timeout", "50")
        wait_for("the rekeyed Child", lambda: child(west)["spi_in"] != first["spi_in"], 90)
        lan.run("ping", "-c", "3", "-i", "0.3", "-W", "5", "10.2.0.1", timeout=120)
        again = child(west)["xdp"]
        assert again["slot"] == slot
        assert again["esp_in_packets"] >= x["esp_in_packets"] + 3, (x, again)
        assert again["clear_to_tunnel_packets"] >= x["clear_to_tunnel_packets"] + 3
        assert "event=xdp-install-failed" not in west.log_text()
    finally:
        stopped = (west.stop(timeout=60), east.stop(timeout=60))
    assert stopped[0] == 0, west.log_text()
    assert "prog/xdp" not in a.ip("-d", "link", "show", "dev", "eth0").stdout
    for dev in ("eth0", "lan0"):
        assert "clsact" not in a.run("tc", "qdisc", "show", "dev", dev).stdout
        for hook in ("ingress", "egress"):
            assert a.run("tc", "filter", "show", "dev", dev, hook).stdout.strip() == ""
    assert "event=xdp-detached" in west.log_text()
