"""Two of our daemons (`gateway run`, data plane `none`) in two namespaces joined by veth:
IKE over IPv4 and IPv6 with the real engine, driven and observed only through
`gateway ctl` as a user would (list-sas --json, initiate, terminate, exit statuses),
SIGHUP reload of only the changed connection, garbage datagrams dropped and counted, and
SIGTERM deleting the SAs on both sides."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from gateway.netns import Netns
from tests.support.daemon import PSK, Gateway, ctl, ctl_json, gateway_config, wait_for

V4 = {"local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"]}
V6 = {"local_ts": ["2001:db8:1::/64"], "remote_ts": ["2001:db8:2::/64"]}


def west_config(sock: Path, *, with_v6: bool = True) -> str:
    conns = [
        {
            "name": "east",
            "local": "192.0.2.1",
            "remote": "192.0.2.2",
            "local_id": "gw-west",
            "remote_id": "gw-east",
            "start_action": "start",
            **V4,
        },
    ]
    if with_v6:
        conns.append(
            {
                "name": "east6",
                "local": "2001:db8::1",
                "remote": "2001:db8::2",
                "local_id": "gw-west",
                "remote_id": "gw-east",
                "start_action": "start",
                "ike": ["aes128-sha256-ecp256"],
                "esp": ["chacha20poly1305"],
                **V6,
            }
        )
    return gateway_config(socket=sock, listen=["192.0.2.1", "2001:db8::1"], conns=conns)


def east_config(sock: Path) -> str:
    swap = {"local_ts": "remote_ts", "remote_ts": "local_ts"}
    return gateway_config(
        socket=sock,
        listen=["0.0.0.0", "::"],  # wildcard sockets: answers must come from the right address
        conns=[
            {
                "name": "west",
                "local": "192.0.2.2",
                "remote": "192.0.2.1",
                "local_id": "gw-east",
                "remote_id": "gw-west",
                **{swap[k]: v for k, v in V4.items()},
            },
            {
                "name": "west6",
                "local": "2001:db8::2",
                "remote": "2001:db8::1",
                "local_id": "gw-east",
                "remote_id": "gw-west",
                "ike": ["aes128-sha256-ecp256", "aes256gcm16-prfsha384-x25519"],
                "esp": ["aes256gcm16", "chacha20poly1305"],
                **{swap[k]: v for k, v in V6.items()},
            },
        ],
    )


def send_garbage(ns: Netns) -> None:
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for port, data in ((500, b'x' * 40), (500, bytes(28)),"
        " (4500, b'\\0\\0\\0\\0' + b'y' * 40), (4500, b'\\xff'),"
        " (4500, b'\\1\\2\\3\\4' + bytes(40)), (500, b'')):\n"
        "    s.sendto(data, ('192.0.2.2', port))\n"
    )
    ns.run(sys.executable, "-c", code)


def test_two_daemons(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
    east = Gateway.start(b, tmp_path, "east", east_config(tmp_path / "east.sock"))
    west = Gateway.start(a, tmp_path, "west", west_config(tmp_path / "west.sock"))

    # start_action = start: both tunnels come up; each side sees the other's SPIs mirrored
    (w4,) = west.installed("east")
    (w6,) = west.installed("east6")
    (e4,) = east.installed("west")
    (e6,) = east.installed("west6")
    for ours, theirs in ((w4, e4), (w6, e6)):
        assert (ours["spi_i"], ours["spi_r"]) == (theirs["spi_i"], theirs["spi_r"])
        assert len(ours["spi_i"]) == 16 and ours["spi_i"] != "0" * 16
        (oc,), (tc,) = ours["children"], theirs["children"]
        assert (oc["spi_in"], oc["spi_out"]) == (tc["spi_out"], tc["spi_in"])
        assert oc["local_ts"] == tc["remote_ts"] and oc["remote_ts"] == tc["local_ts"]
        assert oc["mode"] == "tunnel" and oc["encap"] is False and oc["offload"] == "none"
    assert (w4["local_addr"], w4["remote_addr"]) == ("192.0.2.1", "192.0.2.2")
    assert (e4["local_id"], e4["remote_id"]) == ("gw-east", "gw-west")
    assert (w6["local_addr"], w6["remote_addr"]) == ("2001:db8::1", "2001:db8::2")
    assert w4["ike_proposal"] == "aes256gcm16-prfsha384-x25519"
    assert w6["ike_proposal"] == "aes128-sha256-prfsha256-ecp256"  # the only offer
    assert w6["children"][0]["esp_proposal"] == e6["children"][0]["esp_proposal"]
    assert "chacha20poly1305" in w6["children"][0]["esp_proposal"]
    assert w4["initiator"] is True and e4["initiator"] is False

    # human output and errors as a user sees them
    text = ctl(west.socket, "list-sas").stdout
    assert "east: ESTABLISHED, IKEv2" in text and "net: INSTALLED, TUNNEL" in text
    bad = ctl(west.socket, "initiate", "nowhere", check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "gateway ctl initiate: no connection named 'nowhere' (unknown-connection)"
    )
    assert ctl(west.socket, "terminate", "east.nope", check=False).returncode == 1

    # terminate the Child, then the IKE SA; the peer follows
    assert "1 Child SA(s) deleted" in ctl(west.socket, "terminate", "east.net").stdout
    wait_for(
        "east's child gone",
        lambda: [s for s in east.sas() if s["connection"] == "west" and not s["children"]],
    )
    ctl(west.socket, "terminate", "east")
    wait_for("east's IKE SA gone", lambda: not [s for s in east.sas() if s["connection"] == "west"])
    result = ctl_json(west.socket, "initiate", "east.net")
    assert result["sa"]["children"][0]["state"] == "INSTALLED"
    (w4,) = west.installed("east")

    # garbage on 500 and 4500 is dropped and counted; the daemon carries on
    send_garbage(a)
    stats = wait_for(
        "garbage counted",
        lambda: (
            (s := ctl_json(east.socket, "stats"))["engine"].get("malformed", 0)
            + s["transport"]["malformed"]
            >= 3
            and s
        ),
    )
    assert stats["transport"]["keepalives"] == 1 and stats["transport"]["esp_dropped"] == 1
    assert east.installed("west")

    # SIGHUP with east6 removed: only east6 goes (on both sides); east's SA stays as it was
    (west.config).write_text(west_config(west.socket, with_v6=False))
    west.signal(signal.SIGHUP)
    wait_for(
        "east6 removed",
        lambda: [c["name"] for c in ctl_json(west.socket, "list-conns")] == ["east"],
    )
    wait_for(
        "west6 deleted on the peer",
        lambda: not [s for s in east.sas() if s["connection"] == "west6"],
    )
    assert [s["spi_i"] for s in west.installed("east")] == [w4["spi_i"]]
    assert "event=config-reloaded added=- removed=east6 changed=- unchanged=1" in west.log_text()

    # SIGTERM: the SAs are deleted and the peer is told
    assert west.stop() == 0
    wait_for("peer told", lambda: east.sas() == [])
    assert not west.socket.exists()
    assert east.stop() == 0
    for gw in (west, east):
        log = gw.log_text()
        assert PSK not in log and "Traceback" not in log
        assert "event=daemon-stopped" in log
