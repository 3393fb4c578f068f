"""NAT between two of our daemons (data plane `none`): west sits behind a router that
masquerades (nftables) onto the outside network. The engine detects the NAT (RFC 7296
§2.23), the exchange floats to UDP 4500 where our transport carries the non-ESP marker,
and both sides report the Child SA with UDP encapsulation."""

from __future__ import annotations

from pathlib import Path

from gateway.netns import veth
from tests.support.daemon import Gateway, ctl_json, gateway_config, wait_for
from tests.support.fixtures import NetnsFactory

NFT_MASQUERADE = """
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "out" masquerade
  }
}
"""


def test_nat_moves_ike_to_4500_and_encapsulates(make_netns: NetnsFactory, tmp_path: Path) -> None:
    west, router, east = make_netns("gwn"), make_netns("gwr"), make_netns("gwe")
    veth(west, "eth0", router, "in")
    veth(router, "out", east, "eth0")
    west.ip("addr", "add", "192.168.1.2/24", "dev", "eth0")
    west.ip("route", "add", "default", "via", "192.168.1.1")
    router.ip("addr", "add", "192.168.1.1/24", "dev", "in")
    router.ip("addr", "add", "198.51.100.1/24", "dev", "out")
    router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    router.run("nft", "-f", "-", input=NFT_MASQUERADE)
    east.ip("addr", "add", "198.51.100.2/24", "dev", "eth0")

    e = Gateway.start(
        east,
        tmp_path,
        "east",
        gateway_config(
            socket=tmp_path / "e.sock",
            listen=["198.51.100.2"],
            conns=[
                {
                    "name": "west",
                    "local": "198.51.100.2",
                    "remote": "%any",
                    "local_id": "gw-east",
                    "remote_id": "gw-west",
                    "local_ts": ["10.2.0.0/24"],
                    "remote_ts": ["10.1.0.0/24"],
                }
            ],
        ),
    )
    w = Gateway.start(
        west,
        tmp_path,
        "west",
        gateway_config(
            socket=tmp_path / "w.sock",
            listen=["192.168.1.2"],
            conns=[
                {
                    "name": "east",
                    "local": "192.168.1.2",
                    "remote": "198.51.100.2",
                    "local_id": "gw-west",
                    "remote_id": "gw-east",
                    "start_action": "start",
                    "local_ts": ["10.1.0.0/24"],
                    "remote_ts": ["10.2.0.0/24"],
                }
            ],
        ),
    )
    (ws,) = w.installed("east")
    (es,) = e.installed("west")
    # west talks to east's 4500 from its own 4500; east sees the router's address and a
    # port the NAT chose
    assert (ws["local_port"], ws["remote_port"]) == (4500, 4500)
    assert es["remote_addr"] == "198.51.100.1" and es["local_port"] == 4500
    assert ws["children"][0]["encap"] is True and es["children"][0]["encap"] is True
    # the IKE SA is usable over the NAT: terminate it from behind the NAT
    ctl_json(w.socket, "terminate", "east")
    wait_for("east's SA gone", lambda: e.sas() == [])
    assert w.stop() == 0 and e.stop() == 0
