"""`[gateway.xdp]` (the bpf issue's contract): the daemon attaches the XDP/TC programs to
the configured WAN interface when it starts, reports their verdict counters in `stats`
(IKE seen by XDP as it establishes), registers each Child SA with them, and detaches them
when it stops."""

from __future__ import annotations

from pathlib import Path

from gateway.netns import Netns
from tests.daemon_helpers import Gateway, ctl_json, gateway_config, wait_for


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


def test_xdp_attached_while_running(netns_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, b = netns_pair
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
            extra='\n[gateway.xdp]\nwan_interface = "eth0"',
        ),
    )
    west.installed("peer")
    east.installed("peer")
    assert "xdp" in a.ip("link", "show", "dev", "eth0").stdout
    assert "event=xdp-attached wan=eth0" in west.log_text()

    def ike_rows() -> list[dict[str, object]]:
        rows = ctl_json(west.socket, "stats")["xdp"]
        return [
            r
            for r in rows
            if (r["interface"], r["reason"], r["action"]) == ("eth0", "ike", "pass")
            and r["packets"] >= 2
        ]

    wait_for("XDP counting the IKE exchange", ike_rows)
    assert "event=xdp-install-failed" not in west.log_text()

    assert west.stop() == 0
    assert "xdp" not in a.ip("link", "show", "dev", "eth0").stdout
    assert "event=xdp-detached" in west.log_text()
    assert east.stop() == 0
